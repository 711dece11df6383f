"""Spatiotemporal Skip Guidance (STG), for any pipeline (made for video models).

Hyung et al. 2024, "Spatiotemporal Skip Guidance for Enhanced Video Diffusion Sampling". The perturbed branch is
the model with selected spatiotemporal attention layers skipped, an implicitly weak model obtained without
training; guidance adds ``scale * (eps_cond - eps_perturbed)``. Two perturbations:

* ``mode="identity"``: the selected layers' attention map is the identity, each token's output is its own value
  (the authors' STG-A; the same perturbation as PAG, so it equals
  :class:`~visattn.processors.PerturbedAttentionGuidance` on the same layers).
* ``mode="skip"``: the selected layers' attention contributes nothing: for the perturbed rows the attention output
  *before the layer's output projection* is exactly zero (values zeroed, so every query's weighted sum of values
  is zero), for every query of the call (latent and, in joint attention, text tokens).

How ``"skip"`` relates to diffusers' ``hooks/layer_skip.py`` (``LayerSkipConfig(skip_attention=True,
skip_ff=False)``, used by its ``SkipLayerGuidance`` guider for STG): there the hooked attention *module* returns
its own input ``hidden_states`` (and ``encoder_hidden_states`` for joint modules), bypassing projections,
attention and output projection altogether, so a block ``x + gate * attn(norm(x))`` adds ``gate * norm(x)``. A
visattn effect acts between the family's q/k/v projection and its output projection, so it cannot return the
module's input; what it can do is make the attention itself contribute nothing, after which the module returns
its output projection applied to zero: the projection's bias (zero for bias-free projections, and for
HunyuanVideo/Flux single-stream blocks, whose attention has no output projection, exactly zero). Neither this nor
diffusers' hook is the authors' STG-R, which skips whole transformer blocks for the perturbed rows.

Image families are allowed: on a single-frame grid ``"skip"`` is attention-level skip-layer guidance (as
Stability AI's SLG for SD3.5) and ``"identity"`` is PAG. ``layers`` is required, since which spatiotemporal
layers to skip is model-specific (the authors pick them per model).
"""

from __future__ import annotations

from collections.abc import Iterable

from .effect import AttentionCall
from .perturbation_branch import PerturbationGuidance, identity_rows

MODES = ("skip", "identity")


class SpatioTemporalSkipGuidance(PerturbationGuidance):
    """STG as a visattn effect: skipped (or identity) self/joint attention in a perturbed branch.

    Args:
        scale: guidance scale ``s >= 0`` (``stg_scale``).
        layers: layers to skip (diffusers' ``pag_applied_layers`` identifiers or ``"self"``/``"joint"``); self and
            joint attention only.
        mode: ``"skip"`` (attention output zero before the output projection) or ``"identity"`` (output = V).
        steps: fraction range of the schedule in which guidance is applied.
    """

    branch_prefix = "stg"

    def __init__(
        self,
        scale: float,
        layers: str | Iterable[str],
        mode: str = "skip",
        steps=None,
    ) -> None:
        if layers is None:
            raise ValueError("layers=None: STG needs the layers to skip (e.g. 'blocks.10' or 'transformer_blocks.3')")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        super().__init__(scale, layers=layers, steps=steps)
        self.mode = mode

    def perturb(self, call: AttentionCall, rows: slice) -> None:
        """Zero the perturbed rows' values (``"skip"``) or make their attention the identity (``"identity"``)."""
        if self.mode == "identity":
            identity_rows(call, rows, 1.0)
            return
        # With zero values every weighted sum is exactly zero, whatever pattern, modifier or blend other effects
        # add to the call, so the attention contributes nothing for these rows and the rest run unchanged.
        values = call.v.clone()
        values[rows] = 0
        call.v = values

    def __repr__(self) -> str:
        return (
            f"SpatioTemporalSkipGuidance(scale={self.scale}, layers={self.layers}, mode={self.mode!r}, "
            f"steps={self.steps})"
        )
