"""Radial Attention's default mask against a transcription of the authors' mask builder (issue 28).

The reference is written here from reading mit-han-lab/radial-attention ``radial_attn/attn_mask.py`` at 72788d4:
``get_window_width`` (Wan: distances 0 and 1 whole, HunyuanVideo: ``dist <= 1`` whole, then the decayed window,
at least ``block_size``), ``get_diagonal_split_mask`` (threshold hardcoded to 128, ``split_factor =
int(threshold / decay_length)``), and the per-frame-pair ``local_mask`` of ``gen_log_mask_shrinked`` (``j == 0``
is the attention sink, for ``model_type="wan"`` only). visattn keeps the authors' token-level mask, not the
128-block rounding ``shrinkMaskStrict`` applies afterwards, so the comparison is at token level.
"""

from __future__ import annotations

import pytest
import torch

from visattn import BatchLayout, Branch, CallContext, Span, TokenLayout
from visattn.effects import RadialAttention
from visattn.effects.radial_attention import authors_sink_frames
from visattn.kernels import RadialPattern


def authors_window_width(i: int, j: int, token_per_frame: int, decay_factor: float, block_size: int, model_type):
    """``get_window_width``: the kept ``|col - row|`` for frame pair ``(i, j)``."""
    dist = abs(i - j)
    if model_type == "wan":
        if dist < 1:
            return token_per_frame
        if dist == 1:
            return token_per_frame
    elif model_type == "hunyuan":
        if dist <= 1:
            return token_per_frame
    else:
        raise ValueError(model_type)
    group = dist.bit_length()
    decay_length = 2 ** token_per_frame.bit_length() / 2**group * decay_factor
    return decay_length if decay_length >= block_size else block_size


def authors_split_keeps(i: int, j: int, token_per_frame: int) -> bool:
    """``get_diagonal_split_mask``: whether the pair's diagonal survives (the mask is all ones or all zeros)."""
    dist = abs(i - j)
    group = dist.bit_length()
    threshold = 128
    decay_length = 2 ** token_per_frame.bit_length() / 2**group
    if decay_length >= threshold:
        return True
    split_factor = int(threshold / decay_length)
    return dist % split_factor == 0


def authors_local_mask(i, j, token_per_frame, decay_factor, block_size, model_type) -> torch.Tensor:
    """``gen_log_mask_shrinked``'s ``local_mask`` for frame pair ``(i, j)``, before ``shrinkMaskStrict``."""
    if j == 0 and model_type == "wan":
        return torch.ones(token_per_frame, token_per_frame, dtype=torch.bool)
    cols = torch.arange(token_per_frame).view(1, -1)
    rows = torch.arange(token_per_frame).view(-1, 1)
    window = authors_window_width(i, j, token_per_frame, decay_factor, block_size, model_type)
    local = (cols - rows).abs() <= window
    return local & authors_split_keeps(i, j, token_per_frame)


def authors_token_mask(frames, token_per_frame, decay_factor, block_size, model_type) -> torch.Tensor:
    n = frames * token_per_frame
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(frames):
        for j in range(frames):
            rows = slice(i * token_per_frame, (i + 1) * token_per_frame)
            cols = slice(j * token_per_frame, (j + 1) * token_per_frame)
            mask[rows, cols] = authors_local_mask(i, j, token_per_frame, decay_factor, block_size, model_type)
    return mask


def visattn_token_mask(pattern: RadialPattern) -> torch.Tensor:
    n = pattern.num_tokens
    return pattern.radial_mask(torch.arange(n).view(-1, 1), torch.arange(n).view(1, -1))


def visattn_default(grid, block_size, decay_factor, model_type) -> RadialPattern:
    """The pattern with visattn's defaults; the sink as :class:`RadialAttention` picks it for the model."""
    return RadialPattern(
        grid, decay_factor=decay_factor, block_size=block_size, sink_frames=1 if model_type == "wan" else 0
    )


# Token grids small enough to materialize: 18 frames like 18 x 48 x 80, small frames so the split rule bites,
# 128 < tokens per frame <= 512 so band windows and splits both appear at block sizes 64 and 128.
GRIDS = [(18, 4, 6), (18, 8, 16), (18, 12, 20), (21, 16, 16), (9, 30, 17), (5, 1, 7)]


@pytest.mark.parametrize("model_type", ["wan", "hunyuan"])
@pytest.mark.parametrize("block_size", [64, 128])
@pytest.mark.parametrize("grid", GRIDS)
def test_default_token_mask_is_the_authors(grid, block_size, model_type):
    frames, height, width = grid
    expected = authors_token_mask(frames, height * width, 1.0, block_size, model_type)
    got = visattn_token_mask(visattn_default(grid, block_size, 1.0, model_type))
    assert torch.equal(got, expected), f"{int((got != expected).sum())} token pairs differ"


