"""TGATE: compute cross-attention for the first steps only, then reuse its cached output.

Zhang, Liu et al., 2024, "Cross-Attention Makes Inference Cumbersome in Text-to-Image Diffusion Models" (T-GATE):
cross-attention outputs converge within the first denoising steps (the semantics-planning stage); in the
remaining, fidelity-improving steps they can be replaced by a cache without a visible loss, which removes the
cross-attention computation (q/k/v and output projections included) from most of the schedule.

What this effect does, following the authors' public code (``tgate_utils.tgate_scheduler``):

* ``gate_step`` counts the steps that compute cross-attention: steps ``0 .. gate - 1`` run normally, the last of
  them (index ``gate - 1``) stores each layer's finished output, and every step from index ``gate`` on returns the
  stored output without projecting anything (the layer call is answered before ``q/k/v`` are formed, through the
  ``wrap_attention`` hook of :class:`~visattn.interception.AttentionLayerHook`).
* With ``average=True`` (TGATE's choice) the stored output of the classifier-free-guidance branches is the mean
  ``(out_uncond + out_cond) / 2``, used for both branches. Other branches (a perturbed twin added by PAG, ...)
  keep their own output. ``average=False`` keeps every branch's own output instead.
* After the gate, TGATE runs the denoiser on the conditional batch only: once the two guidance branches get the
  same cross-attention they usually get the same prediction, and CFG reduces to it. The effect does this
  without a pipeline change (``skip_uncond=True``), but only where it is exact: at the first reused step it runs
  both branches and compares their predictions; only if they agree (SD 1.x/2.x, PixArt, Wan, whose branches
  differ by their text alone) does it drop the unconditional rows (or, for pipelines that call the denoiser
  once per branch, answer the unconditional call with the conditional prediction of the same step). SDXL's
  pooled text embedding differs between branches, so there both branches keep running.

Joint-attention models (SD3, Flux, HunyuanVideo, CogVideoX) have no separate cross-attention: text and image
tokens share one attention. The effect acts on layers of role ``"cross"`` only (UNet, PixArt, Wan) and raises
a ValueError at attach time on a model that has none. Step indices are visattn's :class:`~visattn.StepInfo`
(one per denoiser evaluation of the pipeline's schedule), so attach the pipeline, not a bare denoiser: without a
known step the layers compute normally.

Caches are refilled at the gate step of every run and dropped when a step before the gate (or a step index lower
than the last one seen: a new run) arrives; a run or a second denoiser (Wan 2.2) that reaches the gate without a
cache computes the layer once and reuses that. ``clear()`` or detaching frees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..batching import prediction_of, take_input_rows, with_prediction
from ..context import BatchLayout, Branch
from .effect import Effect

_GUIDANCE_BRANCHES = ("uncond", "cond")


class CrossAttentionCache(Effect):
    """Cache each cross-attention layer's output at the gate step and reuse it afterwards (T-GATE).

    Args:
        gate_step: how many denoising steps compute cross-attention. An ``int >= 1`` is a step count
            (TGATE's ``gate_step``: 10 of 25 steps for SD in the paper); a ``float`` in ``(0, 1]`` is a fraction
            of the schedule, ``max(1, round(gate_step * num_steps))`` steps. A gate at or past the last step
            makes the effect a no-op.
        layers: cross-attention layers to cache (diffusers' ``pag_applied_layers`` identifiers); ``None`` caches
            every cross-attention layer.
        average: store the mean over the classifier-free-guidance branches (TGATE); ``False`` stores each
            branch's own output.
        skip_uncond: after the gate, stop computing the unconditional branch when it is verified to equal the
            conditional one (see the module docstring); only with ``average=True``.

    Raises:
        ValueError: a bad ``gate_step``; at attach time, a model (or a ``layers`` selection) without
            cross-attention layers.
    """

    roles = ("cross",)

    def needs(self) -> tuple[str, ...]:
        return ("text",)

    def __init__(
        self,
        gate_step: int | float = 10,
        layers: str | Iterable[str] | None = None,
        average: bool = True,
        skip_uncond: bool = True,
    ) -> None:
        super().__init__(layers=layers)
        if isinstance(gate_step, bool) or not isinstance(gate_step, (int, float)):
            raise ValueError(f"gate_step must be an int step count or a float fraction; got {gate_step!r}")
        if isinstance(gate_step, int) and gate_step < 1:
            raise ValueError(f"gate_step must be >= 1 when given as a step count; got {gate_step}")
        if isinstance(gate_step, float) and not 0.0 < gate_step <= 1.0:
            raise ValueError(f"gate_step must be in (0, 1] when given as a fraction; got {gate_step}")
        self.gate_step = gate_step
        self.average = bool(average)
        self.skip_uncond = bool(skip_uncond)
        # (id of the denoiser state, layer name) -> {branch name: finished output rows, "shape": input shape}
        self._caches: dict[tuple[int, str], dict[str, Any]] = {}
        # per denoiser state: last step seen (a smaller one starts a new run), and whether the guidance branches
        # were verified to give the same prediction once cross-attention is cached (None: not checked yet)
        self._last_step: dict[int, int] = {}
        self._redundant: dict[int, bool | None] = {}
        self._cond_prediction: dict[int, tuple[int, torch.Tensor, Any]] = {}

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
    def bind(self, roles: dict[str, str]) -> frozenset[str]:
        cross = {name for name, role in roles.items() if role == "cross"}
        if not cross:
            present = ", ".join(sorted(set(roles.values()))) or "none"
            raise ValueError(
                "CrossAttentionCache acts on cross-attention layers (UNet, PixArt, Wan); the attached layers have "
                f"none (their roles: {present}). Joint-attention models (SD3, Flux, HunyuanVideo, CogVideoX) mix "
                "text and image tokens in one attention and have no separate cross-attention to cache."
            )
        selected = frozenset(name for name in super().bind(roles) if name in cross)
        if not selected:
            raise ValueError(
                f"CrossAttentionCache(layers={list(self.layers)}) selects no cross-attention layer; "
                f"cross-attention layers: {', '.join(sorted(cross))}"
            )
        return selected

    def detached(self, states: list[Any]) -> None:
        for state in states:
            self._new_run(id(state))
            self._last_step.pop(id(state), None)

    def clear(self) -> None:
        """Forget every cached output (the next run computes and stores them again)."""
        self._caches.clear()
        self._last_step.clear()
        self._redundant.clear()
        self._cond_prediction.clear()

    def _new_run(self, state_id: int) -> None:
        for key in [key for key in self._caches if key[0] == state_id]:
            del self._caches[key]
        self._redundant.pop(state_id, None)
        self._cond_prediction.pop(state_id, None)

    # --- one attention layer call ----------------------------------------------------------------------------------
    def wrap_attention(self, call: Callable[[], Any], hidden_states: torch.Tensor, layer_name: str, state: Any) -> Any:
        """Answer a cross-attention call from the cache after the gate; store its output at the gate step."""
        # Called only by the hooks of the layers this cache was bound to.
        if state is None:
            return call()
        index, gate = self._phase(state)
        if index is None or gate is None:
            return call()
        key = (id(state), layer_name)
        if index < gate - 1:
            self._caches.pop(key, None)
            return call()
        layout = _layout_of(state, hidden_states.shape[0])
        if index >= gate:
            cached = self._reuse(key, layout, hidden_states)
            if cached is not None:
                return cached
        # The gate step, or a run that reached the gate without a cache for this layer (it started late, or a
        # second denoiser took over): compute, and store for the steps that follow.
        out = call()
        if isinstance(out, torch.Tensor):
            entry = self._caches.setdefault(key, {})
            if entry.get("shape") != tuple(hidden_states.shape[1:]):
                entry.clear()
            entry["shape"] = tuple(hidden_states.shape[1:])
            entry.pop("memo", None)
            for branch in layout.branches:
                entry[branch.name] = out[branch.start : branch.stop].detach()
        return out

    def _reuse(self, key: tuple[int, str], layout: BatchLayout, hidden_states: torch.Tensor) -> torch.Tensor | None:
        entry = self._caches.get(key)
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
        if self.average and name in _GUIDANCE_BRANCHES:
            uncond, cond = entry.get("uncond"), entry.get("cond")
            if uncond is not None and cond is not None and uncond.shape == cond.shape:
                # TGATE: the mean of the two guidance branches' outputs serves both of them.
                return (uncond + cond) / 2
        return entry.get(name)

    # --- the denoiser call: drop the redundant unconditional branch after the gate ------------------------------
    def wrap_denoiser(self, forward, args, kwargs, state):
        state_id = id(state)
        index, gate = self._phase(state)
        if index is not None:
            last = self._last_step.get(state_id)
            if last is not None and index < last:
                self._new_run(state_id)
            self._last_step[state_id] = index
        layout = state.batch
        if not (self.skip_uncond and self.average) or index is None or gate is None or index < gate or layout is None:
            return forward(*args, **kwargs)
        names = layout.names
        if "uncond" in names and "cond" in names:
            return self._batched_guidance(forward, args, kwargs, state, layout)
        if names in (("cond",), ("uncond",)):
            return self._per_branch_guidance(forward, args, kwargs, state, names[0], index)
        return forward(*args, **kwargs)

    def _batched_guidance(self, forward, args, kwargs, state, layout: BatchLayout):
        state_id = id(state)
        uncond, cond = layout.rows("uncond"), layout.rows("cond")
        redundant = self._redundant.get(state_id)
        if redundant is None or uncond.stop - uncond.start != cond.stop - cond.start:
            output = forward(*args, **kwargs)
            prediction = prediction_of(output)
            if uncond.stop - uncond.start == cond.stop - cond.start:
                self._redundant[state_id] = _agree(prediction[uncond], prediction[cond])
            return output
        if not redundant:
            return forward(*args, **kwargs)
        kept = [branch for branch in layout.branches if branch.name != "uncond"]
        index = torch.cat([torch.arange(branch.start, branch.stop) for branch in kept])
        reduced, offset = [], 0
        for branch in kept:
            reduced.append(Branch(branch.name, offset, offset + branch.size))
            offset += branch.size
        args, kwargs = take_input_rows(args, kwargs, index, layout.batch_size)
        state.batch = BatchLayout(tuple(reduced))
        try:
            output = forward(*args, **kwargs)
        finally:
            state.batch = layout
        prediction = prediction_of(output)
        full = prediction.new_empty((layout.batch_size, *prediction.shape[1:]))
        full[index.to(full.device)] = prediction
        full[uncond] = full[cond]
        return with_prediction(output, full)

    def _per_branch_guidance(self, forward, args, kwargs, state, name: str, index: int):
        # Pipelines that call the denoiser once per branch (Wan: "cond" first, then "uncond" with the same latents).
        state_id = id(state)
        sample = state.inputs.sample if state.inputs is not None else None
        if name == "cond":
            output = forward(*args, **kwargs)
            if sample is not None:
                self._cond_prediction[state_id] = (index, sample, output)
            return output
        stored = self._cond_prediction.pop(state_id, None)
        usable = stored is not None and stored[0] == index and sample is not None and torch.equal(stored[1], sample)
        redundant = self._redundant.get(state_id)
        if usable and redundant:
            return stored[2]
        output = forward(*args, **kwargs)
        if usable and redundant is None:
            self._redundant[state_id] = _agree(prediction_of(output), prediction_of(stored[2]))
        return output

    def __repr__(self) -> str:
        return (
            f"CrossAttentionCache(gate_step={self.gate_step}, layers={self.layers}, average={self.average}, "
            f"skip_uncond={self.skip_uncond})"
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
