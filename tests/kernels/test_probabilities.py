"""The attention core's probability stage (visattn.kernels.probabilities): editors and reads of the softmax."""

from __future__ import annotations

import pytest
import torch
from helpers import BandPattern, HeadScale

from visattn.kernels import LinearEdit, ProbabilityRead, attention
from visattn.kernels.backends import reference


def qkv(batch=2, heads=2, n=12, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3)]


def softmax_reference(q, k, v, **kwargs):
    """The oracle: the reference backend's logits, softmaxed."""
    from visattn.kernels import AttentionRequest

    request = AttentionRequest(q, k, v, **kwargs)
    return torch.softmax(reference.masked_logits(request, 0, q.shape[2]), dim=-1)


@pytest.mark.parametrize(
    "backend, modified",
    [("auto", False), ("sdpa", False), ("reference", False), ("auto", True), ("reference", True)],
    ids=["auto-plain", "sdpa-plain", "reference-plain", "auto-pattern+score_mod", "reference-pattern+score_mod"],
)
def test_a_read_gets_exactly_the_reference_probabilities_and_leaves_the_output_alone(backend, modified):
    q, k, v = qkv()
    kwargs = {"pattern": BandPattern(3), "score_mod": HeadScale(0.5)} if modified else {}
    blocks = []
    keys = torch.tensor([0, 3, 5, 11])
    read = ProbabilityRead(blocks.append, rows=slice(1, 2), queries=slice(2, 9), keys=keys)
    out = attention(q, k, v, backend=backend, reads=[read], **kwargs)
    assert torch.equal(out, attention(q, k, v, backend=backend, **kwargs))
    (block,) = blocks
    expected = softmax_reference(q, k, v, **kwargs)[1:2, :, 2:9][..., keys]
    torch.testing.assert_close(block, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "layout, rows, dtype",
    [
        ("contiguous", slice(1, 3), torch.float32),
        ("transposed", slice(1, 2), torch.float32),  # as processors hand q over: one row merges with its heads
        ("transposed", slice(0, 3), torch.float32),  # several rows of a transposed view: sliced rows, matmul
        ("contiguous", slice(0, 2), torch.bfloat16),
    ],
)
def test_plain_reads_served_apart_are_the_reference_blocks_in_any_layout(layout, rows, dtype):
    """Reads of a plain call served apart (``serve_plain_reads``: by the core after a dense call, or by a layer's
    planned stock answer) get the reference backend's probabilities, whether the rows and heads are read as one
    axis of strided views or the rows are sliced, chunk by chunk over the queries."""
    from visattn.kernels import probabilities

    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(3, 5, 2, 8, generator=generator) for _ in range(2))  # [B, N, H, D]
    if layout == "transposed":
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    else:
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    q, k = q.to(dtype), k.to(dtype)
    keys = torch.tensor([0, 2, 4])
    blocks = []
    read = ProbabilityRead(blocks.append, rows=rows, queries=slice(1, 5), keys=keys)
    original = probabilities.READ_QUERY_CHUNK
    try:
        probabilities.READ_QUERY_CHUNK = 3  # two chunks
        probabilities.serve_plain_reads(q, k, 0.3, [read])
    finally:
        probabilities.READ_QUERY_CHUNK = original
    (block,) = blocks
    expected = softmax_reference(q.float(), k.float(), k.float(), scale=0.3)[rows, :, 1:5][..., keys]
    assert block.dtype == torch.float32 and block.shape == expected.shape
    torch.testing.assert_close(block, expected, rtol=1e-5, atol=1e-7)


def test_editors_change_the_probabilities_before_they_weight_the_values_and_reads_see_the_edit():
    q, k, v = qkv()
    seen = []

    def swap_rows(probs, start, stop):
        probs[1] = probs[0]  # the second row attends as the first does (Prompt-to-Prompt's injection)

    out = attention(q, k, v, editors=[swap_rows], reads=[ProbabilityRead(seen.append)])
    probs = softmax_reference(q, k, v)
    probs[1] = probs[0]
    torch.testing.assert_close(out, torch.matmul(probs, v), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[0], probs, rtol=1e-5, atol=1e-7)


def test_editors_run_chunk_by_chunk_over_every_query(monkeypatch):
    monkeypatch.setattr(reference, "QUERY_CHUNK", 5)
    q, k, v = qkv(n=12)
    chunks = []
    attention(q, k, v, editors=[lambda probs, start, stop: chunks.append((start, stop, probs.shape[2]))])
    assert chunks == [(0, 5, 5), (5, 10, 5), (10, 12, 2)]


def test_an_edited_call_returns_no_log_sum_exp_and_only_the_reference_edits():
    q, k, v = qkv()
    out, lse = attention(q, k, v, editors=[lambda probs, start, stop: None], return_lse=True)
    assert lse is None
    torch.testing.assert_close(out, attention(q, k, v, backend="reference"), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="backend='sdpa' cannot edit attention probabilities"):
        attention(q, k, v, editors=[lambda probs, start, stop: None], backend="sdpa")


