"""Per-denoiser-call state, read by a diffusers model hook before every forward of the denoiser.

The hook (registered with diffusers' :class:`~diffusers.hooks.HookRegistry`, removable like any diffusers hook)
reads the latent grid, the timestep and the text length with the family adapter, and the branch name that
pipelines announce through ``model.cache_context("cond" | "uncond" | "cond_uncond")``. From the pipeline's
scheduler it derives the step index; from the pipeline's guidance settings, the batch layout.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from .context import BatchLayout, Branch, StepInfo
from .families import Family
from .families.base import DenoiserInputs

HOOK_NAME = "visattn"


class _NoState:
    """diffusers' StateManager needs a state class; visattn keeps its state on the hook itself."""

    def reset(self, *args, **kwargs) -> None:
        pass


@dataclass
class DenoiserState:
    """What the current denoiser call looks like; read by every attention call inside it."""

    family: Family
    inputs: DenoiserInputs | None = None
    step: StepInfo = StepInfo()
    batch: BatchLayout | None = None
    pipeline_ref: Any = None

    @property
    def pipeline(self) -> Any:
        """The attached pipeline (``None`` when a bare denoiser was attached)."""
        return self.pipeline_ref() if self.pipeline_ref is not None else None


class DenoiserHook(ModelHook):
    """Reads each denoiser call's inputs into a :class:`DenoiserState`, then lets effects wrap the call."""

    # Stateful so that diffusers hands it the pipeline's cache context (the branch name of the call).
    _is_stateful = True

    def __init__(self, family: Family, effects: list, pipeline: Any = None) -> None:
        super().__init__()
        pipeline_ref = weakref.ref(pipeline) if pipeline is not None else None
        self.state = DenoiserState(family, pipeline_ref=pipeline_ref)
        self.effects = effects
        self.cache = StateManager(_NoState)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.inputs, self.state.step, self.state.batch = None, StepInfo(), None
        return module

    @property
    def pipeline(self) -> Any:
        return self.state.pipeline

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        inputs = self.state.family.read_inputs(module, args, kwargs)
        self.state.inputs = inputs
        self.state.step = self._step_info(inputs.timestep)
        self.state.batch = self._batch_layout(inputs.batch_size)
        forward = self.fn_ref.original_forward
        for effect in reversed(self.effects):
            if effect.wraps_denoiser:
                forward = _bind_wrapper(effect, forward, self.state)
        return forward(*args, **kwargs)

    # --- derived facts -------------------------------------------------------------------------------------
    def _cache_context(self):
        return getattr(self.cache, "_context", None)

    def _step_info(self, timestep: float | None) -> StepInfo:
        context = self._cache_context()
        if context is not None and context.step_index is not None:
            return StepInfo(context.step_index, context.num_inference_steps, timestep)
        scheduler = getattr(self.pipeline, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if timestep is None or timesteps is None or len(timesteps) == 0:
            return StepInfo(None, None, timestep)
        scheduled = timesteps.detach().float().cpu()
        target = self.state.family.scheduler_timestep(timestep)
        index = int(torch.argmin((scheduled - target).abs()))
        return StepInfo(index, len(scheduled), timestep)

    def _batch_layout(self, batch_size: int) -> BatchLayout:
        context = self._cache_context()
        name = getattr(context, "name", None)
        if name in ("cond", "uncond"):
            return BatchLayout((Branch(name, 0, batch_size),))
        if batch_size % 2 == 0 and _pipeline_batches_cfg(self.pipeline, self.state.inputs.sample):
            # Pipelines that batch guidance concatenate the negative prompt first.
            return BatchLayout.split(batch_size, ("uncond", "cond"))
        return BatchLayout((Branch("cond", 0, batch_size),))


def _bind_wrapper(effect, forward, state):
    def wrapped(*args, **kwargs):
        return effect.wrap_denoiser(forward, args, kwargs, state)

    return wrapped


def _pipeline_batches_cfg(pipeline: Any, sample: torch.Tensor | None) -> bool:
    """Whether the running pipeline doubled this batch for classifier-free guidance.

    Pipelines say so through ``do_classifier_free_guidance`` or ``_guidance_scale``; the few that keep it in a
    local variable (PixArt) are recognized by their input, ``torch.cat([latents] * 2)``: two equal halves.
    """
    if pipeline is None:
        return False
    # What the running __call__ decided wins: CogVideoX's dynamic CFG can make ``_guidance_scale`` exactly 1.0
    # between steps while the pipeline still batches [uncond, cond].
    from .guidance_math import pipeline_call_locals

    decided = pipeline_call_locals(pipeline).get("do_classifier_free_guidance")
    if isinstance(decided, bool):
        return decided
    if isinstance(getattr(type(pipeline), "do_classifier_free_guidance", None), property):
        try:
            return bool(pipeline.do_classifier_free_guidance)
        except (AttributeError, TypeError):
            pass
    scale = getattr(pipeline, "_guidance_scale", None)
    if isinstance(scale, (int, float)):
        return scale > 1.0
    if sample is None or sample.shape[0] % 2:
        return False
    half = sample.shape[0] // 2
    return bool(torch.equal(sample[:half], sample[half:]))


def register_hook(model: torch.nn.Module, hook: DenoiserHook) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(hook, HOOK_NAME)
    if hasattr(registry, "invalidate_child_registries_cache"):
        # Newer diffusers caches which children carry hooks; a new hook must invalidate it.
        registry.invalidate_child_registries_cache()


def remove_hook(model: torch.nn.Module) -> None:
    registry = getattr(model, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
