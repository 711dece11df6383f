"""TextBlockEdit: an edit of the text block of keys whose other keys take what it leaves of each row
(Prompt-to-Prompt's joint-attention edit), computed by the core as attention calls over block values and checked
against the reference backend's materialized edit and an oracle written out by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import BandPattern

from visattn.kernels import ProbabilityRead, attention
from visattn.kernels.backends import reference
from visattn.kernels.probabilities import TextBlockEdit

N_K = 12
TEXTS = {"first": slice(0, 4), "last": slice(8, 12), "middle": slice(3, 7)}


def call(batch=4, n_q=N_K, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 2, n_q, 8, generator=generator, dtype=dtype)
    k, v = (torch.randn(batch, 2, N_K, 8, generator=generator, dtype=dtype) for _ in range(2))
    return q, k, v, generator


def by_hand(q, k, v, edit: TextBlockEdit, mask=None, blend=None):
    """The oracle: the softmax, the target rows' text block edited and the other keys rescaled, written out."""
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    text = edit.text
    others = [key for key in range(N_K) if not text.start <= key < text.stop]
    lo, hi = (0, q.shape[2]) if edit.queries is None else (edit.queries.start, edit.queries.stop)
    source, target = probs[edit.source, :, lo:hi], probs[edit.target, :, lo:hi]
    new_text = source[..., text] if edit.mix is None else source[..., text] @ edit.mix
    if edit.keep is not None:
        new_text = new_text + target[..., text] * edit.keep
    new_others = (source if edit.others_from_source else target)[..., others]
    text_sum, others_sum = new_text.sum(-1, keepdim=True), new_others.sum(-1, keepdim=True)
    edited = probs.clone()
    block = edited[edit.target, :, lo:hi]
    block[..., text] = torch.where(text_sum > 1, new_text / text_sum, new_text)
    block[..., others] = new_others * (1 - text_sum).clamp_min(0) / others_sum
    edited[edit.target, :, lo:hi] = block
    if blend is not None:
        edited = edited * (1 - blend) + blend * torch.eye(N_K).view(1, 1, N_K, N_K)
    return torch.matmul(edited, v.float())


def no_materializing(monkeypatch) -> list:
    materialized = []
    monkeypatch.setattr(reference, "run", lambda request: materialized.append(request) or None)
    return materialized


@pytest.mark.parametrize("text", list(TEXTS))
@pytest.mark.parametrize("mixed", [False, True], ids=["identity", "mixed"])
@pytest.mark.parametrize("keep", [False, True], ids=["replaced", "kept"])
@pytest.mark.parametrize("from_source", [True, False], ids=["others-of-source", "others-own"])
@pytest.mark.parametrize("queries", [None, (2, 10)], ids=["every-query", "some-queries"])
def test_a_text_block_edit_runs_as_attention_calls_like_the_materialized_edit(
    text, mixed, keep, from_source, queries, monkeypatch
):
    q, k, v, generator = call()
    width = TEXTS[text].stop - TEXTS[text].start
    edit = TextBlockEdit(
        slice(0, 2),
        slice(2, 4),
        TEXTS[text],
        torch.rand(width, width, generator=generator) if mixed else None,
        torch.rand(width, generator=generator) if keep else None,
        others_from_source=from_source,
        queries=None if queries is None else slice(*queries),
    )
    expected = attention(q, k, v, editors=[edit], backend="reference")
    torch.testing.assert_close(expected, by_hand(q, k, v, edit), rtol=0, atol=2e-6)
    materialized = no_materializing(monkeypatch)
    for backend in ("auto", "sdpa"):
        out = attention(q, k, v, editors=[edit], backend=backend)
        assert (out - expected).abs().max() <= 2e-6
    assert not materialized  # no backend materialized the probabilities


def test_a_text_block_holding_more_than_the_row_is_divided_by_its_sum_and_the_others_get_nothing(monkeypatch):
    q, k, v, generator = call()
    edit = TextBlockEdit(slice(0, 2), slice(2, 4), slice(0, 4), torch.full((4, 4), 10.0), torch.ones(4))
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 8**-0.5, dim=-1)
    assert (probs[0:2, ..., 0:4] @ edit.mix).sum(-1).min() > 1  # every target row's text block exceeds one
    expected = by_hand(q, k, v, edit)
    materialized = no_materializing(monkeypatch)
    out = attention(q, k, v, editors=[edit])
    assert not materialized and (out - expected).abs().max() <= 2e-6
    text_only = attention(q, k, v * (torch.arange(N_K) < 4).view(1, 1, -1, 1), editors=[edit])
    torch.testing.assert_close(out[2:4], text_only[2:4], rtol=0, atol=2e-6)  # the image keys weigh nothing


@pytest.mark.parametrize("keep", [False, True], ids=["replaced", "kept"])
def test_a_call_whose_keys_are_all_text_keeps_its_edited_block_as_it_is(keep, monkeypatch):
    """Nothing takes the difference where every key is text (cross-attention over the prompt alone, some queries
    edited): the block stays as edited even where it sums to more than one, as the authors' cross-attention edit
    (a re-weighting) does."""
    q, k, v, generator = call()
    mix = torch.rand(N_K, N_K, generator=generator) * 3
    kept = torch.rand(N_K, generator=generator) if keep else None
    edit = TextBlockEdit(slice(0, 2), slice(2, 4), slice(0, N_K), mix, kept, queries=slice(2, 9))
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 8**-0.5, dim=-1)
    edited = probs.clone()
    edited[2:4, :, 2:9] = probs[0:2, :, 2:9] @ mix + (probs[2:4, :, 2:9] * kept if keep else 0)
    assert edited[2:4, :, 2:9].sum(-1).max() > 1
    expected = attention(q, k, v, editors=[edit], backend="reference")
    torch.testing.assert_close(expected, torch.matmul(edited, v), rtol=0, atol=1e-5)
    materialized = no_materializing(monkeypatch)
    out = attention(q, k, v, editors=[edit])
    assert not materialized and (out - expected).abs().max() <= 1e-5


