"""Perturbed-Attention Guidance (PAG) and its per-head soft form (SoftPAG), for any pipeline.

PAG (Ahn et al., 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance"): a perturbed
branch replaces the self-attention map of selected layers by the identity, so each token's output is its own
value; guidance adds ``scale * (eps_cond - eps_perturbed)``. SoftPAG / HeadHunter ("Fine-Grained Perturbation
Guidance via Attention Head Selection"): perturb chosen heads only, interpolating toward the identity,
``(1 - s) * softmax(QK^T) V + s * V``, which never needs the map.

No pipeline subclass: the effect adds the perturbed twin of the conditional rows to the denoiser's batch
(like diffusers' PAG pipelines, ``[uncond, cond, perturbed]``) and folds the result into the conditional
prediction so the pipeline's own CFG arithmetic yields ``eps_cfg + scale * (eps_cond - eps_perturbed)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import torch

from ..batching import prediction_of, take_input_rows, with_prediction
from ..context import BatchLayout, Branch
from ..guidance_math import fold_perturbation, pipeline_guidance_scale
from ..layers import matches
from ..steps import in_steps
from .effect import AttentionCall, Effect

_BRANCH_IDS = itertools.count()


def _check_heads(heads) -> dict[str, tuple[int, ...]] | None:
    if heads is None:
        return None
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(f"heads must be a non-empty dict {{layer: [head indices]}}; got {heads!r}")
    checked = {}
    for layer, indices in heads.items():
        if not isinstance(layer, str):
            raise ValueError(f"heads keys must be layer identifiers (str); got {layer!r}")
        indices = tuple(indices) if isinstance(indices, Iterable) else (indices,)
        if not indices or any(not isinstance(i, int) or i < 0 for i in indices):
            raise ValueError(f"heads[{layer!r}] must be non-negative head indices; got {indices!r}")
        checked[layer] = indices
    return checked


class PerturbedAttentionGuidance(Effect):
    """PAG / SoftPAG as a visattn effect.

    Args:
        scale: guidance scale ``s >= 0`` of the perturbation term (``pag_scale`` in diffusers).
        layers: layers to perturb (diffusers' ``pag_applied_layers`` identifiers; self and joint attention).
        heads: ``{layer identifier: [head indices]}`` to perturb single heads; ``None`` perturbs every head.
        strength: in ``[0, 1]``; 1 is PAG's identity map, lower values interpolate toward it (SoftPAG).
        adaptive_scale: diffusers' adaptive PAG: ``scale - adaptive_scale * (1000 - t)``, floored at 0.
        steps: fraction range of the schedule in which guidance is applied.
    """

    roles = ("self", "joint")

    def __init__(
        self,
        scale: float = 3.0,
        layers: str | Iterable[str] | None = "mid",
        heads: Mapping[str, Iterable[int]] | None = None,
        strength: float = 1.0,
        adaptive_scale: float = 0.0,
        steps=None,
    ) -> None:
        super().__init__(layers=layers, steps=steps)
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0; got {scale}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1]; got {strength}")
        if not adaptive_scale >= 0:
            raise ValueError(f"adaptive_scale must be >= 0; got {adaptive_scale}")
        self.scale = float(scale)
        self.strength = float(strength)
        self.adaptive_scale = float(adaptive_scale)
        self.heads = _check_heads(heads)
        self.branch = f"perturbed:{next(_BRANCH_IDS)}"

    def scale_at(self, timestep: float | None) -> float:
        """The guidance scale at a scheduler timestep (adaptive scaling counts down from t = 1000)."""
        if self.adaptive_scale == 0 or timestep is None:
            return self.scale
        return max(0.0, self.scale - self.adaptive_scale * (1000.0 - timestep))

    # --- the denoiser call: add the perturbed branch, fold it back ----------------------------------------------
    def wrap_denoiser(self, forward, args, kwargs, state):
        layout = state.batch
        step = state.step
        timestep = None if step.timestep is None else step.timestep * state.family.timestep_divisor
        scale = self.scale_at(timestep)
        if scale == 0 or layout is None or "cond" not in layout.names or not in_steps(self.steps, step.fraction):
            return forward(*args, **kwargs)
        batch_size = layout.batch_size
        cond = layout.rows("cond")
        index = torch.cat([torch.arange(batch_size), torch.arange(cond.start, cond.stop)])
        args, kwargs = take_input_rows(args, kwargs, index, batch_size)
        extra = Branch(self.branch, batch_size, batch_size + cond.stop - cond.start)
        state.batch = BatchLayout(layout.branches + (extra,))
        try:
            output = forward(*args, **kwargs)
        finally:
            state.batch = layout
        prediction = prediction_of(output)
        main, perturbed = prediction[:batch_size].clone(), prediction[batch_size:]
        cfg_scale = pipeline_guidance_scale(state.pipeline, layout.names)
        main[cond] = fold_perturbation(main[cond], perturbed, scale, cfg_scale)
        return with_prediction(output, main)

    # --- the attention call: identity for the perturbed rows ---------------------------------------------------
    def _head_mask(self, ctx) -> torch.Tensor | None:
        if self.heads is None:
            return None
        selected = [i for layer, idx in self.heads.items() if matches(layer, ctx.layer_name) for i in idx]
        if not selected:
            return torch.zeros(ctx.heads)
        too_large = [i for i in selected if i >= ctx.heads]
        if too_large:
            raise ValueError(
                f"heads: index {too_large[0]} is out of range for layer {ctx.layer_name!r}, which has {ctx.heads} heads"
            )
        mask = torch.zeros(ctx.heads)
        mask[selected] = 1.0
        return mask

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if self.branch not in ctx.batch.names:
            return
        rows = ctx.batch.rows(self.branch)
        blend = torch.zeros(ctx.batch.batch_size, ctx.heads, 1, 1, device=call.q.device, dtype=torch.float32)
        heads = self._head_mask(ctx)
        blend[rows] = self.strength if heads is None else self.strength * heads.view(1, -1, 1, 1).to(blend.device)
        if call.identity_blend is not None:
            blend = torch.maximum(call.identity_blend.to(blend), blend)
        call.identity_blend = blend

    def __repr__(self) -> str:
        return (
            f"PerturbedAttentionGuidance(scale={self.scale}, layers={self.layers}, heads={self.heads}, "
            f"strength={self.strength}, adaptive_scale={self.adaptive_scale}, steps={self.steps})"
        )
