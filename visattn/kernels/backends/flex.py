"""FlexAttention backend: the pattern becomes a ``mask_mod`` and a cached ``BlockMask``; modifiers a ``score_mod``.

Block masks are cached per (pattern, batch/heads if the pattern depends on them, lengths, device), so a layer
that runs hundreds of times builds its mask once. On CUDA the kernel is compiled (``torch.compile``); on CPU
FlexAttention runs eagerly unless ``VISATTN_FLEX_COMPILE=1`` is set (compiling costs more than it saves at the
tiny sizes used there).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Hashable

import torch

from ..request import AttentionRequest

NAME = "flex"

_BLOCK_MASKS: OrderedDict[Hashable, object] = OrderedDict()
_BLOCK_MASK_CACHE_SIZE = 64


def availability() -> tuple[bool, str]:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as error:  # pragma: no cover - torch < 2.5
        return False, f"torch {torch.__version__} has no FlexAttention ({error})"
    return True, "torch FlexAttention with cached block masks (compiled on CUDA)"


def supports(request: AttentionRequest) -> bool:
    # Model masks are supported only as key-padding masks ([B or 1, 1 or H, 1, Nk]); a full per-query mask
    # would have to be indexed per element, which the reference backend does better.
    mask = request.attn_mask
    return mask is None or (mask.dim() == 4 and mask.shape[-2] == 1)


def _use_compiled(device: torch.device) -> bool:
    flag = os.environ.get("VISATTN_FLEX_COMPILE")
    if flag is not None:
        return flag not in ("0", "false", "False", "")
    return device.type == "cuda"


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_mask_for(pattern, batch: int, heads: int, q_len: int, kv_len: int, device: torch.device):
    """The (cached) ``BlockMask`` of ``pattern`` at these sizes."""
    from torch.nn.attention.flex_attention import create_block_mask

    per_item = pattern.depends_on_batch_or_head
    key = (
        pattern.cache_key(),
        batch if per_item else None,
        heads if per_item else None,
        q_len,
        kv_len,
        str(device),
    )
    cached = _BLOCK_MASKS.get(key)
    if cached is not None:
        _BLOCK_MASKS.move_to_end(key)
        return cached

    # FlexAttention wants a plain function with the (b, h, q_idx, kv_idx) signature, not a bound method.
    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.mask_mod(b, h, q_idx, kv_idx)

    block_mask = create_block_mask(
        mask_mod,
        batch if per_item else None,
        heads if per_item else None,
        q_len,
        kv_len,
        device=device,
    )
    _BLOCK_MASKS[key] = block_mask
    if len(_BLOCK_MASKS) > _BLOCK_MASK_CACHE_SIZE:
        _BLOCK_MASKS.popitem(last=False)
    return block_mask


def _score_mod(request: AttentionRequest):
    modifier = request.score_mod
    mask = request.attn_mask
    if modifier is None and mask is None:
        return None
    if mask is not None:
        mask = mask.expand(request.q.shape[0], request.q.shape[1], 1, request.k.shape[2])
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
        mask = mask.float()

    def score_mod(score, b, h, q_idx, kv_idx):
        if modifier is not None:
            score = modifier.score_mod(score, b, h, q_idx, kv_idx)
        if mask is not None:
            score = score + mask[b, h, 0, kv_idx]
        return score

    return score_mod


def run(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = request.q, request.k, request.v
    block_mask = None
    if request.pattern is not None:
        block_mask = block_mask_for(request.pattern, q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.device)
    compiled = _use_compiled(q.device)
    fn = _compiled_flex() if compiled else flex_attention
    with warnings.catch_warnings():
        # Eager FlexAttention (CPU by default) warns that it is unfused; that is the documented choice here.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        result = fn(
            q,
            k,
            v,
            score_mod=_score_mod(request),
            block_mask=block_mask,
            scale=request.effective_scale,
            **_lse_request(request.return_lse),
        )
    if request.return_lse:
        out, aux = result
        return out, getattr(aux, "lse", aux)
    return result, None


def _lse_request(return_lse: bool) -> dict:
    """Ask for the log-sum-exp the way this torch version wants (``return_aux`` replaced ``return_lse``)."""
    if not return_lse:
        return {}
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # pragma: no cover - older torch
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}
