"""The attention core: backends agree with each other and with torch SDPA; patterns, modifiers, blends."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import BandPattern, HeadScale

from visattn.kernels import AttentionRequest, DensePattern, all_of, attention, available_backends, choose_backend


def qkv(batch=2, heads=3, n_q=37, n_k=37, dim=16, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q, dim, generator=generator, dtype=dtype)
    k = torch.randn(batch, heads, n_k, dim, generator=generator, dtype=dtype)
    v = torch.randn(batch, heads, n_k, dim, generator=generator, dtype=dtype)
    return q, k, v


def test_available_backends_lists_each_with_a_reason():
    backends = available_backends()
    assert {"sdpa", "reference", "flex"} <= set(backends)
    for name, (available, reason) in backends.items():
        assert isinstance(available, bool) and reason, name


@pytest.mark.parametrize("backend", ["sdpa", "reference", "flex"])
def test_dense_backends_match_torch_sdpa(backend):
    q, k, v = qkv(n_q=29, n_k=41)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, backend=backend), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", [None, BandPattern(3), BandPattern(0)])
@pytest.mark.parametrize("modifier", [None, HeadScale(0.5)])
def test_flex_matches_reference_with_patterns_modifiers_and_lse(pattern, modifier):
    q, k, v = qkv()
    ref, ref_lse = attention(q, k, v, pattern=pattern, score_mod=modifier, backend="reference", return_lse=True)
    flex, flex_lse = attention(q, k, v, pattern=pattern, score_mod=modifier, backend="flex", return_lse=True)
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex_lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_reference_pattern_equals_an_explicit_boolean_mask():
    q, k, v = qkv()
    idx = torch.arange(37)
    mask = (idx[:, None] - idx[None, :]).abs() <= 2
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention(q, k, v, pattern=BandPattern(2)), expected, atol=1e-5, rtol=1e-5)


def test_lse_is_the_logsumexp_of_scaled_logits():
    q, k, v = qkv()
    _, lse = attention(q, k, v, backend="reference", return_lse=True)
    expected = torch.logsumexp(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    torch.testing.assert_close(lse, expected, atol=1e-5, rtol=1e-5)


def test_model_padding_mask_combines_with_a_pattern():
    q, k, v = qkv()
    padding = torch.zeros(2, 1, 1, 37)
    padding[0, ..., 30:] = float("-inf")
    idx = torch.arange(37)
    keep = ((idx[:, None] - idx[None, :]).abs() <= 5).float().log()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=padding + keep)
    for backend in ("reference", "flex"):
        out = attention(q, k, v, pattern=BandPattern(5), attn_mask=padding, backend=backend)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_identity_blend_interpolates_toward_values_per_head():
    q, k, v = qkv()
    dense = attention(q, k, v)
    blend = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    out = attention(q, k, v, identity_blend=blend)
    torch.testing.assert_close(out[:, 0], dense[:, 0])
    torch.testing.assert_close(out[:, 1], 0.5 * dense[:, 1] + 0.5 * v[:, 1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[:, 2], v[:, 2])


@pytest.mark.parametrize("identity_rows", [[2], [3], [0, 2], [0, 1, 2, 3]])
def test_rows_the_identity_answers_alone_are_their_values_and_the_others_unchanged(identity_rows, monkeypatch):
    """PAG's perturbed rows: weight 1 on every head. Their attention is not computed (it would be thrown away);
    every row's output is bit for bit what the whole call gives."""
    from visattn.kernels import core

    q, k, v = qkv(batch=4)
    mask = torch.randn(4, 1, 37, 37)
    blend = torch.zeros(4, 3, 1, 1)
    blend[identity_rows] = 1.0
    blend[1, 1] = 0.5 if 1 not in identity_rows else 1.0  # a SoftPAG head on a computed row
    whole = core._with_identity_blend(
        AttentionRequest(q, k, v, attn_mask=mask, identity_blend=blend),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    )
    seen = []
    run = core.sdpa.run
    monkeypatch.setattr(core.sdpa, "run", lambda request: (seen.append(request.q.shape[0]), run(request))[1])
    out = attention(q, k, v, attn_mask=mask, identity_blend=blend)
    assert torch.equal(out, whole)
    assert torch.equal(out[identity_rows], v[identity_rows])
    assert seen == ([4 - len(identity_rows)] if len(identity_rows) < 4 else [])


def test_a_blend_changed_in_place_is_read_again(monkeypatch):
    """The core remembers which rows a blend tensor answers alone (PAG hands the same tensor to every call of a
    layout); changing the tensor in place makes it read the rows again."""
    from visattn.kernels import core

    q, k, v = qkv(batch=4)
    blend = torch.zeros(4, 3, 1, 1)
    blend[3] = 1.0
    seen = []
    run = core.sdpa.run
    monkeypatch.setattr(core.sdpa, "run", lambda request: (seen.append(request.q.shape[0]), run(request))[1])
    attention(q, k, v, identity_blend=blend)
    blend[1] = 1.0  # rows 1 and 3 now answered by their values
    out = attention(q, k, v, identity_blend=blend)
    assert seen == [3, 2]
    assert torch.equal(out[[1, 3]], v[[1, 3]])
    assert torch.equal(out[[0, 2]], attention(q[[0, 2]], k[[0, 2]], v[[0, 2]]))


def test_a_blend_read_is_not_kept_alive_by_what_the_core_remembers():
    """What the core remembers of a blend leaves with it: a per-token blend of a large call (megabytes) is freed
    once its effect drops it, and its entry goes with it."""
    import gc
    import weakref

    from visattn.kernels import core

    q, k, v = qkv(batch=4)
    blend = torch.zeros(4, 3, q.shape[2], 1)
    blend[3] = 1.0
    attention(q, k, v, identity_blend=blend)
    alive = weakref.ref(blend)
    remembered = len(core._READ_BLENDS)
    del blend
    gc.collect()
    assert alive() is None and len(core._READ_BLENDS) == remembered - 1


