"""Every per-model fact visattn needs, as data: one :class:`Family` entry per denoiser family.

visattn rides diffusers' own attention path (:mod:`visattn.interception`), so a family is not code: it says how
to read the latent grid, timestep and text length from the denoiser's forward call, where text sits in joint
sequences, and which attention modules have a role their class does not show. A denoiser class not listed here
gets :data:`GENERIC`, which infers what it can from the call and warns once about what it cannot.
"""

from __future__ import annotations

import warnings

import torch

from ..warning_site import user_stacklevel
from .base import (
    CLIP_LENGTH,
    OTHER_POSITIONS,
    TEXT_POSITIONS,
    Argument,
    CountedTokens,
    DenoiserInputs,
    Family,
    JoinedText,
    LatentTokens,
    OtherTokens,
    PaddedGrid,
    PromptRecipe,
    ReorderedGrid,
    TextPart,
)
from .image_models import IMAGE_FAMILIES
from .unet_models import UNET_FAMILIES
from .video_models import VIDEO_MODEL_FAMILIES

FAMILIES: tuple[Family, ...] = UNET_FAMILIES + IMAGE_FAMILIES + VIDEO_MODEL_FAMILIES

#: every family key: the one vocabulary of the package (``visattn.tiny``, words, the app, batch and eval)
FAMILY_KEYS: tuple[str, ...] = tuple(family.name for family in FAMILIES)

#: keys of the families whose latents are videos (a frames axis), the one list the package uses
VIDEO_FAMILIES: tuple[str, ...] = tuple(family.name for family in FAMILIES if family.video)

#: keys of the families whose pipelines' tokenizer ladder is declared (words map to text positions)
PROMPT_FAMILIES: tuple[str, ...] = tuple(family.name for family in FAMILIES if family.prompt is not None)

_BY_KEY: dict[str, Family] = {family.name: family for family in FAMILIES}
if len(_BY_KEY) != len(FAMILIES):
    raise RuntimeError("two family records share a key")

#: the facts of a class visattn has never seen: grid from a 4-D or 5-D latent input and the config's patch
#: sizes, text length from ``encoder_hidden_states``; joint sequences' text position unknown.
GENERIC = Family("generic", layout="auto", known=False)

__all__ = [
    "CLIP_LENGTH",
    "FAMILIES",
    "FAMILY_KEYS",
    "GENERIC",
    "OTHER_POSITIONS",
    "PROMPT_FAMILIES",
    "TEXT_POSITIONS",
    "VIDEO_FAMILIES",
    "Argument",
    "CountedTokens",
    "JoinedText",
    "DenoiserInputs",
    "Family",
    "LatentTokens",
    "OtherTokens",
    "PaddedGrid",
    "PromptRecipe",
    "ReorderedGrid",
    "TextPart",
    "declared_family",
    "family_named",
    "family_of",
    "supported_families",
]

_WARNED: set[str] = set()


def supported_families() -> str:
    """A readable list of the declared denoiser classes, for messages."""
    return ", ".join(f"{f.name} ({'/'.join(f.classes)})" for f in FAMILIES)


def family_named(key: str) -> Family:
    """The family with key ``key``; ``ValueError`` listing :data:`FAMILY_KEYS` otherwise."""
    family = _BY_KEY.get(key) if isinstance(key, str) else None
    if family is None:
        raise ValueError(f"family={key!r} is not a family key; the keys are {', '.join(FAMILY_KEYS)}")
    return family


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
            stacklevel=user_stacklevel(),
        )
    return GENERIC
