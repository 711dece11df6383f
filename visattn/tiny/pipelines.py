"""Build tiny random-weight pipelines and denoisers, offline and deterministically.

A tiny pipeline is named by its family key (:mod:`visattn.families`, the package's one vocabulary) when it is the
family's default pipeline (``"unet"`` is Stable Diffusion), and by its diffusers class name otherwise
(``"StableDiffusionXLPipeline"``, also of the ``"unet"`` family). Every pipeline also answers to its class name.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.modular_pipelines import ModularPipeline

from visattn.families import VIDEO_FAMILIES
from visattn.tiny.denoisers.pipelines import COVERAGE_PIPELINE_SPECS
from visattn.tiny.grids import Grid
from visattn.tiny.image_pipelines import IMAGE_PIPELINES
from visattn.tiny.pipeline_spec import ComponentFactory, PipelineSpec
from visattn.tiny.video_pipelines import VIDEO_PIPELINES as VIDEO_PIPELINES_SPECS

_CORE: dict[str, PipelineSpec] = {spec.key: spec for spec in (*IMAGE_PIPELINES, *VIDEO_PIPELINES_SPECS)}
_SPECS: dict[str, PipelineSpec] = {**_CORE, **{spec.key: spec for spec in COVERAGE_PIPELINE_SPECS}}
_BY_CLASS: dict[str, PipelineSpec] = {spec.pipeline_cls.__name__: spec for spec in _SPECS.values()}
if len(_SPECS) != len(_CORE) + len(COVERAGE_PIPELINE_SPECS) or len(_BY_CLASS) != len(_SPECS):
    raise RuntimeError("two tiny pipelines share a key or a pipeline class")

#: The core tiny pipelines every effect's test suite runs on (one per family visattn began with, and SDXL).
TINY_PIPELINES: tuple[str, ...] = tuple(_CORE)

#: The core tiny pipelines whose family makes videos (:data:`visattn.families.VIDEO_FAMILIES`).
VIDEO_PIPELINES: tuple[str, ...] = tuple(key for key, spec in _CORE.items() if spec.family in VIDEO_FAMILIES)

#: The tiny pipelines of the other covered denoiser classes (:mod:`visattn.tiny.denoisers.pipelines`), each run
#: by ``tests/families/test_coverage_pipelines.py``.
COVERAGE_PIPELINES: tuple[str, ...] = tuple(spec.key for spec in COVERAGE_PIPELINE_SPECS)


def pipeline_spec(key: str) -> PipelineSpec:
    """The :class:`PipelineSpec` of ``key`` (a family key or a pipeline class name); ``ValueError`` listing
    :data:`TINY_PIPELINES` if unknown."""
    spec = _SPECS.get(key) or _BY_CLASS.get(key) if isinstance(key, str) else None
    if spec is None:
        raise ValueError(f"no tiny pipeline {key!r}; expected one of {TINY_PIPELINES}")
    return spec


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


def tiny_pipeline(key: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """The tiny pipeline ``key`` (see :data:`TINY_PIPELINES`): a full diffusers pipeline with tiny random
    weights and in-code tokenizers.

    Nothing is downloaded. The same ``seed`` always gives the same weights, and every component is seeded
    separately, so :func:`tiny_denoiser` with that seed returns an identical denoiser.
    """
    spec = pipeline_spec(key)
    components = {name: _seeded(factory, seed) for name, factory in spec.components().items()}
    if dtype != torch.float32:
        for component in components.values():
            if isinstance(component, torch.nn.Module):
                _cast(component, dtype)
    if issubclass(spec.pipeline_cls, ModularPipeline):
        # A modular pipeline is made from its blocks (a factory in pipeline_kwargs, so each pipeline gets its own)
        # and then given its components.
        kwargs = {name: value() if name == "blocks" else value for name, value in spec.pipeline_kwargs.items()}
        pipe = spec.pipeline_cls(**kwargs)
        pipe.update_components(**components)
    else:
        pipe = spec.pipeline_cls(**components, **spec.pipeline_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_denoiser(key: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Just the UNet/transformer that :func:`tiny_pipeline` builds for ``key`` with ``seed``."""
    spec = pipeline_spec(key)
    denoiser = _seeded(spec.components()[spec.denoiser], seed)
    if dtype != torch.float32:
        _cast(denoiser, dtype)
    return denoiser


def denoiser_of(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The UNet or transformer of a pipeline."""
    for name in ("transformer", "unet", "prior"):
        denoiser = getattr(pipe, name, None)
        if denoiser is not None:
            return denoiser
    raise ValueError(f"{type(pipe).__name__} has neither a transformer nor a unet")


def call_kwargs(key: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast (well under 2 s on 2 CPU cores), deterministic call of tiny pipeline ``key``.

    Two steps at 32x32 (9 frames for video), CFG on where the pipeline does CFG through ``guidance_scale``,
    a fresh ``torch.Generator`` seeded with 0, ``output_type="np"`` and a 16-token text length where the
    pipeline accepts ``max_sequence_length``. ``overrides`` replace keys.
    """
    kwargs = pipeline_spec(key).call_defaults()
    kwargs["generator"] = torch.Generator().manual_seed(0)
    kwargs.update(overrides)
    return kwargs


def latent_grid(key: str, kwargs: Mapping[str, Any] | None = None) -> Grid:
    """The denoiser's token grid ``(frames, height, width)`` after patchify for a call with ``kwargs``.

    Images have ``frames == 1``; for the UNet families the grid is the latent at the top (full-resolution)
    level. Missing keys (height, width, num_frames) fall back to :func:`call_kwargs`'s values.
    """
    spec = pipeline_spec(key)
    if spec.grid is None:
        raise ValueError(f"the tiny pipeline {key!r} declares no grid function")
    return spec.grid({**spec.call_defaults(), **(kwargs or {})})
