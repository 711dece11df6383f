"""The description of one tiny model family: how to build its components, call it, and find its grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers import DiffusionPipeline

from visattn.testing.grids import Grid

#: A zero-argument builder for one pipeline component (model, tokenizer, scheduler, or ``None``).
ComponentFactory = Callable[[], Any]


@dataclass(frozen=True)
class FamilySpec:
    """Everything :mod:`visattn.testing.pipelines` needs to know about one family.

    Attributes:
        name: The family key, e.g. ``"sd"``.
        pipeline_cls: The diffusers pipeline class to assemble.
        denoiser: The component name of the UNet/transformer (``"unet"`` or ``"transformer"``).
        components: Returns a fresh name -> factory mapping; every factory runs under its own
            ``torch.manual_seed`` so that a component's weights do not depend on the others.
        call_defaults: Keyword arguments (minus the generator) for a fast pipeline call.
        grid: Maps full call kwargs to the denoiser's token grid ``(frames, height, width)``.
        pipeline_kwargs: Extra non-component constructor arguments (e.g. SD's safety-checker flag).
    """

    name: str
    pipeline_cls: type[DiffusionPipeline]
    denoiser: str
    components: Callable[[], Mapping[str, ComponentFactory]]
    call_defaults: Callable[[], dict[str, Any]]
    grid: Callable[[Mapping[str, Any]], Grid]
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)
