"""Flux (``FluxAttention`` + ``FluxAttnProcessor``): double-stream blocks see ``[text, latent]`` built from
separate projections; single-stream blocks receive the already concatenated sequence, so the text length
comes from the denoiser's inputs (``encoder_hidden_states``) read by the forward hook.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ..context import Span, TokenLayout
from .base import (
    DenoiserInputs,
    Family,
    Projection,
    first_argument,
    heads_first,
    joint_layout,
    timestep_value,
)


class FluxFamily(Family):
    name = "flux"
    denoiser_classes = ("FluxTransformer2DModel",)
    processor_classes = ("FluxAttnProcessor", "FluxAttnProcessor2_0")
    # FluxPipeline calls the transformer with timestep / 1000.
    timestep_divisor = 1000.0

    def static_role(self, name, module):
        # Double-stream blocks join text and latents explicitly, single-stream blocks get them concatenated.
        return "joint"

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        sample = first_argument(args, kwargs, ("hidden_states",), 0)
        text = first_argument(args, kwargs, ("encoder_hidden_states",), 1)
        timestep = first_argument(args, kwargs, ("timestep",), 3)
        img_ids = kwargs.get("img_ids")
        grid = None
        if img_ids is not None:
            ids = img_ids[0] if img_ids.ndim == 3 else img_ids
            # Packed latents carry their 2-D position in img_ids[:, 1:] (row, column).
            grid = (1, int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        text_length = text.shape[1] if text is not None else None
        return DenoiserInputs(sample.shape[0], grid, timestep_value(timestep), text_length, sample=sample)

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, text_q, text_k, text_v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        double_stream = attn.added_kv_proj_dim is not None and encoder_hidden_states is not None
        if double_stream:
            text_q = attn.norm_added_q(text_q.unflatten(-1, (-1, attn.head_dim)))
            text_k = attn.norm_added_k(text_k.unflatten(-1, (-1, attn.head_dim)))
            text_v = text_v.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([text_q, query], dim=1)
            key = torch.cat([text_k, key], dim=1)
            value = torch.cat([text_v, value], dim=1)
            text_length = encoder_hidden_states.shape[1]
        rotary = kwargs.get("image_rotary_emb")
        if rotary is not None:
            query = apply_rotary_emb(query, rotary, sequence_dim=1)
            key = apply_rotary_emb(key, rotary, sequence_dim=1)

        def finish(out: torch.Tensor):
            out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
            if not double_stream:
                return out
            text_out, out = out.split_with_sizes([text_length, out.shape[1] - text_length], dim=1)
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(text_out.contiguous())

        length = query.shape[1]
        if text_length:
            layout = joint_layout(length, Span(0, text_length))
            role = "joint"
        else:
            layout, role = TokenLayout(length, image=Span(0, length)), "self"
        return Projection(
            heads_first(query),
            heads_first(key),
            heads_first(value),
            role,
            layout,
            layout,
            finish,
            attn_mask=attention_mask,
            uses_dispatcher=True,
        )
