"""The one attention core every visattn effect routes through.

``attention(q, k, v, pattern=..., score_mod=..., identity_blend=...)`` describes a call completely; a backend
(one file each in :mod:`visattn.kernels.backends`) computes it. ``backend="auto"`` picks the fastest backend that
computes the request exactly: the dense SDPA path when nothing custom is asked for, NATTEN's fused kernels for
plain neighborhood attention when NATTEN is installed, FlexAttention on CUDA for other patterns and modifiers,
and the materialized reference on CPU (where FlexAttention would materialize too).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from .backends import flex, natten, reference, sdpa, triton
from .request import AttentionRequest
from .spec import Pattern, ScoreModifier

_BACKENDS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        sdpa,
        reference,
        flex,
        natten,
        triton,
    )
}


def register_backend(module: ModuleType) -> None:
    """Add a backend module (``NAME``, ``availability``, ``supports``, ``run``); later issues add Triton here."""
    _BACKENDS[module.NAME] = module


def available_backends() -> dict[str, tuple[bool, str]]:
    """Each backend name mapped to ``(available, reason)``: what it is, or why it cannot be used here."""
    return {name: module.availability() for name, module in _BACKENDS.items()}


def backend_names() -> tuple[str, ...]:
    return ("auto",) + tuple(_BACKENDS)


def choose_backend(request: AttentionRequest, backend: str = "auto") -> str:
    """The backend that will run ``request``; raises ValueError when a named backend cannot."""
    if backend != "auto":
        module = _BACKENDS.get(backend)
        if module is None:
            raise ValueError(f"backend={backend!r} is not one of {', '.join(backend_names())}")
        ok, reason = module.availability()
        if not ok:
            raise ValueError(f"backend={backend!r} is not available: {reason}")
        if not module.supports(request):
            raise ValueError(
                f"backend={backend!r} cannot compute this call (pattern={request.pattern!r}, "
                f"score_mod={request.score_mod!r}, return_lse={request.return_lse}); use backend='auto'"
            )
        return backend
    if request.is_plain:
        return "sdpa"
    # supports() first: it is cheap, and availability() tries an import when NATTEN is missing.
    if natten.supports(request) and natten.availability()[0]:
        return "natten"
    if request.q.device.type == "cuda" and flex.availability()[0] and flex.supports(request):
        return "flex"
    return "reference"


def run_request(request: AttentionRequest, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute a prepared :class:`AttentionRequest`; returns ``(out, lse or None)``."""
    name = choose_backend(request, backend)
    out, lse = _BACKENDS[name].run(request)
    if request.return_lse and lse is None:
        # Only reachable for a backend that cannot return it; the reference recomputes it exactly.
        _, lse = reference.run(request)
    if request.identity_blend is not None:
        if request.q.shape[2] != request.k.shape[2]:
            raise ValueError(
                "identity_blend needs as many queries as keys (each query's identity is its own value); "
                f"got {request.q.shape[2]} queries and {request.k.shape[2]} keys"
            )
        # lerp returns exactly v where the weight is 1 (PAG's identity), unlike out + w * (v - out).
        blend = request.identity_blend.to(device=out.device, dtype=out.dtype)
        out = torch.lerp(out, request.v.to(out.dtype), blend)
    return out, lse


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    pattern: Pattern | None = None,
    score_mod: ScoreModifier | None = None,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    identity_blend: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    use_dispatcher: bool = False,
    dispatcher_backend: Any = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over ``[batch, heads, tokens, head_dim]`` tensors with a pattern, a score modifier and a blend.

    Args:
        q, k, v: ``[B, H, Nq, D]``, ``[B, H, Nk, D]``, ``[B, H, Nk, Dv]``.
        pattern: which query-key pairs attend (:class:`visattn.kernels.spec.Pattern`); ``None`` = all.
        score_mod: logit modifier (:class:`visattn.kernels.spec.ScoreModifier`) applied after scaling.
        attn_mask: the model's own additive or boolean mask, broadcastable to ``[B, H, Nq, Nk]``.
        scale: logit scale, default ``1/sqrt(D)``.
        identity_blend: per-head (or per-token) weight ``s`` broadcastable to ``[B, H, Nq, 1]``;
            the output is ``(1 - s) * attention + s * v`` (SoftPAG, Ahn et al. 2024 / HeadHunter).
        backend: ``"auto"`` or a name from :func:`available_backends`.
        return_lse: also return the natural-log log-sum-exp of the logits, ``[B, H, Nq]``.
        use_dispatcher, dispatcher_backend: route the dense path through diffusers' dispatcher with this
            backend (what ``model.set_attention_backend`` chose).

    Returns:
        ``out`` (``[B, H, Nq, Dv]``, dtype of ``q``), or ``(out, lse)`` when ``return_lse``.
    """
    request = AttentionRequest(
        q=q,
        k=k,
        v=v,
        pattern=pattern,
        score_mod=score_mod,
        attn_mask=attn_mask,
        scale=scale,
        identity_blend=identity_blend,
        return_lse=return_lse,
        use_dispatcher=use_dispatcher,
        dispatcher_backend=dispatcher_backend,
    )
    out, lse = run_request(request, backend)
    return (out, lse) if return_lse else out
