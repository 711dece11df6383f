"""Exact density of patterns and the tile-aligned token order."""

from __future__ import annotations

import pytest
import torch

from visattn.kernels import DensePattern, NeighborhoodPattern
from visattn.kernels.block_density import density, tile_aligned_order


@pytest.mark.parametrize("pattern", [None, DensePattern()])
def test_dense_is_one(pattern):
    result = density(pattern, (5, 6), tile=(8, 16))
    assert result.kept_fraction == 1.0 and result.tile_fraction == 1.0
    assert result.kept_pairs == result.total_pairs == 900
    assert result.visited_tiles == result.total_tiles == 4 * 2


def test_window_1d_by_hand():
    pattern = NeighborhoodPattern(grid=(8,), kernel_size=3)
    # 8 queries x 3 keys of 64 pairs.
    result = density(pattern, 8, tile=(2, 2))
    assert (result.kept_pairs, result.total_pairs, result.kept_fraction) == (24, 64, 0.375)
    # Query tiles {0,1},{2,3},{4,5},{6,7} see windows [0-2], [1-4], [3-6], [5-7]: 2 + 3 + 3 + 2 key tiles of 16.
    assert (result.visited_tiles, result.total_tiles) == (10, 16)
    assert density(pattern, 8, tile=(4, 4)).tile_fraction == 1.0


def test_chunking_and_extra_keys(monkeypatch):
    import visattn.kernels.block_density as module

    pattern = NeighborhoodPattern(grid=(6, 7), kernel_size=(3, 2), extra_keys=5)
    full = density(pattern, (6, 7), tile=(4, 8), kv_len=47)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 1)  # one query tile per chunk
    assert density(pattern, (6, 7), tile=(4, 8), kv_len=47) == full
    assert full.kept_pairs == 42 * (6 + 5)


def test_tile_order_by_hand_and_round_trip():
    order, inverse = tile_aligned_order((4, 4), (2, 2))
    assert order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    for grid, tile in [((4, 4), (2, 2)), ((5, 7), (2, 3)), ((3, 4, 5), (2, 2, 2)), ((9,), (4,))]:
        order, inverse = tile_aligned_order(grid, tile)
        n = torch.Size(grid).numel()
        assert sorted(order.tolist()) == list(range(n))
        x = torch.randn(2, n, 3)
        assert torch.equal(x[:, order][:, inverse], x) and torch.equal(order[inverse], torch.arange(n))


def test_tile_order_makes_neighborhoods_whole_tiles():
    # Kernel = stride = tile: each query tile attends to exactly its own tile once tiles are contiguous.
    pattern = NeighborhoodPattern(grid=(8, 8), kernel_size=(2, 2), stride=(2, 2))
    order, _ = tile_aligned_order((8, 8), (2, 2))
    tiled = density(pattern, (8, 8), tile=(4, 4), order=order)
    row_major = density(pattern, (8, 8), tile=(4, 4))
    assert tiled.kept_pairs == row_major.kept_pairs == 64 * 4
    assert tiled.visited_tiles == 16 and row_major.visited_tiles > 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="one entry per axis"):
        tile_aligned_order((4, 4), (2,))
    with pytest.raises(ValueError, match="must be positive"):
        density(None, 8, tile=(0, 4))
