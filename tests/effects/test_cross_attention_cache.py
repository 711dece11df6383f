"""TGATE cross-attention caching: identical before the gate, projections skipped and cache reused after it."""

from __future__ import annotations

import functools
from collections import defaultdict

import numpy as np
import pytest
import torch

import visattn
from visattn.effects import CrossAttentionCache, PerturbedAttentionGuidance
from visattn.tiny import call_kwargs, denoiser_of, tiny_denoiser, tiny_pipeline

STEPS = 5
GATE = 2


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def cross_layers(family: str) -> dict[str, torch.nn.Module]:
    denoiser = denoiser_of(pipeline(family))
    roles = visattn.layer_roles(denoiser)
    modules = dict(denoiser.named_modules())
    return {name: modules[name] for name, role in roles.items() if role == "cross"}


class Trace:
    """Counts q/k/v/out projection calls of the cross-attention layers per step, and records their outputs."""

    def __init__(self, family: str):
        self.family = family
        self.step = 0
        self.projections = defaultdict(int)  # step -> projection calls
        self.outputs = defaultdict(list)  # layer name -> [(step, output, batch)]
        self.handles = []
        for name, module in cross_layers(family).items():
            for projection in (module.to_q, module.to_k, module.to_v, module.to_out[0]):
                self.handles.append(projection.register_forward_hook(self._count))
            self.handles.append(module.register_forward_hook(functools.partial(self._record, name)))
        denoiser = denoiser_of(pipeline(family))
        self.handles.append(denoiser.register_forward_pre_hook(self._find_step, with_kwargs=True))

    def _find_step(self, module, args, kwargs):
        # The step index of a denoiser call, from its timestep (PixArt has no step-end callback).
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        scheduled = pipeline(self.family).scheduler.timesteps.float()
        self.step = int((scheduled - timestep.reshape(-1)[0].float()).abs().argmin())

    def _count(self, module, args, output):
        self.projections[self.step] += 1

    def _record(self, name, module, args, output):
        self.outputs[name].append((self.step, output.detach().clone()))

    def on_step_end(self, pipe, index, timestep, tensors):
        self.latents.append(tensors["latents"].clone())
        return {}

    def run(self, *effects, **overrides):
        self.latents = []
        pipe = pipeline(self.family)
        kwargs = call_kwargs(self.family, num_inference_steps=STEPS)
        if self.family == "unet":
            kwargs["callback_on_step_end"] = self.on_step_end
        kwargs.update(overrides)
        try:
            with visattn.attach(pipe, *effects):
                return np.asarray(pipe(**kwargs)[0], dtype=np.float64)
        finally:
            for handle in self.handles:
                handle.remove()


def test_before_the_gate_generation_is_identical_to_the_baseline():
    baseline = Trace("unet")
    expected = baseline.run()
    cached = Trace("unet")
    got = cached.run(CrossAttentionCache(gate_step=GATE))
    for step in range(GATE):
        assert torch.equal(cached.latents[step], baseline.latents[step])
    assert not torch.equal(cached.latents[GATE], baseline.latents[GATE])
    assert np.abs(got - expected).max() > 1e-5


def test_a_gate_at_or_past_the_last_step_is_exactly_the_baseline_without_self_attention_caching():
    expected = Trace("unet").run()
    assert np.array_equal(Trace("unet").run(CrossAttentionCache(gate_step=STEPS, self_attention=False)), expected)
    assert np.array_equal(Trace("unet").run(CrossAttentionCache(gate_step=1.0, self_attention=False)), expected)
    # The authors' self-attention schedule still reuses before the gate (step 3 reuses step 2's output).
    assert not np.array_equal(Trace("unet").run(CrossAttentionCache(gate_step=STEPS)), expected)


def test_after_the_gate_projections_are_skipped_and_the_branch_average_is_reused():
    trace = Trace("unet")
    trace.run(CrossAttentionCache(gate_step=GATE, skip_uncond=False))
    per_step = 4 * len(cross_layers("unet"))  # to_q, to_k, to_v, to_out per cross-attention layer
    assert [trace.projections[step] for step in range(STEPS)] == [per_step] * GATE + [0] * (STEPS - GATE)
    for name, outputs in trace.outputs.items():
        stored = [out for step, out in outputs if step == GATE - 1][0]
        average = (stored[0] + stored[1]) / 2  # rows: [uncond, cond]
        for step, out in outputs:
            if step >= GATE:
                assert out.shape == stored.shape, name
                assert torch.equal(out[0], average) and torch.equal(out[1], average), name


