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


def masked_logits(
    request: AttentionRequest,
    q_start: int,
    q_stop: int,
    *,
    rows: slice | None = None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled, modified and masked fp32 logits for queries ``[q_start, q_stop)``: ``[B, H, n, Nk]``, or of a
    block: batch ``rows`` (a contiguous range) and the key positions ``keys`` (an index tensor).

    Masked pairs are ``-inf``. Modifiers and patterns see absolute batch, head, query and key indices, so a block
    has exactly the logits it has in the whole call (:mod:`visattn.kernels.probabilities` reads blocks this way).
    """
    rows = slice(0, request.q.shape[0]) if rows is None else rows
    q = request.q[rows, :, q_start:q_stop].float()
    k = request.k[rows].float()
    if keys is not None:
        k = k.index_select(2, keys.to(k.device))
    heads = q.shape[1]
    logits = torch.matmul(q, k.transpose(-1, -2)) * request.effective_scale
    if request.score_mod is not None or request.pattern is not None:
        # Absolute indices, only where a modifier or a pattern reads them (maps read per call need none).
        b = torch.arange(rows.start, rows.start + q.shape[0], device=q.device).view(-1, 1, 1, 1)
        h = torch.arange(heads, device=q.device).view(1, heads, 1, 1)
        q_idx = torch.arange(q_start, q_stop, device=q.device).view(1, 1, -1, 1)
        kv_idx = (torch.arange(k.shape[2], device=q.device) if keys is None else keys.to(q.device)).view(1, 1, 1, -1)
    if request.score_mod is not None:
        logits = request.score_mod.score_mod(logits, b, h, q_idx, kv_idx)
    if request.attn_mask is not None:
        mask = request.attn_mask
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        # Index only the axes the mask has, so a key-padding mask [B, 1, 1, Nk] stays small.
        if mask.shape[0] > 1:
            mask = mask[rows]
        if mask.shape[-2] != 1:
            mask = mask[..., q_start:q_stop, :]
        if keys is not None and mask.shape[-1] != 1:
            mask = mask.index_select(-1, keys.to(mask.device))
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    if request.pattern is not None:
        keep = request.pattern.mask_mod(b, h, q_idx, kv_idx)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def softmax_chunk(
    request: AttentionRequest, start: int, stop: int, *, with_lse: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp32 probabilities ``[B, H, stop - start, Nk]`` of queries ``[start, stop)``, and their log-sum-exp
    (``[B, H, n, 1]``; ``None`` when neither asked nor needed)."""
    logits = masked_logits(request, start, stop)
    # Without a mask, pattern or modifier no logit is -inf: one fused softmax (the log-sum-exp only where asked).
    unmasked = request.attn_mask is None and request.pattern is None and request.score_mod is None
    if unmasked and not with_lse:
        return torch.softmax(logits, dim=-1), None
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    # A query with every key masked gets zeros (not NaN), as fused kernels return.
    return torch.exp(logits - lse.masked_fill(torch.isinf(lse), 0.0)), lse


def _collect(
    request: AttentionRequest, blocks: list, probs: torch.Tensor, start: int, stop: int, *, before_edits: bool
) -> None:
    """Add the chunk's part of each read of this stage (before or after the editors) to its list of blocks."""
    from ..probabilities import chunk_block

    for read, parts in zip(request.reads, blocks, strict=True):
        if read.before_edits == before_edits:
            block = chunk_block(request, read, probs, start, stop)
            if block is not None:
                # A block before the edits is a copy: the editors change the chunk in place afterwards.
                parts.append(block.clone() if before_edits else block)


def run(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The call, chunk by chunk; the probability stage (reads before the edits, editors, then the other reads)
    runs on each materialized chunk."""
    n_q = request.q.shape[2]
    outs, lses = [], []
    blocks: list[list[torch.Tensor]] = [[] for _ in request.reads]
    v = request.v.float()
    for start in range(0, n_q, QUERY_CHUNK):
        stop = min(n_q, start + QUERY_CHUNK)
        probs, lse = softmax_chunk(request, start, stop, with_lse=request.return_lse)
        _collect(request, blocks, probs, start, stop, before_edits=True)
        for editor in request.editors:
            editor(probs, start, stop)
        _collect(request, blocks, probs, start, stop, before_edits=False)
        outs.append(torch.matmul(probs, v))
        if lse is not None:
            lses.append(lse.squeeze(-1))
    for read, parts in zip(request.reads, blocks, strict=True):
        if parts:
            read.observe(torch.cat(parts, dim=2))
    out = torch.cat(outs, dim=2).to(request.q.dtype)
    # Edited rows have no logits of their own: an edited call returns no log-sum-exp.
    lse = torch.cat(lses, dim=2) if request.return_lse and not request.editors else None
    return out, lse
