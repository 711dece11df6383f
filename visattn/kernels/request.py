"""The one argument every backend receives: an attention call described completely; and the error a backend
raises when it cannot compute one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .patterns import Pattern, ScoreModifier


class UnsupportedCall(ValueError):
    """Raised by a backend's ``run`` for a call it cannot compute (a capability, not a failure).

    ``backend="auto"`` answers it by running the next candidate (with a one-time warning); a backend can list
    other exception types its library raises for the same reason in a module-level ``CAPABILITY_ERRORS``.
    """


@dataclass
class AttentionRequest:
    """q, k, v in ``[batch, heads, tokens, head_dim]`` plus what to do with them.

    Attributes:
        q, k, v: query/key/value tensors, ``[B, H, Nq, D]`` / ``[B, H, Nk, D]`` / ``[B, H, Nk, Dv]``.
        pattern: which pairs attend (``None``: all).
        score_mod: logit modifier (``None``: none).
        attn_mask: an additive float or boolean mask broadcastable to ``[B, H, Nq, Nk]`` as the model gives it
            (padding of text tokens); combined with ``pattern``.
        scale: logit scale; ``None`` means ``1 / sqrt(D)``.
        identity_blend: tensor broadcastable to ``[B, H, Nq, 1]``: the output becomes
            ``(1 - s) * attention + s * v`` (SoftPAG's interpolation toward the identity map). Needs ``Nq == Nk``.
        return_lse: also return the log-sum-exp of the (masked, modified, scaled) logits, ``[B, H, Nq]``.
        dispatcher: ``None`` to call torch SDPA directly; otherwise the diffusers dispatcher is used with
            ``dispatcher_backend`` (``None`` there means diffusers' active backend).
        editors, reads: the probability stage (:mod:`visattn.kernels.probabilities`): editors change the
            softmax's probabilities before they weight the values (only the reference backend runs them), reads
            receive blocks of the final probabilities.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pattern: Pattern | None = None
    score_mod: ScoreModifier | None = None
    attn_mask: torch.Tensor | None = None
    scale: float | None = None
    identity_blend: torch.Tensor | None = None
    return_lse: bool = False
    use_dispatcher: bool = False
    dispatcher_backend: Any = None
    editors: tuple[Callable[[torch.Tensor, int, int], None], ...] = ()
    reads: tuple[Any, ...] = ()

    @property
    def is_plain(self) -> bool:
        """True when nothing beyond dense softmax attention (with the model's own mask) is asked for (reads of
        its probabilities are served apart)."""
        return self.pattern is None and self.score_mod is None and not self.return_lse and not self.editors

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else self.q.shape[-1] ** -0.5