def test_text_block_edits_compose_with_a_per_row_mask_an_identity_blend_and_reads(monkeypatch):
    q, k, v, generator = call(batch=6)
    edits = [
        TextBlockEdit(
            slice(0, 2), slice(2, 4), slice(0, 4), torch.rand(4, 4, generator=generator), queries=slice(4, 12)
        ),
        TextBlockEdit(slice(4, 5), slice(5, 6), slice(0, 4), None, torch.rand(4, generator=generator), False),
    ]
    mask = torch.rand(6, 1, N_K, N_K, generator=generator) > 0.3
    mask[..., 0] = mask[..., 5] = True  # every query attends to a text key and an image key
    blend = torch.rand(6, 2, 1, 1, generator=generator)
    keys = torch.tensor([1, 4, 6])

    def run(backend):
        seen = {}
        reads = [
            ProbabilityRead(lambda block: seen.update(final=block), rows=slice(1, 6), queries=slice(2, 9), keys=keys),
            ProbabilityRead(lambda block: seen.update(before=block), rows=slice(2, 4), before_edits=True),
        ]
        out = attention(q, k, v, attn_mask=mask, identity_blend=blend, editors=edits, reads=reads, backend=backend)
        return out, seen

    expected, oracle = run("reference")
    by_hands = by_hand(q, k, v, edits[1], mask, None)
    by_hands[2:4] = by_hand(q, k, v, edits[0], mask, None)[2:4]
    # With the blend: (1 - s) * edited + s * identity weights the values, i.e. (1 - s) * edited @ v + s * v.
    torch.testing.assert_close(expected, (1 - blend) * by_hands + blend * v, rtol=0, atol=2e-6)
    materialized = no_materializing(monkeypatch)
    out, seen = run("auto")
    assert not materialized
    assert (out - expected).abs().max() <= 2e-6
    for name in ("final", "before"):
        assert (seen[name] - oracle[name]).abs().max() <= 1e-6


def test_text_block_edits_the_core_cannot_split_fall_back_to_the_materialized_edit(monkeypatch):
    q, k, v, generator = call()
    edit = TextBlockEdit(slice(0, 2), slice(2, 4), slice(0, 4), torch.rand(4, 4, generator=generator))
    chained = [TextBlockEdit(slice(0, 1), slice(1, 2), slice(0, 4)), edit]
    mixed_kinds = [edit, lambda probs, start, stop: None]
    materialized = []
    original = reference.run
    monkeypatch.setattr(reference, "run", lambda request: materialized.append(request) or original(request))
    for editors, kwargs in ((chained, {}), (mixed_kinds, {}), ([edit], {"pattern": BandPattern(3)})):
        materialized.clear()
        out = attention(q, k, v, editors=editors, **kwargs)
        assert len(materialized) == 1  # the reference backend ran the call, edits and all
        torch.testing.assert_close(out, attention(q, k, v, editors=editors, backend="reference", **kwargs))


def test_a_text_block_edit_in_half_precision_stays_at_its_rounding():
    """The blocks' sums run in fp32 (the mass the other keys take would otherwise round by up to 0.4 %): the output
    is the fp32 oracle's up to bf16's rounding of values about 1."""
    q, k, v, generator = call(dtype=torch.bfloat16)
    edit = TextBlockEdit(slice(0, 2), slice(2, 4), slice(0, 4), torch.rand(4, 4, generator=generator), torch.rand(4))
    out = attention(q, k, v, editors=[edit])
    assert out.dtype == torch.bfloat16
    expected = attention(q.float(), k.float(), v.float(), editors=[edit], backend="reference")
    assert (out.float() - expected).abs().max() <= 2e-2


def test_a_text_block_edit_has_the_edited_attentions_gradients():
    q, k, v, generator = call()
    edit = TextBlockEdit(slice(0, 2), slice(2, 4), slice(8, 12), torch.rand(4, 4, generator=generator), torch.rand(4))
    grads = []
    for run in (lambda *x: attention(*x, editors=[edit]), lambda *x: by_hand(*x, edit)):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        run(*inputs).square().sum().backward()
        grads.append([x.grad for x in inputs])
    for fast, hand in zip(*grads, strict=True):
        torch.testing.assert_close(fast, hand, rtol=1e-5, atol=1e-5)


def test_text_block_edit_rejects_rows_and_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="as many rows"):
        TextBlockEdit(slice(0, 1), slice(1, 3), slice(0, 4))
    with pytest.raises(ValueError, match=r"TextBlockEdit.text must be a slice\(start, stop\)"):
        TextBlockEdit(slice(0, 1), slice(1, 2), slice(4, 4))
    with pytest.raises(ValueError, match=r"TextBlockEdit.mix must be a \[4, 4\] matrix over the text keys"):
        TextBlockEdit(slice(0, 1), slice(1, 2), slice(0, 4), torch.ones(3, 3))
    with pytest.raises(ValueError, match="TextBlockEdit.keep must be None or a vector of the 4 text keys"):
        TextBlockEdit(slice(0, 1), slice(1, 2), slice(0, 4), None, torch.ones(3))
    with pytest.raises(ValueError, match=r"TextBlockEdit.queries must be None or a slice\(start, stop\)"):
        TextBlockEdit(slice(0, 1), slice(1, 2), slice(0, 4), queries=slice(3, 3))
