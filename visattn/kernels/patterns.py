"""What an attention call computes, as data: which query-key pairs (pattern), how scores change (modifier).

The split follows FlexAttention's: a :class:`Pattern` is a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` and a
:class:`ScoreModifier` is a ``score_mod(score, b, h, q_idx, kv_idx) -> score``. Both are written with plain
tensor ops on broadcastable integer index tensors, so the same object drives every backend: the reference
backend calls them once on broadcast ``arange`` grids (materialized), FlexAttention traces them per element.

Patterns and modifiers are immutable and hashable through :meth:`cache_key`, so backends can cache block masks
per (pattern, sequence lengths, device).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Pattern",
    "ScoreModifier",
    "AllOf",
    "Chain",
    "DensePattern",
    "all_of",
    "chain",
    "check_tokens",
    "required_tokens",
]


class Pattern:
    """Which query-key pairs attend. Subclasses implement :meth:`mask_mod` and :meth:`cache_key`."""

    def mask_mod(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cache_key(self) -> Hashable:
        raise NotImplementedError

    @property
    def depends_on_batch_or_head(self) -> bool:
        """Whether the mask differs per batch item or head (lets backends share one mask otherwise)."""
        return False

    def __and__(self, other: Pattern) -> Pattern:
        return all_of([self, other])


class ScoreModifier:
    """How logits change before the softmax. Subclasses implement :meth:`score_mod` and :meth:`cache_key`."""

    def score_mod(
        self,
        score: torch.Tensor,
        b: torch.Tensor,
        h: torch.Tensor,
        q_idx: torch.Tensor,
        kv_idx: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError

    def cache_key(self) -> Hashable:
        raise NotImplementedError

    #: whether :meth:`score_mod` adds to the score a bias that depends on the query and key positions alone (not
    #: on the score, the batch row or the head): then :meth:`position_bias` materializes it, and dense SDPA runs
    #: the call with it as an additive mask where that is small enough (:mod:`visattn.kernels.backends.sdpa`)
    adds_position_bias: bool = False

    def position_bias(self, n_q: int, n_k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[n_q, n_k]``: what :meth:`score_mod` adds to each score (``-inf`` where it masks), for modifiers that
        :attr:`adds_position_bias`; made by the modifier's own :meth:`score_mod` on zero scores, so it is the same
        arithmetic the other backends run."""
        if not self.adds_position_bias:
            raise TypeError(f"{type(self).__name__} does not add a bias of positions alone")
        zero = torch.zeros((), dtype=torch.long, device=device)
        q_idx = torch.arange(n_q, device=device).view(-1, 1)
        kv_idx = torch.arange(n_k, device=device).view(1, -1)
        scores = torch.zeros(n_q, n_k, device=device, dtype=torch.float32)
        return self.score_mod(scores, zero, zero, q_idx, kv_idx).to(dtype)

    @property
    def logit_multiplier(self) -> float | None:
        """The constant every logit is multiplied by, where that is all this modifier does (an attention
        temperature); ``None`` otherwise. The attention core folds such modifiers, leading a chain, into the
        softmax scale, so the call stays plain attention that any backend runs."""
        return None


@dataclass(frozen=True)
class DensePattern(Pattern):
    """Every pair attends; the explicit form of "no pattern"."""

    def mask_mod(self, b, h, q_idx, kv_idx):
        return torch.ones_like(q_idx == kv_idx)

    def cache_key(self) -> Hashable:
        return ("dense",)


@dataclass(frozen=True)
class AllOf(Pattern):
    """A pair attends when every member pattern keeps it (logical and)."""

    parts: tuple[Pattern, ...]

    def mask_mod(self, b, h, q_idx, kv_idx):
        keep = self.parts[0].mask_mod(b, h, q_idx, kv_idx)
        for part in self.parts[1:]:
            keep = keep & part.mask_mod(b, h, q_idx, kv_idx)
        return keep

    def cache_key(self) -> Hashable:
        return ("all_of",) + tuple(p.cache_key() for p in self.parts)

    @property
    def depends_on_batch_or_head(self) -> bool:
        return any(p.depends_on_batch_or_head for p in self.parts)


@dataclass(frozen=True)
class Chain(ScoreModifier):
    """Applies member modifiers in order."""

    parts: tuple[ScoreModifier, ...]

    def score_mod(self, score, b, h, q_idx, kv_idx):
        for part in self.parts:
            score = part.score_mod(score, b, h, q_idx, kv_idx)
        return score

    def cache_key(self) -> Hashable:
        return ("chain",) + tuple(p.cache_key() for p in self.parts)

    @property
    def adds_position_bias(self) -> bool:
        return all(part.adds_position_bias for part in self.parts)


