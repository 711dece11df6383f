"""Wan 2.1 / 2.2 (``WanAttention`` + ``WanAttnProcessor``): self-attention over the 3-D latent grid (``attn1``)
and cross-attention to text (``attn2``; image-to-video models add a second, image-context attention).
"""

from __future__ import annotations

import torch

from ..context import Span, TokenLayout
from ..kernels import attention
from .base import DenoiserInputs, Family, Projection, first_argument, heads_first, timestep_value

# Wan's text encoder context is padded to 512 tokens; I2V prepends image-context tokens before it.
WAN_TEXT_CONTEXT = 512


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on ``[B, N, H, D]`` (pairs of channels rotate together)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanFamily(Family):
    name = "wan"
    denoiser_classes = ("WanTransformer3DModel",)
    processor_classes = ("WanAttnProcessor", "WanAttnProcessor2_0")

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        sample = first_argument(args, kwargs, ("hidden_states",), 0)
        timestep = first_argument(args, kwargs, ("timestep",), 1)
        pt, ph, pw = model.config.patch_size
        grid = (sample.shape[2] // pt, sample.shape[3] // ph, sample.shape[4] // pw)
        return DenoiserInputs(sample.shape[0], grid, timestep_value(timestep), sample=sample)

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        from diffusers.models.transformers.transformer_wan import (
            _get_added_kv_projections,
            _get_qkv_projections,
        )

        image_context = None
        if attn.add_k_proj is not None:
            split = encoder_hidden_states.shape[1] - WAN_TEXT_CONTEXT
            image_context = encoder_hidden_states[:, :split]
            encoder_hidden_states = encoder_hidden_states[:, split:]
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        rotary = kwargs.get("rotary_emb")
        if rotary is not None:
            query, key = _rotate(query, *rotary), _rotate(key, *rotary)
        backend = getattr(attn.processor, "_attention_backend", None)

        def finish(out: torch.Tensor) -> torch.Tensor:
            out = out.transpose(1, 2).flatten(2, 3).type_as(query)
            if image_context is not None:
                # The image-context branch of I2V models is dense cross-attention, added to the text branch.
                key_img, value_img = _get_added_kv_projections(attn, image_context)
                key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
                value_img = value_img.unflatten(2, (attn.heads, -1))
                out_img = attention(
                    heads_first(query),
                    heads_first(key_img),
                    heads_first(value_img),
                    use_dispatcher=True,
                    dispatcher_backend=backend,
                )
                out = out + out_img.transpose(1, 2).flatten(2, 3).type_as(query)
            return attn.to_out[1](attn.to_out[0](out))

        n_q, n_k = query.shape[1], key.shape[1]
        queries = TokenLayout(n_q, image=Span(0, n_q))
        if encoder_hidden_states is None:
            role, keys = "self", queries
        else:
            role, keys = "cross", TokenLayout(n_k, text=Span(0, n_k))
        return Projection(
            heads_first(query),
            heads_first(key),
            heads_first(value),
            role,
            queries,
            keys,
            finish,
            attn_mask=attention_mask,
            uses_dispatcher=True,
        )
