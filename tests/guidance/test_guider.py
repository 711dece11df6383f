"""HeadPerturbationGuidance: the diffusers guider API, parity with diffusers' PAG guider, exact restoration."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from diffusers.guiders import BaseGuidance, ClassifierFreeGuidance
from diffusers.guiders import PerturbedAttentionGuidance as DiffusersPAG
from diffusers.hooks import LayerSkipConfig
from helpers import Probe

import visattn
from visattn.guidance import HeadPerturbationGuidance, HeadSet, IdentityPerturbation, layer_pattern
from visattn.interception import layer_hook
from visattn.tiny import tiny_denoiser, tiny_pipeline

MID = "mid_block.attentions.0.transformer_blocks.0.attn1"
# Whole schedule: with num_inference_steps unset, both guiders treat every step as in range.
ALWAYS = {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}


def skip_config(fqn: str, index: int) -> LayerSkipConfig:
    return LayerSkipConfig(indices=[index], fqn=fqn, skip_attention=False, skip_attention_scores=True, skip_ff=False)


@functools.cache
def denoiser(family: str) -> torch.nn.Module:
    return tiny_denoiser(family)


@functools.cache
def denoiser_inputs(family: str):
    """``(latents, {field: (cond, uncond)}, fixed kwargs)`` for one call of a tiny denoiser."""
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 8, 32, generator=g)
    fields = {"encoder_hidden_states": (text[:1], text[1:])}
    if family == "flux":  # packed 8x8 latents with their positions, guidance-distilled
        latents = torch.randn(1, 64, 16, generator=g)
        pooled = torch.randn(2, 32, generator=g)
        fields["pooled_projections"] = (pooled[:1], pooled[1:])
        rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        img_ids = torch.stack([torch.zeros(64), rows.flatten(), cols.flatten()], dim=-1)
        return latents, fields, {"img_ids": img_ids, "txt_ids": torch.zeros(8, 3), "guidance": torch.tensor([3.5])}
    latents = torch.randn(1, 4, 16, 16, generator=g)
    extra = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}} if family == "pixart" else {}
    return latents, fields, extra


def run_guider(guider: BaseGuidance, family: str):
    """One denoising step the way modular pipelines run it: a denoiser pass per prediction, then the guider."""
    model = denoiser(family)
    latents, fields, extra = denoiser_inputs(family)
    t = torch.tensor([0.5 if family == "flux" else 500.0])
    guider.set_state(step=0, num_inference_steps=None, timestep=t)
    batches = guider.prepare_inputs(fields)
    predictions = {}
    for batch in batches:
        guider.prepare_models(model)
        inputs = {name: getattr(batch, name) for name in fields}
        with torch.no_grad():
            batch.noise_pred = model(latents, timestep=t, return_dict=False, **inputs, **extra)[0]
        guider.cleanup_models(model)
        predictions[batch.__guidance_identifier__] = batch.noise_pred
    return predictions, guider(batches).pred


def processors(model: torch.nn.Module) -> dict:
    """Each attention layer's processor, and its visattn hook (``None`` without one) under ``"<name> hook"``."""
    found = {}
    for name, module in visattn.attention_layers(model).items():
        found[name] = module.processor
        found[f"{name} hook"] = layer_hook(module)
    return found


# --- the BaseGuidance API -------------------------------------------------------------------------------------------
def test_is_a_diffusers_guider_with_the_pag_guider_conventions():
    guider = HeadPerturbationGuidance(guidance_scale=5.0, perturbed_guidance_scale=2.0, perturbed_guidance_layers="mid")
    assert isinstance(guider, BaseGuidance)
    assert guider.num_conditions == 3
    assert HeadPerturbationGuidance(guidance_scale=1.0, perturbed_guidance_layers="mid", **ALWAYS).num_conditions == 2
    assert HeadPerturbationGuidance(perturbed_guidance_scale=0.0, perturbed_guidance_layers="mid").num_conditions == 2
    assert HeadPerturbationGuidance(strength=0.0, perturbed_guidance_layers="mid", **ALWAYS).num_conditions == 2
    off = HeadPerturbationGuidance(perturbed_guidance_layers="mid", enabled=False)
    assert off.num_conditions == 1


def test_step_ranges_follow_diffusers_guider():
    config = {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0, "start": 0.1, "stop": 0.8}
    config |= {"perturbed_guidance_start": 0.2, "perturbed_guidance_stop": 0.6}
    ours = HeadPerturbationGuidance(**config, perturbed_guidance_layers="mid")
    theirs = DiffusersPAG(**config, perturbed_guidance_layers=[0])
    counts = []
    for step in range(10):
        for guider in (ours, theirs):
            guider.set_state(step=step, num_inference_steps=10, timestep=torch.tensor(999 - 100 * step))
        assert ours.num_conditions == theirs.num_conditions
        counts.append(ours.num_conditions)
    assert set(counts) == {1, 2, 3}  # outside CFG, CFG only, CFG and perturbation all occur


