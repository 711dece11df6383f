"""attach/detach: exact restore, no half-applied state, layer and step selection, composition, integrations."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
from helpers import Boom, Probe, Recorder, ZeroOutput

import visattn
from visattn.interception import layer_hook
from visattn.layers import select_layers
from visattn.tiny import call_kwargs, tiny_pipeline


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(pipe, family: str, **overrides) -> np.ndarray:
    return np.asarray(pipe(**call_kwargs(family, **overrides))[0], dtype=np.float64)


def processor_objects(model) -> dict:
    return {name: module.processor for name, module in visattn.attention_layers(model).items()}


def hooked(model) -> set[str]:
    """Names of the attention layers that carry a visattn hook."""
    return {name for name, module in visattn.attention_layers(model).items() if layer_hook(module) is not None}


@pytest.mark.parametrize("family", ["unet", "wan"])
def test_detach_restores_the_exact_processor_objects(family):
    pipe = pipeline(family)
    model = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    before = processor_objects(model)
    handle = visattn.attach(pipe, Probe())
    during = processor_objects(model)
    assert all(during[name] is before[name] for name in before)  # the stock processors stay in place
    assert hooked(model) == set(before)
    handle.detach()
    after = processor_objects(model)
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert not hooked(model)
    handle.detach()  # idempotent


def test_with_block_restores_after_an_exception_inside_it():
    pipe = pipeline("unet")
    before = processor_objects(pipe.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with visattn.attach(pipe, Boom()):
            run(pipe, "unet")
    after = processor_objects(pipe.unet)
    assert all(after[name] is before[name] for name in before)
    assert pipe.unet._diffusers_hook.get_hook("visattn") is None
    # The model works as before and can be attached again.
    with visattn.attach(pipe):
        pass


def test_second_attach_on_the_same_model_is_refused_and_changes_nothing():
    pipe = pipeline("unet")
    with visattn.attach(pipe, Probe()):
        during = processor_objects(pipe.unet)
        with pytest.raises(RuntimeError, match="already has visattn attached"):
            visattn.attach(pipe.unet)
        assert all(processor_objects(pipe.unet)[name] is during[name] for name in during)


def test_failed_attach_leaves_nothing_half_swapped():
    pipe = pipeline("unet")
    before = processor_objects(pipe.unet)
    bad = Probe(layers="no_such_layer")
    with pytest.raises(ValueError, match="matches no attention layer; available layers: down_blocks"):
        visattn.attach(pipe, Probe(), bad)
    after = processor_objects(pipe.unet)
    assert all(after[name] is before[name] for name in before)
    assert getattr(pipe.unet, "_diffusers_hook", None) is None or pipe.unet._diffusers_hook.get_hook("visattn") is None


def test_detach_restores_outputs_exactly():
    pipe = pipeline("unet")
    stock = run(pipe, "unet")
    with visattn.attach(pipe, ZeroOutput()):
        changed = run(pipe, "unet")
    assert np.abs(stock - changed).max() > 1e-3
    assert np.array_equal(run(pipe, "unet"), stock)


def test_bad_targets_and_effects_get_clear_errors():
    with pytest.raises(TypeError, match="needs a diffusers pipeline with a unet or transformer"):
        visattn.attach(object())
    with pytest.raises(ValueError, match="Linear has no attention modules with a diffusers processor"):
        visattn.attach(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="visattn effects"):
        visattn.attach(pipeline("unet"), "not an effect")
    with pytest.raises(ValueError, match="backend='fast' is not one of"):
        visattn.attach(pipeline("unet"), backend="fast")
    with pytest.raises(ValueError, match=r"steps=\(0.5, 0.2\) must be a fraction in \(0, 1\] or a \(start, stop\)"):
        visattn.attach(pipeline("unet"), steps=(0.5, 0.2))
    with pytest.raises(ValueError, match="needs the pipeline"):
        visattn.attach(pipeline("unet").unet, steps=(0.0, 0.5))


def test_effects_compose_in_the_given_order():
    log: list[str] = []
    with visattn.attach(pipeline("unet"), Recorder("first", log), Recorder("second", log)):
        run(pipeline("unet"), "unet")
    assert log and log[0::2] == ["first"] * (len(log) // 2) and log[1::2] == ["second"] * (len(log) // 2)


def test_layers_select_roles_and_regexes():
    pipe = pipeline("unet")
    with visattn.attach(pipe, layers=["mid_block", "self"]) as handle:
        names = handle.layers["unet"]
    assert names and all("mid_block" in name and name.endswith("attn1") for name in names)
    with visattn.attach(pipe, layers="cross") as handle:
        assert all(name.endswith("attn2") for name in handle.layers["unet"])
    assert not hooked(pipe.unet)


def test_unselected_layers_keep_their_stock_processors():
    pipe = pipeline("unet")
    before = processor_objects(pipe.unet)
    with visattn.attach(pipe, layers="up_blocks"):
        assert hooked(pipe.unet) == {name for name in before if "up_blocks" in name}
        assert all(processor is before[name] for name, processor in processor_objects(pipe.unet).items())


def diffusers_pag_layers(pipe_class, components, layer_ids) -> set[str]:
    """The self-attention layers diffusers' own PAG pipeline assigns PAG processors to."""
    import inspect

    accepted = inspect.signature(pipe_class.__init__).parameters
    pag = pipe_class(**{k: v for k, v in components.items() if k in accepted}, pag_applied_layers=layer_ids)
    model = pag.unet if hasattr(pag, "unet") else pag.transformer
    stock = processor_objects(model)
    pag._set_pag_attn_processor(pag_applied_layers=pag.pag_applied_layers, do_classifier_free_guidance=True)
    chosen = {name for name, p in processor_objects(model).items() if p is not stock[name]}
    for name, module in visattn.attention_layers(model).items():
        module.set_processor(stock[name])
    return chosen


