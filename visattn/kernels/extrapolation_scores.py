"""Score modifiers for running a model beyond the size it was trained at: UltraViCo's rule, a box decay, entropy.

* :class:`UltraViCoModifier` (UltraViCo; "Breaking Extrapolation Limits in Video Diffusion Transformers", 2025),
  the authors' public rule (thu-ml/DiT-Extrapolation, branches ``ultra-wan`` and ``ultra-hunyuan``, the attention
  kernel's inner loop ``_attn_fwd_inner``): positive logits of pairs farther apart than half the training length
  (in flattened tokens) are multiplied by ``alpha``; on Wan, first-frame queries do not see keys beyond the
  training length; on HunyuanVideo, periodic distance bands get ``band_factor`` instead.
* :class:`DecayModifier` (visattn's box decay, after UltraViCo's idea): keys outside a box window centred on the
  query have their attention weights multiplied by a constant ``factor`` (``log(factor)`` added to their logits).
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
from .patterns import ScoreModifier

__all__ = ["DecayModifier", "EntropyScale", "UltraViCoModifier", "decay_window_mask"]


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

    visattn's box decay, after UltraViCo's idea (Breaking Extrapolation Limits in Video Diffusion Transformers,
    2025) but not the authors' rule (that is :class:`UltraViCoModifier`). In logits: ``+ log(factor)`` for those
    pairs, so after the softmax their weights shrink by ``factor`` relative to the in-window keys.

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

    #: ``+ log(factor)`` (or ``-inf``) on pairs chosen by their positions alone
    adds_position_bias = True

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

    @property
    def logit_multiplier(self) -> float:
        return self.scale


#: HunyuanVideo's periodic distance bands in the authors' ``ultra-hunyuan`` kernel, in frames (inclusive bounds,
#: times the tokens of one frame): ``46 * STEP <= |m - n| <= 54 * STEP`` and the same around 100, 150 and 200.
HUNYUAN_BANDS: tuple[tuple[int, int], ...] = ((46, 54), (96, 104), (146, 154), (196, 204))


def _unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a number in (0, 1] (1 leaves logits unchanged)")
    return float(value)


@dataclass(frozen=True)
class UltraViCoModifier(ScoreModifier):
    """UltraViCo's logit rule as the authors' kernel computes it, on the grid tokens of a call.

    Written from thu-ml/DiT-Extrapolation, ``sageattn/attn_qk_int8_per_block.py`` (branch ``ultra-wan``) and
    ``src/para_attn/sage_attn/attn_qk_int8_per_block.py`` (branch ``ultra-hunyuan``), ``_attn_fwd_inner``. With
    ``m``, ``n`` the query's and key's positions in the flattened grid (frame-major) and ``T = train_frames *
    frame_tokens`` the training length in tokens:

    * a pair with ``|m - n| > T / 2`` and a positive logit gets ``alpha * logit`` (negative logits are kept, so
      far keys lose weight only where they would have won it);
    * ``bands`` (HunyuanVideo): pairs whose distance lies in ``[lo * frame_tokens, hi * frame_tokens]`` for a band
      ``(lo, hi)`` get ``band_factor * logit`` on positive logits instead of ``alpha``;
    * ``first_frame_mask`` (Wan): queries ``m <= frame_tokens`` (the first frame and, as the authors compare, the
      first token of the second) do not attend to keys ``n > T`` (score ``-inf``; the authors write ``-1e4`` in
      base 2, a zero weight in float32 as well).

    The authors' ``entropy_factor`` (HunyuanVideo) defaults to 1 and their inference script does not set it, so
    it is not part of the rule. Text tokens (outside ``[offset, offset + prod(grid))``) are never changed, as in
    the authors' HunyuanVideo kernel (``mask3``: the last 256 tokens, the text, are excluded).

    Args:
        grid: the token grid ``(frames, height, width)`` (or ``(height, width)`` for one frame), row-major.
        train_frames: training length in frames of this grid (Wan 2.1: 21, HunyuanVideo: 33).
        alpha: multiplier of positive far logits, in ``(0, 1]`` (the authors' ``--alpha``, 0.9).
        first_frame_mask: Wan's mask of keys beyond the training length for first-frame queries.
        bands: ``(lo, hi)`` frame-distance bands (HunyuanVideo: :data:`HUNYUAN_BANDS`); ``()`` for none.
        band_factor: multiplier of positive logits in the bands, in ``(0, 1]`` (the authors' ``--beta``, 0.6).
        offset: position of the first grid token in the query and key sequences.
    """

    grid: tuple[int, ...]
    train_frames: int
    alpha: float = 0.9
    first_frame_mask: bool = True
    bands: tuple[tuple[int, int], ...] = ()
    band_factor: float = 0.6
    offset: int = 0

    def __post_init__(self) -> None:
        grid = _positive_ints("grid", self.grid)
        if isinstance(self.train_frames, bool) or not isinstance(self.train_frames, int) or self.train_frames < 1:
            raise ValueError(f"train_frames={self.train_frames!r} must be an integer >= 1")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"offset={self.offset!r} must be an integer >= 0")
        bands = tuple(tuple(band) for band in self.bands)
        for band in bands:
            if len(band) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in band):
                raise ValueError(f"bands={self.bands!r} must be (lo, hi) pairs of integers >= 0")
            if band[0] > band[1]:
                raise ValueError(f"bands={self.bands!r}: band {band} has lo > hi")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "alpha", _unit_interval("alpha", self.alpha))
        object.__setattr__(self, "band_factor", _unit_interval("band_factor", self.band_factor))
        object.__setattr__(self, "first_frame_mask", bool(self.first_frame_mask))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def frame_tokens(self) -> int:
        """Tokens of one frame: every axis but the first of a 3-D grid, the whole grid otherwise."""
        return math.prod(self.grid[1:]) if len(self.grid) == 3 else self.num_tokens

    def score_mod(self, score, b, h, q_idx, kv_idx):
        n = self.num_tokens
        end = self.offset + n
        grid_pair = (q_idx >= self.offset) & (q_idx < end) & (kv_idx >= self.offset) & (kv_idx < end)
        m = q_idx - self.offset
        k = kv_idx - self.offset
        distance = (m - k).abs()
        frame = self.frame_tokens
        train = self.train_frames * frame
        positive = grid_pair & (score > 0)
        # The authors compare |m - n| <= T / 2 in floating point; 2 |m - n| > T is the same test in integers.
        far = 2 * distance > train
        band = torch.zeros_like(far)
        for lo, hi in self.bands:
            band = band | ((distance >= lo * frame) & (distance <= hi * frame))
        if self.alpha != 1.0:
            score = torch.where(positive & far & ~band, score * self.alpha, score)
        if self.bands and self.band_factor != 1.0:
            score = torch.where(positive & band, score * self.band_factor, score)
        if self.first_frame_mask:
            score = score.masked_fill(grid_pair & (m <= frame) & (k > train), float("-inf"))
        return score

    def cache_key(self) -> Hashable:
        return (
            "ultravico",
            self.grid,
            self.train_frames,
            self.alpha,
            self.first_frame_mask,
            self.bands,
            self.band_factor,
            self.offset,
        )
