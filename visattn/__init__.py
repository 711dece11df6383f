"""visattn: change what attention does inside diffusers models, and do it fast.

The entry point is :func:`visattn.attach`, which hooks a pipeline's denoiser and routes the attention its stock
diffusers processors compute through one attention core (:func:`visattn.kernels.attention`) with the effects
you pass.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Public names resolve lazily so that light entry points (``visattn --version``, ``visattn info``) do not pay
# for importing diffusers and transformers.
_EXPORTS = {
    "Attachment": ".attachment",
    "attach": ".attachment",
    "attention_layers": ".attachment",
    "detach": ".attachment",
    "layer_roles": ".attachment",
    "BatchLayout": ".context",
    "Branch": ".context",
    "CallContext": ".context",
    "Span": ".context",
    "StepInfo": ".context",
    "TokenLayout": ".context",
    "Effect": ".effects",
    "AttentionMaps": ".effects",
    "CrossAttentionCache": ".effects",
    "EntropyScaling": ".effects",
    "ExtrapolationDecay": ".effects",
    "LocalBlend": ".effects",
    "NeighborhoodAttention": ".effects",
    "PerturbedAttentionGuidance": ".effects",
    "PromptToPrompt": ".effects",
    "RadialAttention": ".effects",
    "SmoothedEnergyGuidance": ".effects",
    "SpatioTemporalSkipGuidance": ".effects",
    "HeadPerturbationGuidance": ".guidance",
    "HeadSet": ".guidance",
    "hunt_heads": ".guidance",
    "Inversion": ".inversion",
    "ddim_inversion": ".inversion",
    "negative_prompt_inversion": ".inversion",
    "null_text_inversion": ".inversion",
    "reconstruct": ".inversion",
    "enable_context_parallelism": ".parallel",
}

__all__ = [*_EXPORTS, "__version__"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, extra=("__version__",))
