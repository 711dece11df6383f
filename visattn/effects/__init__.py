"""Effects: one file per effect.

Names resolve lazily (one module per effect), so importing one effect does not import every other.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "AttentionCall": ".base",
    "Effect": ".base",
    # sparse attention and extrapolation
    "NeighborhoodAttention": ".neighborhood_attention",
    "RadialAttention": ".radial_attention",
    "ExtrapolationDecay": ".extrapolation",
    "EntropyScaling": ".extrapolation",
    # perturbation guidance
    "PerturbedAttentionGuidance": ".perturbed_attention_guidance",
    "SmoothedEnergyGuidance": ".smoothed_energy_guidance",
    "SpatioTemporalSkipGuidance": ".spatiotemporal_skip_guidance",
    # cross-attention control
    "PromptToPrompt": ".prompt_to_prompt",
    "LocalBlend": ".prompt_to_prompt",
    "AttentionMaps": ".attention_maps",
    "CrossAttentionCache": ".cross_attention_cache",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