def test_reads_see_the_identity_blend_the_output_used():
    """SoftPAG's blend s makes the probabilities the output used (1 - s) p + s I."""
    q, k, v = qkv()
    blend = torch.tensor([0.25, 1.0]).view(1, 2, 1, 1)
    seen = []
    attention(q, k, v, identity_blend=blend, reads=[ProbabilityRead(seen.append)])
    eye = torch.eye(q.shape[2]).view(1, 1, q.shape[2], q.shape[2])
    expected = softmax_reference(q, k, v) * (1 - blend) + blend * eye
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-7)


def test_fully_masked_queries_read_zeros_not_nan():
    q, k, v = qkv()
    mask = torch.ones(1, 1, q.shape[2], k.shape[2], dtype=torch.bool)
    mask[..., 4, :] = False
    seen = []
    attention(q, k, v, attn_mask=mask, reads=[ProbabilityRead(seen.append)])
    assert torch.isfinite(seen[0]).all() and not seen[0][:, :, 4].any()


# --- editors linear over the keys ------------------------------------------------------------------------------------


def linear_call(batch=4, heads=2, n_q=12, n_k=7, dim=8, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q, dim, generator=generator)
    k, v = (torch.randn(batch, heads, n_k, dim, generator=generator) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype), generator


def random_edit(generator, n_k=7, keep=True, source=slice(0, 2), target=slice(2, 4)):
    mix = torch.rand(n_k, n_k, generator=generator) * (torch.rand(n_k, n_k, generator=generator) > 0.5)
    return LinearEdit(source, target, mix, torch.rand(n_k, generator=generator) if keep else None)


@pytest.mark.parametrize("keep", [False, True], ids=["replaced", "kept"])
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_a_linear_edit_runs_as_attention_over_mixed_values_like_the_materialized_edit(keep, backend, monkeypatch):
    q, k, v, generator = linear_call()
    edit = random_edit(generator, keep=keep)
    expected = attention(q, k, v, editors=[edit], backend="reference")
    # The oracle by hand: the edited probabilities weight the values.
    probs = softmax_reference(q, k, v)
    probs[2:4] = torch.matmul(probs[0:2], edit.mix) + (probs[2:4] * edit.keep if keep else 0)
    torch.testing.assert_close(expected, torch.matmul(probs, v), rtol=0, atol=2e-6)
    materialized = []
    monkeypatch.setattr(reference, "run", lambda request: materialized.append(request) or None)
    out = attention(q, k, v, editors=[edit], backend=backend)
    assert not materialized  # no backend materialized the probabilities
    assert (out - expected).abs().max() <= 2e-6


def test_linear_edits_compose_with_a_per_row_mask_an_identity_blend_and_reads():
    q, k, v, generator = linear_call(n_q=7)
    edits = [random_edit(generator), random_edit(generator, keep=False, source=slice(0, 1), target=slice(4, 5))]
    q, k, v = (torch.cat([x, x[:1]]) for x in (q, k, v))  # a fifth row, replaced by row 0's edit
    mask = torch.rand(5, 1, 7, 7, generator=generator) > 0.3
    mask[..., 0] = True  # every query attends to some key
    blend = torch.rand(5, 2, 1, 1, generator=generator)
    keys = torch.tensor([1, 4, 6])

    def run(backend):
        seen = {}
        reads = [
            ProbabilityRead(lambda block: seen.update(final=block), rows=slice(1, 5), queries=slice(2, 6), keys=keys),
            ProbabilityRead(lambda block: seen.update(before=block), rows=slice(2, 4), before_edits=True),
        ]
        out = attention(q, k, v, attn_mask=mask, identity_blend=blend, editors=edits, reads=reads, backend=backend)
        return out, seen

    out, seen = run("auto")
    expected, oracle = run("reference")
    assert (out - expected).abs().max() <= 2e-6
    assert (seen["final"] - oracle["final"]).abs().max() <= 1e-6
    assert (seen["before"] - oracle["before"]).abs().max() <= 1e-6
    # Before the edits is the softmax itself (no blend); the final block is edited and blended.
    unedited = softmax_reference(q, k, v, attn_mask=mask)
    torch.testing.assert_close(seen["before"], unedited[2:4], rtol=0, atol=1e-6)
    assert (seen["final"] - unedited[1:5, :, 2:6][..., keys]).abs().max() > 1e-2


def test_linear_edits_the_core_cannot_sum_fall_back_to_the_materialized_edit(monkeypatch):
    q, k, v, generator = linear_call()
    chained = [random_edit(generator, source=slice(0, 1), target=slice(1, 2)), random_edit(generator)]
    mixed_kinds = [random_edit(generator), lambda probs, start, stop: None]
    materialized = []
    original = reference.run
    monkeypatch.setattr(reference, "run", lambda request: materialized.append(request) or original(request))
    for editors, kwargs in ((chained, {}), (mixed_kinds, {}), ([random_edit(generator)], {"pattern": BandPattern(3)})):
        materialized.clear()
        out = attention(q, k, v, editors=editors, **kwargs)
        assert len(materialized) == 1  # the reference backend ran the call, edits and all
        torch.testing.assert_close(out, attention(q, k, v, editors=editors, backend="reference", **kwargs))


