"""What a running diffusers pipeline applies around its denoiser calls: the CFG arithmetic, read per call.

Pipelines combine predictions themselves (``eps = eps_u + g * (eps_c - eps_u)`` with CFG), and how they do it
is a per-pipeline fact visattn needs (perturbation guidance folds its terms into the conditional prediction
through ``g``, see :mod:`visattn.guidance.arithmetic`). ``g`` is the scale the pipeline applies *to this denoiser
call's conditional prediction*, which is not always an attribute. :func:`pipeline_guidance_scale` knows, per
diffusers pipeline family:

* SD, SDXL, SD3, PixArt, CogVideoX batch ``[uncond, cond]`` and apply ``guidance_scale`` (PixArt keeps it in a
  local variable; CogVideoX with ``use_dynamic_cfg`` recomputes it every step *after* the denoiser call, from the
  step's timestep, so the value in ``pipe._guidance_scale`` during the call is the previous step's).
* Wan 2.1 / 2.2 call the denoiser once for ``"cond"`` and once for ``"uncond"`` and apply
  ``current_guidance_scale``: ``guidance_scale`` on ``transformer`` (high noise, ``t >= boundary``) and
  ``guidance_scale_2`` on ``transformer_2`` (low noise), and only when ``guidance_scale > 1``.
* Modular pipelines (``ModularPipeline``) guide through a diffusers guider, the component ``guider``
  (``ClassifierFreeGuidance``), which runs each branch as a separate call and knows per step whether it guides.
* Flux and HunyuanVideo are guidance-distilled: ``guidance_scale`` is an embedding input, not CFG, so with the
  default call the batch is one ``"cond"`` branch and the scale is 1. With ``true_cfg_scale > 1`` and a negative
  prompt they run a separate ``"uncond"`` call and apply ``true_cfg_scale``, which is a local variable of
  ``__call__``.

Values that live only in ``__call__``'s locals are read from the running pipeline's frame (found on the call
stack: the frame of ``__call__`` whose ``self`` is the attached pipeline). That stack walk is private to this
module; the rest of the package asks the questions below. Without such a frame (a denoiser called by hand with a
pipeline attached) the pipeline's attributes are used.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


class _DenoiserCallLocals(threading.local):
    """On each thread: the denoiser call running there (a number per call; 0: none), and the pipeline locals read
    during it, by pipeline."""

    call: int = 0

    def __init__(self) -> None:
        self.read: dict[int, tuple[int, dict[str, Any]]] = {}
        # The calls the running ones are nested in (0: none).
        self.outer: list[int] = []


_CALLS = itertools.count(1)
_RUNNING = _DenoiserCallLocals()


class _DenoiserCallScope:
    """While one denoiser call runs (the denoiser hook enters :data:`denoiser_call_locals`), the running pipeline's
    ``__call__`` locals are read once (:func:`_call_locals` keeps them until the call ends): its loop does not move
    during the call, and reading them walks the stack and gathers every local, several times a call otherwise.
    Calls nest (a denoiser called inside another's forward): each thread keeps the numbers of the calls it entered."""

    def __enter__(self) -> None:
        running = _RUNNING
        running.outer.append(running.call)
        running.call = next(_CALLS)

    def __exit__(self, *exc) -> None:
        running = _RUNNING
        outer = running.call = running.outer.pop()
        if not outer:
            running.read.clear()


#: entered by the denoiser hook around each denoiser call (one object: entering it keeps its state per thread)
denoiser_call_locals = _DenoiserCallScope()


def _call_locals(pipeline: Any) -> dict[str, Any]:
    """The local variables of the pipeline's running ``__call__`` (empty when it is not on the call stack), read
    once per denoiser call (see :class:`denoiser_call_locals`).

    Some pipelines keep what they apply per call (PixArt's CFG switch, Wan 2.2's current guidance scale,
    CogVideoX's dynamic scale, the prompt) in locals of ``__call__`` rather than attributes; this reads them.
    """
    if pipeline is None:
        return {}
    call = _RUNNING.call
    if call:
        read = _RUNNING.read.get(id(pipeline))
        if read is not None and read[0] == call:
            return read[1]
    local = _read_call_locals(pipeline)
    if call:
        _RUNNING.read[id(pipeline)] = (call, local)
    return local


@torch.compiler.disable  # frame inspection is plain Python bookkeeping; never trace it into a compiled graph
def _read_call_locals(pipeline: Any) -> dict[str, Any]:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        # Only frames of a __call__ with a ``self`` are materialized; f_locals of other frames is never read.
        if code.co_name == "__call__" and "self" in code.co_varnames:
            local = frame.f_locals
            if local.get("self") is pipeline:
                # The frame's own mapping, read (not copied): the pipeline's loop does not move while one of its
                # denoiser calls runs, and _call_locals forgets it when the call ends.
                return local
        frame = frame.f_back
    return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return None


def _dynamic_cfg_scale(local: dict[str, Any]) -> float | None:
    """CogVideoX's ``use_dynamic_cfg`` scale for the step being denoised (the pipeline's own formula)."""
    base, steps, t = _number(local.get("guidance_scale")), _number(local.get("num_inference_steps")), local.get("t")
    t = _number(t)
    if base is None or not steps or t is None:
        return None
    return 1.0 + base * ((1.0 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2.0)


def _batched_cfg_scale(pipeline: Any, local: dict[str, Any]) -> float:
    """The scale of a pipeline that batches ``[uncond, cond]`` in one call."""
    if local.get("use_dynamic_cfg"):
        dynamic = _dynamic_cfg_scale(local)
        if dynamic is not None:
            return dynamic
    for value in (getattr(pipeline, "_guidance_scale", None), local.get("guidance_scale")):
        number = _number(value)
        if number is not None:
            return number
    number = _number(getattr(pipeline, "guidance_scale", None))
    return 1.0 if number is None else number


def _stage_scale_from_attributes(pipeline: Any, timestep: float | None) -> float:
    """Wan 2.2 without a frame: ``guidance_scale_2`` below the boundary timestep, ``guidance_scale`` above."""
    scale = _number(getattr(pipeline, "_guidance_scale", None))
    scale_2 = _number(getattr(pipeline, "_guidance_scale_2", None))
    ratio = getattr(getattr(pipeline, "config", None), "boundary_ratio", None)
    scheduler = getattr(pipeline, "scheduler", None)
    train_steps = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if scale_2 is not None and ratio is not None and train_steps and timestep is not None:
        if timestep < ratio * train_steps:
            return scale_2
    return 1.0 if scale is None else scale


def _guider_scale(guider: Any) -> float | None:
    """The weight a diffusers guider (``pipe.guider``, e.g. ``ClassifierFreeGuidance``) gives the conditional
    prediction: ``g`` for ``u + g * (c - u)``, ``1 + g`` for its original formulation ``c + g * (c - u)``; ``None``
    when the pipeline has no guider or it is off."""
    scale = _number(getattr(guider, "guidance_scale", None))
    if scale is None or not getattr(guider, "_enabled", True):
        return None
    # ClassifierFreeGuidance knows per step whether it guides (off outside its start/stop range, or at a scale
    # that changes nothing): then it returns the conditional prediction as is.
    step_enabled = getattr(guider, "_is_cfg_enabled", None)
    if callable(step_enabled) and not step_enabled():
        return None
    return scale + 1.0 if getattr(guider, "use_original_formulation", False) else scale


def pipeline_guider_call(pipeline: Any, step_index: int | None = None) -> tuple[tuple, str] | None:
    """Which prediction the pipeline's diffusers guider is computing with this denoiser call: ``(position, name)``
    with ``name`` ``"pred_cond"``, ``"pred_uncond"``, a guider's ``"pred_cond_skip"``, ..., or ``None`` when it has
    no guider or none has prepared a batch this step.

    Modular pipelines run one denoiser call per batch the guider prepared, in the order of its
    ``_input_predictions``, and call ``guider.prepare_models`` before each (which counts them from 1 per step); they
    name no ``cache_context``, so the guider's count is what says which branch a call is. A call outside the
    guider's loop (Wan-Animate 2's KV-cache "extract" pass) finds the count where the last batch left it: a guider
    on another step than ``step_index`` (the call's step, when known) is not guiding this call, and ``position``
    (guider, step, timestep, count) tells the caller when the guider has not moved since its last call.
    """
    guider = getattr(pipeline, "guider", None) if pipeline is not None else None
    predictions = getattr(guider, "_input_predictions", None)
    count = getattr(guider, "_count_prepared", None)
    if not predictions or not isinstance(count, int) or not 1 <= count <= len(predictions):
        return None
    step = getattr(guider, "_step", None)
    if step_index is not None and isinstance(step, int) and step != step_index:
        return None
    position = (id(guider), step, id(getattr(guider, "_timestep", None)), count)
    return position, predictions[count - 1]


def _per_call_cfg_scale(pipeline: Any, local: dict[str, Any], timestep: float | None) -> float | None:
    """The scale ``g`` of a pipeline that runs its ``"cond"`` and ``"uncond"`` predictions as separate calls, or
    ``None`` when it does not guide."""
    if "do_true_cfg" in local:
        # Flux, HunyuanVideo (and their relatives): distilled guidance unless true CFG is on.
        return float(local["true_cfg_scale"]) if local["do_true_cfg"] else None
    do_cfg = getattr(type(pipeline), "do_classifier_free_guidance", None)
    if not isinstance(do_cfg, property):
        return None
    try:
        if not pipeline.do_classifier_free_guidance:
            return None
    except (AttributeError, TypeError):
        return None
    current = _number(local.get("current_guidance_scale"))
    if current is not None:
        return current
    return _stage_scale_from_attributes(pipeline, timestep)


def pipeline_guidance_scale(
    pipeline: Any, batch_names: Sequence[str], timestep: float | None = None, formula: str = "uncond_plus"
) -> float:
    """The CFG scale the pipeline applies to this call's conditional prediction (1 when it applies none).

    Args:
        pipeline: the attached diffusers pipeline, or ``None`` for a bare denoiser (scale 1).
        batch_names: branch names of the call's batch layout as the pipeline made it (``("uncond", "cond")``
            for batched CFG, ``("cond",)`` for a separate conditional call).
        timestep: the scheduler timestep of the call (used for Wan 2.2's two stages when no frame is found).
        formula: the family's :attr:`visattn.families.Family.cfg_formula`; ``"cond_plus"`` pipelines weigh the
            conditional prediction by ``1 + g``, which is what this returns for them while they guide.
    """
    if pipeline is None:
        return 1.0
    names = tuple(batch_names)
    local = _call_locals(pipeline)
    if "uncond" in names and "cond" in names:
        scale = _batched_cfg_scale(pipeline, local)
        return scale + 1.0 if formula == "cond_plus" else scale
    if names == ("cond",):
        guided = _guider_scale(getattr(pipeline, "guider", None))
        if guided is not None:
            return guided  # the guider's own formulation decides the weight
        scale = _per_call_cfg_scale(pipeline, local, timestep)
        if scale is None:
            return 1.0
        return scale + 1.0 if formula == "cond_plus" else scale
    return 1.0


def pipeline_decided_cfg(pipeline: Any) -> bool | None:
    """What the running ``__call__`` decided about classifier-free guidance (its ``do_classifier_free_guidance``
    local), or ``None`` when it keeps no such local or is not running."""
    decided = _call_locals(pipeline).get("do_classifier_free_guidance")
    return decided if isinstance(decided, bool) else None


@dataclass(frozen=True)
class CallPrompt:
    """The prompt arguments of the running pipeline call."""

    prompt: Any = None
    prompt_template: Any = None
    max_sequence_length: int | None = None


def pipeline_call_prompt(pipeline: Any) -> CallPrompt:
    """The prompt (and HunyuanVideo's ``prompt_template`` and ``max_sequence_length``) the running pipeline call
    was given; empty when it runs with ``prompt_embeds`` or is not running."""
    local = _call_locals(pipeline)
    # A modular pipeline's __call__(state=None, output=None, **kwargs) keeps the call's inputs in ``kwargs``.
    if "prompt" not in local and isinstance(local.get("kwargs"), dict):
        local = local["kwargs"]
    return CallPrompt(local.get("prompt"), local.get("prompt_template"), local.get("max_sequence_length"))


def pipeline_call_variables_set(pipeline: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``names``, inputs or locals of the running pipeline call, are set: not ``None`` nor ``False``, nor a
    list of nothing set (OmniGen wraps a missing ``input_images`` as ``[None]`` for a single prompt); none when it is
    not running."""
    if not names:
        return ()
    local = _call_locals(pipeline)
    if isinstance(local.get("kwargs"), dict):  # a modular pipeline's __call__(state=None, output=None, **kwargs)
        local = {**local, **local["kwargs"]}
    return tuple(name for name in names if _set(local.get(name)))


def _set(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_set(item) for item in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0  # FLUX.2's caption_upsample_temperature=0 upsamples nothing
    return value is not None and value is not False


def pipeline_blocks_named(pipeline: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``names`` are steps of a modular pipeline's blocks (``pipeline.blocks.sub_blocks``, at any depth);
    none for a pipeline without blocks."""
    if not names:
        return ()
    found: set[str] = set()
    pending = [getattr(pipeline, "blocks", None)]
    while pending:
        blocks = pending.pop()
        sub_blocks = getattr(blocks, "sub_blocks", None)
        if not isinstance(sub_blocks, dict):
            continue
        for name, block in sub_blocks.items():
            if name in names:
                found.add(name)
            pending.append(block)
    return tuple(name for name in names if name in found)
