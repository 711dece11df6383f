"""Perturbed-attention guidance: parity with diffusers' PAG pipeline, SoftPAG limits, every family."""

from __future__ import annotations

import functools
import inspect
import weakref

import numpy as np
import pytest
import torch
from helpers import self_attention_context

import visattn
from visattn.effects import AttentionCall, PerturbedAttentionGuidance
from visattn.interception import layer_hook
from visattn.kernels import attention
from visattn.layers import FAMILY_DEFAULT, select_layers
from visattn.tiny import TINY_PIPELINES, call_kwargs, tiny_pipeline


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, *effects, **overrides) -> np.ndarray:
    pipe = pipeline(family)
    with visattn.attach(pipe, *effects):
        return np.asarray(pipe(**call_kwargs(family, **overrides))[0], dtype=np.float64)


def diffusers_pag(layers, **call) -> np.ndarray:
    from diffusers import StableDiffusionPAGPipeline

    accepted = inspect.signature(StableDiffusionPAGPipeline.__init__).parameters
    components = {k: v for k, v in pipeline("unet").components.items() if k in accepted}
    pag = StableDiffusionPAGPipeline(**components, pag_applied_layers=layers)
    pag.set_progress_bar_config(disable=True)
    scale = call.pop("pag_scale")
    adaptive = call.pop("pag_adaptive_scale", 0.0)
    out = pag(**call_kwargs("unet", **call), pag_scale=scale, pag_adaptive_scale=adaptive)[0]
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("adaptive", [0.0, 0.003], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("layers", [["mid"], ["mid", "up"], ["down_blocks.1"]])
def test_parity_with_stable_diffusion_pag_pipeline(guidance_scale, adaptive, layers):
    expected = diffusers_pag(layers, pag_scale=2.0, pag_adaptive_scale=adaptive, guidance_scale=guidance_scale)
    effect = PerturbedAttentionGuidance(scale=2.0, layers=layers, adaptive_scale=adaptive)
    ours = run("unet", effect, guidance_scale=guidance_scale)
    baseline = run("unet", guidance_scale=guidance_scale)
    assert np.abs(expected - baseline).max() > 1e-3  # the guidance does something here
    assert np.abs(expected - ours).max() <= 1e-4


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("layers", [["mid"], ["up"]])
def test_parity_with_stable_diffusion_xl_pag_pipeline(guidance_scale, layers):
    """SDXL's PAG pipeline (its added text embeddings and time ids ride along in the perturbed branch)."""
    from diffusers import StableDiffusionXLPAGPipeline

    key = "StableDiffusionXLPipeline"
    accepted = inspect.signature(StableDiffusionXLPAGPipeline.__init__).parameters
    components = {k: v for k, v in pipeline(key).components.items() if k in accepted}
    pag = StableDiffusionXLPAGPipeline(**components, pag_applied_layers=layers)
    pag.set_progress_bar_config(disable=True)
    expected = np.asarray(pag(**call_kwargs(key, guidance_scale=guidance_scale), pag_scale=2.0)[0], dtype=np.float64)
    ours = run(key, PerturbedAttentionGuidance(scale=2.0, layers=layers), guidance_scale=guidance_scale)
    assert np.abs(expected - run(key, guidance_scale=guidance_scale)).max() > 1e-3
    assert np.abs(expected - ours).max() <= 1e-4


class LinearRows(torch.overrides.TorchFunctionMode):
    """Records how many batch rows each projection with one of ``weights`` computes: ``linear`` calls, and the
    ``matmul`` (no bias) or ``addmm`` (flattened rows, with a bias) visattn's interception writes a part of the rows
    with in place (it hands its own projections to this outer mode)."""

    def __init__(self, weights):
        super().__init__()
        self.weights, self.rows = weights, []

    def _projects(self, weight) -> bool:
        return any(weight is w or (weight._base is w) for w in self.weights)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear and self._projects(args[1]):
            self.rows.append(args[0].shape[0])
        elif func is torch.matmul and self._projects(args[1]):
            self.rows.append(args[0].shape[0])
        return func(*args, **(kwargs or {}))


def query_and_key_weights(layers: tuple[str, ...]) -> list[torch.Tensor]:
    unet = pipeline("unet").unet
    modules = [m for name, m in unet.named_modules() if name.endswith("attn1") and name.startswith(layers)]
    return [weight for module in modules for weight in (module.to_q.weight, module.to_k.weight)]


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0], ids=["cfg", "no-cfg"])
def test_rows_answered_by_their_values_are_not_projected(guidance_scale, monkeypatch):
    """As in diffusers' PAG processors, the stock processor projects queries and keys only for the rows PAG does not
    answer by their values (on layers where that saves enough work; here, on every layer), and the generation still
    matches diffusers' PAG pipeline and visattn computing every row."""
    from visattn import interception

    layers = ["mid", "up"]
    every_row = run("unet", PerturbedAttentionGuidance(scale=2.0, layers=layers), guidance_scale=guidance_scale)
    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)
    recorder = LinearRows(query_and_key_weights(("mid_block", "up_blocks")))
    with recorder:
        ours = run("unet", PerturbedAttentionGuidance(scale=2.0, layers=layers), guidance_scale=guidance_scale)
    batch = 2 if guidance_scale > 1 else 1  # [uncond, cond] or [cond], without the perturbed row
    assert recorder.rows and set(recorder.rows) == {batch}
    assert np.abs(ours - every_row).max() <= 1e-6
    expected = diffusers_pag(layers, pag_scale=2.0, guidance_scale=guidance_scale)
    assert np.abs(expected - ours).max() <= 1e-4