def test_prepare_inputs_gives_the_perturbed_pass_the_conditional_inputs():
    cond, uncond = torch.ones(1, 3), torch.zeros(1, 3)
    guider = HeadPerturbationGuidance(guidance_scale=5.0, perturbed_guidance_layers="mid", **ALWAYS)
    batches = guider.prepare_inputs({"prompt_embeds": (cond, uncond)})
    assert [b.__guidance_identifier__ for b in batches] == ["pred_cond", "pred_uncond", "pred_cond_skip"]
    assert [b.prompt_embeds.sum().item() for b in batches] == [3.0, 0.0, 3.0]
    # Without CFG the perturbed twin still uses the conditional inputs (diffusers 0.42.1 uses the negative ones).
    no_cfg = HeadPerturbationGuidance(guidance_scale=1.0, perturbed_guidance_layers="mid", **ALWAYS)
    batches = no_cfg.prepare_inputs({"prompt_embeds": (cond, uncond)})
    assert [b.__guidance_identifier__ for b in batches] == ["pred_cond", "pred_cond_skip"]
    assert [b.prompt_embeds.sum().item() for b in batches] == [3.0, 3.0]


@pytest.mark.parametrize(
    "config",
    [
        {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0},
        {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0, "use_original_formulation": True},
        {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0, "guidance_rescale": 0.7},
        {"guidance_scale": 1.0, "perturbed_guidance_scale": 2.0},
        {"guidance_scale": 5.0, "perturbed_guidance_scale": 0.0},
    ],
    ids=["cfg+pag", "original", "rescale", "pag-only", "cfg-only"],
)
def test_forward_is_the_pag_guidance_arithmetic(config):
    g = torch.Generator().manual_seed(3)
    cond, uncond, skip = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    ours = HeadPerturbationGuidance(**config, perturbed_guidance_layers="mid", **ALWAYS)
    theirs = DiffusersPAG(**config, perturbed_guidance_layers=[0], **ALWAYS)
    kwargs = {"pred_cond": cond, "pred_uncond": uncond, "pred_cond_skip": skip}
    torch.testing.assert_close(ours.forward(**kwargs).pred, theirs.forward(**kwargs).pred, rtol=0, atol=0)
    if config == {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0}:
        expected = uncond + 5.0 * (cond - uncond) + 2.0 * (cond - skip)  # pred_cfg + s (pred_cond - pred_perturbed)
        torch.testing.assert_close(ours.forward(**kwargs).pred, expected)


def test_config_round_trips_and_stores_a_head_set_as_json(tmp_path):
    heads = HeadSet([(MID, 1)])
    guider = HeadPerturbationGuidance(heads=heads, strength=0.5, perturbed_guidance_scale=1.5)
    assert guider.config.heads == {layer_pattern(MID): [1]}
    guider.save_pretrained(tmp_path)
    loaded = HeadPerturbationGuidance.from_pretrained(tmp_path)
    assert loaded.config.heads == guider.config.heads and loaded.strength == 0.5
    assert loaded.perturbed_guidance_scale == 1.5
    assert guider.new(strength=0.25).strength == 0.25
    assert loaded.perturbed_heads_of(denoiser("unet")) == {MID: (1,)}


# --- the perturbed pass against diffusers' guider ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "theirs", "ours"),
    [
        ("pixart", {"perturbed_guidance_layers": [1]}, {"perturbed_guidance_layers": [1]}),
        ("pixart", {"perturbed_guidance_layers": [0]}, {"perturbed_guidance_layers": "transformer_blocks.0"}),
        (
            "unet",
            {"perturbed_guidance_config": skip_config("mid_block.attentions", 0)},
            {"perturbed_guidance_layers": "mid"},
        ),
    ],
    ids=["pixart-index", "pixart-identifier", "sd-unet-mid"],
)
def test_layer_level_strength_one_equals_diffusers_skip_attention_scores(family, theirs, ours):
    model = denoiser(family)
    before = processors(model)
    common = {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0, **ALWAYS}
    expected, expected_pred = run_guider(DiffusersPAG(**common, **theirs), family)
    got, got_pred = run_guider(HeadPerturbationGuidance(**common, **ours), family)
    assert set(got) == {"pred_cond", "pred_uncond", "pred_cond_skip"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_pred, expected_pred, rtol=1e-5, atol=1e-5)
    assert (got["pred_cond"] - got["pred_cond_skip"]).abs().max() > 1e-3  # the perturbation does something
    after = processors(model)
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)  # the very same objects
    assert getattr(model, "_visattn_attachment", None) is None or model._visattn_attachment() is None


