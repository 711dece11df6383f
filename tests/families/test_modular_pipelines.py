"""visattn on diffusers' modular pipelines: attach finds the denoiser among the components, and the pipeline readers
take the CFG scale from the guider and the prompt from the modular call's inputs. The tiny modular pipelines run
end to end in ``test_coverage_pipelines.py``."""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.modular_pipelines import MiniMaxH3Blocks, MiniMaxH3ModularPipeline

import visattn
from visattn.families.pipelines import pipeline_call_prompt, pipeline_guidance_scale, pipeline_guider_call
from visattn.interception import layer_hook
from visattn.tiny import call_kwargs, tiny_pipeline
from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.probes import ContextRecorder


def test_attach_finds_a_modular_pipelines_reference_transformer():
    # MiniMax-H3's ref2va workflow denoises with the component "transformer_ref" (and has no "transformer").
    pipe = MiniMaxH3ModularPipeline(blocks=MiniMaxH3Blocks().get_workflow("ref2va"))
    denoiser = tiny_denoiser_entry("MiniMaxH3Transformer3DModel").build()
    pipe.update_components(transformer_ref=denoiser)
    layers = visattn.attention_layers(denoiser).values()
    with visattn.attach(pipe, ContextRecorder()) as attachment:
        assert list(attachment.layers) == ["transformer_ref"]
        assert all(layer_hook(module) for module in layers)
    assert not any(layer_hook(module) for module in layers)


def test_guidance_scale_comes_from_the_guider_per_step():
    pipe = tiny_pipeline("flux3")
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=4.0, stop=0.5))
    pipe.guider.set_state(step=0, num_inference_steps=2, timestep=torch.tensor(1000.0))
    assert pipeline_guidance_scale(pipe, ("cond",)) == 4.0
    # Past its stop the guider returns the conditional prediction as is: no CFG weight on it.
    pipe.guider.set_state(step=1, num_inference_steps=2, timestep=torch.tensor(500.0))
    assert pipeline_guidance_scale(pipe, ("cond",)) == 1.0


class _ModularCall:
    """Calls like ModularPipeline.__call__: the inputs arrive as ``**kwargs``."""

    def __call__(self, state=None, output=None, **kwargs):
        return pipeline_call_prompt(self)


@pytest.mark.parametrize("max_sequence_length", [None, 16])
def test_call_prompt_of_a_modular_call(max_sequence_length):
    extra = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    read = _ModularCall()(prompt="a red circle", **extra)
    assert read.prompt == "a red circle"
    assert read.max_sequence_length == max_sequence_length


def test_guider_batches_name_the_branches():
    # A modular pipeline names no cache context: the guider's prepared batches say which call is which branch.
    pipe = tiny_pipeline("flux3")
    recorder = ContextRecorder()
    with torch.no_grad(), visattn.attach(pipe, recorder):
        pipe(**call_kwargs("flux3"))
    calls = {(ctx.step.index, ctx.batch.names) for ctx in recorder.contexts}
    assert calls == {(step, (branch,)) for step in (0, 1) for branch in ("cond", "uncond")}


def test_guider_outside_its_loop_names_no_branch():
    pipe = tiny_pipeline("flux3")
    guider = pipe.guider
    assert pipeline_guider_call(pipe) is None  # nothing prepared yet
    guider.set_state(step=1, num_inference_steps=2, timestep=torch.tensor(500.0))
    guider.prepare_models(pipe.transformer)
    _, name = pipeline_guider_call(pipe, step_index=1)
    assert name == "pred_cond"
    guider.prepare_models(pipe.transformer)
    assert pipeline_guider_call(pipe, step_index=1)[1] == "pred_uncond"
    # A call of another step (an extract pass before the next step) finds the count where the last batch left it.
    assert pipeline_guider_call(pipe, step_index=0) is None


def test_wan_animate_2_refuses_perturbation_guidance_and_leaves_its_extract_pass_stock():
    """Wan-Animate 2's self-attention is flex attention in the passes that predict, and SDPA only in the KV-cache
    "extract" pass: PAG and SEG are refused at attach (they would act nowhere, and the extract pass, which runs
    stock, predicts nothing), instead of an IndexError inside the model."""
    pipe = tiny_pipeline("wan_animate_2")
    for effect in (visattn.PerturbedAttentionGuidance(scale=2.0), visattn.SmoothedEnergyGuidance(scale=2.0)):
        with pytest.raises(ValueError, match="self"):
            visattn.attach(pipe, effect)
    assert not any(layer_hook(m) for m in visattn.attention_layers(pipe.transformer).values())
    family = visattn.families.family_of(pipe.transformer)
    assert family.is_auxiliary({"kv_cache_mode": "extract"}) and not family.is_auxiliary({"kv_cache_mode": "cached"})
