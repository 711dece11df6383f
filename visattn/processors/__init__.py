"""Effects and the processor that applies them: one file per effect."""

from .effect import AttentionCall, Effect
from .perturbed_attention import PerturbedAttentionGuidance
from .processor import VisAttnProcessor

__all__ = ["AttentionCall", "Effect", "PerturbedAttentionGuidance", "VisAttnProcessor"]
