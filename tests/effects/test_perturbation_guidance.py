"""Perturbation guidance on every pipeline family: the pipeline's own CFG must yield eps_cfg + s (eps_c - eps_p).

Each test records what the denoiser predicted for every branch (an effect inside the guidance one sees the grown
batch) and what the pipeline handed its scheduler, and checks, step by step,
``scheduler input == eps_u + g (eps_c - eps_u) + sum_i s_i (eps_c - eps_p_i)`` with the CFG scale ``g`` this
pipeline applies in that step (1 where it applies none).
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import pytest
import torch

import visattn
from visattn.denoiser_batch import prediction_of
from visattn.effects import (
    NeighborhoodAttention,
    PerturbedAttentionGuidance,
    SmoothedEnergyGuidance,
    SpatioTemporalSkipGuidance,
)
from visattn.tiny import call_kwargs, tiny_denoiser, tiny_pipeline


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


@functools.cache
def wan22_pipeline():
    """Wan 2.2's two-stage layout: ``transformer`` above the boundary timestep, ``transformer_2`` below."""
    from diffusers import WanPipeline

    components = dict(pipeline("wan").components)
    components["transformer_2"] = tiny_denoiser("wan", seed=1)
    accepted = inspect.signature(WanPipeline.__init__).parameters
    pipe = WanPipeline(**{k: v for k, v in components.items() if k in accepted}, boundary_ratio=0.9)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Recorder(visattn.Effect):
    """Inside the guidance effects: records each denoiser call's batch layout, prediction and denoiser state."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def wrap_denoiser(self, forward, args, kwargs, state):
        output = forward(*args, **kwargs)
        self.calls.append((state.batch, prediction_of(output).detach().clone(), id(state)))
        return output


def guided_run(pipe, family, effects, **overrides):
    """Run ``pipe`` with ``effects`` and a recorder; returns (recorder, [(scheduler input, timestep)], handle)."""
    recorder, stepped = Recorder(), []
    scheduler = pipe.scheduler
    step = scheduler.step

    def recording_step(model_output, timestep, *args, **kwargs):
        stepped.append((model_output.detach().clone(), float(timestep)))
        return step(model_output, timestep, *args, **kwargs)

    scheduler.step = recording_step
    try:
        with visattn.attach(pipe, *effects, recorder) as handle:
            pipe(**call_kwargs(family, **overrides))
            states = [id(state) for state in handle.states]
    finally:
        del scheduler.step
    return recorder, stepped, states


def per_step(recorder, branches):
    """Group the recorded calls into steps: ``{"cond", "uncond", branch name: prediction, "state": id}``."""
    steps = []
    for layout, prediction, state in recorder.calls:
        if "cond" in layout.names:
            steps.append({"state": state, "cond": prediction[layout.rows("cond")]})
            for branch in branches:
                steps[-1][branch] = prediction[layout.rows(branch)]
        if "uncond" in layout.names:
            steps[-1]["uncond"] = prediction[layout.rows("uncond")]
    return steps


def check(steps, stepped, scales, effects):
    assert len(steps) == len(stepped) == len(scales)
    for step, (given, _), g in zip(steps, stepped, scales):
        cond = step["cond"].double()
        expected = cond if "uncond" not in step else step["uncond"].double() + g * (cond - step["uncond"].double())
        for effect in effects:
            expected = expected + effect.scale * (cond - step[effect.branch].double())
        # PixArt predicts a learned variance next to the noise; the pipeline hands the scheduler the noise half.
        expected = expected[:, : given.shape[1]]
        assert (cond - step[effects[0].branch].double()).abs().max() > 1e-4  # the perturbation does something
        torch.testing.assert_close(given.double(), expected, atol=2e-5, rtol=1e-4)


CASES = {
    "unet": ("unet", {}, 7.5),
    "sd-no-cfg": ("unet", {"guidance_scale": 1.0}, 1.0),
    "StableDiffusionXLPipeline": ("StableDiffusionXLPipeline", {}, 5.0),
    "pixart": ("pixart", {}, 4.5),
    "sd3": ("sd3", {}, 7.0),
    "flux-distilled": ("flux", {}, 1.0),
    "flux-true-cfg": ("flux", {"negative_prompt": "a blue square", "true_cfg_scale": 2.5}, 2.5),
    "wan": ("wan", {}, 5.0),
    "wan-no-cfg": ("wan", {"guidance_scale": 1.0}, 1.0),
    "cogvideox": ("cogvideox", {}, 6.0),
    "hunyuan_video-distilled": ("hunyuan_video", {}, 1.0),
    "hunyuan_video-true-cfg": ("hunyuan_video", {"negative_prompt": "a blue square", "true_cfg_scale": 2.0}, 2.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_cfg_yields_cfg_plus_the_perturbation_term(case):
    family, overrides, g = CASES[case]
    effect = PerturbedAttentionGuidance(scale=2.0, layers=None)
    recorder, stepped, _ = guided_run(pipeline(family), family, [effect], **overrides)
    steps = per_step(recorder, [effect.branch])
    check(steps, stepped, [g] * len(steps), [effect])


def test_cogvideox_dynamic_cfg_uses_the_scale_of_the_step_being_denoised():
    effect = SmoothedEnergyGuidance(scale=2.0, sigma=2.0, layers=None)
    recorder, stepped, _ = guided_run(pipeline("cogvideox"), "cogvideox", [effect], use_dynamic_cfg=True)
    steps, n = per_step(recorder, [effect.branch]), len(stepped)
    # CogVideoXPipeline's schedule: 1 + g * (1 - cos(pi * ((N - t) / N) ** 5)) / 2, computed after the call.
    scales = [1 + 6.0 * ((1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2) for _, t in stepped]
    assert len(set(scales)) > 1
    check(steps, stepped, scales, [effect])


def test_wan22_uses_guidance_scale_2_on_the_low_noise_transformer():
    effect = SpatioTemporalSkipGuidance(scale=2.0, layers="self")
    pipe = wan22_pipeline()
    recorder, stepped, states = guided_run(pipe, "wan", [effect], guidance_scale=5.0, guidance_scale_2=2.0)
    steps = per_step(recorder, [effect.branch])
    assert [step["state"] for step in steps] == states  # high-noise stage on transformer, then transformer_2
    check(steps, stepped, [5.0, 2.0], [effect])


def test_perturbations_compose_additively():
    """PAG + SEG: eps_cfg + s1 (eps_c - eps_pag) + s2 (eps_c - eps_seg), with no cross terms."""
    pag = PerturbedAttentionGuidance(scale=2.0, layers="mid")
    seg = SmoothedEnergyGuidance(scale=1.5, sigma=1.0, layers="mid")
    recorder, stepped, _ = guided_run(pipeline("unet"), "unet", [pag, seg])
    steps = per_step(recorder, [pag.branch, seg.branch])
    check(steps, stepped, [7.5] * len(steps), [pag, seg])


def images(family, *effects):
    with visattn.attach(pipeline(family), *effects):
        return np.asarray(pipeline(family)(**call_kwargs(family))[0], dtype=np.float64)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_pag_composes_with_neighborhood_attention(family):
    kernel = 3
    sparse = images(family, NeighborhoodAttention(kernel))
    both = images(family, PerturbedAttentionGuidance(scale=2.0, layers=None), NeighborhoodAttention(kernel))
    assert np.isfinite(both).all() and np.abs(both - sparse).max() > 1e-4


def test_guidance_applies_only_in_its_steps():
    late = PerturbedAttentionGuidance(scale=2.0, layers="mid", steps=(0.5, 1.0))
    recorder, _, _ = guided_run(pipeline("unet"), "unet", [late])
    assert [late.branch in layout.names for layout, _, _ in recorder.calls] == [False, True]


def test_identity_rows_gives_every_call_of_a_layout_a_correct_blend_even_after_one_was_changed():
    """identity_rows keeps one blend per layout; a call whose blend something changed in place does not leak the
    change into the next call's."""
    from helpers import self_attention_context

    from visattn.effects import AttentionCall
    from visattn.effects.perturbation_guidance import identity_rows

    ctx = self_attention_context("mid", (("cond", 0, 2), ("pag:x", 2, 3)))
    q = torch.randn(3, 3, 10, 8)
    expected = torch.zeros(3, 3, 1, 1)
    expected[2] = 1.0
    first = AttentionCall(ctx, q, q, q)
    identity_rows(first, slice(2, 3))
    assert torch.equal(first.identity_blend, expected)
    first.identity_blend.mul_(0.5)  # an effect that scales the blend in place
    second = AttentionCall(ctx, q, q, q)
    identity_rows(second, slice(2, 3))
    assert torch.equal(second.identity_blend, expected)
