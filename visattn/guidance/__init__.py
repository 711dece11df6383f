"""Perturbation guidance beyond a single effect: a diffusers guider, head sets, and the HeadHunter search.

* :class:`HeadPerturbationGuidance`: PAG / SoftPAG on layers or single heads as a diffusers guider (modular
  pipelines), installing visattn processors for the perturbed pass only.
* :class:`HeadSet`: an ordered, saveable, combinable selection of ``(layer, head)`` pairs.
* :func:`hunt_heads`: HeadHunter's greedy head search against a user objective ("Fine-Grained Perturbation
  Guidance via Attention Head Selection").

Names resolve lazily, so importing one does not import diffusers' guiders or the search.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "HeadPerturbationGuidance": ".guider",
    "IdentityPerturbation": ".guider",
    "HeadSet": ".head_sets",
    "layer_heads": ".head_sets",
    "layer_pattern": ".head_sets",
    "HuntResult": ".head_hunter",
    "RoundResult": ".head_hunter",
    "hunt_heads": ".head_hunter",
    "OBJECTIVES": ".head_hunter",
    "resolve_objective": ".head_hunter",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
