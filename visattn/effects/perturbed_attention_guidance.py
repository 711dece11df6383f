"""Perturbed-Attention Guidance (PAG) and its per-head soft form (SoftPAG), for any pipeline.

PAG (Ahn et al., 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance"): a perturbed
branch replaces the self-attention map of selected layers by the identity, so each token's output is its own
value; guidance adds ``scale * (eps_cond - eps_perturbed)``. SoftPAG / HeadHunter ("Fine-Grained Perturbation
Guidance via Attention Head Selection"): perturb chosen heads only, interpolating toward the identity,
``(1 - s) * softmax(QK^T) V + s * V``, which never needs the map.

No pipeline subclass: the effect adds the perturbed twin of the conditional rows to the denoiser's batch
(like diffusers' PAG pipelines, ``[uncond, cond, perturbed]``) and folds the result into the conditional
prediction so the pipeline's own CFG arithmetic yields ``eps_cfg + scale * (eps_cond - eps_perturbed)``
(:mod:`visattn.effects.perturbation_guidance`, shared with SEG and STG).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import torch

from ..context import CallContext
from ..layers import FAMILY_DEFAULT, matches
from ..parallel import module_heads
from ..validation import ParameterTypeError, check_fraction, check_layer_roles, check_regex, check_scale
from .base import AttentionCall
from .perturbation_guidance import PerturbationGuidance, identity_rows


def _check_heads(heads: object) -> Mapping[str, tuple[int, ...]] | None:
    """``heads`` normalized to ``{layer identifier: (head indices...)}``; each identifier must compile as a regex and
    each index be an int >= 0 (whether it is below the layer's head count is checked at attach, see
    :meth:`PerturbedAttentionGuidance.check_modules`)."""
    if heads is None:
        return None
    if not isinstance(heads, Mapping):
        raise ParameterTypeError(
            f"heads must be None or a non-empty dict {{layer identifier: [head indices]}}; got {heads!r} "
            f"({type(heads).__name__})"
        )
    if not heads:
        raise ValueError("heads must be None or a non-empty dict {layer identifier: [head indices]}; got {}")
    checked = {}
    for layer, indices in heads.items():
        if not isinstance(layer, str):
            raise ParameterTypeError(f"heads keys must be layer identifiers (str); got {layer!r}")
        check_regex(layer, "heads key")
        indices = tuple(indices) if isinstance(indices, Iterable) and not isinstance(indices, str) else (indices,)
        # bool is an int: heads={"mid": [True]} would select head 1 without saying so.
        if not indices or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in indices):
            raise ValueError(f"heads[{layer!r}] must be non-negative head indices (int); got {indices!r}")
        checked[layer] = tuple(int(i) for i in indices)
    return MappingProxyType(checked)  # read-only: the effect's parameters are fixed once it is built


def head_mask(heads: Mapping[str, tuple[int, ...]] | None, ctx: CallContext) -> torch.Tensor | None:
    """``[H]`` float mask of the heads ``heads`` selects in this call's layer (``None``: every head).

    Raises:
        ValueError: a selected head index is out of range for the layer.
    """
    if heads is None:
        return None
    selected = [i for layer, idx in heads.items() if matches(layer, ctx.layer_name) for i in idx]
    mask = torch.zeros(ctx.layer_heads)
    if not selected:
        return ctx.local_heads(mask)
    too_large = [i for i in selected if i >= ctx.layer_heads]
    if too_large:
        raise ValueError(
            f"heads: index {too_large[0]} is out of range for layer {ctx.layer_name!r}, which has {ctx.layer_heads} "
            "heads"
        )
    mask[selected] = 1.0
    # Global head indices: under context parallelism (Ulysses) this call holds a slice of the layer's heads.
    return ctx.local_heads(mask)


class PerturbedAttentionGuidance(PerturbationGuidance):
    """PAG / SoftPAG as a visattn effect.

    Args:
        scale: guidance scale ``s >= 0`` of the perturbation term (``pag_scale`` in diffusers).
        layers: layers to perturb (diffusers' ``pag_applied_layers`` identifiers; self and joint attention); by
            default the family's: diffusers' PAG pipeline default (``"mid"`` for SD/SDXL, ``"blocks.1"`` for SD3
            and PixArt), else the middle self/joint layer (:data:`visattn.layers.FAMILY_DEFAULT`).
        heads: ``{layer identifier: [head indices]}`` to perturb single heads; ``None`` perturbs every head.
        strength: in ``[0, 1]``; 1 is PAG's identity map, lower values interpolate toward it (SoftPAG).
        adaptive_scale: diffusers' adaptive PAG: ``scale - adaptive_scale * (1000 - t)``, floored at 0.
        steps: fraction range of the schedule in which guidance is applied.
    """

    branch_prefix = "pag"

    def __init__(
        self,
        scale: float = 3.0,
        layers: str | Iterable[str] | None = FAMILY_DEFAULT,
        heads: Mapping[str, Iterable[int]] | None = None,
        strength: float = 1.0,
        adaptive_scale: float = 0.0,
        steps=None,
    ) -> None:
        # Checked here first: the base class's own check predates the MAX_SCALE bound.
        scale = check_scale(scale)
        super().__init__(scale, layers=layers, steps=steps)
        check_layer_roles(self.layers, self.roles, type(self).__name__)
        self.strength = check_fraction(strength, "strength")
        self.adaptive_scale = check_scale(adaptive_scale, "adaptive_scale")
        self.heads = _check_heads(heads)

    def check_modules(self, modules: Mapping[str, torch.nn.Module]) -> None:
        """Attach-time check of ``heads`` against the attention modules this effect acts on (name -> module).

        Raises:
            ValueError: a ``heads`` identifier selects none of these layers (it would perturb nothing), or an
                index is not below a selected layer's head count (the module's ``heads`` attribute).
        """
        if self.heads is None:
            return
        for layer_id, indices in self.heads.items():
            names = [name for name in modules if matches(layer_id, name)]
            if not names:
                raise ValueError(
                    f"heads key {layer_id!r} matches none of the layers {type(self).__name__} acts on "
                    f"({', '.join(modules)}); it would perturb nothing"
                )
            for name in names:
                count = module_heads(modules[name])
                if count is not None and max(indices) >= count:
                    raise ValueError(
                        f"heads[{layer_id!r}]: index {max(indices)} is out of range for layer {name!r}, which has "
                        f"{count} heads (indices 0 to {count - 1})"
                    )

    def scale_at(self, timestep: float | None) -> float:
        """The guidance scale at a scheduler timestep (adaptive scaling counts down from t = 1000)."""
        if self.adaptive_scale == 0 or timestep is None:
            return self.scale
        return max(0.0, self.scale - self.adaptive_scale * (1000.0 - timestep))

    def _head_mask(self, ctx: CallContext) -> torch.Tensor | None:
        return head_mask(self.heads, ctx)

    def perturb(self, call: AttentionCall, rows: slice) -> None:
        """Identity attention (output = V) for the perturbed rows, on the selected heads, with ``strength``."""
        heads = self._head_mask(call.ctx)
        identity_rows(call, rows, self.strength if heads is None else self.strength * heads)

    def identity_only_rows(self, ctx: CallContext) -> slice | None:
        """PAG's perturbed rows (identity attention on every head); ``None`` for SoftPAG (``strength < 1`` or chosen
        heads), whose rows still attend."""
        if self.strength != 1.0 or self.heads is not None:
            return None
        rows = self.perturbed_rows(ctx)
        return rows if rows is not None else slice(0, 0)

    def __repr__(self) -> str:
        return (
            f"PerturbedAttentionGuidance(scale={self.scale}, layers={self.layers}, "
            f"heads={None if self.heads is None else dict(self.heads)}, "
            f"strength={self.strength}, adaptive_scale={self.adaptive_scale}, steps={self.steps})"
        )
