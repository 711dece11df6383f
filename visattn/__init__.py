"""visattn: change what attention does inside diffusers models, and do it fast.

The entry point is :func:`visattn.attach`, which swaps :class:`visattn.processors.VisAttnProcessor` into a
pipeline's denoiser and routes every attention call through one attention core
(:func:`visattn.kernels.attention`) with the effects you pass.
"""

__version__ = "0.1.0"

from .attach import Attachment, attach, attention_layers, detach, layer_roles
from .context import BatchLayout, Branch, CallContext, Span, StepInfo, TokenLayout
from .processors import Effect, VisAttnProcessor

__all__ = [
    "Attachment",
    "BatchLayout",
    "Branch",
    "CallContext",
    "Effect",
    "Span",
    "StepInfo",
    "TokenLayout",
    "VisAttnProcessor",
    "attach",
    "attention_layers",
    "detach",
    "layer_roles",
    "__version__",
]
