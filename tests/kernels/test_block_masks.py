"""Block masks built per tile from a pattern's structure equal torch's ``create_block_mask``, in bounded memory."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils._python_dispatch import TorchDispatchMode

from visattn.kernels import NeighborhoodPattern, attention
from visattn.kernels import block_masks as module
from visattn.kernels.backends import flex
from visattn.kernels.block_density import tile_aligned_order
from visattn.kernels.block_masks import block_mask_from_pattern, tile_classes
from visattn.kernels.patterns import AllOf, Pattern
from visattn.kernels.radial import RadialPattern

_FIELDS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def _mask_mod(pattern: Pattern, q_order=None, kv_order=None):
    if q_order is None:
        return lambda b, h, q, k: pattern.mask_mod(b, h, q, k)
    return lambda b, h, q, k: pattern.mask_mod(b, h, q_order[q], kv_order[k])


def _assert_same_as_torch(pattern, q_len, kv_len, block, q_order=None, kv_order=None, batch=1, heads=1):
    mask_mod = _mask_mod(pattern, q_order, kv_order)
    per_item = pattern.depends_on_batch_or_head
    expected = create_block_mask(
        mask_mod, batch if per_item else None, heads if per_item else None, q_len, kv_len, "cpu", BLOCK_SIZE=block
    )
    built = block_mask_from_pattern(
        pattern, batch, heads, q_len, kv_len, mask_mod=mask_mod, block_size=block, q_order=q_order, kv_order=kv_order
    )
    for name in _FIELDS:
        assert torch.equal(getattr(built, name), getattr(expected, name)), (name, pattern, q_len, kv_len, block)
    assert built.seq_lengths == expected.seq_lengths and built.BLOCK_SIZE == expected.BLOCK_SIZE


def _random_neighborhood(rng: random.Random, grid=None, offset=None) -> NeighborhoodPattern:
    if grid is None:
        axes = rng.randint(1, 3)
        grid = tuple(rng.randint(2, 40 if axes == 1 else 12 if axes == 2 else 7) for _ in range(axes))
    kernel, dilation, stride, causal = [], [], [], []
    for size in grid:
        d = rng.randint(1, max(1, size // 2))
        k = rng.randint(1, size // d)
        kernel.append(k)
        dilation.append(d)
        stride.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
    return NeighborhoodPattern(
        grid,
        tuple(kernel),
        tuple(dilation),
        tuple(stride),
        tuple(causal),
        offset=rng.randint(0, 9) if offset is None else offset,
        extra_keys=rng.randint(0, 7),
        prefix_keys=rng.random() < 0.5,
        text_queries=rng.choice(["full", "text"]),
    )


def _random_radial(rng: random.Random, grid=None, offset=None) -> RadialPattern:
    grid = grid or (rng.randint(1, 12), rng.randint(1, 6), rng.randint(1, 8))
    block = rng.choice([2, 4, 8, 16])
    return RadialPattern(
        grid,
        decay_factor=rng.choice([0.5, 1.0, 2.0]),
        block_size=block,
        dense_distance=rng.randint(1, 3),
        sink_frames=rng.randint(0, min(2, grid[0])),
        sink_queries=rng.random() < 0.3,
        offset=rng.randint(0, 9) if offset is None else offset,
        extra_keys=rng.randint(0, 7),
        prefix_keys=rng.random() < 0.5,
        text_queries=rng.choice(["full", "text"]),
        split_threshold=rng.choice([block, 16, 128]),
    )


def _random_order(rng: random.Random, pattern, length: int) -> torch.Tensor | None:
    """No order, the flex backend's kind (grid tiles first, text after), or any permutation."""
    choice = rng.choice(["none", "none", "tiles", "shuffled"])
    if choice == "none":
        return None
    if choice == "shuffled":
        return torch.randperm(length, generator=torch.Generator().manual_seed(rng.randint(0, 10**6)))
    grid, offset = pattern.grid, pattern.offset
    tile = tuple(rng.randint(1, size) for size in grid)
    grid_order, _ = tile_aligned_order(grid, tile)
    n = grid_order.numel()
    return torch.cat([grid_order + offset, torch.arange(0, offset), torch.arange(offset + n, length)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["neighborhood", "radial"])
def test_grid_patterns_match_create_block_mask(kind, seed):
    rng = random.Random(f"{kind}-{seed}")
    for _ in range(12):
        pattern = _random_neighborhood(rng) if kind == "neighborhood" else _random_radial(rng)
        length = pattern.offset + pattern.num_tokens + rng.randint(0, 9)
        order = _random_order(rng, pattern, length)
        block = rng.choice([4, 8, 16, (8, 4), (4, 16)])
        _assert_same_as_torch(pattern, length, length, block, order, order)


def test_more_keys_than_queries_and_a_partial_last_tile():
    pattern = NeighborhoodPattern((5, 7), (3, 5), dilation=(1, 1), offset=3, extra_keys=6, prefix_keys=True)
    _assert_same_as_torch(pattern, 3 + 35, 3 + 35 + 11, 8)
    radial = RadialPattern((6, 3, 5), block_size=4, split_threshold=4, offset=2, extra_keys=4)
    _assert_same_as_torch(radial, 2 + 90, 2 + 90 + 13, (16, 8))


@pytest.mark.parametrize("seed", range(3))
def test_intersections_match_create_block_mask(seed):
    rng = random.Random(f"all-of-{seed}")
    for _ in range(8):
        if rng.random() < 0.5:
            first = _random_neighborhood(rng)
            second = _random_neighborhood(rng, grid=first.grid, offset=first.offset)
        else:
            first = _random_radial(rng)
            second = _random_neighborhood(rng, grid=first.grid, offset=first.offset)
        pattern = AllOf((first, second))
        length = first.offset + first.num_tokens + rng.randint(0, 6)
        order = _random_order(rng, first, length)
        _assert_same_as_torch(pattern, length, length, rng.choice([4, 8]), order, order)


@dataclass(frozen=True)
class _Diagonals(Pattern):
    """A pattern the structural path does not know: keys within ``width`` of the query or of its mirror."""

    width: int
    length: int

    def mask_mod(self, b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx).abs() <= self.width) | ((self.length - 1 - q_idx - kv_idx).abs() <= self.width)

    def cache_key(self):
        return ("diagonals", self.width, self.length)


