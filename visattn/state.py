"""Per-denoiser-call state, read by a diffusers model hook before every forward of the denoiser.

The hook (registered with diffusers' :class:`~diffusers.hooks.HookRegistry`, removable like any diffusers hook)
reads the latent grid, the timestep and the text length with the family adapter, and the branch name that
pipelines announce through ``model.cache_context("cond" | "uncond" | "cond_uncond")``. From the pipeline's
scheduler it derives the step index; from the pipeline's guidance settings, the batch layout.
"""

from __future__ import annotations

import functools
import itertools
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from .context import BatchLayout, DenoiserCall, StepInfo
from .families import Family
from .families.base import DenoiserInputs, Schedule, noisiest_timestep
from .families.pipelines import denoiser_call_locals, pipeline_guider_call
from .interception import SDPA_ROUTE
from .kernels.core import backend_variable
from .parallel import check_model, unsplit_inputs
from .steps import in_steps

HOOK_NAME = "visattn"
#: the small stateful hook that receives the pipeline's cache context for the denoiser hook (see _BranchContextHook)
CONTEXT_HOOK_NAME = "visattn.branch_context"
#: plan epochs (DenoiserState.plan_epoch), never given twice: a layer's plans keyed by a forgotten one stay unused
_PLAN_EPOCHS = itertools.count()
_PLAN_EPOCHS_KEPT = 256
# Timesteps taken from the scheduler whose check waits for the device (see DenoiserHook._check_later): beyond this
# many, the oldest is waited for.
_UNCHECKED_KEPT = 16


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
    #: guidance terms nested perturbation effects hand to the outermost one within this denoiser call
    guidance_terms: list | None = None
    #: the running call predicts nothing (:attr:`visattn.families.Family.auxiliary_calls`): no effect acts in it
    auxiliary: bool = False
    #: the effects' :meth:`~visattn.effects.Effect.row_plan_key` at this call's step (``None`` outside a denoiser
    #: call): a layer's hook reuses the row plans it made while it stays the same
    row_plan_key: tuple | None = None
    #: a number for what a layer's row plans depend on in this call beside its own shapes (the batch layout,
    #: :attr:`row_plan_key`, the inputs' grid, text length and other tokens): calls with equal facts get the same
    #: number, so a layer keys its plans by it instead of by the facts (``None``: no effect plans rows)
    plan_epoch: int | None = None
    #: what each effect of the attachment keeps while attached (:meth:`visattn.effects.Effect.new_run`), by
    #: ``id(effect)``; one mapping shared by every denoiser of the attachment (Wan 2.2's two transformers)
    runs: dict[int, Any] = field(default_factory=dict)
    #: whether the running denoiser call holds ``F.scaled_dot_product_attention`` routed for its whole forward
    #: (:data:`visattn.interception.SDPA_ROUTE`), so that its layers need not route it call by call
    holds_route: bool = False

    #: the denoiser call whose facts :attr:`call` reads when first asked (``None``: none pending)
    _pending_call: tuple | None = field(default=None, repr=False)
    _call: DenoiserCall | None = field(default=None, repr=False)

    @property
    def pipeline(self) -> Any:
        """The attached pipeline (``None`` when a bare denoiser was attached)."""
        return self.pipeline_ref() if self.pipeline_ref is not None else None

    @property
    def call(self) -> DenoiserCall | None:
        """The facts of the running denoiser call, as attention calls see them (:attr:`CallContext.denoiser`);
        ``None`` outside a call in which effects act.

        Made when first asked within the call (the denoiser hook leaves it pending): reading the prompt and the CFG
        scale walks to the pipeline's ``__call__`` frame, which a call whose layers answer from plans they already
        made never needs. A context made during the call holds the object made then, so it keeps the values read
        while the pipeline's frame was there."""
        pending = self._pending_call
        if pending is not None:
            self._pending_call = None
            self._call = DenoiserCall(*pending)
        return self._call

    @call.setter
    def call(self, value: DenoiserCall | None) -> None:
        self._pending_call = None
        self._call = value


