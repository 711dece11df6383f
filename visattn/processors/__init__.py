"""Effects and the processor that applies them: one file per effect."""

from .effect import AttentionCall, Effect
from .processor import VisAttnProcessor

__all__ = ["AttentionCall", "Effect", "VisAttnProcessor"]
