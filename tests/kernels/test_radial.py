"""Radial Attention's pattern (:mod:`visattn.kernels.radial`): the static mask against a brute-force oracle, its
O(n log n) density, bad parameters. The effect end to end: ``tests/effects/test_radial_attention.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visattn.kernels import RadialPattern, attention, density


# --- the oracle: the authors' rule, one pair at a time --------------------------------------------------------
def oracle(
    grid,
    length,
    *,
    decay_factor=1.0,
    block_size=128,
    dense_distance=2,
    sink_frames=1,
    sink_queries=False,
    offset=0,
    extra_keys=0,
    prefix_keys=True,
    text_queries="full",
    split_threshold=128,
):
    """Written from the description of the authors' ``get_window_width`` / ``get_diagonal_split_mask``: the split
    applies to every distance >= 1 (whole pairs included), at ``split_threshold`` (their hardcoded 128)."""
    frames, height, width = grid
    per_frame = height * width
    latents = frames * per_frame

    def latent_pair(q, k):
        q_frame, q_pos = divmod(q, per_frame)
        k_frame, k_pos = divmod(k, per_frame)
        if k_frame < sink_frames or (sink_queries and q_frame < sink_frames):
            return True
        distance = abs(q_frame - k_frame)
        if distance == 0:
            return True
        group = distance.bit_length()
        decay_length = 2 ** per_frame.bit_length() / 2**group
        if decay_length < split_threshold and distance % int(split_threshold / decay_length) != 0:
            return False
        if distance < dense_distance:
            return True
        return abs(q_pos - k_pos) <= max(decay_length * decay_factor, block_size)

    keep = torch.zeros(length, length, dtype=torch.bool)
    for q in range(length):
        q_latent = offset <= q < offset + latents
        for k in range(length):
            k_latent = offset <= k < offset + latents
            if q_latent and k_latent:
                keep[q, k] = latent_pair(q - offset, k - offset)
            elif q_latent:
                keep[q, k] = offset + latents <= k < offset + latents + extra_keys or (prefix_keys and k < offset)
            else:
                keep[q, k] = text_queries == "full" or not k_latent
    return keep


def materialized(pattern: RadialPattern, length: int) -> torch.Tensor:
    zero = torch.zeros((), dtype=torch.long)
    return pattern.mask_mod(zero, zero, torch.arange(length).view(-1, 1), torch.arange(length).view(1, -1))


CONFIGS = [
    # the authors' split threshold (128): on frames this small it drops every distance it can
    ((6, 2, 4), {"block_size": 2}),
    ((6, 16, 16), {"block_size": 64, "decay_factor": 0.5}),
    # visattn's variants (split at the block size, distance 1 banded), which keep tiny grids banded
    ((6, 2, 4), {"block_size": 2, "decay_factor": 0.5, "split_threshold": 2, "dense_distance": 1}),
    ((6, 2, 4), {"block_size": 4, "split_threshold": 4}),
    ((6, 2, 4), {"block_size": 8, "sink_frames": 0, "split_threshold": 8, "dense_distance": 1}),
    ((9, 1, 5), {"block_size": 1, "decay_factor": 0.3, "split_threshold": 1}),
    ((9, 1, 5), {"block_size": 4, "sink_frames": 2, "sink_queries": True, "split_threshold": 2}),
    ((5, 3, 3), {"block_size": 2, "offset": 4, "prefix_keys": True, "split_threshold": 2, "dense_distance": 1}),
    ((5, 3, 3), {"block_size": 3, "extra_keys": 3, "text_queries": "text", "decay_factor": 2.0, "split_threshold": 3}),
    ((7, 2, 2), {"block_size": 1, "offset": 2, "extra_keys": 2, "prefix_keys": False, "text_queries": "text"}),
    ((1, 3, 4), {"block_size": 2, "extra_keys": 2}),
]


@pytest.mark.parametrize("grid, params", CONFIGS)
def test_mask_mod_matches_the_brute_force_oracle(grid, params):
    pattern = RadialPattern(grid, **params)
    # Two trailing keys no rule grants: latent queries must not see them.
    length = pattern.offset + pattern.num_tokens + pattern.extra_keys + 2
    expected = oracle(grid, length, **params)
    assert torch.equal(materialized(pattern, length), expected)
    # FlexAttention evaluates mask_mod per element under vmap; create_mask goes through the same path.
    from torch.nn.attention.flex_attention import create_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.mask_mod(b, h, q_idx, kv_idx)

    assert torch.equal(create_mask(mask_mod, 1, 1, length, length, device="cpu")[0, 0], expected)


def test_the_oracle_configurations_are_neither_dense_nor_trivial():
    # Guards the oracle test: most configurations must actually drop pairs and keep some banded pairs.
    sparse = 0
    for grid, params in CONFIGS:
        pattern = RadialPattern(grid, **params)
        kept = density(pattern, pattern.num_tokens, tile=(1, 1)).kept_fraction
        sparse += kept < 1.0
    assert sparse >= len(CONFIGS) - 2


def test_bands_halve_the_window_then_keep_every_mth_frame_pair():
    # 64 tokens per frame: base 128; block 8. Windows 64 (whole frame), 32, 16, 8, then split 2, 4, 8.
    pattern = RadialPattern((100, 8, 8), block_size=8, dense_distance=1, split_threshold=8)
    bands = [(b.first, b.stop, b.window, b.every) for b in pattern.bands]
    assert bands == [
        (1, 2, None, 1),
        (2, 4, 32, 1),
        (4, 8, 16, 1),
        (8, 16, 8, 1),
        (16, 32, 8, 2),
        (32, 64, 8, 4),
        (64, 100, 8, 8),
    ]
    assert pattern.frame_pair_window(50, 50 - 17) is None  # distance 17 is odd: split away
    assert pattern.frame_pair_window(50, 50 - 18) == 8
    assert pattern.frame_pair_window(90, 90 - 72) == 8 and pattern.frame_pair_window(90, 90 - 68) is None


def test_sink_frame_and_dense_band():
    grid = (8, 4, 4)
    per_frame, n = 16, 128
    variant = {"block_size": 1, "decay_factor": 0.1, "dense_distance": 1, "split_threshold": 1}
    pattern = RadialPattern(grid, **variant)
    keep = materialized(pattern, n)
    frame = torch.arange(n) // per_frame
    same_frame = frame.view(-1, 1) == frame.view(1, -1)
    # Sink: every query attends to every token of frame 0.
    assert keep[:, frame == 0].all()
    # Central band: each frame attends densely to itself, and only itself among near frames.
    assert keep[same_frame].all()
    assert not keep[frame == 5][:, frame == 4].all()
    # As in the authors' code, frame 0's queries follow the band rule; sink_queries makes them dense.
    assert not keep[frame == 0].all()
    with_queries = materialized(RadialPattern(grid, **variant, sink_queries=True), n)
    assert with_queries[frame == 0].all()
    assert torch.equal(with_queries[frame > 0], keep[frame > 0])
    # No sink: frame 7's queries no longer see all of frame 0 (distance 7: window 1 on the token index).
    no_sink = materialized(RadialPattern(grid, **variant, sink_frames=0), n)
    assert not no_sink[frame == 7][:, frame == 0].all()
    # dense_distance=2 (the authors' Wan and HunyuanVideo masks): neighbouring frames are dense too.
    wider = materialized(RadialPattern(grid, **{**variant, "dense_distance": 2}), n)
    near = (frame.view(-1, 1) - frame.view(1, -1)).abs() <= 1
    assert wider[near].all()


def test_density_falls_like_log_n_over_n():
    # A Wan-like layout at a fixed frame size; frames double. Windows stay aligned to 8-token tiles.
    kept, tiles, per_query, ratios = [], [], [], []
    for frames in (8, 16, 32, 64):
        pattern = RadialPattern((frames, 8, 8), block_size=8, split_threshold=8)
        result = density(pattern, pattern.grid, tile=(8, 8))
        n = pattern.num_tokens
        kept.append(result.kept_fraction)
        tiles.append(result.tile_fraction)
        per_query.append(result.kept_pairs / n)
        ratios.append(result.kept_fraction / (math.log(n) / n))
    assert all(a > b for a, b in zip(kept, kept[1:]))
    assert all(a > b for a, b in zip(tiles, tiles[1:]))
    # O(n log n): the ratio to log(n)/n stays within a band while n grows 8x (n^2 would grow it 8x) ...
    assert max(ratios) / min(ratios) < 2.5
    # ... because each doubling of the frames adds about the same number of keys per query (one more band).
    steps = np.diff(per_query)
    assert steps.min() > 0 and steps.max() / steps.min() < 1.5
    assert kept[-1] < 0.3


def test_density_counts_text_tokens_in_a_joint_layout():
    # HunyuanVideo-like: text after the latents; text rows and columns are dense.
    pattern = RadialPattern((8, 4, 4), block_size=2, extra_keys=10)
    length = pattern.num_tokens + 10
    result = density(pattern, length, tile=(16, 16))
    expected = oracle((8, 4, 4), length, block_size=2, extra_keys=10)
    assert result.kept_pairs == int(expected.sum())
    assert result.kept_fraction < 1.0


def test_one_frame_is_dense_and_cache_keys_are_stable():
    single = RadialPattern((1, 4, 4), block_size=1, decay_factor=0.01)
    assert single.grid_is_dense and materialized(single, 16).all()
    assert RadialPattern((3, 4, 4), dense_distance=3, split_threshold=1).grid_is_dense
    # the authors' split (threshold 128) drops distance 1 on frames of 16 tokens, whole or not
    assert not RadialPattern((3, 4, 4), dense_distance=3).grid_is_dense
    assert not RadialPattern((3, 4, 4), block_size=2, decay_factor=0.25).grid_is_dense
    a = RadialPattern([4, 2, 2], decay_factor=1, block_size=2)
    b = RadialPattern((4, 2, 2), decay_factor=1.0, block_size=2)
    assert a == b and hash(a) == hash(b) and a.cache_key() == b.cache_key()
    assert a.cache_key() != RadialPattern((4, 2, 2), block_size=2, sink_frames=0).cache_key()
    assert a.cache_key() != RadialPattern((4, 2, 2), block_size=2, extra_keys=1).cache_key()


def test_a_pattern_covering_every_pair_equals_dense_attention_in_the_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 48, 8) for _ in range(3))
    # windows >= a frame, no split: every pair kept
    covering = RadialPattern((3, 4, 4), block_size=16, split_threshold=16)
    assert covering.grid_is_dense
    dense = attention(q, k, v, backend="reference")
    assert torch.allclose(attention(q, k, v, pattern=covering, backend="reference"), dense, atol=1e-6)
    sparse = RadialPattern((3, 4, 4), block_size=2, decay_factor=0.25)
    assert not torch.allclose(attention(q, k, v, pattern=sparse, backend="reference"), dense, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grid": (4, 4)}, r"grid=\(4, 4\) is not allowed; grid must be \(frames, height, width\)"),
        ({"grid": (0, 4, 4)}, "three positive integers"),
        ({"grid": (2, 4, 4), "decay_factor": 0}, "decay_factor=0 is not allowed"),
        ({"grid": (2, 4, 4), "decay_factor": float("nan")}, "decay_factor=nan is not allowed"),
        ({"grid": (2, 4, 4), "block_size": 0}, "block_size=0 is not allowed"),
        ({"grid": (2, 4, 4), "dense_distance": 0}, "dense_distance=0 is not allowed"),
        ({"grid": (2, 4, 4), "sink_frames": 3}, r"sink_frames=3 is not allowed; .* \[0, 2\]"),
        ({"grid": (2, 4, 4), "offset": -1}, "offset=-1 is not allowed"),
        ({"grid": (2, 4, 4), "text_queries": "none"}, "text_queries='none' is not allowed"),
    ],
)
def test_bad_pattern_parameters_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RadialPattern(**kwargs)
