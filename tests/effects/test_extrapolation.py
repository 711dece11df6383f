"""ExtrapolationDecay (UltraViCo) and EntropyScaling: kernels against brute force, effects through attach."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import pytest
import torch

import visattn
from visattn.context import BatchLayout, Branch, CallContext, Span, TokenLayout
from visattn.effects import AttentionCall, EntropyScaling, ExtrapolationDecay, NeighborhoodAttention
from visattn.kernels import DecayModifier, EntropyScale, NeighborhoodPattern, attention
from visattn.tiny import TINY_PIPELINES, call_kwargs, latent_grid, tiny_pipeline

BACKENDS = ["reference", "flex"]


def qkv(n_q: int, n_k: int | None = None, batch: int = 2, heads: int = 2, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    n_k = n_q if n_k is None else n_k
    shapes = [(batch, heads, n_q, dim), (batch, heads, n_k, dim), (batch, heads, n_k, dim)]
    return [torch.randn(shape, generator=generator) for shape in shapes]


def outside_window(grid, window, offset, length) -> torch.Tensor:
    """Brute force: ``[length, length]`` bool, True for grid pairs whose key is outside the query's window."""
    window = [min(w, size) for w, size in zip(window, grid)]
    coords = list(itertools.product(*[range(size) for size in grid]))  # row-major, last axis fastest
    outside = torch.zeros(length, length, dtype=torch.bool)
    for i, q_coord in enumerate(coords):
        # Centred window, shifted inward at the borders so that it always holds `w` positions.
        starts = [min(max(c - w // 2, 0), size - w) for c, w, size in zip(q_coord, window, grid)]
        for j, k_coord in enumerate(coords):
            inside = all(s <= c < s + w for c, s, w in zip(k_coord, starts, window))
            outside[offset + i, offset + j] = not inside
    return outside


def brute_decay(q, k, v, grid, window, factor, offset=0):
    """UltraViCo as the paper states it: softmax weights, out-of-window weights times factor, renormalized."""
    logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    weights = torch.softmax(logits, dim=-1)
    outside = outside_window(grid, window, offset, q.shape[2])
    weights = torch.where(outside, weights * factor, weights)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (weights @ v.double()).float()


# --- kernels ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "grid, window, offset, trailing",
    [
        ((5, 6), (3, 4), 0, 0),  # one frame: a 2-D grid
        ((4, 3, 5), (2, 2, 3), 0, 0),  # several frames
        ((4, 3, 5), (3, 9, 9), 3, 4),  # temporal window only (spatial one covers the frame), text around
    ],
)
@pytest.mark.parametrize("factor", [0.3, 0.0])
def test_decay_modifier_matches_the_brute_force_reweighting(backend, grid, window, offset, trailing, factor):
    length = offset + math.prod(grid) + trailing
    q, k, v = qkv(length)
    modifier = DecayModifier(grid, window, factor, offset)
    out = attention(q, k, v, score_mod=modifier, backend=backend)
    expected = brute_decay(q, k, v, grid, window, factor, offset)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_decay_leaves_text_rows_and_columns_untouched():
    grid, offset = (3, 4), 2
    length = offset + 12 + 3
    q, k, v = qkv(length)
    out = attention(q, k, v, score_mod=DecayModifier(grid, (1, 1), 0.1, offset), backend="reference")
    dense = attention(q, k, v, backend="reference")
    text_rows = [*range(offset), *range(offset + 12, length)]
    torch.testing.assert_close(out[:, :, text_rows], dense[:, :, text_rows])
    assert (out[:, :, offset : offset + 12] - dense[:, :, offset : offset + 12]).abs().max() > 1e-3


def test_decay_modifier_normalizes_and_keys_its_cache():
    a = DecayModifier((3, 4), (5, 2), 0.5, 1)
    assert a.window == (3, 2) and a == DecayModifier((3, 4), (3, 2), 0.5, 1)
    assert a.cache_key() == DecayModifier((3, 4), (9, 2), 0.5, 1).cache_key()
    assert a.cache_key() != DecayModifier((3, 4), (3, 2), 0.25, 1).cache_key()
    assert hash(a.cache_key()) == hash(DecayModifier((3, 4), (3, 2), 0.5, 1).cache_key())
    assert DecayModifier((3, 4), (3, 4), 0.5).is_identity and DecayModifier((3, 4), (1, 1), 1.0).is_identity
    assert EntropyScale(1.25).cache_key() == EntropyScale(1.25).cache_key() != EntropyScale(1.5).cache_key()


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_scale_matches_a_hand_written_scaled_softmax(backend):
    q, k, v = qkv(23, 31)
    scale = EntropyScale.from_counts(31, 16)
    assert scale.scale == pytest.approx(math.log(31) / math.log(16))
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) * scale.scale
    expected = torch.softmax(logits, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v, score_mod=scale, backend=backend), expected, atol=1e-5, rtol=1e-5)