class DenoiserHook(ModelHook):
    """Reads each denoiser call's inputs into a :class:`DenoiserState`, then lets effects wrap the call.

    The pipeline's cache context (the branch name of the call) reaches it through :class:`_BranchContextHook`, which
    shares its :attr:`cache`; this hook is not stateful itself (see there why)."""

    def __init__(
        self, family: Family, effects: list, pipeline: Any = None, steps=None, runs: dict[int, Any] | None = None
    ) -> None:
        super().__init__()
        #: the attachment's step window (``attach(steps=...)``): outside it no effect acts, nor wraps the call
        self.steps = steps
        # The scheduler's timesteps tensor last read (held, so its identity cannot pass to another tensor), its
        # version and data pointer; their float CPU copy and its length.
        self._schedule_of: tuple[torch.Tensor, int, int] | None = None
        self._schedule: torch.Tensor | None = None
        self._schedule_length = 0
        self._schedule_values: list[float] | None = None
        # The timesteps last read with their values (for reading the model's timestep without a device sync).
        self._schedule_view: Schedule | None = None
        self._step_indices: dict[float, int] = {}
        # The step of each timestep the model was called with, found in the schedule above.
        self._step_infos: dict[float, StepInfo] = {}
        # Whether the step the running scheduler takes next (its step_index) stands for the call's timestep where
        # reading it would wait for the device; False once a check found the model called at another step.
        self._steps_from_scheduler = True
        # Timesteps taken from the scheduler, not read (the read would wait for the device), to check once the
        # device is done: (the call's noisiest timestep, on the host or being copied there; the copy's event or None;
        # the timestep taken; the schedule).
        self._unchecked: list[tuple[torch.Tensor, Any, float, Schedule]] = []
        pipeline_ref = weakref.ref(pipeline) if pipeline is not None else None
        self.state = DenoiserState(family, pipeline_ref=pipeline_ref, runs={} if runs is None else runs)
        self.effects = effects
        # The effects whose row plans depend on the step (see DenoiserState.row_plan_key), and their keys per step
        # where every one of them is frozen (its key is a function of the step alone).
        self._row_planners = [effect for effect in effects if effect.plans_rows]
        self._row_keys: dict[tuple, tuple] | None = (
            {} if all(type(effect).frozen_parameters for effect in self._row_planners) else None
        )
        # The effects that wrap the denoiser's forward, the outermost (the first attached) first, and those that read
        # its call's facts before it runs.
        self._denoiser_wrappers = [effect for effect in effects if effect.wraps_denoiser]
        self._denoiser_readers = [effect for effect in effects if effect.reads_denoiser_call]
        #: whether the denoiser's forward holds SDPA routed (set by the attachment: most of its attention modules
        #: carry a layer hook, so routing once per denoiser call costs less than once per layer call)
        self.holds_route = False
        # The plan epochs given out (DenoiserState.plan_epoch), by the facts they stand for.
        self._plan_epochs: dict[tuple, int] = {}
        self.cache = StateManager(_NoState)
        # The timestep of the last conditional call of a pipeline that runs one call per CFG branch.
        self._previous_timestep: float | None = None
        # Where the pipeline's guider stood at the last call it named (see pipeline_guider_call).
        self._guider_position: tuple | None = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.inputs, self.state.step, self.state.batch = None, StepInfo(), None
        self.state.call, self.state.guidance_terms, self.state.row_plan_key = None, None, None
        self.state.plan_epoch = None
        self._previous_timestep = None
        self._guider_position = None
        return module

    @property
    def pipeline(self) -> Any:
        return self.state.pipeline

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        forward = self.fn_ref.original_forward
        if not self.effects:
            return forward(*args, **kwargs)  # nothing reads the call's state
        if self.state.family.is_auxiliary(kwargs):
            # A call that predicts nothing (a cache-filling pass): stock, with every layer hook standing aside.
            self.state.auxiliary = True
            try:
                return forward(*args, **kwargs)
            finally:
                self.state.auxiliary = False
        with denoiser_call_locals:
            return self._call(module, forward, args, kwargs)

    def _call(self, module: torch.nn.Module, forward, args: tuple, kwargs: dict) -> Any:
        family = self.state.family
        if self._unchecked:
            self._check_timesteps()
        if family.reordered_grid is not None and family.reordered_grid.asked_by_call(args, kwargs):
            needing = next((effect for effect in self.effects if "grid" in effect.needs()), None)
            if needing is not None:
                raise ValueError(family.reordered_grid.refusal(type(needing).__name__, module, family.name, False))
        schedule, scheduler_step = self._current_schedule()
        if getattr(module, "_parallel_config", None) is None:
            # Not split across ranks (diffusers' enable_parallelism sets this): the common case, read directly.
            inputs = family.read_inputs(module, args, kwargs, schedule, scheduler_step)
        else:
            # Attached before enable_parallelism, this hook runs inside diffusers' input split: read the whole inputs.
            seen_args, seen_kwargs = unsplit_inputs(module, HOOK_NAME, args, kwargs)
            inputs = family.read_inputs(module, seen_args, seen_kwargs, schedule, scheduler_step)
            text_names = family.text.names if family.text else ()
            check_model(module, inputs.grid, inputs.text_length, text_names, self.effects, (seen_args, seen_kwargs))
        if inputs.unread_timestep is not None:
            self._check_later(inputs.unread_timestep, inputs.timestep, schedule)
        self.state.inputs = inputs
        step = self.state.step = self._step_info(inputs.timestep, schedule)
        self.state.batch = self._batch_layout(inputs.batch_size)
        if self._row_planners:
            row_keys = self._row_keys
            if row_keys is None:
                row_key = tuple(effect.row_plan_key(step) for effect in self._row_planners)
            else:
                step_key = (step.index, step.total, step.timestep)
                row_key = row_keys.get(step_key)
                if row_key is None:
                    if len(row_keys) >= _PLAN_EPOCHS_KEPT:
                        row_keys.clear()
                    row_key = row_keys[step_key] = tuple(effect.row_plan_key(step) for effect in self._row_planners)
            self.state.row_plan_key = row_key
            # VISATTN_BACKEND too: where a backend is forced for effects, layers plan no stock answers (see
            # AttentionLayerHook.backend_forced), so setting it between calls must plan them again.
            env_backend = backend_variable()
            facts = (self.state.batch.key, row_key, inputs.grid, inputs.text_length, inputs.other, env_backend)
            epoch = self._plan_epochs.get(facts)
            if epoch is None:
                if len(self._plan_epochs) >= _PLAN_EPOCHS_KEPT:
                    self._plan_epochs.clear()
                epoch = self._plan_epochs[facts] = next(_PLAN_EPOCHS)
            self.state.plan_epoch = epoch
        if self.steps is not None and not in_steps(self.steps, step.fraction):
            # The attachment's window is closed at this step: no effect acts, so none adds branches either.
            self.state.call = None
            return forward(*args, **kwargs)
        # Only where effects may act, and only once asked (it walks to the pipeline's __call__ for the prompt and CFG
        # scale): see DenoiserState.call.
        state = self.state
        state._call, state._pending_call = None, (family, inputs, state.batch, state.step, state.pipeline_ref)
        wrappers = self._denoiser_wrappers
        if len(wrappers) > 1:
            for effect in wrappers[:0:-1]:
                forward = _bind_wrapper(effect, forward, state)
        # Not under another TorchFunctionMode nor torch.compile's tracing: layers there take a mode (see
        # AttentionLayerHook._run_routed), and a swapped module attribute would be baked into a compiled graph.
        hold = (
            self.holds_route
            and not state.holds_route
            and not torch._C._len_torch_function_stack()
            and not torch.compiler.is_compiling()
        )
        if hold:
            SDPA_ROUTE.__enter__()
            state.holds_route = True
        try:
            for effect in self._denoiser_readers:
                effect.read_denoiser_call(state)
            if wrappers:
                # The outermost wrapper called directly (the others, if any, bound around the forward above).
                return wrappers[0].wrap_denoiser(forward, args, kwargs, state)
            return forward(*args, **kwargs)
        except BaseException:
            # A call that raised (an effect refusing it) ends its pipeline call: its timestep must not make the next
            # pipeline call's first call look like an unconditional one (separate CFG pairs calls by timestep).
            self._previous_timestep = None
            raise
        finally:
            # Asked after the call, it would read the pipeline's locals where its frame has moved on (or ended).
            state._pending_call = None
            if hold:
                state.holds_route = False
                SDPA_ROUTE.__exit__()

    # --- derived facts -------------------------------------------------------------------------------------
    def _cache_context(self):
        return getattr(self.cache, "_context", None)

    def _current_schedule(self) -> tuple[Schedule | None, int | None]:
        """The running scheduler's timesteps and their values (read to the host once per schedule), ``None`` where
        the pipeline has no scheduler with a timesteps tensor; and the step it takes next, ``None`` where it does not
        say (before its first step) or a check found the model called at another step."""
        scheduler = getattr(self.pipeline, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor):
            return None, None
        self._scheduled(timesteps)
        if not self._schedule_length:
            return None, None
        step = None
        if self._steps_from_scheduler:
            # diffusers' schedulers step from timesteps[step_index] (None before their first step; set_timesteps
            # clears it): the step a denoiser call made for that step is at, known without reading its timestep.
            step = getattr(scheduler, "step_index", None)
            if type(step) is not int or not 0 <= step < self._schedule_length:
                step = None
        return self._schedule_view, step

    def _check_later(self, timestep: torch.Tensor, taken: float, schedule: Schedule) -> None:
        """Check that a call whose timestep was taken from its scheduler (``taken``) was made at that step, without
        waiting for the device: its noisiest timestep is copied to the host behind the call's work and compared
        once the copy is done (at a later call)."""
        noisiest = noisiest_timestep(timestep, self.state.family.timestep_reversed).detach()
        event = None
        if noisiest.is_cuda:
            host = torch.empty((), dtype=noisiest.dtype, pin_memory=True)
            host.copy_(noisiest, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(noisiest.device))
            noisiest = host
        self._unchecked.append((noisiest, event, taken, schedule))
        self._check_timesteps()

    def _check_timesteps(self) -> None:
        """Compare the timesteps taken from the scheduler whose host copies are done with what the calls were made
        at; at the first that differs, warn and read every later call's timestep."""
        unchecked = self._unchecked
        family = self.state.family
        while unchecked:
            value, event, taken, schedule = unchecked[0]
            if event is not None and not event.query():
                if len(unchecked) <= _UNCHECKED_KEPT:
                    return
                event.synchronize()
            del unchecked[0]
            called = float(value)
            step_called = _nearest(schedule.values, family.scheduler_timestep(called))
            # A half-precision timestep rounds the step's (bf16 keeps 8 bits): nearer another step only by that much
            # is still this one.
            rounding = 4 * torch.finfo(value.dtype).eps * abs(taken) if value.dtype.is_floating_point else 0.0
            if (
                step_called != _nearest(schedule.values, family.scheduler_timestep(taken))
                and abs(called - taken) > rounding
            ):
                unchecked.clear()
                self._steps_from_scheduler = False
                warnings.warn(
                    f"visattn: the denoiser was called at timestep {called:g} where its scheduler's step_index says "
                    f"{taken:g}; visattn took the step of each call from the scheduler (reading the timestep waits "
                    "for the GPU), so effects with step windows may have acted at other steps since the last "
                    "matching call. It reads every call's timestep from now on.",
                    stacklevel=2,
                )
                return

    def _step_info(self, timestep: float | None, schedule: Schedule | None) -> StepInfo:
        context = self._cache_context()
        if context is not None and context.step_index is not None:
            return StepInfo(context.step_index, context.num_inference_steps, timestep)
        if timestep is None or schedule is None:
            return StepInfo(None, None, timestep)
        scheduled = self._schedule
        info = self._step_infos.get(timestep)
        if info is not None:
            return info  # this schedule's step at this timestep, found before
        target = self.state.family.scheduler_timestep(timestep)
        index = self._step_indices.get(target)
        if index is None:
            # Read as torch reads it (float32 differences, the first of equal ones), once per timestep and schedule;
            # a timestep the schedule holds exactly needs no read.
            index = self._step_indices[target] = int(torch.argmin((scheduled - target).abs()))
        info = self._step_infos[timestep] = StepInfo(index, self._schedule_length, timestep)
        return info

    def _scheduled(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The scheduler's timesteps as a float CPU tensor, copied once per schedule (not once per call); the step
        index of each timestep looked up in it is kept with it."""
        held = self._schedule_of
        if held is None or held[0] is not timesteps or held[1] != timesteps._version or held[2] != timesteps.data_ptr():
            self._schedule_of = (timesteps, timesteps._version, timesteps.data_ptr())
            values = timesteps.tolist()
            self._schedule_view = Schedule(timesteps, values)
            if values != self._schedule_values:
                # A schedule of other values (the next generation's is usually the same, made again): look up again.
                self._schedule_values = values
                self._schedule = timesteps.detach().float().cpu()
                self._schedule_length = len(values)
                self._step_indices = {}
                self._step_infos = {}
                for index, value in enumerate(self._schedule.tolist()):
                    self._step_indices.setdefault(value, index)
        return self._schedule

    def _batch_layout(self, batch_size: int) -> BatchLayout:
        context = self._cache_context()
        name = getattr(context, "name", None)
        if name is None:
            # A modular pipeline names no cache context; its guider's count of prepared batches says the branch,
            # unless the guider has not moved since the last call (a call outside its loop).
            guided = pipeline_guider_call(self.pipeline, self.state.step.index)
            if guided is not None and guided[0] != self._guider_position:
                self._guider_position, name = guided
        timestep = self.state.inputs.timestep
        if name is not None and name != "cond_uncond":
            # A call the pipeline names (transformer.cache_context): diffusers' guiders say "pred_cond" and
            # "pred_uncond"; other names (LTX-2's "uncond_stg", a guider's "pred_cond_skip") are guidance passes of
            # their own, which effects that act on the conditional branch leave alone. "cond_uncond" is one
            # batched call of both branches (LTX), laid out below.
            return _layout(batch_size, (_BRANCH_NAMES.get(name, name),))
        cfg = self.state.family.cfg
        if cfg == "separate":
            if not _pipeline_batches_cfg(self.pipeline, None):
                return _layout(batch_size, ("cond",))
            # One call per branch, the conditional first: a second call at the same timestep is the unconditional.
            repeat = timestep is not None and timestep == self._previous_timestep
            self._previous_timestep = None if repeat else timestep
            return _layout(batch_size, ("uncond" if repeat else "cond",))
        if batch_size % 2 == 0 and _pipeline_batches_cfg(self.pipeline, self.state.inputs.sample):
            # Pipelines that batch guidance concatenate the negative prompt first (Z-Image: the positive first).
            order = ("cond", "uncond") if cfg == "batched_cond_first" else ("uncond", "cond")
            return _layout(batch_size, order)
        return _layout(batch_size, ("cond",))


#: cache-context names of the conditional and unconditional calls, as pipelines and diffusers' guiders name them
_BRANCH_NAMES = {"cond": "cond", "pred_cond": "cond", "uncond": "uncond", "pred_uncond": "uncond"}


def _nearest(values: list[float], value: float) -> float:
    """The element of ``values`` nearest to ``value``."""
    return min(values, key=lambda scheduled: abs(scheduled - value))


@functools.lru_cache(maxsize=256)
def _layout(batch_size: int, names: tuple[str, ...]) -> BatchLayout:
    """:meth:`BatchLayout.split`, made once per batch size and names (layouts are frozen: every denoiser call of a
    generation shares one, with its :attr:`~BatchLayout.key` worked out once)."""
    return BatchLayout.split(batch_size, names)


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
    from .families.pipelines import pipeline_decided_cfg

    decided = pipeline_decided_cfg(pipeline)
    if decided is not None:
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


class _BranchContextHook(ModelHook):
    """The stateful hook through which diffusers hands the denoiser hook the pipeline's cache context
    (``transformer.cache_context("cond")``: the branch name, the step), and resets it between pipeline calls.

    diffusers finds the StateManagers of every stateful hook under the model by looking through each such hook's
    attributes, at every entry and exit of a cache context (twice per denoiser call); this hook holds only the
    denoiser hook's StateManager, so that look stays a few steps long rather than one per attribute of the
    denoiser hook. It passes the forward on unchanged.
    """

    _is_stateful = True

    def __init__(self, denoiser_hook: DenoiserHook) -> None:
        super().__init__()
        self.cache = denoiser_hook.cache
        self._denoiser_hook = denoiser_hook

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return self._denoiser_hook.reset_state(module)


def register_hook(model: torch.nn.Module, hook: DenoiserHook) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(hook, HOOK_NAME)
    registry.register_hook(_BranchContextHook(hook), CONTEXT_HOOK_NAME)
    if hasattr(registry, "invalidate_child_registries_cache"):
        # Newer diffusers caches which children carry hooks; a new hook must invalidate it.
        registry.invalidate_child_registries_cache()


def remove_hook(model: torch.nn.Module) -> None:
    registry = getattr(model, "_diffusers_hook", None)
    if registry is None:
        return
    for name in (CONTEXT_HOOK_NAME, HOOK_NAME):
        if registry.get_hook(name) is not None:
            registry.remove_hook(name, recurse=False)
