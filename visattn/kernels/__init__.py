"""Attention ops and backends: the attention core, patterns, score modifiers.

``attention`` is the single entry point; ``available_backends`` lists the backends and why any is missing.
"""

from .core import attention, available_backends, backend_names, choose_backend, register_backend, run_request
from .natten_api import na1d, na2d, na3d
from .neighborhood import NeighborhoodPattern
from .request import AttentionRequest
from .spec import AllOf, Chain, DensePattern, Pattern, ScoreModifier, all_of, chain

__all__ = [
    "attention",
    "available_backends",
    "backend_names",
    "choose_backend",
    "register_backend",
    "run_request",
    "AttentionRequest",
    "Pattern",
    "ScoreModifier",
    "DensePattern",
    "AllOf",
    "Chain",
    "all_of",
    "chain",
    "na1d",
    "na2d",
    "na3d",
    "NeighborhoodPattern",
]
