"""Classic ``Attention`` with ``AttnProcessor2_0``: SD 1.x/2.x and SDXL UNets, PixArt, and text refiners.

Self-attention when no ``encoder_hidden_states`` are given, cross-attention (latent queries, text keys)
otherwise. UNet levels halve the grid, so each layer's grid is derived from its token count.
"""

from __future__ import annotations

import math

import torch

from ..context import Span, TokenLayout
from .base import DenoiserInputs, Family, Projection, first_argument, timestep_value


def project_classic(attn, hidden_states, encoder_hidden_states, attention_mask, kwargs) -> Projection:
    """q/k/v exactly as ``AttnProcessor2_0`` computes them; ``finish`` applies its output path."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, kwargs.get("temb"))
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, key_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    role = "self" if encoder_hidden_states is None else "cross"
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    def finish(out: torch.Tensor) -> torch.Tensor:
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    n_q, n_k = query.shape[2], key.shape[2]
    queries = TokenLayout(n_q, image=Span(0, n_q))
    keys = queries if role == "self" else TokenLayout(n_k, text=Span(0, n_k))
    return Projection(query, key, value, role, queries, keys, finish, attn_mask=attention_mask)


class ClassicFamily(Family):
    processor_classes = ("AttnProcessor2_0", "AttnProcessor")

    def project(self, attn, hidden_states, encoder_hidden_states, attention_mask, kwargs, text_length):
        return project_classic(attn, hidden_states, encoder_hidden_states, attention_mask, kwargs)


class UNetFamily(ClassicFamily):
    """SD 1.x/2.x and SDXL: ``UNet2DConditionModel``; ``sample`` is ``[B, C, H, W]`` latents."""

    name = "unet"
    denoiser_classes = ("UNet2DConditionModel",)

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        sample = first_argument(args, kwargs, ("sample",), 0)
        timestep = first_argument(args, kwargs, ("timestep",), 1)
        return DenoiserInputs(
            sample.shape[0], (1, sample.shape[-2], sample.shape[-1]), timestep_value(timestep), sample=sample
        )

    def layer_grid(self, top_grid, num_tokens):
        # Each UNet level downsamples by 2 with a padded stride-2 conv, so sizes round up.
        if top_grid is None:
            return None
        _, height, width = top_grid
        for level in range(8):
            factor = 2**level
            grid = (1, math.ceil(height / factor), math.ceil(width / factor))
            if grid[1] * grid[2] == num_tokens:
                return grid
        return None


class PixArtFamily(ClassicFamily):
    """PixArt-alpha/sigma: ``PixArtTransformer2DModel`` over patchified ``[B, C, H, W]`` latents."""

    name = "pixart"
    denoiser_classes = ("PixArtTransformer2DModel",)

    def read_inputs(self, model, args, kwargs) -> DenoiserInputs:
        sample = first_argument(args, kwargs, ("hidden_states",), 0)
        timestep = first_argument(args, kwargs, ("timestep",), 2)
        patch = model.config.patch_size
        grid = (1, sample.shape[-2] // patch, sample.shape[-1] // patch)
        return DenoiserInputs(sample.shape[0], grid, timestep_value(timestep), sample=sample)
