"""The machinery every perturbation guidance shares: a perturbed twin of the conditional rows, folded back.

Perturbation guidances (PAG, Ahn et al. 2024; SEG, Hong 2024; STG, Hyung et al. 2024) predict noise twice from
the same conditional input, once as the model is and once with some attention layers perturbed, and guide with
``scale * (eps_cond - eps_perturbed)``. Without a pipeline subclass, a :class:`PerturbationGuidance` effect

1. appends a copy of the conditional rows to the denoiser's batch (diffusers' PAG pipelines do the same:
   ``[uncond, cond, perturbed]``) and announces it as a branch of its own in the batch layout, so its
   :meth:`~PerturbationGuidance.perturb` changes exactly those rows in the selected layers;
2. runs the denoiser once on the larger batch;
3. folds the perturbed prediction into the conditional one (:func:`visattn.guidance.arithmetic.fold_perturbations`)
   so that the pipeline's own CFG arithmetic yields ``eps_cfg + scale * (eps_cond - eps_perturbed)``, with the
   CFG scale this pipeline applies to this call (:func:`visattn.families.pipelines.pipeline_guidance_scale`).

Several perturbation effects compose additively: each adds its own branch, and the outermost one folds every
branch against the *unguided* conditional prediction, so ``PAG + SEG`` gives
``eps_cfg + s_pag (eps_c - eps_pag) + s_seg (eps_c - eps_seg)``, with no cross terms.

Known limits of folding through the pipeline: SD/SDXL's ``guidance_rescale > 0`` rescales by the standard
deviation of the conditional prediction the pipeline sees, which here already holds the perturbation terms; and a
pipeline that ignores its conditional prediction (CFG scale 0) cannot carry a term (ValueError).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..context import BatchLayout, Branch, CallContext, StepInfo
from ..denoiser_batch import prediction_of, take_input_rows, with_prediction, without_extra_rows
from ..guidance.arithmetic import fold_perturbations
from ..steps import in_steps
from ..validation import check_scale
from .base import AttentionCall, Effect

_BRANCH_IDS = itertools.count()


@dataclass
class _Term:
    """One perturbation branch's contribution, waiting for the outermost effect to fold it."""

    cond: slice
    #: the perturbed branch's prediction (a per-sample list for denoisers that return one)
    perturbed: torch.Tensor | list[torch.Tensor]
    scale: float


#: identity blends by layout (batch size, heads, rows, weight, device), so that every call of a layout gets the same
#: tensor: one allocation per layout instead of two tensor ops per call, and the attention core reads its rows once
#: (:func:`visattn.kernels.core._blend_rows`). Each entry keeps the blend's version counter: a blend that anything
#: changed in place is made again.
_BLENDS: dict[tuple, tuple[torch.Tensor, int]] = {}
_BLENDS_KEPT = 64


def _uniform_blend(batch_size: int, heads: int, rows: slice, weight: float, device: torch.device) -> torch.Tensor:
    key = (batch_size, heads, rows.start, rows.stop, weight, device)
    kept = _BLENDS.get(key)
    if kept is not None and kept[0]._version == kept[1]:
        return kept[0]
    blend = torch.zeros(batch_size, heads, 1, 1, device=device, dtype=torch.float32)
    blend[rows] = weight
    if len(_BLENDS) >= _BLENDS_KEPT:
        _BLENDS.clear()
    _BLENDS[key] = (blend, blend._version)
    return blend


def identity_rows(call: AttentionCall, rows: slice, weight: torch.Tensor | float = 1.0) -> None:
    """Blend the attention output of ``rows`` toward the identity map (output = V) with ``weight``.

    ``weight`` is a scalar or a per-head tensor ``[H]``; an existing blend is kept where it is larger, so
    composing identity perturbations never weakens one of them.
    """
    ctx = call.ctx
    if isinstance(weight, torch.Tensor):
        blend = torch.zeros(ctx.batch.batch_size, ctx.heads, 1, 1, device=call.q.device, dtype=torch.float32)
        blend[rows] = weight.to(blend.device, torch.float32).view(1, -1, 1, 1)
    else:
        blend = _uniform_blend(ctx.batch.batch_size, ctx.heads, rows, float(weight), call.q.device)
    if call.identity_blend is not None:
        blend = torch.maximum(call.identity_blend.to(blend), blend)
    call.identity_blend = blend


