"""SoftPAG (``PerturbedAttentionGuidance(heads=..., strength=a)``) against HeadHunter's processor (issue 28).

The reference is a transcription written here from reading cvlab-kaist/HeadHunter
``diffusers/src/diffusers/models/attention_processor.py``: ``skip_attention`` with the perturbation string
``"[PROB_PERTURB]attention_identity@scale=a"`` (the identity map ``torch.eye(L, S)`` as the perturbed map, then the
``"scale"`` branch's linear interpolation ``(1 - a) softmax(QK^T / sqrt(d)) + a I``, written into the heads listed
in ``perturb_heads`` only, then ``attn_weight @ value``), called from ``JointAttnProcessor2_0.__call__`` when a
``perturb_type`` is given (their SD3 processor; without ``encoder_hidden_states`` it is plain self-attention:
projections, head split, ``skip_attention``, head merge, ``to_out[0]``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import mid_block_guidance_difference, perturbed_self_attention

from visattn.effects import PerturbedAttentionGuidance

TOLERANCE = 1e-5


def authors_skip_attention(query, key, value, identity_scale: float, perturb_heads) -> torch.Tensor:
    """HeadHunter ``skip_attention`` for ``perturb_type="[PROB_PERTURB]attention_identity@scale=<a>"``, no mask,
    no dropout: the perturbed map ``(1 - a) A + a I`` replaces ``A`` on the heads in ``perturb_heads``."""
    length, source = query.size(-2), key.size(-2)
    attn_weight = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.size(-1)))
    attn_weight = torch.softmax(attn_weight, dim=-1)
    batch, heads = attn_weight.shape[:2]
    perturbed = torch.eye(length, source, dtype=query.dtype).repeat(batch, heads, 1, 1)
    perturbed = (1 - identity_scale) * attn_weight + identity_scale * perturbed
    indices = [i for i in range(heads) if i in perturb_heads]
    attn_weight[:, indices, :, :] = perturbed[:, indices, :, :]
    return attn_weight.to(query.dtype) @ value


@pytest.mark.parametrize("heads", [[1], [0, 3], [0, 1, 2, 3]], ids=["one", "two", "all"])
@pytest.mark.parametrize("strength", [0.1, 0.5, 0.9, 1.0])
def test_attention_matches_the_authors_skip_attention(strength, heads):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, 64, 8, generator=gen) for _ in range(3))
    effect = PerturbedAttentionGuidance(scale=1.0, layers="layer", heads={"layer": heads}, strength=strength)
    got = perturbed_self_attention(effect, q, k, v, 8)
    expected = authors_skip_attention(q[4:], k[4:], v[4:], strength, heads)
    difference = (got[4:] - expected).abs().max().item()
    print(f"SoftPAG attention a={strength} heads={heads}: max |visattn - authors| = {difference:.3g}")
    assert difference <= TOLERANCE
    # the unperturbed rows are plain attention
    torch.testing.assert_close(got[:4], F.scaled_dot_product_attention(q[:4], k[:4], v[:4]), atol=1e-6, rtol=0)


class AuthorsSoftPAGProcessor:
    """HeadHunter ``JointAttnProcessor2_0.__call__`` without ``encoder_hidden_states`` (a UNet self-attention):
    ``skip_attention`` on the perturbed third of the batch, SDPA on the other rows (their pipeline passes
    ``perturb_type`` only to the perturbed forward)."""

    def __init__(self, identity_scale: float, perturb_heads) -> None:
        self.identity_scale = identity_scale
        self.perturb_heads = perturb_heads

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        rows = batch_size // 3
        plain = F.scaled_dot_product_attention(query[: 2 * rows], key[: 2 * rows], value[: 2 * rows])
        soft = authors_skip_attention(
            query[2 * rows :], key[2 * rows :], value[2 * rows :], self.identity_scale, self.perturb_heads
        )
        out = torch.cat([plain, soft]).transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@pytest.mark.parametrize("strength, heads", [(0.3, [1]), (0.7, [0]), (1.0, [0, 1])])
def test_unet_prediction_matches_the_authors_processor(strength, heads):
    """The guided prediction ``uncond + g (cond - uncond) + s (cond - ptb)`` with the authors' processor in the
    tiny SD UNet's mid-block self-attention equals visattn's SoftPAG on the same heads."""
    effect = PerturbedAttentionGuidance(3.0, layers="mid", heads={"mid": heads}, strength=strength)
    difference, perturbation = mid_block_guidance_difference(AuthorsSoftPAGProcessor(strength, heads), effect)
    assert perturbation > 1e-4
    print(f"SoftPAG UNet a={strength} heads={heads}: max |visattn - authors| = {difference:.3g}")
    assert difference <= TOLERANCE