def test_without_averaging_each_branch_reuses_its_own_output():
    trace = Trace("unet")
    trace.run(CrossAttentionCache(gate_step=GATE, average=False))
    for outputs in trace.outputs.values():
        stored = [out for step, out in outputs if step == GATE - 1][0]
        assert not torch.equal(stored[0], stored[1])
        assert all(torch.equal(out, stored) for step, out in outputs if step >= GATE)


def test_after_the_gate_one_branch_runs_and_gives_the_same_result_on_half_the_batch():
    full = Trace("unet").run(CrossAttentionCache(gate_step=GATE, skip_uncond=False))
    trace = Trace("unet")
    sizes = []
    unet = pipeline("unet").unet
    hook = unet.conv_in.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        skipped = trace.run(CrossAttentionCache(gate_step=GATE))
    finally:
        hook.remove()
    # the authors' loop: after the gate, the unconditional rows only (SD 1.x: the same prediction as the other)
    assert sizes == [2] * GATE + [1] * (STEPS - GATE)
    assert np.abs(skipped - full).max() <= 1e-5


def test_fraction_gate_and_layer_selection():
    effect = CrossAttentionCache(gate_step=0.4)
    assert effect.gate_index(STEPS) == 2 and effect.gate_index(25) == 10 and effect.gate_index(2) == 1
    trace = Trace("unet")
    trace.run(CrossAttentionCache(gate_step=GATE, layers="mid_block", skip_uncond=False))
    for name, outputs in trace.outputs.items():
        late = [out for step, out in outputs if step >= GATE]
        reused = all(torch.equal(out[0], out[1]) for out in late)
        assert reused == name.startswith("mid_block"), name


@pytest.mark.parametrize("family", ["unet", "pixart", "wan"])
def test_every_cross_attention_family(family):
    baseline = Trace(family).run()
    trace = Trace(family)
    out = trace.run(CrossAttentionCache(gate_step=GATE))
    assert np.isfinite(out).all() and np.abs(out - baseline).max() > 0
    assert all(trace.projections[step] > 0 for step in range(GATE))
    assert all(trace.projections[step] == 0 for step in range(GATE, STEPS))
    for outputs in trace.outputs.values():
        stored = torch.cat([out for step, out in outputs if step == GATE - 1])  # Wan: one call per branch
        average = (stored[0] + stored[1]) / 2
        assert all(torch.equal(row, average) for step, out in outputs if step >= GATE for row in out)


def test_wan_answers_the_unconditional_call_from_the_conditional_one():
    pipe = pipeline("wan")
    calls = []
    hook = pipe.transformer.patch_embedding.register_forward_hook(lambda *args: calls.append(1))
    try:
        Trace("wan").run(CrossAttentionCache(gate_step=GATE))
    finally:
        hook.remove()
    # two calls per step; from the second reused step on the unconditional call is answered without a forward
    assert len(calls) == 2 * (GATE + 1) + (STEPS - GATE - 1)


def test_composes_with_perturbed_attention_guidance():
    pag = PerturbedAttentionGuidance(scale=2.0, layers="mid")
    guided = Trace("unet").run(pag)
    skipped = Trace("unet").run(CrossAttentionCache(gate_step=GATE), pag)
    full = Trace("unet").run(pag, CrossAttentionCache(gate_step=GATE, skip_uncond=False))
    assert np.isfinite(skipped).all() and np.abs(skipped - guided).max() > 0
    assert np.abs(skipped - full).max() <= 1e-5


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_attention_models_have_no_cross_attention_to_cache(family):
    with pytest.raises(ValueError, match="have no separate cross-attention to cache"):
        visattn.attach(tiny_denoiser(family), CrossAttentionCache())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="gate_step must be >= 1 when given as a step count; got 0"):
        CrossAttentionCache(gate_step=0)
    with pytest.raises(ValueError, match=r"gate_step must be in \(0, 1\] when given as a fraction; got 1.5"):
        CrossAttentionCache(gate_step=1.5)
    with pytest.raises(ValueError, match="gate_step must be an int step count or a float fraction; got True"):
        CrossAttentionCache(gate_step=True)
    with pytest.raises(ValueError, match=r"the attached layers have none \(their roles: self\)"):
        visattn.attach(pipeline("unet"), CrossAttentionCache(), layers="self")
    # (or the attach-time role check, which names the role first)
    with pytest.raises(ValueError, match="selects no cross-attention layer|names 'self' attention"):
        visattn.attach(pipeline("unet"), CrossAttentionCache(layers="self"))