def test_flux_block_indices_pick_one_stack_and_single_heads_work():
    # diffusers 0.42.1's guider cannot perturb FLUX (its FluxAttention has no is_cross_attention), so check ours alone.
    model = denoiser("flux")
    before = processors(model)
    by_index = HeadPerturbationGuidance(perturbed_guidance_layers=[0], **ALWAYS)
    assert by_index.perturbed_heads_of(model) == {"transformer_blocks.0.attn": None}
    single = HeadPerturbationGuidance(perturbed_guidance_layers=[0], perturbed_guidance_fqn="single_transformer_blocks")
    assert single.perturbed_heads_of(model) == {"single_transformer_blocks.0.attn": None}
    one_head = HeadPerturbationGuidance(heads=HeadSet([("transformer_blocks.0.attn", 1)]), **ALWAYS)
    assert one_head.perturbed_heads_of(model) == {"transformer_blocks.0.attn": (1,)}
    layer, _ = run_guider(by_index, "flux")
    head, _ = run_guider(one_head, "flux")
    assert (layer["pred_cond_skip"] - layer["pred_cond"]).abs().max() > 1e-3
    assert (head["pred_cond_skip"] - head["pred_cond"]).abs().max() > 0
    assert (head["pred_cond_skip"] - layer["pred_cond_skip"]).abs().max() > 0
    assert all(processors(model)[n] is p for n, p in before.items())


def test_only_the_perturbed_pass_is_perturbed():
    plain, _ = run_guider(ClassifierFreeGuidance(guidance_scale=5.0), "unet")
    got, _ = run_guider(HeadPerturbationGuidance(guidance_scale=5.0, perturbed_guidance_layers="mid", **ALWAYS), "unet")
    assert torch.equal(got["pred_cond"], plain["pred_cond"])
    assert torch.equal(got["pred_uncond"], plain["pred_uncond"])


def test_heads_select_single_heads_and_strength_interpolates():
    common = {"guidance_scale": 5.0, "perturbed_guidance_layers": "mid", **ALWAYS}
    layer, _ = run_guider(HeadPerturbationGuidance(**common), "unet")
    every, _ = run_guider(HeadPerturbationGuidance(**common, heads={"mid": [0, 1]}), "unet")
    one, _ = run_guider(HeadPerturbationGuidance(**common, heads={"mid": [1]}), "unet")
    soft, _ = run_guider(HeadPerturbationGuidance(**common, strength=0.5), "unet")
    assert torch.equal(every["pred_cond_skip"], layer["pred_cond_skip"])  # all heads == the whole layer
    cond, skip = layer["pred_cond"], layer["pred_cond_skip"]
    assert 0 < (one["pred_cond_skip"] - cond).abs().max() and (one["pred_cond_skip"] - skip).abs().max() > 0
    assert 0 < (soft["pred_cond_skip"] - cond).abs().max() and (soft["pred_cond_skip"] - skip).abs().max() > 0


def test_identity_perturbation_is_exact_at_the_limits():
    model = denoiser("unet")
    latents, fields, _ = denoiser_inputs("unet")
    text, t = fields["encoder_hidden_states"][0], torch.tensor([500.0])
    with torch.no_grad():
        plain = model(latents, t, text).sample
        with visattn.attach(model, IdentityPerturbation({MID: None}, strength=0.0)):
            zero = model(latents, t, text).sample
        with visattn.attach(model, IdentityPerturbation({MID: [0, 1]}, strength=1.0)):
            full = model(latents, t, text).sample
        with visattn.attach(model, IdentityPerturbation({MID: None}, strength=1.0)):
            every = model(latents, t, text).sample
    assert torch.equal(zero, plain)  # a no-op is bit-identical
    assert torch.equal(full, every) and (full - plain).abs().max() > 1e-3


def test_composes_with_an_existing_attachment_and_restores_it():
    model = denoiser("unet")
    alone, _ = run_guider(HeadPerturbationGuidance(perturbed_guidance_layers=["mid", "up"], **ALWAYS), "unet")
    probe = Probe(layers=MID)
    with visattn.attach(model, probe, layers=MID):
        attached = processors(model)
        got, _ = run_guider(HeadPerturbationGuidance(perturbed_guidance_layers=["mid", "up"], **ALWAYS), "unet")
        after = processors(model)
    assert all(after[n] is attached[n] for n in attached)
    for name in alone:
        torch.testing.assert_close(got[name], alone[name], rtol=1e-5, atol=1e-5)
    assert len(probe.contexts) == 3  # the probe kept running in all three passes


