"""The reference backend: plain PyTorch, materialized scores, fp32 softmax. The oracle for every other backend.

It evaluates the pattern and the score modifier on broadcast index grids (the same functions FlexAttention
traces per element), in chunks of queries so that memory stays bounded by ``chunk x Nk`` per head.
"""

from __future__ import annotations

import torch

from ..request import AttentionRequest

NAME = "reference"

# Queries per chunk: bounds the materialized score block at CHUNK x Nk x heads x batch floats.
QUERY_CHUNK = 1024


def availability() -> tuple[bool, str]:
    return True, "plain PyTorch; materializes scores, meant for small sizes and as the correctness oracle"


def supports(request: AttentionRequest) -> bool:
    return True


def index_grids(batch: int, heads: int, q_start: int, q_stop: int, kv_len: int, device) -> tuple[torch.Tensor, ...]:
    """Broadcastable ``(b, h, q_idx, kv_idx)`` index tensors shaped for ``[B, H, Nq, Nk]``."""
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, heads, 1, 1)
    q_idx = torch.arange(q_start, q_stop, device=device).view(1, 1, -1, 1)
    kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, kv_len)
    return b, h, q_idx, kv_idx


def masked_logits(request: AttentionRequest, q_start: int, q_stop: int) -> torch.Tensor:
    """Scaled, modified and masked fp32 logits for queries ``[q_start, q_stop)``: ``[B, H, n, Nk]``.

    Masked pairs are ``-inf``. Exposed so that effects needing probabilities (attention maps, prompt-to-prompt)
    compute them exactly as the reference backend does.
    """
    q = request.q[:, :, q_start:q_stop].float()
    k = request.k.float()
    batch, heads = q.shape[0], q.shape[1]
    logits = torch.matmul(q, k.transpose(-1, -2)) * request.effective_scale
    b, h, q_idx, kv_idx = index_grids(batch, heads, q_start, q_stop, k.shape[2], q.device)
    if request.score_mod is not None:
        logits = request.score_mod.score_mod(logits, b, h, q_idx, kv_idx)
    if request.attn_mask is not None:
        mask = request.attn_mask
        if mask.shape[-2] != 1:
            mask = mask[..., q_start:q_stop, :]
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    if request.pattern is not None:
        keep = request.pattern.mask_mod(b, h, q_idx, kv_idx)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def run(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    n_q = request.q.shape[2]
    outs, lses = [], []
    v = request.v.float()
    for start in range(0, n_q, QUERY_CHUNK):
        stop = min(n_q, start + QUERY_CHUNK)
        logits = masked_logits(request, start, stop)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        # A query with every key masked gets zeros (not NaN), as fused kernels return.
        probs = torch.exp(logits - lse.masked_fill(torch.isinf(lse), 0.0))
        outs.append(torch.matmul(probs, v))
        lses.append(lse.squeeze(-1))
    out = torch.cat(outs, dim=2).to(request.q.dtype)
    lse = torch.cat(lses, dim=2) if request.return_lse else None
    return out, lse