class PerturbationGuidance(Effect):
    """Base class of perturbation guidances: adds a perturbed branch, folds ``scale * (eps_c - eps_p)`` back.

    Subclasses implement :meth:`perturb` (what happens to the perturbed rows in a selected layer) and may
    override :meth:`scale_at` (a timestep-dependent scale).

    Args:
        scale: guidance scale ``s >= 0``; 0 leaves the denoiser call untouched (bit-identical to no effect).
        layers, steps: where and when it acts (see :class:`visattn.effects.Effect`).
    """

    roles = ("self", "joint")
    #: prefix of the branch name this effect adds (``"<prefix>:<n>"``, unique per effect instance)
    branch_prefix = "perturbed"
    frozen_parameters = True

    def __init__(self, scale: float, *, layers: str | Iterable[str] | None = None, steps=None) -> None:
        super().__init__(layers=layers, steps=steps)
        self.scale = check_scale(scale)
        # Fixed at construction, like the parameters: one name per effect object (a copy_with copy gets its own),
        # the same in every attachment; the effect is refused twice in one attachment, so names never collide.
        self.branch = f"{self.branch_prefix}:{next(_BRANCH_IDS)}"

    def scale_at(self, timestep: float | None) -> float:
        """The guidance scale at a scheduler timestep (constant unless a subclass says otherwise)."""
        return self.scale

    # --- the denoiser call: add the perturbed branch, fold it back ----------------------------------------------
    def wrap_denoiser(self, forward, args, kwargs, state):
        layout = state.batch
        step = state.step
        timestep = state.family.scheduler_timestep(step.timestep)
        if layout is None or "cond" not in layout.names or not in_steps(self.steps, step.fraction):
            return forward(*args, **kwargs)
        scale = self.scale_at(timestep)
        if scale == 0:
            return forward(*args, **kwargs)
        batch_size = layout.batch_size
        cond = layout.rows("cond")
        # Inner perturbation effects hand their terms to the outermost one through the denoiser call's state, which
        # holds them exactly as long as the outermost effect's call runs.
        outermost = state.guidance_terms is None
        if outermost:
            state.guidance_terms = []
        try:
            if state.family.one_sample_per_call:
                # A forward without a batch axis (Cosmos 3) cannot take more rows: the perturbed branch is a second
                # call of its own, whose only branch is this effect's (inner effects leave it alone: no "cond").
                output = forward(*args, **kwargs)
                state.batch = BatchLayout((Branch(self.branch, cond.start, cond.stop),))
                main, perturbed = prediction_of(output), prediction_of(forward(*args, **kwargs))
            else:
                index = torch.cat([torch.arange(batch_size), torch.arange(cond.start, cond.stop)])
                args, kwargs = take_input_rows(args, kwargs, index, batch_size, state.family.batch_inputs)
                state.batch = BatchLayout(layout.branches + (Branch(self.branch, batch_size, len(index)),))
                output = forward(*args, **kwargs)
                prediction = prediction_of(output)
                main, perturbed = prediction[:batch_size], prediction[batch_size:]
                # Other streams (LTX-2's audio) keep their own rows unguided: the perturbed rows are dropped.
                output = without_extra_rows(output, len(index), batch_size)
        finally:
            state.batch = layout
            if outermost:
                inner_terms, state.guidance_terms = state.guidance_terms, None
        term = _Term(cond, perturbed, scale)
        if not outermost:
            # An outer perturbation effect folds every branch against the raw conditional prediction.
            state.guidance_terms.append(term)
            return with_prediction(output, main)
        cfg_scale = state.call.guidance_scale
        # A per-sample list (Z-Image) is folded item by item: its items may differ in shape.
        main = list(main) if isinstance(main, list) else main.clone()
        # Every branch copies the same "cond" rows; grouping by rows keeps the fold right even if it did not.
        groups: dict[tuple[int, int], list[_Term]] = {}
        for item in (term, *inner_terms):
            groups.setdefault((item.cond.start, item.cond.stop), []).append(item)
        for (start, stop), group in groups.items():
            if isinstance(main, list):
                for row in range(start, stop):
                    terms = [(t.perturbed[row - start], t.scale) for t in group]
                    main[row] = fold_perturbations(main[row], terms, cfg_scale)
            else:
                rows = slice(start, stop)
                main[rows] = fold_perturbations(main[rows], [(t.perturbed, t.scale) for t in group], cfg_scale)
        return with_prediction(output, main)

    # --- the attention call: perturb this effect's rows ----------------------------------------------------------
    def row_plan_key(self, step: StepInfo) -> bool:
        """The perturbed rows follow the call's batch layout; of the step, only whether the effect's window is open
        decides them (see :meth:`~visattn.effects.Effect.row_plan_key`)."""
        return in_steps(self.steps, step.fraction)

    def perturbed_rows(self, ctx: CallContext) -> slice | None:
        """The batch rows of this effect's perturbed branch in this call (``None`` when it has none)."""
        if self.branch not in ctx.batch.names:
            return None
        return ctx.batch.rows(self.branch)

    def apply(self, call: AttentionCall) -> None:
        rows = self.perturbed_rows(call.ctx)
        if rows is not None:
            self.perturb(call, rows)

    def perturb(self, call: AttentionCall, rows: slice) -> None:
        """Perturb the attention of ``rows`` (this effect's branch) in one selected call."""
        raise NotImplementedError(f"{type(self).__name__} must implement perturb(call, rows)")
