"""Radial Attention's static sparse mask as a :class:`~visattn.kernels.patterns.Pattern`.

Radial Attention (Li et al., 2025, "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long
Video Generation") observes that post-softmax attention in video diffusion transformers decays with spatial and
temporal distance, and turns that decay into compute density that halves with every doubling of the temporal
distance between the query's frame and the key's frame. The rule here is the authors' token-level mask
(``radial_attn/attn_mask.py`` of mit-han-lab/radial-attention at 72788d4: ``get_window_width``,
``get_diagonal_split_mask`` and the per-frame-pair ``local_mask`` of ``gen_log_mask_shrinked``), for a latent
grid ``(frames, height, width)`` flattened frame-major (``fhw``, as every visattn video family lays tokens out).
With the defaults it is token-exact with the authors' mask for their Wan setting (``model_type="wan"``, block
size 128 or 64), and with ``sink_frames=0`` for their HunyuanVideo setting
(``tests/fidelity/test_fidelity_radial_attention.py``):

* Tokens per frame ``S = height * width``; ``base = 2 ** S.bit_length()`` (the smallest power of two above
  ``S``, as the authors write it).
* Frame pairs at temporal distance ``d = |i - j| < dense_distance`` are kept whole (the central band). The authors'
  current code keeps ``d <= 1`` whole for Wan and HunyuanVideo alike (``get_window_width`` returns
  ``token_per_frame``), i.e. ``dense_distance=2``, the default. ``dense_distance=1`` is visattn's variant (the
  frame pairs at distance 1 get band 1's diagonal window instead), not the authors'. As in the authors' code the
  split rule below still applies to these whole pairs (it drops distance 1 only for frames under 128 tokens).
* Otherwise the pair lies in band ``r = d.bit_length()``, i.e. ``d`` in ``[2 ** (r - 1), 2 ** r)``: every band
  twice as long in time as the one before. Band ``r`` keeps a diagonal band on the *flattened per-frame token
  index* ``s`` (row-major ``h * width + w``): ``|s_q - s_k| <= window_r`` with
  ``window_r = max(floor(decay_factor * base / 2 ** r), block_size)``. The window halves per band, so each band
  costs about the same; ``decay_factor`` scales every window (the authors' ``decay_factor``).
* Once the nominal width ``base / 2 ** r`` (without ``decay_factor``, as in the authors' code) is below
  ``split_threshold``, only every ``m``-th distance keeps its diagonal, with ``m = floor(split_threshold * 2 ** r
  / base)``: the pair is kept when ``d % m == 0`` and dropped otherwise. Density keeps halving per band on
  average; that ``m`` is the authors' ``split_factor``. The authors' threshold is 128 whatever the block size
  (``get_diagonal_split_mask`` hardcodes it), the default here; ``split_threshold=block_size`` is visattn's
  block-aligned variant (at ``block_size=64`` it keeps frame distances the authors drop), useful on toy grids
  whose frames hold far fewer than 128 tokens.
* Attention sink: the first ``sink_frames`` frames (default 1) are dense as keys: every latent query attends to
  all of frame 0's tokens (the authors' Wan mask; their HunyuanVideo mask has no sink since 2f61c30, so
  ``sink_frames=0`` there). With ``sink_queries=True`` the sink frames' queries also attend
  to every latent key; the authors' code does not do this (frame 0's queries follow the band rule), so it is off
  by default.

Why the flattened per-frame index rather than 2-D distance: it is what the paper does, and it is tile-friendly
under the frame-major order: a band around the diagonal of a frame pair covers about ``(2 * window + 1) / tile
+ 1`` key tiles per query tile, while a 2-D window would scatter over ``height`` separate row segments. The
authors then round the token mask to ``block_size`` blocks with a density heuristic (``shrinkMaskStrict``) and
run a block-sparse kernel on the rounded mask; this pattern keeps the exact token-level rule instead (not the
rounded block mask), so every backend computes the same thing and a block-sparse kernel visits exactly the tiles
the rule touches (:func:`visattn.kernels.density` counts them).

Summed over bands, kept pairs grow as ``n * S * log(frames)`` for ``n`` latent tokens, hence the paper's
``O(n log n)``; the sink adds ``O(n * S)``.

Text tokens in joint attention follow :class:`~visattn.kernels.neighborhood.NeighborhoodPattern`'s conventions:
latent queries attend to all text keys, and text queries attend to everything (``text_queries="full"``) or only
to text (``"text"``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .patterns import Pattern, grid_sequence_mask

__all__ = ["AUTHORS_SPLIT_THRESHOLD", "RadialBand", "RadialPattern"]

#: ``threshold = 128`` in the authors' ``get_diagonal_split_mask``: "hardcoded ..., which is equal to block-size"
#: (their default block size); it stays 128 when their Wan 2.2 code runs with ``block_size=64``.
AUTHORS_SPLIT_THRESHOLD = 128


@dataclass(frozen=True)
class RadialBand:
    """One temporal band of the radial rule.

    Attributes:
        first, stop: the frame distances ``d`` in ``[first, stop)`` this band covers.
        window: the largest kept ``|s_q - s_k|`` on the flattened per-frame token index, ``None`` when the
            whole frame pair is kept.
        every: only distances with ``d % every == 0`` keep their diagonal (1: every distance).
    """

    first: int
    stop: int
    window: int | None
    every: int

    def keeps_distance(self, distance: int) -> bool:
        return self.first <= distance < self.stop and distance % self.every == 0


def _positive_int(name: str, value, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be {allowed}")
    return value


@dataclass(frozen=True)
class RadialPattern(Pattern):
    """Radial Attention's static mask over a video latent grid inside a longer sequence.

    Args:
        grid: ``(frames, height, width)`` of the latent tokens, flattened frame-major (row-major ``fhw``). One
            frame is allowed; the mask is then dense (there is no temporal distance to decay over).
        decay_factor: scales every band's spatial window (the authors' ``decay_factor``; > 0, default 1).
        block_size: the tile size the rule is aligned to: the smallest diagonal window (the authors' ``block_size``:
            128, FlexAttention's default block; 64 in one of their Wan 2.2 paths).
        dense_distance: frame pairs closer than this are kept whole, subject to the split rule (default 2: a frame
            with itself and its neighbours, the authors' Wan and HunyuanVideo masks; 1 is visattn's variant).
        sink_frames: leading frames whose tokens every latent query attends to (0 disables the sink; the
            authors' Wan mask has one, their HunyuanVideo mask none).
        sink_queries: whether the sink frames' queries also attend to every latent key.
        offset: sequence position of the first latent token (queries and keys alike).
        extra_keys: text keys right after the latents that latent queries attend to.
        prefix_keys: whether latent queries attend to every key before ``offset`` (text placed first).
        text_queries: ``"full"``: queries outside the grid attend to every key; ``"text"``: only to keys outside
            the grid.
        split_threshold: nominal width below which bands keep only every ``m``-th frame distance (default 128,
            the authors' hardcoded value whatever the block size; ``block_size`` gives visattn's block-aligned
            variant).

    See the module docstring for the rule and the choices taken from the authors' code.
    """

    grid: tuple[int, int, int]
    decay_factor: float = 1.0
    block_size: int = 128
    dense_distance: int = 2
    sink_frames: int = 1
    sink_queries: bool = False
    offset: int = 0
    extra_keys: int = 0
    prefix_keys: bool = True
    text_queries: Literal["full", "text"] = "full"
    split_threshold: int = AUTHORS_SPLIT_THRESHOLD
    _bands: tuple[RadialBand, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grid = self.grid
        if (
            not isinstance(grid, Sequence)
            or len(grid) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in grid)
        ):
            raise ValueError(
                f"grid={grid!r} is not allowed; grid must be (frames, height, width), three positive integers "
                f"(a video latent grid; use frames=1 for a single frame)"
            )
        decay = self.decay_factor
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay < math.inf):
            raise ValueError(f"decay_factor={decay!r} is not allowed; decay_factor must be a finite number > 0")
        _positive_int("block_size", self.block_size, "a positive integer (tokens per tile)")
        _positive_int("dense_distance", self.dense_distance, "an integer >= 1 (frame distances below it are dense)")
        _positive_int(
            "split_threshold",
            self.split_threshold,
            f"a positive integer (tokens; the authors' is {AUTHORS_SPLIT_THRESHOLD})",
        )
        frames = grid[0]
        sink = self.sink_frames
        if isinstance(sink, bool) or not isinstance(sink, int) or not 0 <= sink <= frames:
            raise ValueError(
                f"sink_frames={sink!r} is not allowed; sink_frames must be an integer in [0, {frames}] "
                f"(the grid {tuple(grid)} has {frames} frames)"
            )
        if not isinstance(self.sink_queries, bool):
            raise ValueError(f"sink_queries={self.sink_queries!r} is not allowed; sink_queries must be a bool")
        for name in ("offset", "extra_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} is not allowed; {name} must be an integer >= 0")
        if not isinstance(self.prefix_keys, bool):
            raise ValueError(f"prefix_keys={self.prefix_keys!r} is not allowed; prefix_keys must be a bool")
        if self.text_queries not in ("full", "text"):
            raise ValueError(
                f"text_queries={self.text_queries!r} is not allowed; text_queries must be 'full' or 'text'"
            )
        # Frozen dataclass: normalize through object.__setattr__ so equal patterns hash and compare equal.
        object.__setattr__(self, "grid", tuple(grid))
        object.__setattr__(self, "decay_factor", float(decay))
        object.__setattr__(self, "_bands", self._make_bands())

    # --- the rule ----------------------------------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def num_tokens(self) -> int:
        """Latent tokens in the grid."""
        return math.prod(self.grid)

    def _make_bands(self) -> tuple[RadialBand, ...]:
        frames, per_frame = self.grid[0], self.tokens_per_frame
        base = 2 ** per_frame.bit_length()
        bands = []
        band = 1
        while 2 ** (band - 1) < frames:
            first, stop = 2 ** (band - 1), min(2**band, frames)
            # Nominal width below the split threshold: keep every m-th distance only (the authors'
            # split_factor = int(threshold / (base / 2 ** band)), exact in integers). As in the authors' code the
            # split applies to every distance >= 1, the whole-frame ones below dense_distance included.
            split = self.split_threshold
            every = 1 if base >= split * 2**band else (split * 2**band) // base
            whole_stop = min(stop, max(first, self.dense_distance))
            if first < whole_stop:
                bands.append(RadialBand(first, whole_stop, None, every))
            if whole_stop < stop:
                window = max(math.floor(self.decay_factor * base / 2**band), self.block_size)
                # A window reaching across the whole frame keeps the whole pair; None skips the offset test.
                bands.append(RadialBand(whole_stop, stop, None if window >= per_frame - 1 else window, every))
            band += 1
        return tuple(bands)

    @property
    def bands(self) -> tuple[RadialBand, ...]:
        """The temporal bands beyond the dense central band, nearest first (see :class:`RadialBand`)."""
        return self._bands

    def frame_pair_window(self, q_frame: int, kv_frame: int) -> int | None:
        """How much of frame pair ``(q_frame, kv_frame)`` is kept, as a window on the per-frame token index.

        Returns ``tokens_per_frame - 1`` for a dense pair (every offset kept), the band's window for a diagonal
        band, and ``None`` when the pair is dropped entirely.
        """
        frames = self.grid[0]
        if not (0 <= q_frame < frames and 0 <= kv_frame < frames):
            raise ValueError(f"frames ({q_frame}, {kv_frame}) must lie in [0, {frames}) for grid {self.grid}")
        full = self.tokens_per_frame - 1
        if kv_frame < self.sink_frames or (self.sink_queries and q_frame < self.sink_frames):
            return full
        distance = abs(q_frame - kv_frame)
        if distance == 0:
            return full
        for band in self._bands:
            if band.keeps_distance(distance):
                return full if band.window is None else band.window
        return None

    def frame_window_table(self) -> torch.Tensor:
        """``[frames, frames]`` long: :meth:`frame_pair_window` of every frame pair, ``-1`` for a dropped pair.

        A pair of latent tokens in frames ``(i, j)`` is kept exactly when ``|s_q - s_k| <= table[i, j]`` (``s`` the
        flattened per-frame index); block masks classify tiles from this table (:mod:`visattn.kernels.block_masks`).
        """
        frames, full = self.grid[0], self.tokens_per_frame - 1
        # The rule depends on the frames only through their distance, except for the sink.
        by_distance = [full]
        for distance in range(1, frames):
            band = next((band for band in self._bands if band.keeps_distance(distance)), None)
            by_distance.append(-1 if band is None else full if band.window is None else band.window)
        index = torch.arange(frames)
        table = torch.tensor(by_distance, dtype=torch.long)[(index.view(-1, 1) - index.view(1, -1)).abs()]
        sink = index.view(1, -1) < self.sink_frames
        if self.sink_queries:
            sink = sink | (index.view(-1, 1) < self.sink_frames)
        return table.masked_fill(sink, full)

    @property
    def grid_is_dense(self) -> bool:
        """Whether every latent query attends to every latent key (true for one frame, or bands covering all)."""
        frames, full = self.grid[0], self.tokens_per_frame - 1
        return all(self.frame_pair_window(i, j) == full for i in range(frames) for j in range(frames))

    def radial_mask(self, q_local: torch.Tensor, kv_local: torch.Tensor) -> torch.Tensor:
        """The rule between grid-local flat indices (both in ``[0, prod(grid))``), broadcasting, tensor ops only."""
        per_frame = self.tokens_per_frame
        q_frame, kv_frame = q_local // per_frame, kv_local // per_frame
        distance = (q_frame - kv_frame).abs()
        keep = distance == 0
        offset = None
        for band in self._bands:
            if not any(band.keeps_distance(d) for d in range(band.first, band.stop)):
                continue  # every distance of the band is split away
            selected = (distance >= band.first) & (distance < band.stop)
            if band.every > 1:
                selected = selected & (distance % band.every == 0)
            if band.window is not None:
                if offset is None:
                    offset = (q_local % per_frame - kv_local % per_frame).abs()
                selected = selected & (offset <= band.window)
            keep = keep | selected
        if self.sink_frames:
            keep = keep | (kv_frame < self.sink_frames)
            if self.sink_queries:
                keep = keep | (q_frame < self.sink_frames)
        return keep

    # --- Pattern ----------------------------------------------------------------------------------------------
    def mask_mod(self, b, h, q_idx, kv_idx):
        return grid_sequence_mask(
            q_idx,
            kv_idx,
            self.radial_mask,
            num_tokens=self.num_tokens,
            offset=self.offset,
            extra_keys=self.extra_keys,
            prefix_keys=self.prefix_keys,
            text_queries=self.text_queries,
        )

    def cache_key(self) -> Hashable:
        return (
            "radial",
            self.grid,
            self.decay_factor,
            self.block_size,
            self.dense_distance,
            self.sink_frames,
            self.sink_queries,
            self.offset,
            self.extra_keys,
            self.prefix_keys,
            self.text_queries,
            self.split_threshold,
        )