@dataclass(frozen=True)
class _PerHeadCausal(Pattern):
    """Causal with a per-(batch, head) lag: exercises masks that differ per batch item and head."""

    def mask_mod(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + 3 * h + 5 * b

    def cache_key(self):
        return ("per-head-causal",)

    @property
    def depends_on_batch_or_head(self) -> bool:
        return True


def test_other_patterns_are_evaluated_per_tile(monkeypatch):
    for width, length, block in ((0, 50, 8), (3, 77, 16), (9, 64, (16, 8))):
        _assert_same_as_torch(_Diagonals(width, length), length, length, block)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 1)  # one query tile at a time
    _assert_same_as_torch(_Diagonals(2, 61), 61, 61, 8)
    _assert_same_as_torch(AllOf((_Diagonals(4, 70), NeighborhoodPattern((7, 10), 3))), 70, 70, 8)
    _assert_same_as_torch(_PerHeadCausal(), 45, 45, 8, batch=2, heads=3)


def test_grid_patterns_never_call_their_mask(monkeypatch):
    def refuse(*args):
        raise AssertionError("the mask was evaluated")

    monkeypatch.setattr(NeighborhoodPattern, "mask_mod", refuse)
    monkeypatch.setattr(RadialPattern, "mask_mod", refuse)
    tile_classes(NeighborhoodPattern((40, 40), 9, offset=30, extra_keys=20), 1650, 1650)
    tile_classes(RadialPattern((5, 16, 24), offset=7), 1927, 1927)


class _LargestTensor(TorchDispatchMode):
    """Records the most elements any tensor op produced while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_a_128x128_grid_is_masked_without_an_n_by_n_tensor():
    pattern = NeighborhoodPattern((128, 128), 13)
    n = pattern.num_tokens
    order = flex.tile_order_for(pattern, n, n)
    with _LargestTensor() as guard:
        built = block_mask_from_pattern(
            pattern, 1, 1, n, n, mask_mod=_mask_mod(pattern), q_order=order.q_order, kv_order=order.kv_order
        )
    # The largest tensor is a chunk of piece pairs (or the [tiles, tiles] layout), not N x N = 2.7e8 booleans.
    assert 0 < guard.largest <= max(module._CHUNK_ELEMENTS, 4 * (n // 128) ** 2) < n * n // 100
    # The guard sees what create_block_mask materializes (checked small): every one of the N x N pairs.
    small = NeighborhoodPattern((32, 32), 5)
    with _LargestTensor() as guard:
        create_block_mask(_mask_mod(small), None, None, 1024, 1024, "cpu")
    assert guard.largest >= 1024 * 1024
    assert int(built.kv_num_blocks.sum() + built.full_kv_num_blocks.sum()) < (n // 128) ** 2 // 10


def test_evaluated_patterns_stay_within_a_tile_of_keys(monkeypatch):
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 1)
    n = 8192
    with _LargestTensor() as guard:
        classes = tile_classes(_Diagonals(5, n), n, n)
    assert guard.largest <= 128 * n
    # Each diagonal visits its tile and both neighbours (one fewer at either end); they share 4 tiles where they cross.
    assert int(classes.visited.sum()) == 2 * (3 * (n // 128) - 2) - 4


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_output_is_unchanged():
    torch.manual_seed(0)
    pattern = NeighborhoodPattern((12, 20), (5, 7), dilation=(1, 2), offset=9, extra_keys=7)
    n = 9 + 240 + 7
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
    mask_mod = _mask_mod(pattern)
    theirs = create_block_mask(mask_mod, None, None, n, n, "cpu", BLOCK_SIZE=16)
    ours = block_mask_from_pattern(pattern, 1, 2, n, n, mask_mod=mask_mod, block_size=16)
    assert torch.equal(flex_attention(q, k, v, block_mask=ours), flex_attention(q, k, v, block_mask=theirs))
    # Through the backend (tile order and block mask of its own) against the reference oracle.
    grid_pattern = NeighborhoodPattern((16, 32), 5, offset=100)
    m = 100 + 512
    q, k, v = (torch.randn(1, 2, m, 8) for _ in range(3))
    assert flex.tile_order_for(grid_pattern, m, m) is not None
    expected = attention(q, k, v, pattern=grid_pattern, backend="reference")
    torch.testing.assert_close(attention(q, k, v, pattern=grid_pattern, backend="flex"), expected)


def test_table_and_axis_masks_describe_the_patterns():
    radial = RadialPattern((9, 3, 4), block_size=2, split_threshold=8, sink_frames=2, sink_queries=True)
    table = radial.frame_window_table()
    for i in range(9):
        for j in range(9):
            window = radial.frame_pair_window(i, j)
            assert int(table[i, j]) == (-1 if window is None else window)
    pattern = NeighborhoodPattern((6, 9), (3, 4), dilation=(2, 1), stride=(1, 2), is_causal=(False, True))
    q, k = torch.arange(54).view(-1, 1), torch.arange(54).view(1, -1)
    rows, cols = pattern.axis_mask(0), pattern.axis_mask(1)
    separable = rows[q // 9, k // 9] & cols[q % 9, k % 9]
    assert torch.equal(separable, pattern.neighborhood_mask(q, k))
