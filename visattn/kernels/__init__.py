"""Attention ops and backends: the attention core, patterns, score modifiers.

``attention`` is the single entry point; ``available_backends`` lists the backends and why any is missing.
Beyond FlexAttention's split (``Pattern.mask_mod``, ``ScoreModifier.score_mod``), a call may name a probability
stage (:mod:`.probabilities`): editors and reads of the softmax's probabilities (editors linear over the keys,
:class:`LinearEdit`, run as attention over mixed values on any backend; an edit of the text block whose other keys
take what it leaves, :class:`TextBlockEdit`, as attention over block values).
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .block_density import density, tile_aligned_order
from .core import attention, available_backends, backend_names, choose_backend, register_backend, run_request
from .natten_api import na1d, na2d, na3d
from .neighborhood import NeighborhoodPattern
from .patterns import AllOf, Chain, DensePattern, Pattern, ScoreModifier, all_of, chain
from .probabilities import Editor, LinearEdit, ProbabilityRead, TextBlockEdit
from .request import AttentionRequest

# Patterns and modifiers with heavier or optional dependencies resolve on first use.
_LAZY = {
    "RadialPattern": ".radial",
    "DecayModifier": ".extrapolation_scores",
    "EntropyScale": ".extrapolation_scores",
}

__all__ = [
    "attention",
    "available_backends",
    "backend_names",
    "choose_backend",
    "register_backend",
    "run_request",
    "AttentionRequest",
    "Editor",
    "LinearEdit",
    "TextBlockEdit",
    "ProbabilityRead",
    "Pattern",
    "ScoreModifier",
    "DensePattern",
    "AllOf",
    "Chain",
    "all_of",
    "chain",
    "density",
    "tile_aligned_order",
    "na1d",
    "na2d",
    "na3d",
    "NeighborhoodPattern",
    *_LAZY,
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
