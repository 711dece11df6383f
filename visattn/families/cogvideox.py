"""CogVideoX (``Attention`` + ``CogVideoXAttnProcessor2_0``): joint attention over ``[text, latent video]``,
rotary embeddings on the latent part only."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ..context import Span
from .base import DenoiserInputs, Family, Projection, first_argument, joint_layout, timestep_value


class CogVideoXFamily(Family):
    name = "cogvideox"
    denoiser_classes = ("CogVideoXTransformer3DModel",)
    processor_classes = ("CogVideoXAttnProcessor2_0",)

    def static_role(self, name, module):
        return "joint"

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        # CogVideoX latents are [B, F, C, H, W].
        sample = first_argument(args, kwargs, ("hidden_states",), 0)
        timestep = first_argument(args, kwargs, ("timestep",), 2)
        patch, patch_t = model.config.patch_size, model.config.patch_size_t or 1
        grid = (sample.shape[1] // patch_t, sample.shape[3] // patch, sample.shape[4] // patch)
        return DenoiserInputs(sample.shape[0], grid, timestep_value(timestep), sample=sample)

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        n_text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        rotary = kwargs.get("image_rotary_emb")
        if rotary is not None:
            query = torch.cat([query[:, :, :n_text], apply_rotary_emb(query[:, :, n_text:], rotary)], dim=2)
            if not attn.is_cross_attention:
                key = torch.cat([key[:, :, :n_text], apply_rotary_emb(key[:, :, n_text:], rotary)], dim=2)

        def finish(out: torch.Tensor):
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            out = attn.to_out[1](attn.to_out[0](out))
            text_out, out = out.split([n_text, out.size(1) - n_text], dim=1)
            return out, text_out

        layout = joint_layout(length, Span(0, n_text))
        return Projection(query, key, value, "joint", layout, layout, finish, attn_mask=attention_mask)