def test_softpag_rows_still_attend_so_every_row_is_projected(monkeypatch):
    from visattn import interception

    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)
    recorder = LinearRows(query_and_key_weights(("mid_block",)))
    with recorder:
        run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid", strength=0.5))
    assert recorder.rows and set(recorder.rows) == {3}


def test_an_effect_doing_more_than_answering_its_rows_by_their_values_is_refused(monkeypatch):
    """Rows projected for part of the batch must never reach an output: an effect that says it only answers its rows
    by their values (identity_only_rows) and then changes the call is refused with an error, not computed wrong."""
    from visattn import interception

    class Overreaching(PerturbedAttentionGuidance):
        def perturb(self, call, rows):
            super().perturb(call, rows)
            call.q = call.q.clone()

    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)
    with pytest.raises(RuntimeError, match="projected queries and keys for part of its rows"):
        run("unet", Overreaching(scale=2.0, layers="mid"))


def test_scale_zero_is_exactly_the_baseline():
    assert np.array_equal(run("unet", PerturbedAttentionGuidance(scale=0.0, layers="mid")), run("unet"))


def test_strength_zero_is_the_baseline_and_strength_one_is_pag():
    baseline = run("unet")
    soft0 = run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid", strength=0.0))
    assert np.abs(soft0 - baseline).max() <= 1e-5
    pag = run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid"))
    all_heads = {"mid": list(range(2))}
    soft1 = run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid", heads=all_heads, strength=1.0))
    assert np.abs(soft1 - pag).max() <= 1e-6
    half = run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid", strength=0.5))
    assert 0 < np.abs(half - baseline).max() and 0 < np.abs(half - pag).max()


def test_one_head_perturbs_less_than_all_heads():
    baseline = run("unet")
    one = run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid", heads={"mid": [1]}))
    every = run("unet", PerturbedAttentionGuidance(scale=2.0, layers="mid"))
    assert 0 < np.abs(one - baseline).max() and np.abs(one - every).max() > 0


def test_a_fully_perturbed_head_outputs_its_values_exactly():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    blend = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    out = attention(q, k, v, identity_blend=blend)
    assert torch.equal(out[:, 1], v[:, 1])
    torch.testing.assert_close(out[:, 0], attention(q, k, v)[:, 0])


def test_a_selected_head_of_the_perturbed_rows_outputs_its_values_through_the_effect():
    effect = PerturbedAttentionGuidance(scale=1.0, layers="mid", heads={"mid": [1]})
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    ctx = self_attention_context(
        "mid_block.attentions.0.transformer_blocks.0.attn1", (("cond", 0, 1), (effect.branch, 1, 2))
    )
    call = AttentionCall(ctx, q, k, v)
    effect.apply(call)
    out, plain = call.run(), attention(q, k, v)
    assert torch.equal(out[1, 1], v[1, 1])
    assert torch.equal(out[:1], plain[:1]) and torch.equal(out[1, 0::2], plain[1, 0::2])


