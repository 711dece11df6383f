"""The description of one tiny pipeline: its family, how to build its components, call it, and find its grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers import DiffusionPipeline

from visattn.tiny.grids import Grid

#: A zero-argument builder for one pipeline component (model, tokenizer, scheduler, or ``None``).
ComponentFactory = Callable[[], Any]


@dataclass(frozen=True)
class PipelineSpec:
    """Everything :mod:`visattn.tiny.pipelines` needs to know about one tiny pipeline.

    Attributes:
        family: The key of the denoiser's family in :mod:`visattn.families` (the package's one vocabulary).
        pipeline_cls: The diffusers pipeline class to assemble.
        denoiser: The component name of the UNet/transformer (``"unet"`` or ``"transformer"``).
        components: Returns a fresh name -> factory mapping; every factory runs under its own
            ``torch.manual_seed`` so that a component's weights do not depend on the others.
        call_defaults: Keyword arguments (minus the generator) for a fast pipeline call.
        grid: Maps full call kwargs to the denoiser's token grid ``(frames, height, width)`` (``None``: not
            declared, as for the coverage pipelines, whose grid the coverage checks read from the denoiser).
        pipeline_kwargs: Extra non-component constructor arguments (e.g. SD's safety-checker flag).
        default: The family's default tiny pipeline, keyed by the family key; another pipeline of the family
            (SDXL beside SD for ``"unet"``) is keyed by its diffusers class name.
        per_prompt_inputs: call inputs the pipeline needs once per prompt when given a list of prompts
            (I2VGenXL's conditioning image), as a Prompt-to-Prompt call must pass them.
        one_prompt_per_call: why a call with several prompts is not a plain generation of each (aMUSEd's scheduler
            draws the whole batch's tokens from one generator), so Prompt-to-Prompt's source cannot be one: its
            check is skipped and AttentionMaps by words still runs; ``""``: several prompts are fine.
        words_call: call inputs overridden where words address the text (Prompt-to-Prompt and AttentionMaps by
            words), for pipelines whose default call builds its text another way: JoyImage-Edit's input image puts
            its tokens before the words (its family's ladder refuses such a call), so its words calls go without.
    """

    family: str
    pipeline_cls: type[DiffusionPipeline]
    denoiser: str
    components: Callable[[], Mapping[str, ComponentFactory]]
    call_defaults: Callable[[], dict[str, Any]]
    grid: Callable[[Mapping[str, Any]], Grid] | None = None
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)
    default: bool = True
    per_prompt_inputs: tuple[str, ...] = ()
    one_prompt_per_call: str = ""
    words_call: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """How :func:`visattn.tiny.tiny_pipeline` names this pipeline: the family key for the family's
        default pipeline, the diffusers pipeline class name otherwise."""
        return self.family if self.default else self.pipeline_cls.__name__
