"""The attention core's probability stage (visattn.kernels.probabilities): editors and reads of the softmax."""

from __future__ import annotations

import pytest
import torch
from helpers import BandPattern, HeadScale

from visattn.kernels import ProbabilityRead, attention
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
