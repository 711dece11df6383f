"""The NATTEN backend (availability, what it accepts, its reshaping glue) and FlexAttention's tile-aligned order.

NATTEN is optional: the glue is exercised everywhere through a stand-in ``natten`` module whose functional API
is computed by visattn's reference backend, and against the real package when it is importable.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch
from helpers import BandPattern, HeadScale

from visattn.kernels import (
    AttentionRequest,
    DensePattern,
    NeighborhoodPattern,
    all_of,
    attention,
    autotune,
    available_backends,
    choose_backend,
    density,
    tile_aligned_order,
)
from visattn.kernels.backends import flex, reference
from visattn.kernels.backends import natten as natten_backend

HAS_NATTEN = importlib.util.find_spec("natten") is not None


def qkv(n_q, n_k=None, batch=2, heads=3, dim=16, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n_k = n_q if n_k is None else n_k
    q = torch.randn(batch, heads, n_q, dim, generator=generator).to(dtype)
    k = torch.randn(batch, heads, n_k, dim, generator=generator).to(dtype)
    v = torch.randn(batch, heads, n_k, dim, generator=generator).to(dtype)
    return q, k, v


# Layouts NATTEN's API covers: image only, strided/dilated/causal windows, extra keys after the grid (NATTEN's
# additional_keys), text placed before the grid (joint attention), text queries attending to all or to text.
CASES = {
    "2d": (NeighborhoodPattern((6, 7), 3), 42, 42),
    "2d-dilated-strided": (NeighborhoodPattern((6, 7), (3, 5), dilation=(2, 1), stride=(1, 2)), 42, 42),
    "3d-causal-frames": (NeighborhoodPattern((3, 4, 5), (2, 3, 3), is_causal=(True, False, False)), 60, 60),
    "1d": (NeighborhoodPattern((10,), 3), 10, 10),
    "extra-keys": (NeighborhoodPattern((6, 7), 3, extra_keys=5), 42, 47),
    "text-first": (NeighborhoodPattern((6, 7), 3, offset=4), 46, 46),
    "text-first-text-only": (NeighborhoodPattern((6, 7), 3, offset=4, text_queries="text"), 46, 46),
    "text-last": (NeighborhoodPattern((6, 7), 3, extra_keys=5), 47, 47),
    "text-last-text-only": (NeighborhoodPattern((6, 7), (3, 5), extra_keys=5, text_queries="text"), 47, 47),
}


# --- a stand-in natten package --------------------------------------------------------------------------------------
def fake_natten(calls: list, version: str = "0.21.7") -> types.ModuleType:
    """A ``natten`` module with NATTEN's functional signatures, computed by the reference backend.

    Checks what NATTEN checks about its inputs (layout, contiguity) and records each call.
    """

    def neighborhood(na_dim):
        def na(
            query,
            key,
            value,
            kernel_size,
            stride=1,
            dilation=1,
            is_causal=False,
            scale=None,
            additional_keys=None,
            additional_values=None,
            return_lse=False,
            **performance_args,
        ):
            assert query.dim() == key.dim() == value.dim() == na_dim + 3
            assert query.is_contiguous() and key.is_contiguous() and value.is_contiguous()
            grid, batch, heads = tuple(query.shape[1 : 1 + na_dim]), query.shape[0], query.shape[-2]
            extra = 0 if additional_keys is None else additional_keys.shape[1]
            calls.append((f"na{na_dim}d", grid, extra, kernel_size, stride, dilation, is_causal))

            def flat(x):
                return x.reshape(batch, -1, heads, x.shape[-1]).transpose(1, 2)

            k, v = flat(key), flat(value)
            if additional_keys is not None:
                assert additional_keys.is_contiguous() and additional_values.is_contiguous()
                k = torch.cat([k, additional_keys.transpose(1, 2)], dim=2)
                v = torch.cat([v, additional_values.transpose(1, 2)], dim=2)
            pattern = NeighborhoodPattern(grid, kernel_size, dilation, stride, is_causal, extra_keys=extra)
            out, lse = reference.run(AttentionRequest(flat(query), k, v, pattern=pattern, scale=scale, return_lse=True))
            out = out.transpose(1, 2).reshape(batch, *grid, heads, out.shape[-1])
            lse = lse.transpose(1, 2).reshape(batch, *grid, heads)
            return (out, lse) if return_lse else out

        return na

    def dense(query, key, value, is_causal=False, scale=None, return_lse=False, **performance_args):
        assert query.dim() == 4 and query.is_contiguous() and key.is_contiguous() and not is_causal
        calls.append(("attention", query.shape[1], key.shape[1]))
        request = AttentionRequest(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=scale)
        request.return_lse = True
        out, lse = reference.run(request)
        return (out.transpose(1, 2), lse.transpose(1, 2)) if return_lse else out.transpose(1, 2)

    functional = types.ModuleType("natten.functional")
    functional.na1d, functional.na2d, functional.na3d = neighborhood(1), neighborhood(2), neighborhood(3)
    functional.attention = dense
    # NATTEN's backend selection, which visattn asks before running: the stand-in computes any shape.
    backends = types.ModuleType("natten.backends")
    backends.choose_backend = lambda query, key, value, torch_compile=False: "reference"
    backends.choose_fmha_backend = lambda query, key, value, **kwargs: "reference"
    module = types.ModuleType("natten")
    module.__version__ = version
    module.functional = functional
    module.backends = backends
    return module


@pytest.fixture(autouse=True)
def fresh_auto_decisions():
    """backend="auto" caches its decisions per call shape; these tests swap NATTEN in and out between calls."""
    autotune.clear()
    natten_backend._ACCEPTS.clear()
    yield
    autotune.clear()


@pytest.fixture
def natten_calls(monkeypatch):
    calls: list = []
    module = fake_natten(calls)
    monkeypatch.setitem(sys.modules, "natten", module)
    monkeypatch.setitem(sys.modules, "natten.functional", module.functional)
    monkeypatch.setitem(sys.modules, "natten.backends", module.backends)
    return calls


@pytest.fixture
def no_natten(monkeypatch):
    monkeypatch.setitem(sys.modules, "natten", None)  # makes `import natten` raise ImportError
    monkeypatch.setattr(natten_backend, "_IMPORT_FAILURE", None)


# --- availability and what the backend accepts ----------------------------------------------------------------
def test_missing_natten_is_reported_with_the_install_hint(no_natten):
    assert natten_backend.availability() == (False, "natten is not installed (pip install visattn[natten])")
    assert available_backends()["natten"] == natten_backend.availability()
    q, k, v = qkv(42)
    pattern = CASES["2d"][0]
    assert choose_backend(AttentionRequest(q, k, v, pattern=pattern)) == "reference"
    with pytest.raises(ValueError, match="backend='natten' is not available: natten is not installed"):
        attention(q, k, v, pattern=pattern, backend="natten")


def test_old_or_incomplete_natten_is_not_available(monkeypatch):
    old = fake_natten([], version="0.17.5")
    monkeypatch.setitem(sys.modules, "natten", old)
    ok, reason = natten_backend.availability()
    assert not ok and reason == "natten 0.17.5 is too old; visattn needs natten >= 0.20"
    incomplete = fake_natten([])
    del incomplete.functional.attention
    monkeypatch.setitem(sys.modules, "natten", incomplete)
    assert natten_backend.availability() == (False, "natten 0.21.7 has no natten.functional.attention")


def test_supports_only_plain_neighborhood_requests():
    q, k, v = qkv(42)
    pattern = CASES["2d"][0]

    def supported(**changes):
        request = AttentionRequest(q, k, v, pattern=pattern)
        for name, value in changes.items():
            setattr(request, name, value)
        return natten_backend.supports(request)

    assert supported() and supported(return_lse=True) and supported(q=q.half(), k=k.half(), v=v.half())
    assert not supported(pattern=None) and not supported(pattern=DensePattern())
    assert not supported(pattern=BandPattern(2)) and not supported(pattern=all_of([pattern, BandPattern(2)]))
    assert not supported(score_mod=HeadScale(0.5))
    assert not supported(attn_mask=torch.zeros(1, 1, 1, 42))
    assert not supported(q=q.double(), k=k.double(), v=v.double())
    assert not supported(k=k[:, :, :40], v=v[:, :, :40])  # the grid does not fit in the keys
    assert not supported(q=q[..., :8])  # q and k head dims differ
    # Text queries restricted to text keys, but there is no text key.
    text_only = NeighborhoodPattern((6, 7), 3, text_queries="text")
    q_long, _, _ = qkv(45)
    assert not supported(q=q_long, pattern=text_only) and supported(q=q_long, pattern=CASES["2d"][0])


def test_auto_picks_natten_for_plain_neighborhoods_when_installed(natten_calls):
    assert available_backends()["natten"][0]
    q, k, v = qkv(42)
    pattern = CASES["2d"][0]
    assert choose_backend(AttentionRequest(q, k, v, pattern=pattern)) == "natten"
    assert choose_backend(AttentionRequest(q, k, v, pattern=pattern, score_mod=HeadScale(0.1))) == "reference"
    assert choose_backend(AttentionRequest(q, k, v)) == "sdpa"


# --- the glue: reshaping to [B, *grid, H, D], additional keys, text rows -----------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_glue_equals_the_reference_backend(natten_calls, case):
    pattern, n_q, n_k = CASES[case]
    q, k, v = qkv(n_q, n_k)
    expected, expected_lse = attention(q, k, v, pattern=pattern, backend="reference", return_lse=True)
    out, lse = attention(q, k, v, pattern=pattern, backend="natten", return_lse=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, pattern=pattern, backend="natten"), out)
    # One neighborhood call with NATTEN's arguments, plus one dense call only when text queries exist.
    na_calls = [call for call in natten_calls if call[0].startswith("na")]
    grid = pattern.grid
    extra_keys = (pattern.offset if pattern.prefix_keys else 0) + min(pattern.extra_keys, n_k - math.prod(grid))
    expected_call = (f"na{len(grid)}d", grid, extra_keys, pattern.kernel_size, pattern.stride, pattern.dilation)
    assert na_calls[0][:6] == expected_call and na_calls[0][6] == pattern.is_causal
    dense_calls = [call for call in natten_calls if call[0] == "attention"]
    assert len(dense_calls) == (2 if n_q > math.prod(grid) else 0)  # with and without lse


def test_glue_keeps_dtype_and_value_head_dim(natten_calls):
    q, k, v = qkv(46, dtype=torch.bfloat16)
    v = torch.cat([v, v[..., :4]], dim=-1)  # value head_dim 20, query/key 16
    pattern = CASES["text-first"][0]
    out = attention(q, k, v, pattern=pattern, backend="natten")
    expected = attention(q, k, v, pattern=pattern, backend="reference")
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 46, 20)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not HAS_NATTEN, reason="natten is not installed (pip install visattn[natten])")
@pytest.mark.parametrize("case", list(CASES))
def test_real_natten_equals_the_reference_backend(case):
    assert natten_backend.availability()[0], natten_backend.availability()[1]
    pattern, n_q, n_k = CASES[case]
    q, k, v = qkv(n_q, n_k)
    expected, expected_lse = attention(q, k, v, pattern=pattern, backend="reference", return_lse=True)
    out, lse = attention(q, k, v, pattern=pattern, backend="natten", return_lse=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


# --- FlexAttention's tile-aligned token order -------------------------------------------------------------------
@pytest.mark.parametrize(
    "pattern, expected",
    [
        (NeighborhoodPattern((16, 64), 7), (16, 8)),
        (NeighborhoodPattern((64, 64), (8, 16), stride=(8, 16)), (8, 16)),  # GNA: windows shared per tile
        (NeighborhoodPattern((4, 16, 16), (3, 5, 5), is_causal=(True, False, False)), (4, 2, 16)),
    ],
)
def test_tile_shape_is_the_one_visiting_fewest_blocks(pattern, expected):
    grid, offset, axis_masks = flex.grid_layout(pattern)
    assert (grid, offset) == (pattern.grid, 0)
    tile = flex.choose_tile_shape(grid, axis_masks)
    assert tile == expected
    n = math.prod(grid)
    counts = {}
    for candidate in [(16, 8), (8, 16), (4, 32), (2, 64), (4, 4, 8), (4, 2, 16), (1, 8, 16), (2, 4, 16)]:
        if len(candidate) != len(grid) or any(size % side for size, side in zip(grid, candidate)):
            continue
        # The per-axis count is exact: it equals the materialized count in that token order.
        order, _ = tile_aligned_order(grid, candidate)
        counts[candidate] = flex.visited_blocks(candidate, axis_masks)
        assert counts[candidate] == density(pattern, n, tile=(128, 128), order=order).visited_tiles
    assert counts[tile] == min(counts.values())


def test_tile_shape_without_a_candidate_or_a_mask():
    assert flex.choose_tile_shape((24, 24)) is None  # 24 = 8 * 3: no 128-token tile divides the grid
    # Nothing to count without a mask: the row-major box when blocks are boxes, else the squarest tile.
    assert flex.choose_tile_shape((32, 32)) == (4, 32)
    assert flex.choose_tile_shape((64, 48)) == (8, 16)
    assert flex.row_major_tile((16, 64)) == (2, 64) and flex.row_major_tile((4, 8, 8)) == (2, 8, 8)
    assert flex.row_major_tile((24, 24)) is None  # a row-major block is no box there


@pytest.mark.parametrize(
    "pattern, n",
    [
        (NeighborhoodPattern((16, 64), 7), 1024),
        (NeighborhoodPattern((8, 16, 16), (4, 8, 8), stride=(4, 4, 8)), 2048),  # GNA: windows shared per tile
        (NeighborhoodPattern((4, 16, 16), (3, 5, 5), offset=5, extra_keys=0), 5 + 1024),  # text first
        (NeighborhoodPattern((16, 64), (5, 9), dilation=(2, 1), extra_keys=7), 1024 + 7),  # text after
    ],
)
def test_tile_order_visits_fewer_tiles(pattern, n):
    order = flex.tile_order_for(pattern, n, n)
    assert order is not None and math.prod(order.tile_shape) == flex.BLOCK_SIZE
    assert sorted(order.q_order.tolist()) == list(range(n))
    assert torch.equal(order.q_order[order.q_inverse], torch.arange(n))
    block = (flex.BLOCK_SIZE, flex.BLOCK_SIZE)
    row_major = density(pattern, n, tile=block)
    tiled = density(pattern, n, tile=block, order=order.q_order)
    assert tiled.kept_pairs == row_major.kept_pairs
    assert tiled.visited_tiles < row_major.visited_tiles


def test_tile_order_is_skipped_where_it_cannot_help():
    assert flex.tile_order_for(None, 100, 100) is None
    assert flex.tile_order_for(BandPattern(3), 1024, 1024) is None  # no grid
    assert flex.tile_order_for(NeighborhoodPattern((1024,), 9), 1024, 1024) is None  # 1-D: already tiled
    assert flex.tile_order_for(NeighborhoodPattern((8, 16), 3), 128, 128) is None  # a single block
    assert flex.tile_order_for(NeighborhoodPattern((24, 24), 3), 576, 576) is None  # no tile divides it
    assert flex.tile_order_for(NeighborhoodPattern((16, 64), (3, 64)), 1024, 1024) is None  # rows are the tiles


@pytest.mark.parametrize("with_extras", [False, True])
def test_flex_with_and_without_tile_order_equals_the_reference(monkeypatch, with_extras):
    # Text before the grid, a head-dependent modifier and a key-padding mask: all follow the permutation.
    pattern = NeighborhoodPattern((16, 64), 7, offset=3)
    n = 3 + 1024
    q, k, v = qkv(n, batch=1, heads=2)
    pattern = all_of([pattern, BandPattern(300)]) if with_extras else pattern
    modifier = HeadScale(0.5) if with_extras else None
    mask = None
    if with_extras:
        mask = torch.zeros(1, 1, 1, n)
        mask[..., 1] = float("-inf")
    assert flex.tile_order_for(pattern, n, n) is not None
    kwargs = dict(pattern=pattern, score_mod=modifier, attn_mask=mask, return_lse=True)
    expected, expected_lse = attention(q, k, v, backend="reference", **kwargs)
    tiled, tiled_lse = attention(q, k, v, backend="flex", **kwargs)
    monkeypatch.setenv("VISATTN_FLEX_TILE_ORDER", "0")
    row_major, row_major_lse = attention(q, k, v, backend="flex", **kwargs)
    for out, lse in ((tiled, tiled_lse), (row_major, row_major_lse)):
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


def test_block_masks_stay_cached_with_the_tile_order():
    pattern = NeighborhoodPattern((16, 64), 7)
    order = flex.tile_order_for(pattern, 1024, 1024)
    assert flex.tile_order_for(pattern, 1024, 1024) is order
    first = flex.block_mask_for(pattern, 1, 2, 1024, 1024, torch.device("cpu"), order=order)
    assert flex.block_mask_for(pattern, 1, 2, 1024, 1024, torch.device("cpu"), order=order) is first
    row_major = flex.block_mask_for(pattern, 1, 2, 1024, 1024, torch.device("cpu"))
    assert row_major is not first
    # The block mask FlexAttention gets is the sparser one.
    blocks = first.kv_num_blocks.sum() + first.full_kv_num_blocks.sum()
    row_major_blocks = row_major.kv_num_blocks.sum() + row_major.full_kv_num_blocks.sum()
    assert blocks < row_major_blocks
