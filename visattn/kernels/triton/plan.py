"""Block metadata for the fused kernels: token order and, per tile, the tiles it must visit. No mask tensors.

A :class:`Plan` holds, for one (pattern, sequence lengths, tile sizes, device):

* ``q_order`` / ``kv_order``: the token stored at each kernel position (``int32``), or ``None`` for the identity.
  Grid tokens come first, in :func:`~visattn.kernels.block_density.tile_aligned_order` (GNA's token order, so
  that a neighborhood covers whole tiles), followed by the tokens outside the grid (text) in their own order.
  Putting the grid first aligns its tiles to the kernel's tiles whatever the number of text tokens before it.
  Kernels gather rows through the order and scatter results back through it, so no tensor is permuted in
  memory.
* For each query tile the key tiles it visits, split into *partial* tiles (some pair masked: the kernel
  evaluates the pattern) and *full* tiles (every pair kept: no mask arithmetic), as ``int32`` index lists
  padded to the longest row plus a count per row; and the transpose (per key tile, its query tiles) for the
  key/value-gradient kernel.

The tile states are computed once, exactly, from the pattern's own ``mask_mod`` on the tensors' device, in
chunks of query tiles (bounded memory), and cached (LRU) per pattern, lengths, tile sizes and device.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from ..block_density import tile_aligned_order
from ..neighborhood import NeighborhoodPattern, window_bounds
from .kernel_spec import KernelSpec, grid_layout

__all__ = ["Plan", "TileLists", "get_plan", "tile_shape_for"]

# Mask elements evaluated at once while classifying tiles (a bool each, plus the pattern's temporaries).
_CHUNK_ELEMENTS = 1 << 24
_CACHE_SIZE = 64
_PLANS: OrderedDict[Hashable, Plan] = OrderedDict()

EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class TileLists:
    """Per row tile, the column tiles to visit: ``index[row, :count[row]]`` (int32), partial and full apart."""

    partial_index: torch.Tensor
    partial_count: torch.Tensor
    full_index: torch.Tensor
    full_count: torch.Tensor


@dataclass(frozen=True)
class Plan:
    block_m: int
    block_n: int
    q_order: torch.Tensor | None
    kv_order: torch.Tensor | None
    by_query: TileLists
    by_key: TileLists
    visited_tiles: int
    total_tiles: int


def _greedy_tile_shape(grid: tuple[int, ...], tokens: int) -> tuple[int, ...]:
    """Powers of two that divide each axis, grown round-robin from the last axis (square-ish tiles)."""
    tile = [1] * len(grid)
    remaining = tokens
    grew = True
    while remaining > 1 and grew:
        grew = False
        for axis in reversed(range(len(grid))):
            if remaining > 1 and grid[axis] % (tile[axis] * 2) == 0:
                tile[axis] *= 2
                remaining //= 2
                grew = True
    return tuple(tile)


def _axis_tile_pairs(length: int, tile: int, kernel: int, dilation: int, stride: int, causal: bool) -> int:
    """(query tile, key tile) pairs along one axis, with tiles of ``tile`` coordinates, that keep any pair."""
    pairs = 0
    for first_query in range(0, length, tile):
        touched = set()
        for coord in range(first_query, min(length, first_query + tile)):
            first, stop = window_bounds(coord, length, kernel, dilation, stride, causal)
            touched.update(key // tile for key in range(first, stop, dilation))
        pairs += len(touched)
    return pairs


def tile_shape_for(
    grid: tuple[int, ...], tokens: int, neighborhood: NeighborhoodPattern | None = None
) -> tuple[int, ...]:
    """The shape of the grid tiles laid out contiguously, at most ``tokens`` tokens each.

    Without a neighborhood: powers of two dividing each axis, grown round-robin from the last (fastest) axis, so
    2-D tiles come out square (``(4, 4)`` for 16 tokens on an ``8 x 8`` grid). With one: among the tiles of
    exactly ``tokens`` tokens whose sides divide the grid (row-major order is among them when a row divides
    ``tokens``), the one with the fewest (query tile, key tile) pairs to visit. Neighborhood attention is
    separable, so a tile pair is visited exactly when it is on every axis and the count is a product of per-axis
    counts, computed from the windows in ``O(length * kernel)`` per axis.
    """
    greedy = _greedy_tile_shape(grid, tokens)
    if neighborhood is None or tuple(neighborhood.grid) != tuple(grid):
        return greedy
    divisors = [[t for t in range(1, size + 1) if size % t == 0 and tokens % t == 0] for size in grid]
    candidates = [shape for shape in itertools.product(*divisors) if math.prod(shape) == tokens]
    if not candidates:
        return greedy

    def cost(shape: tuple[int, ...]) -> tuple[int, bool]:
        per_axis = [
            _axis_tile_pairs(size, t, k, d, s, c)
            for size, t, k, d, s, c in zip(
                grid,
                shape,
                neighborhood.kernel_size,
                neighborhood.dilation,
                neighborhood.stride,
                neighborhood.is_causal,
            )
        ]
        return math.prod(per_axis), shape != greedy  # ties go to the square-ish tile

    return min(candidates, key=cost)


def _order(spec: KernelSpec, length: int, block: int, device: torch.device) -> torch.Tensor | None:
    layout = grid_layout(spec, length)
    if layout is None:
        return None
    grid, offset = layout
    n = math.prod(grid)
    if (len(grid) == 1 or not spec.order_tiled) and offset == 0:
        return None  # row-major is already the order wanted
    if spec.order_tiled:
        grid_order, _ = tile_aligned_order(grid, tile_shape_for(grid, block, spec.neighborhood))
    else:
        grid_order = torch.arange(n)
    order = torch.cat(
        [grid_order + offset, torch.arange(0, offset), torch.arange(offset + n, length)],
    )
    return order.to(device=device, dtype=torch.int32)


def _tile_states(
    spec: KernelSpec,
    q_len: int,
    kv_len: int,
    block_m: int,
    block_n: int,
    q_order: torch.Tensor | None,
    kv_order: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """``[n_q_tiles, n_kv_tiles]`` int8 of EMPTY / PARTIAL / FULL."""
    n_q_tiles, n_kv_tiles = -(-q_len // block_m), -(-kv_len // block_n)
    padded_kv = n_kv_tiles * block_n
    kv_valid = torch.arange(padded_kv, device=device) < kv_len
    if spec.pattern is None:
        states = torch.full((n_q_tiles, n_kv_tiles), FULL, dtype=torch.int8, device=device)
        if kv_len % block_n:
            states[:, -1] = PARTIAL  # the kernel must bound-check the last, partial key tile
        return states
    kv_positions = torch.arange(padded_kv, device=device).clamp_max(kv_len - 1)
    kv_tokens = kv_positions if kv_order is None else kv_order.long()[kv_positions]
    zero = torch.zeros((), dtype=torch.long, device=device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (block_m * padded_kv)) * block_m
    states = []
    for start in range(0, n_q_tiles * block_m, rows_per_chunk):
        stop = min(n_q_tiles * block_m, start + rows_per_chunk)
        positions = torch.arange(start, stop, device=device)
        q_valid = positions < q_len
        positions = positions.clamp_max(q_len - 1)
        q_tokens = positions if q_order is None else q_order.long()[positions]
        keep = spec.pattern.mask_mod(zero, zero, q_tokens.view(-1, 1), kv_tokens.view(1, -1))
        keep = keep.expand(stop - start, padded_kv) & kv_valid.view(1, -1) & q_valid.view(-1, 1)
        tiles = keep.view(-1, block_m, n_kv_tiles, block_n)
        any_kept = tiles.any(dim=3).any(dim=1)
        # Padding query rows do not stop a tile from being full: they are never stored.
        all_kept = (tiles | ~q_valid.view(-1, block_m, 1, 1)).all(dim=3).all(dim=1)
        chunk = torch.where(all_kept, FULL, torch.where(any_kept, PARTIAL, EMPTY)).to(torch.int8)
        states.append(chunk)
    return torch.cat(states, dim=0)


def _lists(states: torch.Tensor) -> TileLists:
    def select(value: int) -> tuple[torch.Tensor, torch.Tensor]:
        hit = states == value
        count = hit.sum(dim=1)
        width = max(1, int(count.max()) if count.numel() else 1)
        # A stable sort of "not hit" puts the hit columns first, in ascending order (sequential key reads).
        order = torch.sort((~hit).to(torch.int8), dim=1, stable=True).indices[:, :width]
        return order.to(torch.int32).contiguous(), count.to(torch.int32).contiguous()

    partial_index, partial_count = select(PARTIAL)
    full_index, full_count = select(FULL)
    return TileLists(partial_index, partial_count, full_index, full_count)


def get_plan(spec: KernelSpec, q_len: int, kv_len: int, block_m: int, block_n: int, device: torch.device) -> Plan:
    """The (cached) plan of ``spec`` for these lengths and tile sizes on ``device``."""
    key = (spec.key, q_len, kv_len, block_m, block_n, str(device))
    cached = _PLANS.get(key)
    if cached is not None:
        _PLANS.move_to_end(key)
        return cached
    # One tile shape for both sides (the smaller block): a larger block is then a run of whole, adjacent tiles.
    block = min(block_m, block_n)
    q_order = _order(spec, q_len, block, device)
    kv_order = _order(spec, kv_len, block, device)
    states = _tile_states(spec, q_len, kv_len, block_m, block_n, q_order, kv_order, device)
    plan = Plan(
        block_m=block_m,
        block_n=block_n,
        q_order=q_order,
        kv_order=kv_order,
        by_query=_lists(states),
        by_key=_lists(states.t()),
        visited_tiles=int((states != EMPTY).sum()),
        total_tiles=states.numel(),
    )
    _PLANS[key] = plan
    if len(_PLANS) > _CACHE_SIZE:
        _PLANS.popitem(last=False)
    return plan
