"""Build tiny random-weight pipelines and denoisers by family key, offline and deterministically."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline, ModelMixin

from visattn.testing.grids import Grid
from visattn.testing.image_families import IMAGE_FAMILIES
from visattn.testing.spec import ComponentFactory, FamilySpec
from visattn.testing.video_families import VIDEO_FAMILIES

_SPECS: dict[str, FamilySpec] = {spec.name: spec for spec in (*IMAGE_FAMILIES, *VIDEO_FAMILIES)}

#: Every family key accepted by :func:`tiny_pipeline` and friends.
FAMILIES: tuple[str, ...] = tuple(_SPECS)


def family_spec(family: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``family``; raises ``ValueError`` listing :data:`FAMILIES` if unknown."""
    try:
        return _SPECS[family]
    except (KeyError, TypeError):
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}") from None


def _seeded(factory: ComponentFactory, seed: int) -> Any:
    # Seed each component on its own so its weights do not depend on what was built before it, and fork the
    # RNG so that building a test model leaves the caller's global random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    # Mirror from_pretrained(torch_dtype=...): diffusers models list submodules that must stay in float32
    # (Wan's RoPE, norms and time embedding). ModelMixin.to(dtype) would cast those too, and warns about it.
    keep = getattr(module, "_keep_in_fp32_modules", None) if isinstance(module, ModelMixin) else None
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if tensor.is_floating_point() and not (keep and any(part in keep for part in name.split("."))):
            tensor.data = tensor.data.to(dtype)


def tiny_pipeline(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """A full diffusers pipeline of ``family`` with tiny random weights and in-code tokenizers.

    Nothing is downloaded. The same ``seed`` always gives the same weights, and every component is seeded
    separately, so :func:`tiny_denoiser` with that seed returns an identical denoiser.
    """
    spec = family_spec(family)
    components = {name: _seeded(factory, seed) for name, factory in spec.components().items()}
    if dtype != torch.float32:
        for component in components.values():
            if isinstance(component, torch.nn.Module):
                _cast(component, dtype)
    pipe = spec.pipeline_cls(**components, **spec.pipeline_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_denoiser(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Just the UNet/transformer that :func:`tiny_pipeline` builds for ``family`` with ``seed``."""
    spec = family_spec(family)
    denoiser = _seeded(spec.components()[spec.denoiser], seed)
    if dtype != torch.float32:
        _cast(denoiser, dtype)
    return denoiser


def denoiser_of(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The UNet or transformer of a pipeline."""
    for name in ("transformer", "unet"):
        denoiser = getattr(pipe, name, None)
        if denoiser is not None:
            return denoiser
    raise ValueError(f"{type(pipe).__name__} has neither a transformer nor a unet")


def call_kwargs(family: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast (well under 2 s on 2 CPU cores), deterministic call of ``family``.

    Two steps at 32x32 (9 frames for video), CFG on where the pipeline does CFG through ``guidance_scale``,
    a fresh ``torch.Generator`` seeded with 0, ``output_type="np"`` and a 16-token text length where the
    pipeline accepts ``max_sequence_length``. ``overrides`` replace keys.
    """
    kwargs = family_spec(family).call_defaults()
    kwargs["generator"] = torch.Generator().manual_seed(0)
    kwargs.update(overrides)
    return kwargs


def latent_grid(family: str, kwargs: Mapping[str, Any] | None = None) -> Grid:
    """The denoiser's token grid ``(frames, height, width)`` after patchify for a call with ``kwargs``.

    Images have ``frames == 1``; for the UNet families the grid is the latent at the top (full-resolution)
    level. Missing keys (height, width, num_frames) fall back to :func:`call_kwargs`'s values.
    """
    spec = family_spec(family)
    return spec.grid({**spec.call_defaults(), **(kwargs or {})})
