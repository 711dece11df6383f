"""Block masks from a pattern's structure: which key tiles each query tile visits, without an N x N mask.

A block-sparse kernel (FlexAttention) skips a (query tile, key tile) pair when no pair inside it is kept, and
skips the ``mask_mod`` on a tile pair whose every pair is kept ("full"). torch's ``create_block_mask`` learns
both by evaluating the ``mask_mod`` on every (query, key) pair: N x N booleans plus the ``mask_mod``'s integer
intermediates, gigabytes for a 128 x 128 grid and out of reach for a long video. Here they come from what the
pattern is:

* a tile's tokens are described as a few *pieces*: boxes of the pattern's grid (a row-major run of grid tokens is
  at most ``2 * axes - 1`` boxes; a tile of a tile-aligned order is one box) and runs of tokens outside the grid;
* the pattern classifies every (query piece, key piece) pair as "some pair kept" and "every pair kept" from its
  rule: :class:`~visattn.kernels.neighborhood.NeighborhoodPattern` with per-axis prefix sums of its 1-D masks
  (exact: the mask is kept when every axis keeps it), :class:`~visattn.kernels.radial.RadialPattern` per frame
  pair, comparing the pair's window with the least and the largest flattened-index distance of the two boxes;
  tokens outside the grid follow :func:`~visattn.kernels.patterns.grid_sequence_mask`'s conventions;
* a tile pair is visited when some piece pair keeps a pair, and full when every piece pair keeps every pair and
  both tiles are whole (``create_block_mask`` pads the last tile with masked pairs, so it is never full).

Any other pattern is evaluated one chunk of query tiles at a time (memory bounded by tile x keys, never N x N).
An intersection (:class:`~visattn.kernels.patterns.AllOf`) intersects its members' tiles: full when full in all;
where two or more members are only partly kept, those tile pairs are evaluated to learn whether their kept pairs
meet. The result is the same block mask ``create_block_mask`` builds (``tests/kernels/test_block_masks.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .neighborhood import NeighborhoodPattern
from .patterns import AllOf, Pattern
from .radial import RadialPattern

__all__ = ["TileClasses", "block_mask_from_pattern", "tile_classes"]

# Elements materialized at once (piece pairs, or mask pairs when evaluating): bounds memory at any length.
_CHUNK_ELEMENTS = 1 << 20

# Radial boxes span at most this many frames: the rule looks up every frame pair of two boxes (span x span
# lookups per box pair), while cutting boxes into single frames would multiply the box pairs instead.
_RADIAL_FRAMES_PER_PIECE = 4

#: ``rule(q_lo, q_hi, k_lo, k_hi) -> (some kept, all kept)`` over grid boxes (inclusive corners, ``[P, axes]``),
#: broadcast to ``[query pieces, key pieces]``.
BoxRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TileClasses:
    """Which (query tile, key tile) pairs a pattern visits, and which of them it keeps whole.

    Attributes:
        visited: ``[query tiles, key tiles]`` bool: the tile pair holds at least one kept pair.
        full: ``[query tiles, key tiles]`` bool: every pair of the tile pair is kept (whole tiles only).
    """

    visited: torch.Tensor
    full: torch.Tensor


@dataclass(frozen=True)
class _Side:
    """One sequence (queries or keys) cut into tiles; position ``i`` holds token ``order[i]`` (itself if none)."""

    length: int
    block: int
    order: torch.Tensor | None

    @property
    def num_blocks(self) -> int:
        return -(-self.length // self.block)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.block
        return start, min(self.length, start + self.block)

    def tokens(self, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, stop) if self.order is None else self.order[start:stop]

    def complete(self) -> torch.Tensor:
        """Which tiles are whole (the last one may be cut short; its padding is never kept)."""
        whole = torch.ones(self.num_blocks, dtype=torch.bool)
        whole[-1] = self.length % self.block == 0
        return whole


@dataclass(frozen=True)
class _Pieces:
    """A side's tiles as pieces, listed tile by tile (``block`` is non-decreasing).

    ``lo``/``hi`` are a box's inclusive corners in grid coordinates (zeros for runs outside the grid);
    ``run_lo``/``run_hi`` a run's inclusive sequence indices (zeros for boxes).
    """

    block: torch.Tensor
    is_box: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    run_lo: torch.Tensor
    run_hi: torch.Tensor


# --- pieces ---------------------------------------------------------------------------------------------------------
def _row_major_boxes(start: int, stop: int, grid: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Boxes ``(lo, hi)`` (inclusive corners) that cover the grid-local flat indices ``[start, stop)``."""
    if start >= stop:
        return []
    if len(grid) == 1:
        return [((start,), (stop - 1,))]
    inner = math.prod(grid[1:])
    first, last = start // inner, (stop - 1) // inner

    def on_rows(lo_row: int, hi_row: int, boxes):
        return [((lo_row, *lo), (hi_row, *hi)) for lo, hi in boxes]

    if first == last:
        return on_rows(first, first, _row_major_boxes(start - first * inner, stop - first * inner, grid[1:]))
    head, tail = [], []
    if start % inner:  # a partial leading row
        head = on_rows(first, first, _row_major_boxes(start % inner, inner, grid[1:]))
        first += 1
    if stop % inner:  # a partial trailing row
        tail = on_rows(last, last, _row_major_boxes(0, stop % inner, grid[1:]))
        last -= 1
    middle = [((first,) + (0,) * (len(grid) - 1), (last, *(g - 1 for g in grid[1:])))] if first <= last else []
    return head + middle + tail


