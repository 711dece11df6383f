"""Model-family knowledge, one small file per family: where q/k/v come from and how tokens are laid out.

:func:`family_of` maps a denoiser to its family (by class, so subclasses and compiled wrappers work);
:func:`guess_adapter` recognizes an attention module on its own, for processors swapped in by hand with
``model.set_attn_processor(VisAttnProcessor())``.
"""

from __future__ import annotations

import torch

from .base import DenoiserInputs, Family, Projection
from .classic import PixArtFamily, UNetFamily
from .cogvideox import CogVideoXFamily
from .flux import FluxFamily
from .hunyuan_video import HunyuanVideoFamily
from .sd3 import SD3Family
from .wan import WanFamily

FAMILIES: tuple[Family, ...] = (
    UNetFamily(),
    PixArtFamily(),
    SD3Family(),
    FluxFamily(),
    WanFamily(),
    CogVideoXFamily(),
    HunyuanVideoFamily(),
)

__all__ = [
    "FAMILIES",
    "DenoiserInputs",
    "Family",
    "Projection",
    "family_of",
    "guess_adapter",
    "supported_families",
]


def supported_families() -> str:
    """A readable list of the supported denoiser classes, for error messages."""
    return ", ".join(f"{f.name} ({'/'.join(f.denoiser_classes)})" for f in FAMILIES)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile(model) returns an OptimizedModule whose original is ``_orig_mod``.
    return getattr(model, "_orig_mod", model)


def family_of(model: torch.nn.Module) -> Family:
    """The family of a denoiser; ValueError naming the supported families for anything else."""
    model = _unwrap(model)
    for klass in type(model).__mro__:
        for family in FAMILIES:
            if klass.__name__ in family.denoiser_classes:
                return family
    raise ValueError(f"visattn does not support {type(model).__name__}; supported denoisers: {supported_families()}")


def guess_adapter(attn: torch.nn.Module, encoder_hidden_states, kwargs: dict) -> Family:
    """Recognize a family from one attention module and its call, when no denoiser was attached."""
    by_name = {family.name: family for family in FAMILIES}
    kind = type(attn).__name__
    if kind == "FluxAttention":
        return by_name["flux"]
    if kind == "WanAttention":
        return by_name["wan"]
    if encoder_hidden_states is None or getattr(attn, "is_cross_attention", False):
        # Self-attention, or classic cross-attention to a text encoder: the classic processor.
        return by_name["unet"]
    if getattr(attn, "added_kv_proj_dim", None) is not None:
        # Separate text projections: SD3's joint attention, or HunyuanVideo's double-stream (with rotary).
        return by_name["hunyuan_video"] if kwargs.get("image_rotary_emb") is not None else by_name["sd3"]
    # Text handed to a self-attention module and concatenated inside the processor. HunyuanVideo's
    # single-stream attention has no output projection (its block does it); CogVideoX's has one.
    return by_name["hunyuan_video"] if getattr(attn, "to_out", None) is None else by_name["cogvideox"]
