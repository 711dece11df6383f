"""Effects and the processor that applies them: one file per effect."""

from .effect import AttentionCall, Effect
from .neighborhood_attention import NeighborhoodAttention
from .perturbed_attention import PerturbedAttentionGuidance
from .processor import VisAttnProcessor

__all__ = ["AttentionCall", "Effect", "NeighborhoodAttention", "PerturbedAttentionGuidance", "VisAttnProcessor"]