def _runs(sorted_tokens: torch.Tensor) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of consecutive values in a sorted 1-D tensor."""
    if sorted_tokens.numel() == 0:
        return []
    breaks = ((sorted_tokens[1:] - sorted_tokens[:-1]) != 1).nonzero().flatten() + 1
    starts = [0, *breaks.tolist()]
    stops = [*breaks.tolist(), sorted_tokens.numel()]
    values = sorted_tokens.tolist()
    return [(values[a], values[b - 1] + 1) for a, b in zip(starts, stops)]


def _grid_boxes(local: torch.Tensor, grid: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Boxes covering a sorted set of grid-local indices: one box when they fill their bounding box."""
    strides = [math.prod(grid[axis + 1 :]) for axis in range(len(grid))]
    coords = [(local // stride) % size for stride, size in zip(strides, grid)]
    lo = tuple(int(c.min()) for c in coords)
    hi = tuple(int(c.max()) for c in coords)
    # Distinct tokens inside their bounding box fill it when there are as many as the box holds.
    if math.prod(top - bottom + 1 for bottom, top in zip(lo, hi)) == local.numel():
        return [(lo, hi)]
    return [box for start, stop in _runs(local) for box in _row_major_boxes(start, stop, grid)]


def _pieces(side: _Side, grid: tuple[int, ...], offset: int, cut: int, axis0_span: int | None = None) -> _Pieces:
    """The pieces of every tile of ``side`` for a grid at ``offset``; runs outside the grid split at ``cut``.

    ``cut`` (the end of the keys grid queries attend to after the grid) keeps every run uniform for the text rule.
    ``axis0_span`` cuts boxes into slices of at most that many coordinates on axis 0 (frames, for the radial rule).
    """
    n, axes = math.prod(grid), len(grid)
    end = offset + n
    block_ids, is_box, lo, hi, run_lo, run_hi = [], [], [], [], [], []

    def add(index: int, box: bool, corners=None, run=None) -> None:
        if box and axis0_span is not None and corners[1][0] - corners[0][0] >= axis0_span:
            for first in range(corners[0][0], corners[1][0] + 1, axis0_span):
                last = min(first + axis0_span - 1, corners[1][0])
                add(index, True, ((first, *corners[0][1:]), (last, *corners[1][1:])))
            return
        block_ids.append(index)
        is_box.append(box)
        lo.append(corners[0] if box else (0,) * axes)
        hi.append(corners[1] if box else (0,) * axes)
        run_lo.append(run[0] if run else 0)
        run_hi.append(run[1] - 1 if run else 0)

    for index in range(side.num_blocks):
        start, stop = side.bounds(index)
        if side.order is None:
            # Row-major positions: at most a run before the grid, one grid run and a run after it.
            boxes = _row_major_boxes(max(start, offset) - offset, min(stop, end) - offset, grid)
            outside = [(start, min(stop, offset)), (max(start, end), stop)]
            outside = [(a, b) for a, b in outside if a < b]
        else:
            tokens = side.tokens(start, stop).sort().values
            inside = (tokens >= offset) & (tokens < end)
            boxes = _grid_boxes(tokens[inside] - offset, grid) if bool(inside.any()) else []
            outside = _runs(tokens[~inside])
        for corners in boxes:
            add(index, True, corners)
        for a, b in outside:
            for run in ((a, cut), (cut, b)) if a < cut < b else ((a, b),):
                add(index, False, run=run)
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return _Pieces(
        as_long(block_ids),
        torch.tensor(is_box, dtype=torch.bool),
        as_long(lo).view(-1, axes),
        as_long(hi).view(-1, axes),
        as_long(run_lo),
        as_long(run_hi),
    )


# --- box rules --------------------------------------------------------------------------------------------------------
def _neighborhood_rule(pattern: NeighborhoodPattern) -> BoxRule:
    """Exact per box pair: a separable mask keeps some (every) pair of two boxes when every axis does."""
    sums = []
    for axis, size in enumerate(pattern.grid):
        table = torch.zeros(size + 1, size + 1, dtype=torch.long)
        table[1:, 1:] = pattern.axis_mask(axis).long().cumsum(0).cumsum(1)
        sums.append(table)

    def rule(q_lo, q_hi, k_lo, k_hi):
        some = every = torch.ones((), dtype=torch.bool)
        for axis, table in enumerate(sums):
            a0, a1 = q_lo[:, axis, None], q_hi[:, axis, None] + 1
            b0, b1 = k_lo[None, :, axis], k_hi[None, :, axis] + 1
            kept = table[a1, b1] - table[a0, b1] - table[a1, b0] + table[a0, b0]
            some = some & (kept > 0)
            every = every & (kept == (a1 - a0) * (b1 - b0))
        return some, every

    return rule


def _radial_rule(pattern: RadialPattern) -> BoxRule:
    """Exact per box pair: the frame pairs' windows against the boxes' least and largest distance.

    A pair is kept when ``|s_q - s_k| <= window`` with ``s = h * width + w``; every frame of a box has the same
    ``(h, w)`` range, so a box pair keeps some pair when its widest frame-pair window reaches the least distance
    between the boxes' ``(h, w)`` ranges, and every pair when its narrowest window reaches the largest.
    """
    table = pattern.frame_window_table()
    width = pattern.grid[2]

    def rule(q_lo, q_hi, k_lo, k_hi):
        widest = narrowest = None
        for step_q in range(int((q_hi[:, 0] - q_lo[:, 0]).max()) + 1):
            q_frame = torch.minimum(q_lo[:, 0] + step_q, q_hi[:, 0])[:, None]
            for step_k in range(int((k_hi[:, 0] - k_lo[:, 0]).max()) + 1):
                window = table[q_frame, torch.minimum(k_lo[:, 0] + step_k, k_hi[:, 0])[None, :]]
                widest = window if widest is None else torch.maximum(widest, window)
                narrowest = window if narrowest is None else torch.minimum(narrowest, window)
        dh_lo, dh_hi = q_lo[:, 1, None] - k_hi[None, :, 1], q_hi[:, 1, None] - k_lo[None, :, 1]
        dw_lo, dw_hi = q_lo[:, 2, None] - k_hi[None, :, 2], q_hi[:, 2, None] - k_lo[None, :, 2]
        largest = torch.maximum(dh_hi * width + dw_hi, -(dh_lo * width + dw_lo))

        def distance(dh):  # least |dh * width + dw| over the box's dw range, for one row difference dh
            zero = torch.zeros((), dtype=torch.long)
            return torch.maximum(torch.maximum(dh * width + dw_lo, -(dh * width + dw_hi)), zero)

        # distance() is convex in dh and first reaches its least value at the smallest dh with
        # dh * width + dw_hi >= 0 (or one row before): clamp both candidates into the box's dh range.
        right = -torch.div(dw_hi, width, rounding_mode="floor")
        least = torch.minimum(
            distance(torch.minimum(torch.maximum(right, dh_lo), dh_hi)),
            distance(torch.minimum(torch.maximum(right - 1, dh_lo), dh_hi)),
        )
        return widest >= least, narrowest >= largest

    return rule


# --- classification ---------------------------------------------------------------------------------------------------
def _structural_classes(
    pattern: NeighborhoodPattern | RadialPattern,
    q_side: _Side,
    k_side: _Side,
    rule: BoxRule,
    axis0_span: int | None = None,
) -> TileClasses:
    """Tiles of a grid pattern from its box rule and the text conventions of ``grid_sequence_mask``."""
    grid, offset = pattern.grid, pattern.offset
    end = offset + math.prod(grid)
    cut = end + pattern.extra_keys
    q = _pieces(q_side, grid, offset, cut, axis0_span)
    k = _pieces(k_side, grid, offset, cut, axis0_span)
    # Keys outside the grid a grid query keeps: the extra keys after the grid, and (prefix_keys) all before it.
    text_for_grid = (k.run_lo >= end) & (k.run_hi < cut)
    if pattern.prefix_keys:
        text_for_grid = text_for_grid | (k.run_hi < offset)
    grid_for_text = pattern.text_queries == "full"

    nq, nk = q_side.num_blocks, k_side.num_blocks
    # Key pieces are listed tile by tile: per-tile sums are differences of a running sum at tile boundaries.
    k_stops = torch.bincount(k.block, minlength=nk).cumsum(0)
    k_starts = k_stops - torch.bincount(k.block, minlength=nk)
    some_count = torch.zeros(nq, nk, dtype=torch.long)
    short_count = torch.zeros(nq, nk, dtype=torch.long)
    rows = max(1, _CHUNK_ELEMENTS // max(1, k.block.numel()))
    for first in range(0, q.block.numel(), rows):
        part = slice(first, first + rows)
        some, every = rule(q.lo[part], q.hi[part], k.lo, k.hi)
        q_box, k_box = q.is_box[part, None], k.is_box[None, :]
        for_text = torch.where(k_box, torch.tensor(grid_for_text), torch.tensor(True))
        some = torch.where(q_box, torch.where(k_box, some, text_for_grid[None, :]), for_text)
        every = torch.where(q_box, torch.where(k_box, every, text_for_grid[None, :]), for_text)
        for kept, counts in ((some, some_count), (~every, short_count)):
            running = torch.nn.functional.pad(kept.long().cumsum(1), (1, 0))
            counts.index_add_(0, q.block[part], running[:, k_stops] - running[:, k_starts])
    full = (short_count == 0) & q_side.complete()[:, None] & k_side.complete()[None, :]
    return TileClasses(some_count > 0, full)


def _tile_positions(side: _Side, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([T, block] tokens, [T, block] valid)`` of the given tiles; positions past the end are padding."""
    positions = blocks.view(-1, 1) * side.block + torch.arange(side.block).view(1, -1)
    valid = positions < side.length
    positions = positions.clamp(max=side.length - 1)
    tokens = positions if side.order is None else side.order[positions]
    return tokens, valid


def _evaluate_tile_pairs(
    pattern: Pattern, q_side: _Side, k_side: _Side, pairs: torch.Tensor, b: int = 0, h: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(some kept, all kept)`` of the listed ``[T, 2]`` tile pairs, evaluating the pattern on their pairs only."""
    per_pair = q_side.block * k_side.block
    some, every = [], []
    index_b, index_h = torch.tensor(b), torch.tensor(h)
    for first in range(0, pairs.shape[0], max(1, _CHUNK_ELEMENTS // per_pair)):
        chunk = pairs[first : first + max(1, _CHUNK_ELEMENTS // per_pair)]
        q_tokens, q_valid = _tile_positions(q_side, chunk[:, 0])
        k_tokens, k_valid = _tile_positions(k_side, chunk[:, 1])
        keep = pattern.mask_mod(index_b, index_h, q_tokens[:, :, None], k_tokens[:, None, :])
        keep = keep & q_valid[:, :, None] & k_valid[:, None, :]
        some.append(keep.flatten(1).any(1))
        every.append(keep.flatten(1).all(1))
    return torch.cat(some), torch.cat(every)


def _evaluated_classes(pattern: Pattern, q_side: _Side, k_side: _Side, b: int = 0, h: int = 0) -> TileClasses:
    """Any pattern: evaluate its mask a chunk of whole query tiles at a time (tile x keys, never N x N)."""
    nq, nk = q_side.num_blocks, k_side.num_blocks
    padded_keys = nk * k_side.block
    visited = torch.zeros(nq, nk, dtype=torch.bool)
    full = torch.zeros(nq, nk, dtype=torch.bool)
    k_tokens = k_side.tokens(0, k_side.length)
    index_b, index_h = torch.tensor(b), torch.tensor(h)
    tiles = max(1, _CHUNK_ELEMENTS // (q_side.block * padded_keys))
    for first in range(0, nq, tiles):
        blocks = torch.arange(first, min(nq, first + tiles))
        q_tokens, q_valid = _tile_positions(q_side, blocks)
        keep = pattern.mask_mod(index_b, index_h, q_tokens.view(-1, 1), k_tokens.view(1, -1))
        keep = keep.expand(q_tokens.numel(), k_side.length) & q_valid.view(-1, 1)
        # Pad the keys to whole tiles (padding is "not kept"), then reduce each tile pair.
        keep = torch.nn.functional.pad(keep, (0, padded_keys - k_side.length))
        keep = keep.view(blocks.numel(), q_side.block, nk, k_side.block)
        visited[blocks] = keep.any(3).any(1)
        full[blocks] = keep.all(3).all(1)
    return TileClasses(visited, full)


def _classes(pattern: Pattern, q_side: _Side, k_side: _Side) -> TileClasses:
    """Dispatch on the pattern's type (batch- and head-independent patterns only).

    Exact types only: a subclass may change the mask the structure describes, so it is evaluated instead.
    """
    if type(pattern) is NeighborhoodPattern:
        return _structural_classes(pattern, q_side, k_side, _neighborhood_rule(pattern))
    if type(pattern) is RadialPattern:
        rule = _radial_rule(pattern)
        return _structural_classes(pattern, q_side, k_side, rule, axis0_span=_RADIAL_FRAMES_PER_PIECE)
    if isinstance(pattern, AllOf):
        members = [_classes(part, q_side, k_side) for part in pattern.parts]
        visited = torch.stack([m.visited for m in members]).all(0)
        full = torch.stack([m.full for m in members]).all(0)
        # With at most one member partly kept, its kept pairs are the intersection's; with two or more, whether
        # their kept pairs meet is learnt by evaluating those tile pairs.
        partial = torch.stack([m.visited & ~m.full for m in members]).sum(0)
        unsure = (visited & (partial >= 2)).nonzero()
        if unsure.numel():
            some, _ = _evaluate_tile_pairs(pattern, q_side, k_side, unsure)
            visited[unsure[:, 0], unsure[:, 1]] = some
        return TileClasses(visited, full)
    return _evaluated_classes(pattern, q_side, k_side)


def tile_classes(
    pattern: Pattern,
    q_len: int,
    kv_len: int,
    block: int | tuple[int, int] = 128,
    *,
    q_order: torch.Tensor | None = None,
    kv_order: torch.Tensor | None = None,
    b: int = 0,
    h: int = 0,
) -> TileClasses:
    """Visited and full (query tile, key tile) pairs of ``pattern`` at these lengths, without an N x N mask.

    Args:
        pattern: any pattern; neighborhoods, radial masks and their intersections are classified from their
            structure, others evaluated a chunk of query tiles at a time.
        q_len, kv_len: sequence lengths.
        block: tile size in tokens, or ``(query tile, key tile)``.
        q_order, kv_order: optional token orders (position ``i`` holds token ``order[i]``, as the flex backend's
            tile-aligned order).
        b, h: batch item and head, for patterns that depend on them (evaluated then).
    """
    q_block, kv_block = (block, block) if isinstance(block, int) else block
    if q_len <= 0 or kv_len <= 0 or q_block <= 0 or kv_block <= 0:
        raise ValueError(f"q_len={q_len}, kv_len={kv_len} and block={block} must be positive")
    as_order = lambda order: None if order is None else order.detach().to("cpu", torch.long)  # noqa: E731
    q_side = _Side(q_len, q_block, as_order(q_order))
    k_side = _Side(kv_len, kv_block, as_order(kv_order))
    if pattern.depends_on_batch_or_head:
        return _evaluated_classes(pattern, q_side, k_side, b, h)
    return _classes(pattern, q_side, k_side)


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention's per-row layout: how many tiles are set, and their indices first (ascending), then the rest."""
    dense = dense.to(torch.int32)
    counts = dense.sum(-1, dtype=torch.int32)
    indices = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
    return counts.contiguous(), indices.contiguous()


def block_mask_from_pattern(
    pattern: Pattern,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    *,
    mask_mod,
    device: torch.device | str = "cpu",
    block_size: int | tuple[int, int] = 128,
    q_order: torch.Tensor | None = None,
    kv_order: torch.Tensor | None = None,
):
    """FlexAttention's ``BlockMask`` of ``pattern`` built from :func:`tile_classes` (the same one
    ``create_block_mask(mask_mod, ...)`` builds, in bounded memory).

    ``mask_mod`` is what FlexAttention applies inside partly kept tiles (the pattern's, over ``q_order`` /
    ``kv_order`` positions when given). The mask has one batch item and head unless the pattern depends on them.
    """
    from torch.nn.attention.flex_attention import BlockMask

    per_item = pattern.depends_on_batch_or_head
    items = [(b, h) for b in range(batch if per_item else 1) for h in range(heads if per_item else 1)]
    classes = [
        tile_classes(pattern, q_len, kv_len, block_size, q_order=q_order, kv_order=kv_order, b=b, h=h) for b, h in items
    ]
    shape = (batch, heads) if per_item else (1, 1)
    visited = torch.stack([c.visited for c in classes]).view(*shape, *classes[0].visited.shape)
    full = torch.stack([c.full for c in classes]).view(*shape, *classes[0].full.shape)
    partial_counts, partial_indices = _ordered(visited & ~full)
    full_counts, full_indices = _ordered(full)
    return BlockMask.from_kv_blocks(
        partial_counts.to(device),
        partial_indices.to(device),
        full_counts.to(device),
        full_indices.to(device),
        BLOCK_SIZE=block_size,
        mask_mod=mask_mod,
        seq_lengths=(q_len, kv_len),
    )