@pytest.mark.parametrize("decay_factor", [0.5, 0.3, 2.0])
def test_decay_factor_as_the_authors_apply_it(decay_factor):
    grid = (18, 12, 20)
    expected = authors_token_mask(18, 240, decay_factor, 64, "wan")
    assert torch.equal(visattn_token_mask(visattn_default(grid, 64, decay_factor, "wan")), expected)


def frame_pair_differences(pattern: RadialPattern, model_type: str, block_size: int, decay_factor=1.0) -> int:
    """Frame pairs whose kept region differs from the authors' (each pair is one diagonal band, so comparing
    the band's half-width, or ``None`` for a dropped pair, compares the whole pair)."""
    frames, per_frame = pattern.grid[0], pattern.tokens_per_frame
    differing = 0
    for i in range(frames):
        for j in range(frames):
            if j == 0 and model_type == "wan":
                expected = per_frame - 1
            elif not authors_split_keeps(i, j, per_frame):
                expected = None
            else:
                width = authors_window_width(i, j, per_frame, decay_factor, block_size, model_type)
                expected = min(int(width), per_frame - 1)
            differing += pattern.frame_pair_window(i, j) != expected
    return differing


@pytest.mark.parametrize(
    "grid, model_type",
    [
        ((18, 48, 80), "wan"),  # the grid of issue 28
        ((21, 30, 52), "wan"),  # Wan 2.1 at 480 x 832, 81 frames
        ((21, 45, 80), "wan"),  # Wan 2.1 at 720 x 1280
        ((33, 45, 80), "hunyuan"),  # HunyuanVideo at 720 x 1280, 129 frames
        ((30, 48, 80), "hunyuan"),  # the authors' attn_mask.py example: 3840 tokens x 30 frames
    ],
)
@pytest.mark.parametrize("block_size", [64, 128])
def test_default_matches_the_authors_at_their_sizes(grid, model_type, block_size):
    assert frame_pair_differences(visattn_default(grid, block_size, 1.0, model_type), model_type, block_size) == 0


def test_the_former_default_differs_where_issue_28_says():
    """visattn's former rule (distance 1 banded, split at the block size) is still reachable by name, and differs
    from the authors' on 33 of 324 frame pairs of 18 x 48 x 80 (block 128) as issue 28 measured."""
    grid = (18, 48, 80)
    former = RadialPattern(grid, dense_distance=1, split_threshold=128)
    assert frame_pair_differences(former, "wan", 128) == 33
    # split at the block size keeps, at block 64, frame distances the authors split away (5, 7, 9, ... here)
    at_64 = RadialPattern((21, 16, 16), block_size=64, split_threshold=64)
    assert frame_pair_differences(at_64, "wan", 64) > 0
    assert frame_pair_differences(RadialPattern((21, 16, 16), block_size=64), "wan", 64) == 0


def _ctx(family: str, grid) -> CallContext:
    n = grid[0] * grid[1] * grid[2]
    layout = TokenLayout(n, image=Span(0, n))
    return CallContext(
        role="self",
        layer_name="blocks.0.attn1",
        layer_index=0,
        family=family,
        heads=1,
        head_dim=8,
        queries=layout,
        keys=layout,
        batch=BatchLayout((Branch("cond", 0, 1),)),
        grid=grid,
    )


def test_the_effect_defaults_are_the_authors_per_model():
    effect = RadialAttention(dense_steps=None)
    assert (effect.dense_distance, effect.split_threshold, effect.block_size, effect.decay_factor) == (2, 128, 128, 1)
    assert authors_sink_frames("wan") == 1 and authors_sink_frames("hunyuan_video") == 0
    grid = (18, 12, 20)
    for family, model_type in (("wan", "wan"), ("hunyuan_video", "hunyuan")):
        pattern = effect.pattern_for(_ctx(family, grid))
        assert torch.equal(visattn_token_mask(pattern), authors_token_mask(18, 240, 1.0, 128, model_type))
    assert RadialAttention(sink_frames=1).pattern_for(_ctx("hunyuan_video", grid)).sink_frames == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split_threshold": 0}, r"split_threshold=0 is not allowed; split_threshold must be a positive integer"),
        ({"dense_distance": 0}, r"dense_distance=0 is not allowed"),
        ({"sink_frames": -1}, r"sink_frames=-1 is not allowed; sink_frames must be an integer >= 0"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RadialAttention(**kwargs)
