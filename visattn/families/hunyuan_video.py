"""HunyuanVideo (``Attention`` + ``HunyuanVideoAttnProcessor2_0``): joint attention over ``[latent video, text]``
in both the double-stream blocks (separate text projections) and the single-stream blocks (one projection of
the concatenated sequence). The text token refiner's attention (``context_embedder``) is text-only.
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
from .classic import project_classic


class HunyuanVideoFamily(Family):
    name = "hunyuan_video"
    denoiser_classes = ("HunyuanVideoTransformer3DModel",)
    processor_classes = ("HunyuanVideoAttnProcessor2_0", "AttnProcessor2_0")

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        sample = first_argument(args, kwargs, ("hidden_states",), 0)
        timestep = first_argument(args, kwargs, ("timestep",), 1)
        patch, patch_t = model.config.patch_size, model.config.patch_size_t
        grid = (sample.shape[2] // patch_t, sample.shape[3] // patch, sample.shape[4] // patch)
        return DenoiserInputs(sample.shape[0], grid, timestep_value(timestep), sample=sample)

    def static_role(self, name, module):
        return "text" if name.startswith("context_embedder") else "joint"

    def adapter_for(self, name: str, module: torch.nn.Module) -> Family:
        return _TEXT_REFINER if name.startswith("context_embedder") else self

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        rotary = kwargs.get("image_rotary_emb")
        n_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        if rotary is not None:
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-n_text], rotary, sequence_dim=1), query[:, -n_text:]], 1)
                key = torch.cat([apply_rotary_emb(key[:, :-n_text], rotary, sequence_dim=1), key[:, -n_text:]], 1)
            else:
                query = apply_rotary_emb(query, rotary, sequence_dim=1)
                key = apply_rotary_emb(key, rotary, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            text_q = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            text_k = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            text_v = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query = torch.cat([query, text_q], dim=1)
            key = torch.cat([key, text_k], dim=1)
            value = torch.cat([value, text_v], dim=1)

        def finish(out: torch.Tensor):
            out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
            text_out = None
            if n_text:
                out, text_out = out[:, :-n_text], out[:, -n_text:]
                if getattr(attn, "to_out", None) is not None:
                    out = attn.to_out[1](attn.to_out[0](out))
                if getattr(attn, "to_add_out", None) is not None:
                    text_out = attn.to_add_out(text_out)
            return out, text_out

        length = query.shape[1]
        text = Span(length - n_text, length) if n_text else None
        layout = joint_layout(length, text)
        return Projection(
            heads_first(query),
            heads_first(key),
            heads_first(value),
            "joint" if n_text else "self",
            layout,
            layout,
            finish,
            attn_mask=attention_mask,
            uses_dispatcher=True,
        )


class HunyuanTextRefiner(HunyuanVideoFamily):
    """The token refiner's self-attention over text tokens only (classic processor, role ``"text"``)."""

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        projection = project_classic(attn, hidden_states, encoder_hidden_states, attention_mask, kwargs)
        projection.role = "text"
        projection.queries = projection.keys = TokenLayout(projection.q.shape[2], text=Span(0, projection.q.shape[2]))
        return projection


_TEXT_REFINER = HunyuanTextRefiner()