def test_a_pass_that_never_reached_cleanup_is_undone_by_the_next_prepare():
    model = denoiser("unet")
    before = processors(model)
    guider = HeadPerturbationGuidance(perturbed_guidance_layers="mid", **ALWAYS)
    guider.set_state(step=0, num_inference_steps=None, timestep=torch.tensor([1.0]))
    for _ in range(3):
        guider.prepare_models(model)  # the third pass installs the perturbation; "raises" before cleanup
    assert any(processors(model)[n] is not before[n] for n in before)
    guider.set_state(step=1, num_inference_steps=None, timestep=torch.tensor([1.0]))
    guider.prepare_models(model)
    assert all(processors(model)[n] is before[n] for n in before)


def test_bad_configuration_raises_clear_errors():
    with pytest.raises(ValueError, match="needs perturbed_guidance_layers or heads"):
        HeadPerturbationGuidance()
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]; got 1.5"):
        HeadPerturbationGuidance(perturbed_guidance_layers="mid", strength=1.5)
    with pytest.raises(ValueError, match="block indices must be >= 0; got -1"):
        HeadPerturbationGuidance(perturbed_guidance_layers=[-1])
    with pytest.raises(ValueError, match="non-negative head indices"):
        HeadPerturbationGuidance(heads={"mid": [-2]})
    with pytest.raises(ValueError, match="guidance_scale must be a finite number; got nan"):
        HeadPerturbationGuidance(guidance_scale=math.nan, perturbed_guidance_layers="mid")
    model = denoiser("unet")
    with pytest.raises(ValueError, match="head 5 is out of range for layer .*attn1', which has 2 heads"):
        HeadPerturbationGuidance(heads={"mid": [5]}).perturbed_heads_of(model)
    with pytest.raises(ValueError, match="'nowhere' matches no attention layer; available layers"):
        HeadPerturbationGuidance(perturbed_guidance_layers="nowhere").perturbed_heads_of(model)
    with pytest.raises(ValueError, match="heads key 'up' matches none of the perturbed layers"):
        HeadPerturbationGuidance(perturbed_guidance_layers="mid", heads={"up": [0]}).perturbed_heads_of(model)
    with pytest.raises(ValueError, match="need a block stack.*pass pag_applied_layers identifiers"):
        HeadPerturbationGuidance(perturbed_guidance_layers=[0]).perturbed_heads_of(model)
    with pytest.raises(ValueError, match="index 9 is out of range: transformer_blocks has 2 blocks"):
        HeadPerturbationGuidance(perturbed_guidance_layers=[9]).perturbed_heads_of(denoiser("pixart"))


# --- a modular pipeline end to end ------------------------------------------------------------------------------------
def test_modular_stable_diffusion_xl_pipeline_end_to_end():
    pytest.importorskip("diffusers.modular_pipelines")
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

    components = {k: v for k, v in tiny_pipeline("StableDiffusionXLPipeline").components.items() if v is not None}
    try:
        pipe = StableDiffusionXLAutoBlocks().init_pipeline()
        pipe.update_components(**components)
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot be built offline"
        pytest.skip(f"the modular SDXL pipeline cannot be built offline from tiny components: {error}")
    unet_processors = processors(pipe.unet)

    def generate(guider: BaseGuidance) -> np.ndarray:
        pipe.update_components(guider=guider)
        generator = torch.Generator().manual_seed(0)
        call = {"num_inference_steps": 3, "height": 32, "width": 32, "output_type": "np", "output": "images"}
        return np.asarray(pipe(prompt="a red circle", generator=generator, **call), dtype=np.float64)

    common = {"guidance_scale": 5.0, "perturbed_guidance_scale": 2.0, **ALWAYS}
    cfg = generate(ClassifierFreeGuidance(guidance_scale=5.0))
    theirs = generate(DiffusersPAG(**common, perturbed_guidance_config=skip_config("mid_block.attentions", 0)))
    ours = generate(HeadPerturbationGuidance(**common, perturbed_guidance_layers="mid"))
    one_head = generate(HeadPerturbationGuidance(**common, heads=HeadSet([(MID, 1)]), strength=0.8))
    assert np.abs(theirs - cfg).max() > 1e-5  # PAG changes the image
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.abs(one_head - ours).max() > 1e-6 and np.abs(one_head - cfg).max() > 1e-6
    assert all(processors(pipe.unet)[n] is p for n, p in unet_processors.items())
