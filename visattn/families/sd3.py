"""SD3 / SD3.5 joint attention (``JointAttnProcessor2_0``): one sequence ``[latent, text]``.

SD3.5's extra ``attn2`` is the same processor without text: plain self-attention over latents.
"""

from __future__ import annotations

import torch

from ..context import Span, TokenLayout
from .base import DenoiserInputs, Family, Projection, first_argument, joint_layout, timestep_value


def _heads(x: torch.Tensor, batch_size: int, heads: int, head_dim: int) -> torch.Tensor:
    return x.view(batch_size, -1, heads, head_dim).transpose(1, 2)


class SD3Family(Family):
    name = "sd3"
    denoiser_classes = ("SD3Transformer2DModel",)
    processor_classes = ("JointAttnProcessor2_0",)

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        sample = first_argument(args, kwargs, ("hidden_states",), 0)
        timestep = first_argument(args, kwargs, ("timestep",), 3)
        patch = model.config.patch_size
        grid = (1, sample.shape[-2] // patch, sample.shape[-1] // patch)
        return DenoiserInputs(sample.shape[0], grid, timestep_value(timestep), sample=sample)

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        batch_size, n_image = hidden_states.shape[0], hidden_states.shape[1]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (_heads(x, batch_size, attn.heads, head_dim) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        joint = encoder_hidden_states is not None
        if joint:
            text_q = _heads(attn.add_q_proj(encoder_hidden_states), batch_size, attn.heads, head_dim)
            text_k = _heads(attn.add_k_proj(encoder_hidden_states), batch_size, attn.heads, head_dim)
            text_v = _heads(attn.add_v_proj(encoder_hidden_states), batch_size, attn.heads, head_dim)
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query = torch.cat([query, text_q], dim=2)
            key = torch.cat([key, text_k], dim=2)
            value = torch.cat([value, text_v], dim=2)

        def finish(out: torch.Tensor):
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            text_out = None
            if joint:
                out, text_out = out[:, :n_image], out[:, n_image:]
                if not attn.context_pre_only:
                    text_out = attn.to_add_out(text_out)
            out = attn.to_out[1](attn.to_out[0](out))
            return (out, text_out) if joint else out

        length = query.shape[2]
        layout = joint_layout(length, Span(n_image, length)) if joint else TokenLayout(length, image=Span(0, length))
        return Projection(query, key, value, "joint" if joint else "self", layout, layout, finish)
