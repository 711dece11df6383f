"""SEG's default and infinite-blur rule against the authors' code (issue 28).

The references below are transcriptions, written here from reading SusungHong/SEG-SDXL ``pipeline_seg.py``:
``gaussian_blur_2d`` and ``SEGCFGSelfAttnProcessor.__call__`` (with CFG, the batch is ``[uncond, cond,
perturbed]`` and only the perturbed chunk's queries are blurred; ``blur_sigma > inf_blur_threshold`` (9999.0)
replaces them by their spatial mean). diffusers' guider (``diffusers/guiders/smoothed_energy_guidance.py``)
defaults to the same ``seg_blur_sigma=9999999.0`` and ``seg_blur_threshold_inf=9999.0``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import mid_block_guidance_difference, perturbed_self_attention

from visattn.effects import SmoothedEnergyGuidance
from visattn.effects.smoothed_energy_guidance import AUTHORS_SIGMA, INF_BLUR_THRESHOLD, blur_grid, is_infinite_blur

TOLERANCE = 1e-5


def authors_gaussian_blur_2d(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """SEG-SDXL ``pipeline_seg.py``, ``gaussian_blur_2d``: clip the kernel to the last axis, 2-D outer product
    kernel in the image's dtype, reflect padding, depthwise conv on ``[B, C, H, W]``."""
    height = img.shape[-1]
    kernel_size = min(kernel_size, height - (height % 2 - 1))
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    x_kernel = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel2d = torch.mm(x_kernel[:, None], x_kernel[None, :])
    kernel2d = kernel2d.expand(img.shape[-3], 1, kernel2d.shape[0], kernel2d.shape[1])
    pad = kernel_size // 2
    img = F.pad(img, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(img, kernel2d, groups=img.shape[-3])


def authors_seg_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blur_sigma: float,
    inf_blur_threshold: float = 9999.0,
) -> torch.Tensor:
    """SEG-SDXL ``SEGCFGSelfAttnProcessor.__call__`` from the head split on, ``do_cfg=True``: ``[3B, H, N, D]``
    queries chunked into uncond / org / ptb; ptb's queries blurred as ``[B, H*D, h, w]`` images (``h = w =
    isqrt(N)``) or, above the threshold, replaced by their mean; then SDPA."""
    batch3, heads, n, head_dim = query.shape
    height = width = math.isqrt(n)
    inf_blur = blur_sigma > inf_blur_threshold
    query_uncond, query_org, query_ptb = query.chunk(3)
    query_ptb = query_ptb.permute(0, 1, 3, 2).reshape(batch3 // 3, heads * head_dim, height, width)
    if not inf_blur:
        kernel_size = math.ceil(6 * blur_sigma) + 1 - math.ceil(6 * blur_sigma) % 2
        query_ptb = authors_gaussian_blur_2d(query_ptb, kernel_size, blur_sigma)
    else:
        query_ptb = query_ptb.clone()
        query_ptb[:] = query_ptb.mean(dim=(-2, -1), keepdim=True)
    query_ptb = query_ptb.reshape(batch3 // 3, heads, head_dim, n).permute(0, 1, 3, 2)
    query = torch.cat((query_uncond, query_org, query_ptb), dim=0)
    return F.scaled_dot_product_attention(query, key, value)


def shared_inputs(side: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(6, 3, side * side, 8, generator=gen) for _ in range(3))


def test_default_sigma_is_the_authors():
    assert inspect.signature(SmoothedEnergyGuidance).parameters["sigma"].default == 9999999.0 == AUTHORS_SIGMA
    assert SmoothedEnergyGuidance().sigma == 9999999.0
    assert INF_BLUR_THRESHOLD == 9999.0


@pytest.mark.parametrize("side", [8, 9])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.7, 50.0, 9999.0, 10000.0, AUTHORS_SIGMA, float("inf")])
def test_attention_matches_the_authors_processor(sigma, side):
    """visattn's SEG attention equals SEG-SDXL's processor on shared random ``[uncond, cond, ptb]`` inputs."""
    q, k, v = shared_inputs(side)
    expected = authors_seg_attention(q, k, v, sigma)
    effect = SmoothedEnergyGuidance(scale=1.0, sigma=sigma)
    got = perturbed_self_attention(effect, q, k, v, side)
    assert (got - expected).abs().max().item() <= TOLERANCE
    # the unperturbed rows are untouched
    torch.testing.assert_close(got[:4], F.scaled_dot_product_attention(q[:4], k[:4], v[:4]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 9999.0])