def all_of(patterns: Sequence[Pattern | None]) -> Pattern | None:
    """Intersect patterns, dropping ``None`` and dense members; ``None`` when nothing constrains."""
    parts: list[Pattern] = []
    for pattern in patterns:
        if pattern is None or isinstance(pattern, DensePattern):
            continue
        parts.extend(pattern.parts if isinstance(pattern, AllOf) else [pattern])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def chain(modifiers: Sequence[ScoreModifier | None]) -> ScoreModifier | None:
    """Compose score modifiers in order, dropping ``None``; ``None`` when nothing modifies."""
    parts: list[ScoreModifier] = []
    for modifier in modifiers:
        if modifier is None:
            continue
        parts.extend(modifier.parts if isinstance(modifier, Chain) else [modifier])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Chain(tuple(parts))


def required_tokens(part: Pattern | ScoreModifier | None) -> tuple[int, int] | None:
    """The least ``(queries, keys)`` a call needs for a pattern or modifier laid over a token grid, or ``None``.

    Grid patterns and modifiers (neighborhood, radial, extrapolation decay) place ``num_tokens`` grid tokens at
    ``offset`` for queries and keys alike, with ``extra_keys`` keys after the grid for grid queries; a call shorter
    than that would index past its sequence, which their clamped index arithmetic would hide, giving a silently
    wrong mask. Composites need what their largest member needs.
    """
    if part is None:
        return None
    if isinstance(part, (AllOf, Chain)):
        needs = [need for member in part.parts if (need := required_tokens(member)) is not None]
        if not needs:
            return None
        return max(q for q, _ in needs), max(k for _, k in needs)
    num_tokens = getattr(part, "num_tokens", None)
    if not isinstance(num_tokens, int):
        return None
    offset = getattr(part, "offset", 0)
    extra = getattr(part, "extra_keys", 0)
    return offset + num_tokens, offset + num_tokens + extra


def check_tokens(part: Pattern | ScoreModifier | None, num_queries: int, num_keys: int, parameter: str) -> None:
    """ValueError naming ``parameter`` when a grid pattern or modifier does not fit a call of ``num_queries``
    queries and ``num_keys`` keys (see :func:`required_tokens`)."""
    need = required_tokens(part)
    if need is None:
        return
    if num_queries < need[0] or num_keys < need[1]:
        grid = getattr(part, "grid", None)
        described = f" (grid {grid})" if grid is not None else ""
        raise ValueError(
            f"{parameter} needs at least {need[0]} queries and {need[1]} keys{described}, but the call has "
            f"{num_queries} queries and {num_keys} keys; the grid's token count must match the tensors"
        )


def grid_sequence_mask(
    q_idx: torch.Tensor,
    kv_idx: torch.Tensor,
    grid_rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    num_tokens: int,
    offset: int,
    extra_keys: int,
    prefix_keys: bool,
    text_queries: str,
) -> torch.Tensor:
    """A mask over a sequence holding a token grid at ``[offset, offset + num_tokens)`` and text around it.

    Grid queries attend to the grid keys ``grid_rule(q_local, kv_local)`` keeps, to the ``extra_keys`` keys right
    after the grid and, with ``prefix_keys``, to every key before it (text first, as in Flux). Queries outside the
    grid attend to every key (``text_queries="full"``) or only to keys outside the grid (``"text"``). Shared by
    the grid patterns so that every one treats text tokens the same way.
    """
    grid_end = offset + num_tokens
    q_in = (q_idx >= offset) & (q_idx < grid_end)
    kv_in = (kv_idx >= offset) & (kv_idx < grid_end)
    # Clamp into the grid so that coordinate arithmetic stays in range for out-of-grid tokens too; their result is
    # overridden below (no data-dependent control flow, as FlexAttention's vmap requires).
    q_local = (q_idx - offset).clamp(0, num_tokens - 1)
    kv_local = (kv_idx - offset).clamp(0, num_tokens - 1)
    grid_keep = kv_in & grid_rule(q_local, kv_local)
    extra = (kv_idx >= grid_end) & (kv_idx < grid_end + extra_keys)
    if prefix_keys:
        extra = extra | (kv_idx < offset)
    grid_rows = q_in & (grid_keep | extra)
    if text_queries == "full":
        return grid_rows | ~q_in
    return grid_rows | (~q_in & ~kv_in)