# --- effects on hand-made calls (the token layouts of self and joint attention) ----------------------------------
def call_for(grid, q, k, v, text: Span | None = None, role: str = "self") -> AttentionCall:
    length = q.shape[2]
    image = Span(0, length) if text is None else (Span(text.stop, length) if text.start == 0 else Span(0, text.start))
    layout = TokenLayout(length, image=image, text=text)
    ctx = CallContext(
        role=role,
        layer_name="blocks.0.attn",
        layer_index=0,
        family="test",
        heads=q.shape[1],
        head_dim=q.shape[3],
        queries=layout,
        keys=layout,
        batch=BatchLayout((Branch("cond", 0, q.shape[0]),)),
        grid=grid,
    )
    return AttentionCall(ctx, q, k, v, backend="reference")


@pytest.mark.parametrize("text", [None, Span(0, 5), Span(36, 41)])
def test_decay_effect_in_self_and_joint_attention_matches_brute_force(text):
    grid = (3, 3, 4)
    q, k, v = qkv(36 + (text.length if text else 0))
    call = call_for(grid, q, k, v, text, role="joint" if text else "self")
    ExtrapolationDecay(train_frames=2, train_size=(2, 3), factor=0.25).apply(call)
    offset = text.stop if text is not None and text.start == 0 else 0
    assert call.score_mods == [DecayModifier(grid, (2, 2, 3), 0.25, offset)]
    torch.testing.assert_close(call.run(), brute_decay(q, k, v, grid, (2, 2, 3), 0.25, offset), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("text", [None, Span(0, 5), Span(36, 41)])
def test_decay_factor_zero_is_a_neighborhood_mask_with_global_text(text):
    grid = (1, 6, 6)
    q, k, v = qkv(36 + (text.length if text else 0))
    call = call_for(grid, q, k, v, text, role="joint" if text else "self")
    ExtrapolationDecay(train_size=3, factor=0.0).apply(call)
    assert call.score_mods == [] and len(call.patterns) == 1
    assert isinstance(call.patterns[0], NeighborhoodPattern) and call.patterns[0].grid == (6, 6)
    offset = text.stop if text is not None and text.start == 0 else 0
    torch.testing.assert_close(call.run(), brute_decay(q, k, v, (6, 6), (3, 3), 0.0, offset), atol=2e-5, rtol=1e-5)


def test_effects_add_nothing_when_they_are_no_ops():
    grid = (2, 4, 4)
    q, k, v = qkv(32)
    for effect in (
        ExtrapolationDecay(train_frames=1, train_size=2, factor=1.0),  # factor 1
        ExtrapolationDecay(train_frames=2, train_size=(4, 9)),  # windows cover the grid: not extrapolating
        EntropyScaling(train_tokens=32),  # n == n_train
    ):
        call = call_for(grid, q, k, v)
        effect.apply(call)
        assert call.score_mods == [] and call.patterns == [], effect
    ctx = dataclasses.replace(call_for(grid, q, k, v).ctx, keys=TokenLayout(32, text=Span(0, 32)), role="cross")
    cross = AttentionCall(ctx, q, k, v)
    for effect in (ExtrapolationDecay(train_size=1), EntropyScaling(train_tokens=8)):
        effect.apply(cross)  # no latent keys: nothing to decay, nothing to count
    assert cross.score_mods == [] and cross.patterns == []


def test_entropy_scaling_counts_latent_keys_and_goes_first():
    q, k, v = qkv(41)
    call = call_for((1, 6, 6), q, k, v, Span(0, 5), role="joint")
    ExtrapolationDecay(train_size=3).apply(call)
    EntropyScaling(train_tokens=16).apply(call)
    # 36 latent keys (the 5 text keys are not counted); the temperature goes before the decay's bias.
    assert call.score_mods[0] == EntropyScale(math.log(36) / math.log(16))
    assert isinstance(call.score_mods[1], DecayModifier)


def test_training_sizes_scale_with_a_unet_level():
    decay = ExtrapolationDecay(train_frames=3, train_size=(8, 6))
    assert decay.window((5, 16, 16), (5, 16, 16)) == (3, 8, 6)
    assert decay.window((5, 8, 8), (5, 16, 16)) == (3, 4, 3)
    assert decay.window((5, 3, 3), (5, 11, 11)) == (3, 3, 2)  # rounded up: ceil(8 * 3 / 11), ceil(6 * 3 / 11)
    entropy = EntropyScaling(train_tokens=64)
    assert entropy.scale(256, 256) == pytest.approx(math.log(256) / math.log(64))
    assert entropy.scale(64, 256) == pytest.approx(math.log(64) / math.log(16))  # level with a quarter of the tokens
    assert entropy.scale(64, 64) is None


# --- through attach ---------------------------------------------------------------------------------------------
@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, *effects, backend: str = "auto") -> np.ndarray:
    with visattn.attach(pipeline(family), *effects, backend=backend):
        return np.asarray(pipeline(family)(**call_kwargs(family))[0], dtype=np.float64)