@pytest.mark.parametrize(
    "layer_ids",
    [["mid"], ["down"], ["up"], ["down_blocks.1"], ["up_blocks.0.attentions.1"], [r"attentions\.0"], ["mid", "up"]],
)
def test_layer_selection_matches_diffusers_pag_layer_matching_on_sd(layer_ids):
    from diffusers import StableDiffusionPAGPipeline

    pipe = pipeline("unet")
    expected = diffusers_pag_layers(StableDiffusionPAGPipeline, dict(pipe.components), layer_ids)
    roles = visattn.layer_roles(pipe.unet)
    assert set(select_layers(roles, tuple(layer_ids) + ("self",))) == expected


@pytest.mark.parametrize("layer_ids", [["blocks.1"], ["blocks.0"], ["transformer_blocks"], [r"blocks\.(0|1)"]])
def test_layer_selection_matches_diffusers_pag_layer_matching_on_sd3(layer_ids):
    from diffusers import StableDiffusion3PAGPipeline

    pipe = pipeline("sd3")
    expected = diffusers_pag_layers(StableDiffusion3PAGPipeline, dict(pipe.components), layer_ids)
    roles = visattn.layer_roles(pipe.transformer)
    # diffusers' SD3 PAG treats joint attention modules as the self-attention it perturbs.
    assert set(select_layers(roles, tuple(layer_ids))) == expected


def test_fake_integral_rule_is_diffusers_rule():
    roles = {"blocks.1": "self", "blocks.10": "self", "blocks.1.attn": "self"}
    assert select_layers(roles, ("blocks.1",)) == ["blocks.10", "blocks.1.attn"]


def test_layers_that_match_nothing_list_the_available_names():
    with pytest.raises(ValueError) as error:
        visattn.attach(pipeline("unet"), layers="nowhere")
    message = str(error.value)
    assert "layers='nowhere' matches no attention layer" in message
    assert "mid_block.attentions.0.transformer_blocks.0.attn1" in message
    with pytest.raises(ValueError, match="has no joint attention layers"):
        visattn.attach(pipeline("unet"), layers="joint")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        visattn.attach(pipeline("unet"), layers="(")


def test_steps_limit_effects_to_a_fraction_of_the_schedule():
    pipe = pipeline("unet")
    probe = Probe(steps=(0.0, 0.5))
    with visattn.attach(pipe, probe):
        run(pipe, "unet", num_inference_steps=4)
    assert {ctx.step.index for ctx in probe.contexts} == {0, 1}

    late = Probe()
    with visattn.attach(pipe, late, steps=(0.5, 1.0)):
        run(pipe, "unet", num_inference_steps=4)
    assert {ctx.step.index for ctx in late.contexts} == {2, 3}


