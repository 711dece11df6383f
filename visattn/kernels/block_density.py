"""How sparse a pattern is, exactly: kept pairs, and the tiles a block-sparse kernel would still have to visit.

A block-sparse kernel (FlexAttention, NATTEN's fused kernels) skips a (query tile, key tile) pair only when no
pair inside it is kept, so ``tile_fraction`` (not ``kept_fraction``) bounds its speedup over dense attention:
at best ``1 / tile_fraction``. For multi-dimensional neighborhoods the row-major token order spreads a
neighborhood over many tiles; :func:`tile_aligned_order` lays out tiles of the grid contiguously (the token
permutation of Generalized Neighborhood Attention, Hassani et al. 2025) so that neighborhoods cover whole tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .patterns import Pattern

__all__ = ["Density", "density", "tile_aligned_order"]

# Mask elements materialized at once: bounds memory (a bool each) whatever the sequence length.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Density:
    """Exact sparsity of a pattern at given lengths and tile sizes."""

    kept_fraction: float
    tile_fraction: float
    kept_pairs: int
    total_pairs: int
    visited_tiles: int
    total_tiles: int


def density(
    pattern: Pattern | None,
    grid: int | Sequence[int],
    tile: tuple[int, int] = (64, 64),
    *,
    kv_len: int | None = None,
    order: torch.Tensor | None = None,
) -> Density:
    """Fraction of query-key pairs ``pattern`` keeps, and of (query tile, key tile) pairs with any kept pair.

    Args:
        pattern: the pattern (``None`` means dense). Evaluated at batch 0, head 0.
        grid: the query sequence length, or a grid whose product is it.
        tile: ``(query tile, key tile)`` sizes in tokens, as a block-sparse kernel's block sizes; the last tile
            of each side may be partial and still counts as one tile.
        kv_len: key sequence length; defaults to the query length.
        order: optional token order (``order[i]`` = the token stored at position ``i``, e.g. from
            :func:`tile_aligned_order`), applied to queries and keys before tiling; needs ``kv_len == q_len``.

    The mask is materialized in chunks of whole query tiles, so memory stays bounded for long sequences.
    """
    q_len = grid if isinstance(grid, int) else math.prod(grid)
    kv_len = q_len if kv_len is None else kv_len
    q_tile, kv_tile = tile
    if q_tile <= 0 or kv_tile <= 0 or q_len <= 0 or kv_len <= 0:
        raise ValueError(f"tile={tile}, q_len={q_len} and kv_len={kv_len} must be positive")
    if order is not None and (kv_len != q_len or order.numel() != q_len):
        raise ValueError(f"order ({order.numel()} tokens) needs q_len == kv_len == its length; got {q_len}, {kv_len}")
    n_q_tiles, n_kv_tiles = -(-q_len // q_tile), -(-kv_len // kv_tile)
    total_pairs, total_tiles = q_len * kv_len, n_q_tiles * n_kv_tiles
    if pattern is None:
        return Density(1.0, 1.0, total_pairs, total_pairs, total_tiles, total_tiles)

    zero = torch.zeros((), dtype=torch.long)
    kv_positions = torch.arange(kv_len) if order is None else order.long()
    # Rows per chunk: whole query tiles, at least one.
    tiles_per_chunk = max(1, _CHUNK_ELEMENTS // (q_tile * kv_len))
    kept = visited = 0
    for first_tile in range(0, n_q_tiles, tiles_per_chunk):
        start = first_tile * q_tile
        stop = min(q_len, (first_tile + tiles_per_chunk) * q_tile)
        q_positions = torch.arange(start, stop) if order is None else order[start:stop].long()
        keep = pattern.mask_mod(zero, zero, q_positions.view(-1, 1), kv_positions.view(1, -1))
        keep = keep.expand(stop - start, kv_len)
        kept += int(keep.sum())
        # Pad to whole tiles (padding is "not kept") and ask, per tile pair, whether anything is kept.
        rows = -(-(stop - start) // q_tile) * q_tile
        padded = torch.zeros(rows, n_kv_tiles * kv_tile, dtype=torch.bool)
        padded[: stop - start, :kv_len] = keep
        visited += int(padded.view(rows // q_tile, q_tile, n_kv_tiles, kv_tile).any(dim=3).any(dim=1).sum())
    return Density(kept / total_pairs, visited / total_tiles, kept, total_pairs, visited, total_tiles)


def tile_aligned_order(grid: Sequence[int], tile_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A token permutation that stores each ``tile_shape`` tile of the grid contiguously, and its inverse.

    Tiles are taken in row-major order over the tile grid and tokens row-major inside each tile; tiles at the
    far borders may be partial when the grid is not divisible. Returns ``(order, inverse)``: ``order[i]`` is the
    row-major index of the token placed at position ``i`` (``x_tiled = x[..., order, :]``), and
    ``inverse`` undoes it (``x = x_tiled[..., inverse, :]``).
    """
    grid, tile_shape = tuple(grid), tuple(tile_shape)
    if len(grid) != len(tile_shape) or any(t <= 0 for t in tile_shape) or any(g <= 0 for g in grid):
        raise ValueError(f"tile_shape {tile_shape} must be positive with one entry per axis of grid {grid}")
    coords = torch.meshgrid(*[torch.arange(size) for size in grid], indexing="ij")
    tiles_per_axis = [-(-g // t) for g, t in zip(grid, tile_shape)]
    tile_index = torch.zeros(grid, dtype=torch.long)
    inner_index = torch.zeros(grid, dtype=torch.long)
    for coord, t, n_tiles in zip(coords, tile_shape, tiles_per_axis):
        tile_index = tile_index * n_tiles + coord // t
        inner_index = inner_index * t + coord % t
    # Sort by (tile, position inside the tile); the key is unique, so the order is a permutation.
    key = tile_index * math.prod(tile_shape) + inner_index
    order = torch.argsort(key.flatten())
    inverse = torch.argsort(order)
    return order, inverse
