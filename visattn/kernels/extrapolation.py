"""Score modifiers for running a model beyond the size it was trained at: windowed decay and entropy scaling.

* :class:`DecayModifier` (UltraViCo; "Breaking Extrapolation Limits in Video Diffusion Transformers", 2025):
  beyond the training length, keys outside a query's training window disperse its attention; multiplying their
  attention weights by a constant ``factor`` (adding ``log(factor)`` to their logits) suppresses them. The window
  is a box over the token grid, one size per axis.
* :class:`EntropyScale`: the common training-free baseline for resolution extrapolation, which keeps the
  attention entropy near its training value by scaling logits with ``log(n) / log(n_train)`` for ``n`` keys
  (Jin et al., "Training-free Diffusion Model Adaptation for Variable-Sized Text-to-Image Synthesis", 2023,
  derive the entropy argument).

Both are plain tensor functions of ``(score, b, h, q_idx, kv_idx)``, so the reference backend evaluates them on
broadcast index grids and FlexAttention traces them per element.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .neighborhood import window_bounds
from .spec import ScoreModifier

__all__ = ["DecayModifier", "EntropyScale", "decay_window_mask"]


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not 1 <= len(values) <= 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}={values!r} must be 1 to 3 positive integers (one per grid axis)")
    return values


def decay_window_mask(
    grid: tuple[int, ...], window: tuple[int, ...], q_local: torch.Tensor, kv_local: torch.Tensor
) -> torch.Tensor:
    """Whether grid-local key ``kv_local`` lies in the training window of grid-local query ``q_local``.

    Per axis the window holds ``window[axis]`` positions centred on the query and shifted inward at the borders
    (NATTEN's neighborhood convention, :func:`visattn.kernels.neighborhood.window_bounds`), so every query keeps
    exactly as many positions as in training and no kept relative distance exceeds ``window - 1``, a distance
    the model saw in training. A key is inside when it is inside on every axis. Broadcasts like ``mask_mod``.
    """
    keep = torch.ones_like(q_local == kv_local)
    for axis, (size, span) in enumerate(zip(grid, window)):
        if span >= size:
            continue  # the window covers the whole axis
        inner = math.prod(grid[axis + 1 :])
        q_coord = (q_local // inner) % size
        kv_coord = (kv_local // inner) % size
        first, stop = window_bounds(q_coord, size, span)
        keep = keep & (kv_coord >= first) & (kv_coord < stop)
    return keep


@dataclass(frozen=True)
class DecayModifier(ScoreModifier):
    """Multiplies the attention weight of grid keys outside a grid query's training window by ``factor``.

    UltraViCo (Breaking Extrapolation Limits in Video Diffusion Transformers, 2025). In logits: ``+ log(factor)``
    for those pairs, so after the softmax their weights shrink by ``factor`` relative to the in-window keys.

    Args:
        grid: the token grid, 1 to 3 axes (``(frames, height, width)`` for video), row-major.
        window: training window per axis, in grid tokens; entries at least the axis size never decay on that
            axis and are stored clamped to it (so equal windows give equal cache keys).
        factor: in ``[0, 1]``; ``0`` masks out-of-window keys completely (score ``-inf``), ``1`` changes nothing.
        offset: position of the first grid token in the query and key sequences (both hold the grid at the same
            place: self or joint attention). Tokens outside ``[offset, offset + prod(grid))`` (text) are never
            decayed, as queries or as keys.
    """

    grid: tuple[int, ...]
    window: tuple[int, ...]
    factor: float
    offset: int = 0

    def __post_init__(self) -> None:
        grid = _positive_ints("grid", self.grid)
        window = _positive_ints("window", self.window)
        if len(window) != len(grid):
            raise ValueError(f"window={window} needs one entry per axis of grid={grid}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not 0.0 <= self.factor <= 1:
            raise ValueError(f"factor={self.factor!r} must be a number in [0, 1] (0 masks, 1 is no change)")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"offset={self.offset!r} must be an integer >= 0")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "window", tuple(min(w, g) for w, g in zip(window, grid)))
        object.__setattr__(self, "factor", float(self.factor))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def is_identity(self) -> bool:
        """True when no pair changes: ``factor == 1`` or a window covering the whole grid."""
        return self.factor == 1.0 or self.window == self.grid

    def outside(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """The pairs this modifier decays: grid query, grid key, key outside the query's window."""
        n = self.num_tokens
        end = self.offset + n
        q_in = (q_idx >= self.offset) & (q_idx < end)
        kv_in = (kv_idx >= self.offset) & (kv_idx < end)
        # Clamp so that coordinates stay valid for text tokens too; their pairs are excluded by q_in & kv_in
        # (no data-dependent branching, as FlexAttention requires).
        q_local = (q_idx - self.offset).clamp(0, n - 1)
        kv_local = (kv_idx - self.offset).clamp(0, n - 1)
        return q_in & kv_in & ~decay_window_mask(self.grid, self.window, q_local, kv_local)

    def score_mod(self, score, b, h, q_idx, kv_idx):
        outside = self.outside(q_idx, kv_idx)
        if self.factor == 0.0:
            return score.masked_fill(outside, float("-inf"))
        # where() leaves in-window scores untouched bit for bit (score + 0.0 * mask would too, but not for -inf).
        return torch.where(outside, score + math.log(self.factor), score)

    def cache_key(self) -> Hashable:
        return ("extrapolation_decay", self.grid, self.window, self.factor, self.offset)


@dataclass(frozen=True)
class EntropyScale(ScoreModifier):
    """Multiplies every logit by ``scale`` (after the usual ``1/sqrt(d)``): an attention temperature.

    With ``scale = log(n) / log(n_train)`` (:meth:`from_counts`) it is the entropy-scaling baseline of resolution
    extrapolation: attending over ``n > n_train`` keys spreads the softmax, and sharpening the logits by that
    ratio keeps the attention entropy near its training value (Jin et al., NeurIPS 2023).

    Args:
        scale: a finite number > 0.
    """

    scale: float

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 < self.scale < math.inf:
            raise ValueError(f"scale={self.scale!r} must be a finite number > 0")
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def from_counts(cls, n: float, n_train: float) -> EntropyScale:
        """``log(n) / log(n_train)``: the scale for ``n`` keys of a model trained with ``n_train`` keys."""
        for name, value in (("n", n), ("n_train", n_train)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value < math.inf:
                raise ValueError(f"{name}={value!r} must be a finite number > 1 (log of it divides)")
        return cls(math.log(n) / math.log(n_train))

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return score * self.scale

    def cache_key(self) -> Hashable:
        return ("entropy_scale", self.scale)
