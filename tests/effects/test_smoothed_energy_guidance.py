"""Smoothed Energy Guidance: the blur against hand-written references, limits, two-pass arithmetic, families."""

from __future__ import annotations

import functools
import math
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import count_planned_answers

import visattn
from visattn import BatchLayout, Branch, CallContext, Span, TokenLayout
from visattn.effects import AttentionCall, SmoothedEnergyGuidance
from visattn.effects.smoothed_energy_guidance import blur_grid
from visattn.kernels import attention
from visattn.tiny import TINY_PIPELINES, call_kwargs, tiny_pipeline


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, *effects, **overrides) -> np.ndarray:
    pipe = pipeline(family)
    with visattn.attach(pipe, *effects):
        return np.asarray(pipe(**call_kwargs(family, **overrides))[0], dtype=np.float64)


def authors_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The SEG-SDXL blur written out: a 2-D outer-product kernel, reflect padding, depthwise conv ``[B, C, H, W]``."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, image.shape[-1] - (image.shape[-1] % 2 - 1))
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel1d = (pdf / pdf.sum()).to(image.dtype)
    kernel2d = (kernel1d[:, None] @ kernel1d[None, :]).expand(image.shape[1], 1, size, size)
    padded = F.pad(image, [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel2d, groups=image.shape[1])


def one_call(effect, q, k, v, grid, queries=None):
    """An attention call whose batch is ``[cond, <effect's branch>]`` (one row each), run through ``effect``."""
    n = q.shape[2]
    layout = queries or TokenLayout(n, image=Span(0, n))
    ctx = CallContext(
        role="self" if layout.text is None else "joint",
        layer_name="layer",
        layer_index=0,
        family="test",
        heads=q.shape[1],
        head_dim=q.shape[3],
        queries=layout,
        keys=layout,
        batch=BatchLayout((Branch("cond", 0, 1), Branch(effect.branch, 1, 2))),
        grid=grid,
    )
    call = AttentionCall(ctx, q, k, v)
    effect.apply(call)
    return call, call.run()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 50.0])
def test_blur_equals_the_authors_two_dimensional_gaussian(sigma):
    tokens = torch.randn(2, 3, 8 * 8, 5, dtype=torch.float64)
    images = tokens.reshape(6, 8, 8, 5).permute(0, 3, 1, 2)
    expected = authors_blur(images, sigma).permute(0, 2, 3, 1).reshape(tokens.shape)
    torch.testing.assert_close(blur_grid(tokens, (1, 8, 8), sigma), expected, rtol=1e-12, atol=1e-12)


def test_video_grids_blur_each_frame_on_its_own():
    tokens = torch.randn(1, 2, 3 * 4 * 6, 8)
    blurred = blur_grid(tokens, (3, 4, 6), 1.0)
    frames = tokens.reshape(1, 2, 3, 24, 8)
    for f in range(3):
        torch.testing.assert_close(blurred.reshape(1, 2, 3, 24, 8)[:, :, f], blur_grid(frames[:, :, f], (1, 4, 6), 1.0))
    means = blur_grid(tokens, (3, 4, 6), float("inf")).reshape(1, 2, 3, 24, 8)
    torch.testing.assert_close(means, frames.mean(dim=3, keepdim=True).expand_as(means))