def test_a_linear_edit_in_half_precision_stays_close_to_the_fp32_oracle():
    q, k, v, generator = linear_call(dtype=torch.bfloat16)
    edit = random_edit(generator)
    out = attention(q, k, v, editors=[edit])
    assert out.dtype == torch.bfloat16
    expected = attention(q.float(), k.float(), v.float(), editors=[edit], backend="reference")
    assert (out.float() - expected).abs().max() <= 5e-2


def test_linear_edit_rejects_rows_and_shapes_that_do_not_fit():
    mix = torch.eye(3)
    with pytest.raises(ValueError, match="as many rows"):
        LinearEdit(slice(0, 1), slice(1, 3), mix)
    with pytest.raises(ValueError, match=r"LinearEdit.source must be a slice\(start, stop\)"):
        LinearEdit(slice(None, 1), slice(1, 2), mix)
    with pytest.raises(ValueError, match=r"LinearEdit.mix must be a \[keys, keys\] matrix"):
        LinearEdit(slice(0, 1), slice(1, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="LinearEdit.keep must be None or a vector of as many keys as mix"):
        LinearEdit(slice(0, 1), slice(1, 2), mix, torch.ones(2))
    with pytest.raises(ValueError, match="LinearEdit.keep must be None or a vector of as many keys as mix"):
        LinearEdit(slice(0, 1), slice(1, 2), None, torch.ones(3))
    with pytest.raises(ValueError, match=r"LinearEdit.queries must be None or a slice\(start, stop\)"):
        LinearEdit(slice(0, 1), slice(1, 2), None, queries=slice(3, 3))
    with pytest.raises(ValueError, match="LinearEdit.queries needs keep=None"):
        LinearEdit(slice(0, 1), slice(1, 2), mix, torch.ones(3), queries=slice(0, 2))


@pytest.mark.parametrize("queries", [(5, 9), (2, 12), (0, 10)], ids=["few", "most-to-the-end", "most-from-the-start"])
@pytest.mark.parametrize("mixed", [False, True], ids=["identity", "mixed"])
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_an_edit_of_part_of_the_queries_runs_as_attention_like_the_materialized_edit(
    queries, mixed, backend, monkeypatch
):
    """The target rows' queries in a range take the source rows' probabilities (mixed over the keys, or as they are:
    no matrix); the target rows' other queries keep their own attention. The core computes the smaller side apart
    (the edited queries, or the unedited ones when most are edited), with a per-query mask and an identity blend,
    and no backend materializes the probabilities."""
    q, k, v, generator = linear_call(n_k=12)
    mix = torch.rand(12, 12, generator=generator) if mixed else None
    lo, hi = queries
    edit = LinearEdit(slice(0, 2), slice(2, 4), mix, queries=slice(lo, hi))
    mask = torch.rand(4, 1, 12, 12, generator=generator) > 0.3
    mask[..., 0] = True
    blend = torch.rand(4, 2, 1, 1, generator=generator)
    expected = attention(q, k, v, attn_mask=mask, identity_blend=blend, editors=[edit], backend="reference")
    # The oracle by hand: only the edited queries' rows of the target change.
    probs = softmax_reference(q, k, v, attn_mask=mask)
    source = probs[0:2, :, lo:hi]
    probs[2:4, :, lo:hi] = source if mix is None else torch.matmul(source, mix)
    eye = torch.eye(12).view(1, 1, 12, 12)
    by_hand = torch.matmul(probs * (1 - blend) + blend * eye, v)
    torch.testing.assert_close(expected, by_hand, rtol=0, atol=2e-6)
    materialized = []
    monkeypatch.setattr(reference, "run", lambda request: materialized.append(request) or None)
    out = attention(q, k, v, attn_mask=mask, identity_blend=blend, editors=[edit], backend=backend)
    assert not materialized
    assert (out - expected).abs().max() <= 2e-6


@pytest.mark.parametrize("keep", [False, True], ids=["replaced", "kept"])
def test_a_linear_edit_has_the_edited_attentions_gradients(keep):
    q, k, v, generator = linear_call()
    edit = random_edit(generator, keep=keep)

    def edited_by_hand(q, k, v):
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
        edited = probs.clone()
        edited[2:4] = torch.matmul(probs[0:2], edit.mix) + (probs[2:4] * edit.keep if keep else 0)
        return torch.matmul(edited, v)

    grads = []
    for run in (lambda *x: attention(*x, editors=[edit]), edited_by_hand):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        run(*inputs).square().sum().backward()
        grads.append([x.grad for x in inputs])
    for fast, by_hand in zip(*grads, strict=True):
        torch.testing.assert_close(fast, by_hand, rtol=1e-5, atol=1e-5)