def test_guidance_arithmetic_matches_a_hand_written_two_pass_reference():
    """eps = eps_u + g (eps_c - eps_u) + s (eps_c - eps_p), with eps_p from a separately perturbed pass."""
    unet = pipeline("unet").unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(500)
    scale, g = 1.5, 4.0

    class GuidedPipeline:  # all the effect reads from a pipeline: that it batches CFG, and its scale
        _guidance_scale = g

    class IdentitySelfAttention(visattn.Effect):
        roles = ("self",)

        def apply(self, call):
            call.identity_blend = torch.ones(1)

    pipe = GuidedPipeline()
    with torch.no_grad():
        eps_u, eps_c = unet(torch.cat([latents] * 2), t, text).sample.chunk(2)
        with visattn.attach(unet, IdentitySelfAttention(layers="mid")):
            eps_p = unet(latents, t, text[1:]).sample
        expected = eps_u + g * (eps_c - eps_u) + scale * (eps_c - eps_p)

        with visattn.attach(unet, PerturbedAttentionGuidance(scale=scale, layers="mid")) as handle:
            handle.states[0].pipeline_ref = weakref.ref(pipe)
            got_u, got_c = unet(torch.cat([latents] * 2), t, text).sample.chunk(2)
    torch.testing.assert_close(got_u + g * (got_c - got_u), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_every_family_runs_guided_generation(family):
    baseline = run(family)
    guided = run(family, PerturbedAttentionGuidance(scale=3.0, layers=None))
    assert np.isfinite(guided).all()
    assert np.abs(guided - baseline).max() > 1e-4


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r"scale must be in \[0, 10000\]; got -1"):
        PerturbedAttentionGuidance(scale=-1)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]; got 1.5"):
        PerturbedAttentionGuidance(strength=1.5)
    with pytest.raises(ValueError, match=r"adaptive_scale must be in \[0, 10000\]"):
        PerturbedAttentionGuidance(adaptive_scale=-0.1)
    with pytest.raises(ValueError, match="non-negative head indices"):
        PerturbedAttentionGuidance(heads={"mid": [-1]})
    with pytest.raises(ValueError, match="matches no attention layer; available layers"):
        visattn.attach(pipeline("unet"), PerturbedAttentionGuidance(layers="nowhere"))
    with pytest.raises(ValueError, match="index 7 is out of range for layer .* which has 2 heads"):
        run("unet", PerturbedAttentionGuidance(layers="mid", heads={"mid": [7]}))


def test_a_head_index_out_of_range_is_refused_where_the_attention_names_its_count_num_heads():
    # Kandinsky 5's attention names its head count num_heads (diffusers' Attention: heads).
    from visattn.tiny import tiny_denoiser

    model = tiny_denoiser("kandinsky5")
    layer = "visual_transformer_blocks.0.self_attention"
    with pytest.raises(ValueError, match=rf"index 2 is out of range for layer '{layer}', which has 2 heads"):
        visattn.attach(model, PerturbedAttentionGuidance(layers="self", heads={layer: [2]}))
    visattn.attach(model, PerturbedAttentionGuidance(layers="self", heads={layer: [1]})).detach()


def test_default_layers_are_the_familys_and_follow_the_model_attached():
    """PAG's default layers are diffusers' PAG pipeline defaults per family ("mid" for SD, "blocks.1" for SD3), and
    the middle self/joint layer where the family declares none (Flux); one effect re-resolves per attach."""
    pag = PerturbedAttentionGuidance(scale=2.0)
    expected = {"unet": ("mid",), "sd3": ("blocks.1",), "flux": (r"^single_transformer_blocks\.0\.attn$",)}
    for key, layers in expected.items():
        pipe = tiny_pipeline(key)
        denoiser = pipe.unet if key == "unet" else pipe.transformer
        with visattn.attach(pipe, pag) as handle:
            # Resolved by the attachment, for this model; the effect keeps its parameter as given.
            assert handle.layers_of(pag) == layers and pag.layers is FAMILY_DEFAULT
            # Only the layers PAG can act on carry a hook (those selected whose module may attend as self or joint
            # attention: not the mid block's cross-attention); the others run their stock forward untouched.
            modules = visattn.attention_layers(denoiser)
            hooked = {name for name, module in modules.items() if layer_hook(module) is not None}
            roles = visattn.layer_roles(denoiser)
            selected = {name for name in select_layers(roles, handle.layers_of(pag)) if roles[name] != "cross"}
            assert hooked and hooked == selected != set(modules)


@pytest.mark.parametrize("family", ["unet", "sd3", "flux"])
def test_rows_answered_by_their_values_at_the_sdpa_call_are_the_cores_answer_bit_for_bit(family):
    """Where no plan was made before the processor ran (the tiny UNet's layers save too little by projecting part of
    the rows; joint processors), the layer answers PAG's calls at the SDPA call (the stock call over the other rows,
    the perturbed rows' values stacked): the same generation, bit for bit, as the attention core computing the call
    (which a backend forced for effects keeps), on every layer and step."""
    effect = PerturbedAttentionGuidance(scale=2.0, layers="self" if family == "unet" else "joint")
    planned = run(family, effect)
    with visattn.attach(pipeline(family), effect, backend="sdpa"):
        core = np.asarray(pipeline(family)(**call_kwargs(family))[0], dtype=np.float64)
    assert np.array_equal(planned, core)