def test_outside_the_steps_range_the_output_is_stock():
    pipe = pipeline("unet")
    stock = run(pipe, "unet", num_inference_steps=3)
    with visattn.attach(pipe, ZeroOutput(), steps=(0.6, 1.0)):  # only the last of 3 steps (2/3)
        late_only = run(pipe, "unet", num_inference_steps=3)
    with visattn.attach(pipe, ZeroOutput()):
        always = run(pipe, "unet", num_inference_steps=3)
    assert np.abs(stock - late_only).max() > 0  # the last step changed
    assert np.abs(stock - late_only).max() < np.abs(stock - always).max()


def test_wan22_attaches_to_both_transformers():
    from visattn.tiny import tiny_denoiser

    pipe = pipeline("wan")
    second = tiny_denoiser("wan", seed=1)
    pipe.register_modules(transformer_2=second)
    try:
        with visattn.attach(pipe, Probe()) as handle:
            assert set(handle.layers) == {"transformer", "transformer_2"}
            assert hooked(second) == set(processor_objects(second))
        assert not hooked(second)
    finally:
        pipe.register_modules(transformer_2=None)


def test_lora_loaded_through_diffusers_is_kept():
    from peft import LoraConfig

    pipe = tiny_pipeline("unet")
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    with_lora = run(pipe, "unet")
    with visattn.attach(pipe):
        swapped = run(pipe, "unet")
    pipe.unet.disable_adapters()
    without = run(pipe, "unet")
    assert np.abs(with_lora - without).max() > 1e-4  # the LoRA matters
    assert np.abs(with_lora - swapped).max() <= 1e-5


def test_lora_state_dict_loaded_with_load_lora_weights_is_kept():
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    source = tiny_pipeline("unet")
    source.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    lora = {f"unet.{k}": v for k, v in get_peft_model_state_dict(source.unet).items()}
    pipe = tiny_pipeline("unet")
    pipe.load_lora_weights(lora, adapter_name="tiny")
    expected = run(pipe, "unet")
    with visattn.attach(pipe):
        assert np.abs(run(pipe, "unet") - expected).max() <= 1e-5


def test_model_cpu_offload_keeps_working():
    pipe = tiny_pipeline("unet")
    stock = run(pipe, "unet")
    try:
        pipe.enable_model_cpu_offload(device="cpu")
    except (RuntimeError, ValueError) as error:  # pragma: no cover - depends on the accelerate version
        pytest.skip(f"model CPU offload cannot be enabled on a CPU-only machine here: {error}")
    with visattn.attach(pipe, Probe()):
        offloaded = run(pipe, "unet")
    assert np.abs(stock - offloaded).max() <= 1e-5


def test_attachment_repr_and_states_are_informative():
    pipe = pipeline("unet")
    with visattn.attach(pipe, Probe()) as handle:
        run(pipe, "unet")
        assert re.search(r"layers=\{'unet': \d+\}", repr(handle))
        (state,) = handle.states
        assert state.inputs.grid[0] == 1 and state.step.total == 2


def test_one_effect_attached_to_two_pipelines_acts_as_two_independent_copies():
    """Attaching a configured effect twice (two pipelines) and detaching one leaves the other exactly as it was:
    the layers an effect acts on belong to each attachment, not to the effect object."""
    first, second = tiny_pipeline("unet"), tiny_pipeline("unet")
    pag = visattn.PerturbedAttentionGuidance(scale=3.0, layers="mid")
    with visattn.attach(second, visattn.PerturbedAttentionGuidance(scale=3.0, layers="mid")):
        expected = run(second, "unet")
    handle = visattn.attach(first, pag)
    with visattn.attach(second, pag):
        handle.detach()
        # The mid block's self-attention: its cross-attention, certain from its module, is no layer PAG acts on.
        assert hooked(second.unet) == set(select_layers(visattn.layer_roles(second.unet), ["mid", "self"]))
        assert np.array_equal(run(second, "unet"), expected)


def test_the_same_effect_twice_in_one_attach_is_refused():
    pipe = pipeline("unet")
    pag = visattn.PerturbedAttentionGuidance(scale=3.0)
    before = processor_objects(pipe.unet)
    with pytest.raises(ValueError, match=r"effects: .* is passed twice"):
        visattn.attach(pipe, pag, pag)
    assert processor_objects(pipe.unet) == before and not hooked(pipe.unet)
