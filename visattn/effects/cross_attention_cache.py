"""TGATE: compute cross-attention for the first steps only, then reuse its cached output.

Zhang, Liu et al., 2024, "Cross-Attention Makes Inference Cumbersome in Text-to-Image Diffusion Models" (T-GATE):
cross-attention outputs converge within the first denoising steps (the semantics-planning stage); in the
remaining, fidelity-improving steps they can be replaced by a cache without a visible loss, which removes the
cross-attention computation (q/k/v and output projections included) from most of the schedule.

What this effect does, following the authors' public code (HaozheLiu-ST/T-GATE, ``tgate/tgate_utils.py``:
``tgate_scheduler`` and ``tgate_processor``; ``tgate/SD.py``, ``tgate/SDXL.py``: the denoising loops):

* ``gate_step`` counts the steps that compute cross-attention: steps ``0 .. gate - 1`` run normally, the last of
  them (index ``gate - 1``) stores each layer's finished output, and every step from index ``gate`` on returns the
  stored output without projecting anything (the layer call is answered before ``q/k/v`` are formed, through the
  ``wrap_attention`` hook of :class:`~visattn.interception.AttentionLayerHook`).
* With ``average=True`` (TGATE's choice) the stored output of the classifier-free-guidance branches is the mean
  ``(out_uncond + out_cond) / 2``, used for both branches. Other branches (a perturbed twin added by PAG, ...)
  keep their own output. ``average=False`` keeps every branch's own output instead.
* Self-attention is cached too (``self_attention=True``, the authors' ``sa_kward``), on the authors' schedule:
  before the gate, steps ``< warm_up`` compute; step ``warm_up`` and every step that is a multiple of
  ``sp_interval`` compute and store each self-attention layer's output (every branch its own); the other steps
  reuse the stored output. At the gate's last computing step (``gate - 1``) both kinds are stored as the mean of
  the guidance branches. After the gate, steps that are a multiple of ``fi_interval`` (1: every step) compute and
  store, the others reuse. A step that should reuse but finds nothing stored computes.
* After the gate, the authors run the denoiser without CFG on the *negative* prompt only (``SD.py``,
  ``SDXL.py``: ``latent_model_input = latents``, ``prompt_embeds = negative_prompt_embeds``, and on SDXL
  ``added_cond_kwargs`` with the negative pooled embeddings and time ids), and take that prediction as the
  guided one. With ``single_branch=True`` the effect does the same in pipelines that batch CFG: it runs the
  unconditional rows only and hands the pipeline that prediction for both branches, so CFG yields it unchanged
  (other branches, such as a PAG twin, keep running). On SD 1.x/2.x and PixArt, whose branches then differ by
  the text alone, both branches would predict the same; on SDXL the unconditional pooled embeddings and time ids
  make it differ, as in the authors' code. Pipelines that call the denoiser once per branch (Wan; no authors'
  code) keep visattn's rule: the first reused step runs both calls and compares their predictions; only if they
  agree is the unconditional call answered with the conditional prediction from then on.

Joint-attention models (SD3, Flux, HunyuanVideo, CogVideoX) have no separate cross-attention: text and image
tokens share one attention. The effect acts on layers of role ``"cross"`` only (UNet, PixArt, Wan) and raises
a ValueError at attach time on a model that has none. Step indices are visattn's :class:`~visattn.StepInfo`
(one per denoiser evaluation of the pipeline's schedule), so attach the pipeline, not a bare denoiser: without a
known step the layers compute normally.

Caches are refilled at the gate step of every run and dropped when a step before the gate (or a step index lower
than the last one seen: a new run) arrives; a run or a second denoiser (Wan 2.2) that reaches the gate without a
cache computes the layer once and reuses that. ``clear()`` or detaching frees them. Each attachment of the effect
keeps its own caches and step counters (its run state, ``attachment.run_of(tgate)``), so one effect attached to
several pipelines acts as several independent copies.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..context import BatchLayout, Branch
from ..denoiser_batch import prediction_of, take_input_rows, with_prediction
from ..validation import check_bool
from .base import Effect

_GUIDANCE_BRANCHES = ("uncond", "cond")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def tgate_phase(index: int, gate: int, warm_up: int, sp_interval: int, fi_interval: int) -> tuple[str, str]:
    """What the cross- and self-attention layers do at step ``index`` with the gate at ``gate``: ``"compute"``,
    ``"store"`` (compute and keep the output) or ``"reuse"`` (the authors' ``tgate_scheduler``: ``cache`` and
    ``reuse`` flags; the stored outputs of the step ``gate - 1`` are branch means, see ``keep_shape=False``)."""
    if index < gate - 1:
        if index < warm_up:
            self_attention = "compute"
        elif index == warm_up or index % sp_interval == 0:
            self_attention = "store"
        else:
            self_attention = "reuse"
        return "compute", self_attention
    if index == gate - 1:
        return "store", "store"
    return "reuse", ("store" if index % fi_interval == 0 else "reuse")


class _Run:
    """What one TGATE effect learns and keeps in one attachment (:meth:`CrossAttentionCache.new_run`); keyed by
    denoiser state inside it, since the attachment's denoisers (Wan 2.2's two transformers) share layer names."""

    def __init__(self) -> None:
        #: the self-attention layers cached on the authors' schedule (those among the selected layers)
        self.self_layers: frozenset[str] = frozenset()
        # (id of the denoiser state, layer name) -> {branch name: finished output rows, "shape": input shape}
        self.caches: dict[tuple[int, str], dict[str, Any]] = {}
        # per denoiser state: last step seen (a smaller one starts a new run), and whether the guidance branches
        # were verified to give the same prediction once cross-attention is cached (None: not checked yet)
        self.last_step: dict[int, int] = {}
        self.redundant: dict[int, bool | None] = {}
        self.cond_prediction: dict[int, tuple[int, torch.Tensor, Any]] = {}

    def clear(self) -> None:
        self.caches.clear()
        self.last_step.clear()
        self.redundant.clear()
        self.cond_prediction.clear()

    def new_generation(self, state_id: int) -> None:
        for key in [key for key in self.caches if key[0] == state_id]:
            del self.caches[key]
        self.redundant.pop(state_id, None)
        self.cond_prediction.pop(state_id, None)


class CrossAttentionCache(Effect):
    """Cache each cross-attention layer's output at the gate step and reuse it afterwards (T-GATE), and cache
    self-attention on the authors' schedule.

    Args:
        gate_step: how many denoising steps compute cross-attention. An ``int >= 1`` is a step count
            (TGATE's ``gate_step``: 10 of 25 steps for SD in the paper); a ``float`` in ``(0, 1]`` is a fraction
            of the schedule, ``max(1, round(gate_step * num_steps))`` steps. A gate at or past the last step
            leaves cross-attention alone (self-attention caching still follows its schedule).
        layers: cross-attention layers to cache (diffusers' ``pag_applied_layers`` identifiers); ``None`` caches
            every cross-attention layer.
        average: store the mean over the classifier-free-guidance branches (TGATE); ``False`` stores each
            branch's own output.
        single_branch: after the gate, compute one guidance branch (see the module docstring: the authors'
            unconditional-only pass in batched pipelines); only with ``average=True``.
        self_attention: also cache the self-attention layers (among ``layers``) on the authors' schedule.
        sp_interval: self-attention store interval before the gate (the authors' 5), an int ``>= 1``.
        fi_interval: self-attention store interval after the gate (the authors' 1: computed every step).
        warm_up: steps that compute self-attention before the first store (the authors' 2), an int ``>= 0``;
            an integer ``gate_step`` must not come before it (``gate_step >= warm_up``).
        skip_uncond: former name of ``single_branch`` (overrides it when given).

    Raises:
        ValueError: a bad ``gate_step``, ``sp_interval``, ``fi_interval`` or ``warm_up`` (naming the parameter,
            the value and the range); at attach time, a model (or a ``layers`` selection) without
            cross-attention layers.
    """

    roles = ("cross",)
    frozen_parameters = True

    def needs(self) -> tuple[str, ...]:
        return ("text",)

    def __init__(
        self,
        gate_step: int | float = 10,
        layers: str | Iterable[str] | None = None,
        average: bool = True,
        single_branch: bool = True,
        *,
        self_attention: bool = True,
        sp_interval: int = 5,
        fi_interval: int = 1,
        warm_up: int = 2,
        skip_uncond: bool | None = None,
    ) -> None:
        super().__init__(layers=layers)
        if isinstance(gate_step, bool) or not isinstance(gate_step, (int, float)):
            raise ValueError(f"gate_step must be an int step count or a float fraction; got {gate_step!r}")
        if isinstance(gate_step, int) and gate_step < 1:
            raise ValueError(f"gate_step must be >= 1 when given as a step count; got {gate_step}")
        if isinstance(gate_step, float) and not 0.0 < gate_step <= 1.0:
            raise ValueError(f"gate_step must be in (0, 1] when given as a fraction; got {gate_step}")
        self.sp_interval = _check_int("sp_interval", sp_interval, 1)
        self.fi_interval = _check_int("fi_interval", fi_interval, 1)
        self.warm_up = _check_int("warm_up", warm_up, 0)
        if self_attention and isinstance(gate_step, int) and gate_step < warm_up:
            raise ValueError(
                f"gate_step={gate_step} comes before warm_up={warm_up}: the gate must be at or after the warm-up "
                "steps (gate_step >= warm_up; pass warm_up=0 for an early gate)"
            )
        self.gate_step = gate_step
        self.average = check_bool(average, "average")
        self.single_branch = (
            check_bool(single_branch, "single_branch")
            if skip_uncond is None
            else check_bool(skip_uncond, "skip_uncond")
        )
        self.self_attention = check_bool(self_attention, "self_attention")
        # Every attachment keeps its own caches (new_run), so one effect may serve several pipelines.
        self._runs: weakref.WeakSet[_Run] = weakref.WeakSet()

    @property
    def skip_uncond(self) -> bool:
        """Former name of :attr:`single_branch`."""
        return self.single_branch

    # --- schedule ------------------------------------------------------------------------------------------------
    def gate_index(self, num_steps: int | None) -> int | None:
        """The first step index that reuses the cache, for a schedule of ``num_steps`` (None if unknown)."""
        if isinstance(self.gate_step, int):
            return self.gate_step
        if not num_steps:
            return None
        return max(1, round(self.gate_step * num_steps))

    def _phase(self, state: Any) -> tuple[int | None, int | None]:
        step = state.step
        return step.index, self.gate_index(step.total)

    # --- attach time ---------------------------------------------------------------------------------------------
    def new_run(self) -> _Run:
        run = _Run()
        self._runs.add(run)
        return run

    def bind(self, roles) -> frozenset[str]:
        cross = {name for name, role in roles.items() if role == "cross"}
        if not cross:
            present = ", ".join(sorted(set(roles.values()))) or "none"
            raise ValueError(
                "CrossAttentionCache acts on cross-attention layers (UNet, PixArt, Wan); the attached layers have "
                f"none (their roles: {present}). Joint-attention models (SD3, Flux, HunyuanVideo, CogVideoX) mix "
                "text and image tokens in one attention and have no separate cross-attention to cache."
            )
        chosen = super().bind(roles)
        selected = frozenset(name for name in chosen if name in cross)
        if not selected:
            raise ValueError(
                f"CrossAttentionCache(layers={list(self.layers)}) selects no cross-attention layer; "
                f"cross-attention layers: {', '.join(sorted(cross))}"
            )
        # The authors hook every attention module: self-attention among the selected layers is cached as well.
        chosen_self = frozenset(name for name in chosen if roles[name] == "self" and self.self_attention)
        self.run_of(roles).self_layers = chosen_self
        return selected | chosen_self

    def detached(self, run: _Run) -> None:
        run.clear()

    def clear(self) -> None:
        """Forget every cached output, in every attachment of this effect (the next run computes and stores them
        again); ``attachment.run_of(tgate).clear()`` forgets one attachment's."""
        for run in list(self._runs):
            run.clear()

    # --- one attention layer call ----------------------------------------------------------------------------------
    def wrap_attention(self, call: Callable[[], Any], hidden_states: torch.Tensor, layer_name: str, state: Any) -> Any:
        """Answer an attention layer call from its cache, or compute it (and store it), as the schedule says."""
        # Called only by the hooks of the layers this cache was bound to.
        if state is None:
            return call()
        index, gate = self._phase(state)
        if index is None or gate is None:
            return call()
        run = self.run_of(state)
        key = (id(state), layer_name)
        cross, self_attention = tgate_phase(index, gate, self.warm_up, self.sp_interval, self.fi_interval)
        action = self_attention if layer_name in run.self_layers else cross
        if action == "compute":
            if layer_name not in run.self_layers:
                run.caches.pop(key, None)  # before the gate: a new run's cross-attention is never reused
            return call()
        layout = _layout_of(state, hidden_states.shape[0])
        if action == "reuse":
            cached = self._reuse(run, key, layout, hidden_states)
            if cached is not None:
                return cached
            if layer_name in run.self_layers:
                return call()  # the authors' processor: reuse without a cache computes, and stores nothing
        # A store step, or a run that reached the gate without a cross-attention cache for this layer (it started
        # late, or a second denoiser took over): compute, and store for the steps that follow.
        out = call()
        if isinstance(out, torch.Tensor):
            self._store(run, key, layout, hidden_states, out, averaged=self.average and index == gate - 1)
        return out

    def _store(
        self, run: _Run, key, layout: BatchLayout, hidden_states: torch.Tensor, out: torch.Tensor, averaged: bool
    ) -> None:
        entry = run.caches.setdefault(key, {})
        if entry.get("shape") != tuple(hidden_states.shape[1:]) or entry.get("averaged") != averaged:
            entry.clear()  # a new kind of entry (per branch before the gate, branch means at it)
        entry["shape"] = tuple(hidden_states.shape[1:])
        entry["averaged"] = averaged
        entry.pop("memo", None)
        for branch in layout.branches:
            entry[branch.name] = out[branch.start : branch.stop].detach()

    def _reuse(
        self, run: _Run, key: tuple[int, str], layout: BatchLayout, hidden_states: torch.Tensor
    ) -> torch.Tensor | None:
        entry = run.caches.get(key)
        if entry is None or entry.get("shape") != tuple(hidden_states.shape[1:]):
            return None
        memo = entry.get("memo")
        if memo is not None and memo[0] == layout:
            return memo[1]
        parts = []
        for branch in layout.branches:
            part = self._branch_output(entry, branch.name)
            if part is None or part.shape[0] != branch.size:
                return None
            parts.append(part)
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        entry["memo"] = (layout, out)
        return out

    def _branch_output(self, entry: dict[str, Any], name: str) -> torch.Tensor | None:
        if entry.get("averaged") and name in _GUIDANCE_BRANCHES:
            uncond, cond = entry.get("uncond"), entry.get("cond")
            if uncond is not None and cond is not None and uncond.shape == cond.shape:
                # TGATE (keep_shape=False at the gate): the mean of the two guidance branches serves both.
                return (uncond + cond) / 2
        return entry.get(name)

    # --- the denoiser call: drop the redundant unconditional branch after the gate ------------------------------
    def wrap_denoiser(self, forward, args, kwargs, state):
        state_id, run = id(state), self.run_of(state)
        index, gate = self._phase(state)
        if index is not None:
            last = run.last_step.get(state_id)
            if last is not None and index < last:
                run.new_generation(state_id)
            run.last_step[state_id] = index
        layout = state.batch
        if not (self.single_branch and self.average) or index is None or gate is None or index < gate or layout is None:
            return forward(*args, **kwargs)
        names = layout.names
        if "uncond" in names and "cond" in names:
            return self._batched_guidance(forward, args, kwargs, state, layout)
        if names in (("cond",), ("uncond",)):
            return self._per_branch_guidance(forward, args, kwargs, state, names[0], index)
        return forward(*args, **kwargs)

    def _batched_guidance(self, forward, args, kwargs, state, layout: BatchLayout):
        """The authors' pass after the gate: the unconditional rows only, their prediction for both branches."""
        uncond, cond = layout.rows("uncond"), layout.rows("cond")
        if uncond.stop - uncond.start != cond.stop - cond.start:
            return forward(*args, **kwargs)
        # The single pass is the prediction the pipeline will use, so inner effects that act on the conditional
        # branch (a PAG twin copies its rows) see it as "cond", although its inputs are the unconditional rows.
        kept = [branch for branch in layout.branches if branch.name != "cond"]
        index = torch.cat([torch.arange(branch.start, branch.stop) for branch in kept])
        reduced, offset = [], 0
        for branch in kept:
            name = "cond" if branch.name == "uncond" else branch.name
            reduced.append(Branch(name, offset, offset + branch.size))
            offset += branch.size
        args, kwargs = take_input_rows(args, kwargs, index, layout.batch_size, state.family.batch_inputs)
        state.batch = BatchLayout(tuple(reduced))
        # One pass without CFG, as in the authors' loop: inner guidance (PAG) adds its terms to this prediction
        # directly, since the pipeline's CFG will return it unchanged.
        call = state.call
        scale = None if call is None else call.guidance_scale
        if call is not None:
            call.guidance_scale = 1.0
        try:
            output = forward(*args, **kwargs)
        finally:
            state.batch = layout
            if call is not None:
                call.guidance_scale = scale
        prediction = prediction_of(output)
        full = prediction.new_empty((layout.batch_size, *prediction.shape[1:]))
        full[index.to(full.device)] = prediction
        full[cond] = full[uncond]  # CFG then returns the unconditional prediction, as the authors' loop uses it
        return with_prediction(output, full)

    def _per_branch_guidance(self, forward, args, kwargs, state, name: str, index: int):
        # Pipelines that call the denoiser once per branch (Wan: "cond" first, then "uncond" with the same latents).
        state_id, run = id(state), self.run_of(state)
        sample = state.inputs.sample if state.inputs is not None else None
        if name == "cond":
            output = forward(*args, **kwargs)
            if sample is not None:
                run.cond_prediction[state_id] = (index, sample, output)
            return output
        stored = run.cond_prediction.pop(state_id, None)
        usable = stored is not None and stored[0] == index and sample is not None and torch.equal(stored[1], sample)
        redundant = run.redundant.get(state_id)
        if usable and redundant:
            return stored[2]
        output = forward(*args, **kwargs)
        if usable and redundant is None:
            run.redundant[state_id] = _agree(prediction_of(output), prediction_of(stored[2]))
        return output

    def __repr__(self) -> str:
        return (
            f"CrossAttentionCache(gate_step={self.gate_step}, layers={self.layers}, average={self.average}, "
            f"single_branch={self.single_branch}, self_attention={self.self_attention}, "
            f"sp_interval={self.sp_interval}, fi_interval={self.fi_interval}, warm_up={self.warm_up})"
        )


def _layout_of(state: Any, batch_size: int) -> BatchLayout:
    layout = state.batch
    if layout is None or layout.batch_size != batch_size:
        return BatchLayout((Branch("cond", 0, batch_size),))
    return layout


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two branches' predictions are the same up to floating-point noise of batched evaluation."""
    if a.shape != b.shape:
        return False
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    return bool((a - b).abs().max() <= 1e-5 * scale)


__all__ = ["CrossAttentionCache"]