def test_finite_blur_matches_the_authors_gaussian_blur_2d(sigma):
    images = torch.randn(2, 5, 9, 9, generator=torch.Generator().manual_seed(3))
    kernel_size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    expected = authors_gaussian_blur_2d(images, kernel_size, sigma)
    tokens = images.permute(0, 2, 3, 1).reshape(2, 81, 5)
    got = blur_grid(tokens, (1, 9, 9), sigma).reshape(2, 9, 9, 5).permute(0, 3, 1, 2)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_authors_default_sigma_equals_infinite_blur():
    """``sigma=9999999`` (anything above 9999) is the infinite blur, exactly; 9999 itself is a finite Gaussian."""
    q, k, v = shared_inputs(8, seed=1)
    infinite = perturbed_self_attention(SmoothedEnergyGuidance(scale=1.0, sigma=float("inf")), q, k, v, 8)
    for sigma in (AUTHORS_SIGMA, 10000.0, 9999.5):
        assert is_infinite_blur(sigma)
        assert torch.equal(
            perturbed_self_attention(SmoothedEnergyGuidance(scale=1.0, sigma=sigma), q, k, v, 8), infinite
        )
    assert not is_infinite_blur(9999.0)
    finite = perturbed_self_attention(SmoothedEnergyGuidance(scale=1.0, sigma=9999.0), q, k, v, 8)
    assert not torch.equal(finite, infinite)
    # a threshold of the caller's choosing moves the switch, as the authors' ``inf_blur_threshold`` does
    moved = perturbed_self_attention(SmoothedEnergyGuidance(scale=1.0, sigma=50.0, inf_threshold=10.0), q, k, v, 8)
    assert torch.equal(moved, infinite)


class AuthorsSEGProcessor:
    """SEG-SDXL ``SEGCFGSelfAttnProcessor.__call__`` on a diffusers ``Attention`` (self-attention, no mask, no
    group or spatial norm: what SD/SDXL's transformer blocks use), ``do_cfg=True``."""

    def __init__(self, blur_sigma: float) -> None:
        self.blur_sigma = blur_sigma

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        out = authors_seg_attention(query, key, value, self.blur_sigma)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@pytest.mark.parametrize("sigma", [1.0, 3.0, AUTHORS_SIGMA])
def test_unet_prediction_matches_the_authors_pipeline(sigma):
    """The guided prediction with the authors' processor in the mid block's self-attention and their combination
    ``uncond + g (cond - uncond) + s (cond - ptb)`` (SEG-SDXL ``StableDiffusionXLSEGPipeline.__call__``) equals
    visattn's on the tiny SD UNet."""
    difference, perturbation = mid_block_guidance_difference(
        AuthorsSEGProcessor(sigma), SmoothedEnergyGuidance(3.0, sigma, layers="mid")
    )
    assert perturbation > 1e-4
    print(f"SEG sigma={sigma}: max |visattn - authors| = {difference:.3g}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=0.0), r"sigma must be > 0; got 0.0 \(any sigma > inf_threshold"),
        (dict(sigma=-1), r"sigma must be > 0; got -1"),
        (dict(sigma=float("nan")), r"sigma must be > 0; got nan"),
        (dict(inf_threshold=0), r"inf_threshold must be > 0 and <= 1e\+06; got 0"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SmoothedEnergyGuidance(scale=1.0, **kwargs)
