"""Every per-model fact visattn needs, as data: one :class:`Family` entry per denoiser family.

visattn rides diffusers' own attention path (:mod:`visattn.interception`), so a family is not code: it says how
to read the latent grid, timestep and text length from the denoiser's forward call, where text sits in joint
sequences, and which attention modules have a role their class does not show. A denoiser class not listed here
gets :data:`GENERIC`, which infers what it can from the call and warns once about what it cannot.
"""

from __future__ import annotations

import warnings

import torch

from .base import TEXT_POSITIONS, Argument, DenoiserInputs, Family

FAMILIES: tuple[Family, ...] = (
    Family(
        "unet",
        ("UNet2DConditionModel",),
        sample=Argument(("sample",), 0),
        patch=None,
        patch_t=None,
        timestep=Argument(("timestep",), 1),
        text=Argument(("encoder_hidden_states",), 2),
        unet_levels=True,
    ),
    Family(
        "pixart",
        ("PixArtTransformer2DModel",),
        timestep=Argument(("timestep",), 2),
        text=Argument(("encoder_hidden_states",), 1),
    ),
    Family(
        "sd3",
        ("SD3Transformer2DModel",),
        timestep=Argument(("timestep",), 3),
        text=Argument(("encoder_hidden_states",), 1),
        text_position="last",
    ),
    Family(
        "flux",
        ("FluxTransformer2DModel",),
        layout="packed",
        grid_reader="flux_ids",
        timestep=Argument(("timestep",), 3),
        # FluxPipeline calls the transformer with timestep / 1000.
        timestep_divisor=1000.0,
        text=Argument(("encoder_hidden_states",), 1),
        text_position="first",
        # Single-stream blocks receive text and latents already concatenated.
        roles=(("single_transformer_blocks", "joint"),),
    ),
    Family(
        "wan",
        ("WanTransformer3DModel",),
        layout="BCFHW",
        timestep=Argument(("timestep",), 1),
        text=Argument(("encoder_hidden_states",), 2),
        video=True,
    ),
    Family(
        "cogvideox",
        ("CogVideoXTransformer3DModel",),
        layout="BFCHW",
        timestep=Argument(("timestep",), 2),
        text=Argument(("encoder_hidden_states",), 1),
        text_position="first",
        roles=(("", "joint"),),
        video=True,
    ),
    Family(
        "hunyuan_video",
        ("HunyuanVideoTransformer3DModel",),
        layout="BCFHW",
        timestep=Argument(("timestep",), 1),
        text=Argument(("encoder_hidden_states",), 2),
        text_position="last",
        # The token refiner's attention (context_embedder) attends over text only.
        roles=(("^context_embedder", "text"), ("", "joint")),
        video=True,
    ),
)

# --- UNets beyond SD: video UNets fold frames into the batch of their spatial layers ------------------------------
_UNET_ARGUMENTS = {
    "sample": Argument(("sample",), 0),
    "patch": None,
    "patch_t": None,
    "timestep": Argument(("timestep",), 1),
    "unet_levels": True,
}
FAMILIES += (
    Family("unet_2d", ("UNet2DModel",), text=None, **_UNET_ARGUMENTS),
    Family("kandinsky3", ("Kandinsky3UNet",), text=Argument(("encoder_hidden_states",), 2), **_UNET_ARGUMENTS),
    Family(
        "dreamlite_unet",
        ("DreamLiteUNetModel",),
        text=Argument(("encoder_hidden_states",), 2),
        **_UNET_ARGUMENTS,
    ),
    Family(
        "unet_3d",
        ("UNet3DConditionModel",),
        layout="BCFHW",
        text=Argument(("encoder_hidden_states",), 2),
        frames_in_batch=True,
        video=True,
        **_UNET_ARGUMENTS,
    ),
    Family(
        "animatediff",
        ("UNetMotionModel",),
        layout="BCFHW",
        text=Argument(("encoder_hidden_states",), 2),
        frames_in_batch=True,
        video=True,
        **_UNET_ARGUMENTS,
    ),
    Family(
        "i2vgen_xl",
        ("I2VGenXLUNet",),
        layout="BCFHW",
        # Cross-attention keys are the text followed by image tokens the model appends itself.
        text=Argument(("encoder_hidden_states",), 5),
        frames_in_batch=True,
        video=True,
        **_UNET_ARGUMENTS,
    ),
    Family(
        "svd",
        ("UNetSpatioTemporalConditionModel",),
        layout="BFCHW",
        text=None,  # one CLIP image token, not text
        frames_in_batch=True,
        video=True,
        **_UNET_ARGUMENTS,
    ),
)

#: keys of the families whose latents are videos (a frames axis), the one list the package uses
VIDEO_FAMILIES: tuple[str, ...] = tuple(family.name for family in FAMILIES if family.video)

#: the facts of a class visattn has never seen: grid from a 4-D or 5-D latent input and the config's patch
#: sizes, text length from ``encoder_hidden_states``; joint sequences' text position unknown.
GENERIC = Family("generic", layout="auto", known=False)

__all__ = [
    "FAMILIES",
    "GENERIC",
    "TEXT_POSITIONS",
    "VIDEO_FAMILIES",
    "Argument",
    "DenoiserInputs",
    "Family",
    "family_of",
    "supported_families",
]

_WARNED: set[str] = set()


def supported_families() -> str:
    """A readable list of the declared denoiser classes, for messages."""
    return ", ".join(f"{f.name} ({'/'.join(f.classes)})" for f in FAMILIES)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile(model) returns an OptimizedModule whose original is ``_orig_mod``.
    return getattr(model, "_orig_mod", model)


def declared_family(model: torch.nn.Module) -> Family | None:
    """The declared family of a denoiser (by class along its MRO, so subclasses match), or ``None``."""
    for klass in type(_unwrap(model)).__mro__:
        for family in FAMILIES:
            if klass.__name__ in family.classes:
                return family
    return None


def family_of(model: torch.nn.Module) -> Family:
    """The family of a denoiser; :data:`GENERIC` (with a one-time warning saying what it cannot do) otherwise."""
    family = declared_family(model)
    if family is not None:
        return family
    name = type(_unwrap(model)).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"visattn has no facts for {name}; it runs through the generic path: the latent grid is read from a "
            "4-D or 5-D latent input and the config's patch sizes (grid patterns are skipped where that fails), "
            "and where text sits in joint sequences is unknown, so text effects (Prompt-to-Prompt, AttentionMaps) "
            "act only on cross-attention",
            stacklevel=3,
        )
    return GENERIC