@functools.cache
def stock(family: str) -> np.ndarray:
    return np.asarray(pipeline(family)(**call_kwargs(family))[0], dtype=np.float64)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_no_op_configurations_are_bit_identical_to_no_effect(family):
    frames, height, width = latent_grid(family, call_kwargs(family))
    assert np.array_equal(run(family, ExtrapolationDecay(train_frames=1, train_size=1, factor=1.0)), stock(family))
    assert np.array_equal(run(family, EntropyScaling(train_tokens=frames * height * width)), stock(family))


def training_size(family: str):
    """A training size smaller than the test grid on every axis the family has (extrapolating 2x)."""
    frames, height, width = latent_grid(family, call_kwargs(family))
    return (max(1, frames // 2), (height // 2, width // 2), max(2, frames * height * width // 4))


@pytest.mark.parametrize("family", ["unet", "flux", "wan"])
def test_reference_and_flex_agree_end_to_end(family):
    frames, size, tokens = training_size(family)
    effects = (ExtrapolationDecay(train_frames=frames, train_size=size, factor=0.3), EntropyScaling(tokens))
    reference = run(family, *effects, backend="reference")
    flex = run(family, *effects, backend="flex")
    assert np.isfinite(reference).all()
    assert np.abs(reference - flex).max() <= 1e-4
    assert np.abs(reference - stock(family)).max() > 1e-4


@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "cogvideox"])
def test_the_authors_rule_runs_end_to_end_and_backends_agree(family):
    """The default (UltraViCo's authors' rule, keys centred) through attach on the tiny video pipelines."""
    frames = latent_grid(family, call_kwargs(family))[0]
    effect = ExtrapolationDecay(train_frames=max(1, frames // 2))
    assert effect.mode == "ultravico"
    reference = run(family, effect, backend="reference")
    flex = run(family, effect, backend="flex")
    assert np.isfinite(reference).all()
    assert np.abs(reference - flex).max() <= 1e-4
    assert np.abs(reference - stock(family)).max() > 1e-4


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_every_family_extrapolates(family):
    frames, size, tokens = training_size(family)
    out = run(family, EntropyScaling(tokens), ExtrapolationDecay(train_frames=frames, train_size=size))
    assert np.isfinite(out).all() and np.abs(out - stock(family)).max() > 1e-4


def test_decay_composes_with_neighborhood_attention_and_effect_order_does_not_matter_for_entropy():
    frames, size, tokens = training_size("flux")
    decay, entropy = ExtrapolationDecay(train_size=size), EntropyScaling(tokens)
    assert np.array_equal(run("flux", decay, entropy), run("flux", entropy, decay))
    with_neighborhood = run("flux", NeighborhoodAttention(5), decay)
    assert np.isfinite(with_neighborhood).all()
    assert np.abs(with_neighborhood - run("flux", NeighborhoodAttention(5))).max() > 1e-4


def test_unet_levels_get_their_own_training_window():
    # Top grid 16x16, training 8x8: the 8x8 level trained at 4x4, so it decays there too.
    level = "down_blocks.1"
    assert np.array_equal(run("unet", ExtrapolationDecay(train_size=16, layers=level)), stock("unet"))
    assert np.abs(run("unet", ExtrapolationDecay(train_size=8, layers=level)) - stock("unet")).max() > 1e-4


# --- bad input --------------------------------------------------------------------------------------------------
def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="train_frames .* and/or train_size"):
        ExtrapolationDecay()
    with pytest.raises(ValueError, match=r"train_frames must be an integer in \[1, .*\]; got 0"):
        ExtrapolationDecay(train_frames=0)
    with pytest.raises(ValueError, match=r"train_size=\(4,\) must be an int or a \(height, width\) pair"):
        ExtrapolationDecay(train_size=(4,))
    with pytest.raises(ValueError, match=r"train_size must be an integer in \[1, 2147483647\]; got 2.5"):
        ExtrapolationDecay(train_size=(4, 2.5))
    for factor in (1.5, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="factor=.* must be a number in \\[0, 1\\]"):
            ExtrapolationDecay(train_frames=4, factor=factor)
    for tokens in (1, 0, 2.5, None):
        with pytest.raises(ValueError, match=r"train_tokens must be an integer in \[2, 2147483647\]; got "):
            EntropyScaling(tokens)
    with pytest.raises(ValueError, match="window=\\(3,\\) needs one entry per axis of grid=\\(3, 4\\)"):
        DecayModifier((3, 4), (3,), 0.5)
    with pytest.raises(ValueError, match="grid=\\(0, 4\\) must be 1 to 3 positive integers"):
        DecayModifier((0, 4), (1, 1), 0.5)
    with pytest.raises(ValueError, match="factor=2 must be a number in \\[0, 1\\]"):
        DecayModifier((3, 4), (1, 1), 2)
    with pytest.raises(ValueError, match="scale=0 must be a finite number > 0"):
        EntropyScale(0)
    with pytest.raises(ValueError, match="n_train=1 must be a finite number > 1"):
        EntropyScale.from_counts(10, 1)
