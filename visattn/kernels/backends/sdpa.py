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


def availability() -> tuple[bool, str]:
    return True, "torch.nn.functional.scaled_dot_product_attention (best available SDPA kernel), dense only"


def supports(request: AttentionRequest) -> bool:
    return request.is_plain


def run(request: AttentionRequest) -> tuple[torch.Tensor, None]:
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
