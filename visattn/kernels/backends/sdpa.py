"""Dense fast path: torch's scaled_dot_product_attention, or diffusers' attention dispatcher.

Used when nothing custom is asked for. When the model runs through diffusers' dispatcher (the new-style
processors, or a backend chosen with ``model.set_attention_backend``) the call goes through
``dispatch_attention_fn`` with that backend, so visattn's identity path is the stock path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..request import AttentionRequest

NAME = "sdpa"


#: the largest ``[Nq, Nk]`` bias a score modifier is materialized into for SDPA (bytes; above it, a call with such
#: a modifier is left to the backends that compute it in place: FlexAttention, Triton)
MAX_BIAS_BYTES = 64 * 1024 * 1024

#: biases made, by modifier, shape, device and dtype (a generation reuses each one at every step), kept up to
#: this many bytes in all (a UNet's levels each have their own)
_BIASES: dict = {}
_BIASES_KEPT_BYTES = 2 * MAX_BIAS_BYTES


def availability() -> tuple[bool, str]:
    return True, (
        "torch.nn.functional.scaled_dot_product_attention (best available SDPA kernel): dense, and score modifiers "
        "that add a bias of positions alone (extrapolation decay) as an additive mask"
    )


def supports(request: AttentionRequest) -> bool:
    if request.is_plain:
        return True
    # A modifier that adds a bias of the query and key positions alone is an additive mask SDPA takes.
    modifier = request.score_mod
    return (
        modifier is not None
        and request.pattern is None
        and not request.return_lse
        and not request.editors
        and not request.use_dispatcher
        and modifier.adds_position_bias
        and request.q.shape[2] * request.k.shape[2] * request.q.element_size() <= MAX_BIAS_BYTES
    )


def _bias(request: AttentionRequest) -> torch.Tensor:
    """The request's score modifier as an ``[Nq, Nk]`` additive mask in the queries' dtype (made once per
    modifier, shape, device and dtype), combined with the model's own mask."""
    modifier, q = request.score_mod, request.q
    n_q, n_k = q.shape[2], request.k.shape[2]
    key = (modifier.cache_key(), n_q, n_k, q.device, q.dtype)
    bias = _BIASES.get(key)
    if bias is None:
        bias = modifier.position_bias(n_q, n_k, q.device, q.dtype)
        held = sum(kept.numel() * kept.element_size() for kept in _BIASES.values())
        if held + bias.numel() * bias.element_size() > _BIASES_KEPT_BYTES:
            _BIASES.clear()
        _BIASES[key] = bias
    mask = request.attn_mask
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.tensor(float("-inf"), device=bias.device, dtype=bias.dtype))
    return bias + mask.to(bias.dtype)


def run(request: AttentionRequest) -> tuple[torch.Tensor, None]:
    if not request.is_plain:
        out = F.scaled_dot_product_attention(
            request.q, request.k, request.v, attn_mask=_bias(request), dropout_p=0.0, scale=request.scale
        )
        return out, None
    if request.use_dispatcher:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        # The dispatcher takes [B, N, H, D].
        out = dispatch_attention_fn(
            request.q.transpose(1, 2),
            request.k.transpose(1, 2),
            request.v.transpose(1, 2),
            attn_mask=request.attn_mask,
            scale=request.scale,
            backend=request.dispatcher_backend,
        )
        return out.transpose(1, 2), None
    out = F.scaled_dot_product_attention(
        request.q, request.k, request.v, attn_mask=request.attn_mask, dropout_p=0.0, scale=request.scale
    )
    return out, None