def test_identity_blend_needs_square_attention():
    q, k, v = qkv(n_q=5, n_k=7)
    with pytest.raises(ValueError, match="as many queries as keys"):
        attention(q, k, v, identity_blend=torch.ones(1))


def test_auto_picks_sdpa_for_plain_calls_and_reference_on_cpu_for_patterns():
    q, k, v = qkv()
    assert choose_backend(AttentionRequest(q, k, v)) == "sdpa"
    assert choose_backend(AttentionRequest(q, k, v, pattern=BandPattern(1))) == "reference"
    assert choose_backend(AttentionRequest(q, k, v, return_lse=True)) == "reference"


def test_bad_backend_names_and_unsupported_requests_raise_clearly():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend='nope' is not one of auto, sdpa"):
        attention(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="backend='sdpa' cannot compute"):
        attention(q, k, v, pattern=BandPattern(1), backend="sdpa")


def test_patterns_compose_and_dense_drops_out():
    assert all_of([None, DensePattern()]) is None
    assert all_of([BandPattern(1), None]) == BandPattern(1)
    both = all_of([BandPattern(4), BandPattern(2)])
    q, k, v = qkv()
    torch.testing.assert_close(attention(q, k, v, pattern=both), attention(q, k, v, pattern=BandPattern(2)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs_keep_their_dtype(dtype):
    q, k, v = qkv(dtype=dtype)
    out = attention(q, k, v, pattern=BandPattern(3), backend="reference")
    assert out.dtype == dtype
    expected = attention(q.float(), k.float(), v.float(), pattern=BandPattern(3), backend="reference")
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_non_contiguous_inputs_work():
    q, k, v = qkv()
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_t.is_contiguous()
    torch.testing.assert_close(attention(q_t, k, v, pattern=BandPattern(2)), attention(q, k, v, pattern=BandPattern(2)))


def test_a_leading_temperature_is_folded_into_the_softmax_scale():
    """Entropy scaling multiplies every logit by a constant: the core folds such leading multipliers into the
    scale, so a call whose only modifier is one is plain attention (dense SDPA runs it, bit for bit SDPA with the
    product scale, even where a backend is forced) and a chain keeps the modifiers after it, which see the same
    logits as before (the reference's materialized chain is the oracle)."""
    from visattn.kernels import EntropyScale, chain
    from visattn.kernels.backends import reference
    from visattn.kernels.core import _with_multipliers_in_scale

    q, k, v = qkv(n_q=29, n_k=41)
    temperature = EntropyScale(1.3)
    expected = F.scaled_dot_product_attention(q, k, v, scale=16**-0.5 * 1.3)
    assert torch.equal(attention(q, k, v, score_mod=temperature, backend="sdpa"), expected)
    assert torch.equal(attention(q, k, v, score_mod=temperature), expected)
    # Two temperatures then a head-dependent modifier: the modifier stays, after the folded scale.
    modifiers = chain([temperature, EntropyScale(0.8), HeadScale(0.5)])
    request = _with_multipliers_in_scale(AttentionRequest(q, k, v, score_mod=modifiers, scale=0.2))
    assert request.score_mod == HeadScale(0.5) and request.scale == pytest.approx(0.2 * 1.3 * 0.8)
    unfolded = reference.run(AttentionRequest(q, k, v, score_mod=modifiers, scale=0.2))[0]
    torch.testing.assert_close(attention(q, k, v, score_mod=modifiers, scale=0.2), unfolded, rtol=1e-5, atol=1e-6)
    # A temperature after another modifier scales what that one added: it stays a modifier.
    late = chain([HeadScale(0.5), temperature])
    assert _with_multipliers_in_scale(AttentionRequest(q, k, v, score_mod=late)).score_mod == late


@pytest.mark.parametrize("factor", [0.5, 0.0])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_sdpa_runs_a_positional_bias_as_an_additive_mask_like_the_reference(factor, mask):
    """Extrapolation decay adds a bias of the query and key positions alone (``log(factor)``, or ``-inf``, on
    out-of-window grid pairs): dense SDPA runs such a call with the bias materialized once as an additive mask,
    combined with the model's own mask, and gets the reference backend's attention; a bias too large to
    materialize is left to the backends that compute it in place."""
    from visattn.kernels import DecayModifier
    from visattn.kernels.backends import sdpa

    q, k, v = qkv(n_q=4 + 36, n_k=4 + 36)  # 4 text tokens, then a 6 x 6 grid
    decay = DecayModifier(grid=(6, 6), window=(3, 3), factor=factor, offset=4)
    model_mask = None
    if mask is not None:
        keep = torch.ones(2, 1, 1, 40, dtype=torch.bool)
        keep[1, ..., 2] = False  # a padded text key of the second row
        model_mask = keep if mask == "bool" else torch.zeros(keep.shape).masked_fill(~keep, -1e4)
    request = AttentionRequest(q, k, v, score_mod=decay, attn_mask=model_mask)
    assert sdpa.supports(request)
    expected = attention(q, k, v, score_mod=decay, attn_mask=model_mask, backend="reference")
    out = attention(q, k, v, score_mod=decay, attn_mask=model_mask, backend="sdpa")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not sdpa.supports(AttentionRequest(q, k, v, score_mod=HeadScale(0.5)))  # not a bias of positions
    big = torch.empty(1, 1, 8192, 16)
    assert not sdpa.supports(AttentionRequest(big, big, big, score_mod=DecayModifier((64, 128), (32, 32), 0.5)))