@pytest.mark.parametrize("grid", [(1, 8, 8), (3, 4, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_blur_does_not_depend_on_the_tokens_memory_layout(grid, dtype):
    # Attention hands its queries over as a transposed view ([B, H, N, D] over [B, N, H, D] memory); the blur reads
    # them in place and must give what it gives a contiguous copy, bit for bit, in the tokens' dtype.
    frames, height, width = grid
    memory = torch.randn(2, frames * height * width, 3, 4).to(dtype)
    view = memory.transpose(1, 2)
    for sigma in (1.0, float("inf")):
        blurred = blur_grid(view, grid, sigma)
        assert blurred.shape == view.shape and blurred.dtype == dtype
        assert torch.equal(blurred, blur_grid(view.contiguous(), grid, sigma))
    # Per frame as the authors blur one image: frame f of a video is the blur of that frame alone.
    per_frame = view.reshape(2, 3, frames, height * width, 4)
    blurred = blur_grid(view, grid, 1.0).reshape(2, 3, frames, height * width, 4)
    for f in range(frames):
        assert torch.equal(blurred[:, :, f], blur_grid(per_frame[:, :, f], (1, height, width), 1.0))


def test_infinite_query_blur_is_every_query_replaced_by_the_mean_query():
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    effect = SmoothedEnergyGuidance(scale=1.0, sigma=float("inf"))
    _, out = one_call(effect, q, k, v, (1, 4, 4))
    mean_q = q[1:].mean(dim=2, keepdim=True)
    weights = torch.softmax(mean_q @ k[1:].transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out[1:], (weights @ v[1:]).expand(1, 2, 16, 8))
    assert torch.equal(out[:1], attention(q[:1], k[:1], v[:1]))


def test_infinite_key_blur_is_uniform_attention():
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    effect = SmoothedEnergyGuidance(scale=1.0, sigma=float("inf"), blur="key")
    _, out = one_call(effect, q, k, v, (1, 4, 4))
    torch.testing.assert_close(out[1:], v[1:].mean(dim=2, keepdim=True).expand(1, 2, 16, 8))
    assert torch.equal(out[:1], attention(q[:1], k[:1], v[:1]))


def test_joint_attention_blurs_only_the_image_queries():
    text, side = 5, 4
    q, k, v = (torch.randn(2, 2, text + side * side, 8) for _ in range(3))
    layout = TokenLayout(text + side * side, image=Span(text, text + side * side), text=Span(0, text))
    effect = SmoothedEnergyGuidance(scale=1.0, sigma=1.0)
    call, _ = one_call(effect, q, k, v, (1, side, side), queries=layout)
    assert torch.equal(call.q[:, :, :text], q[:, :, :text]) and torch.equal(call.q[:1], q[:1])
    torch.testing.assert_close(call.q[1:, :, text:], blur_grid(q[1:, :, text:], (1, side, side), 1.0))


def test_scale_zero_is_exactly_the_baseline():
    assert np.array_equal(run("unet", SmoothedEnergyGuidance(scale=0.0, sigma=4.0)), run("unet"))


def test_a_vanishing_sigma_does_not_blur_so_it_is_the_baseline():
    baseline = run("unet")
    tiny = run("unet", SmoothedEnergyGuidance(scale=3.0, sigma=1e-3))
    assert np.abs(tiny - baseline).max() <= 1e-5
    assert np.abs(run("unet", SmoothedEnergyGuidance(scale=3.0, sigma=1.0)) - baseline).max() > 1e-4


def test_larger_sigma_moves_toward_infinite_blur():
    baseline = run("unet")
    small, large, infinite = (run("unet", SmoothedEnergyGuidance(scale=3.0, sigma=s)) for s in (0.5, 3.0, float("inf")))
    assert np.abs(small - baseline).max() < np.abs(infinite - baseline).max()
    assert np.abs(large - infinite).max() < np.abs(small - infinite).max()


class BlurredMidQueries(visattn.Effect):
    """The perturbation forced on every row, written independently of the effect (authors' 2-D blur)."""

    roles = ("self",)

    def __init__(self, sigma, **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma

    def apply(self, call):
        _, height, width = call.ctx.grid
        b, h, n, d = call.q.shape
        images = call.q.permute(0, 1, 3, 2).reshape(b, h * d, height, width)
        call.q = authors_blur(images, self.sigma).reshape(b, h, d, n).permute(0, 1, 3, 2)


def test_guidance_arithmetic_matches_a_hand_written_two_pass_reference():
    unet = pipeline("unet").unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(500)
    scale, g, sigma = 2.0, 4.0, 1.0

    class GuidedPipeline:  # what the effect reads from a pipeline: that it batches CFG, and its scale
        _guidance_scale = g

    pipe = GuidedPipeline()
    with torch.no_grad():
        eps_u, eps_c = unet(torch.cat([latents] * 2), t, text).sample.chunk(2)
        with visattn.attach(unet, BlurredMidQueries(sigma, layers="mid")):
            eps_p = unet(latents, t, text[1:]).sample
        expected = eps_u + g * (eps_c - eps_u) + scale * (eps_c - eps_p)
        with visattn.attach(unet, SmoothedEnergyGuidance(scale, sigma, layers="mid")) as handle:
            handle.states[0].pipeline_ref = weakref.ref(pipe)
            got_u, got_c = unet(torch.cat([latents] * 2), t, text).sample.chunk(2)
    assert (eps_c - eps_p).abs().max() > 1e-4
    torch.testing.assert_close(got_u + g * (got_c - got_u), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_every_family_runs_guided_generation(family):
    baseline = run(family)
    guided = run(family, SmoothedEnergyGuidance(scale=3.0, sigma=2.0, layers=None))
    assert np.isfinite(guided).all()
    assert np.abs(guided - baseline).max() > 1e-4


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r"scale must be in \[0, 10000\]; got -1"):
        SmoothedEnergyGuidance(scale=-1, sigma=1.0)
    for sigma in (0, -2.0, float("nan")):
        with pytest.raises(ValueError, match=r"sigma must be > 0; got"):
            SmoothedEnergyGuidance(scale=1.0, sigma=sigma)
    with pytest.raises(ValueError, match=r"blur must be one of \('query', 'key'\); got 'value'"):
        SmoothedEnergyGuidance(scale=1.0, sigma=1.0, blur="value")
    with pytest.raises(ValueError, match="matches no attention layer"):
        visattn.attach(pipeline("unet"), SmoothedEnergyGuidance(scale=1.0, sigma=1.0, layers="nowhere"))


@pytest.mark.parametrize("family", ["unet", "sd3"])
def test_blurred_calls_answered_at_the_sdpa_call_are_the_cores_answer_bit_for_bit(family, monkeypatch):
    """All SEG does in a call is blur its rows' queries: the layer plans that once per call shape and answers the
    call with the stock SDPA over the blurred queries, without building the call's context again. The same
    generation, bit for bit, as the attention core computing every call (which a backend forced for effects keeps),
    and the planned answer is what served the calls."""
    served = count_planned_answers(monkeypatch)
    effect = SmoothedEnergyGuidance(scale=3.0, sigma=2.0, layers="self" if family == "unet" else "joint")
    planned = run(family, effect)
    assert served["calls"] > 0
    served["calls"] = 0
    with visattn.attach(pipeline(family), effect, backend="sdpa"):
        core = np.asarray(pipeline(family)(**call_kwargs(family))[0], dtype=np.float64)
    assert served["calls"] == 0
    assert np.array_equal(planned, core)
    assert not np.array_equal(planned, run(family))  # the blur changed the generation
