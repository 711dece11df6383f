"""STG's block skip (STG-R), the Wan formula and the std rescaling against the authors' code (issue 28).

The references below are transcriptions, written here from reading junhahyung/STGuidance:

* ``Wan2.1/pipeline.py``: ``forward_with_stg`` (the skipped block returns ``hidden_states``) and
  ``WanSTGPipeline.__call__``: ``noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)``, then
  the perturbed pass on ``negative_prompt_embeds`` with ``skip_guidance_block_idxs`` skipped and
  ``noise_pred = noise_pred + skip_guidance_scale * (noise_pred - noise_perturb)``.
* ``CogVideoX/pipeline_stg_cogvideox.py`` (Mochi and LTX-Video the same): ``forward_with_stg`` runs the block
  and puts the perturbed third of the batch back to its inputs (``hidden_states`` and
  ``encoder_hidden_states``); ``__call__``: ``noise_pred_uncond + guidance_scale * (noise_pred_text -
  noise_pred_uncond) + stg_scale * (noise_pred_text - noise_pred_perturb)``, and with ``do_rescaling``
  ``factor = noise_pred_text.std() / noise_pred.std(); factor = 0.7 * factor + 0.3; noise_pred *= factor``.

Each reference runs the tiny pipeline's own transformer on the inputs of the first denoising step (captured from
a stock run); visattn's result is what the attached pipeline hands its scheduler at that step.
"""

from __future__ import annotations

import contextlib
import functools
import types

import pytest
import torch

import visattn
from visattn.attachment import attention_layers
from visattn.effects import SpatioTemporalSkipGuidance
from visattn.interception import layer_hook
from visattn.tiny import call_kwargs, tiny_pipeline

TOLERANCE = 1e-5


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


class Capture(visattn.Effect):
    """Keeps the inputs of every denoiser call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def wrap_denoiser(self, forward, args, kwargs, state):
        self.calls.append((args, dict(kwargs)))
        return forward(*args, **kwargs)


@contextlib.contextmanager
def first_step_prediction(pipe):
    """Records the model output the pipeline hands its scheduler at the first step."""
    seen = []
    step = pipe.scheduler.step

    def recording(*args, **kwargs):
        seen.append((args[0] if args else kwargs["model_output"]).detach().clone())
        return step(*args, **kwargs)

    pipe.scheduler.step = recording
    try:
        yield seen
    finally:
        del pipe.scheduler.step  # the instance attribute hid the class's method


def first_step_inputs(family: str, **overrides):
    capture = Capture()
    pipe = pipeline(family)
    with visattn.attach(pipe, capture):
        pipe(**call_kwargs(family, **overrides))
    return capture.calls


def guided_first_step(family: str, effect, **overrides) -> torch.Tensor:
    pipe = pipeline(family)
    with visattn.attach(pipe, effect), first_step_prediction(pipe) as seen:
        pipe(**call_kwargs(family, **overrides))
    return seen[0]


@contextlib.contextmanager
def authors_skip(blocks, restore_rows=None):
    """The authors' ``forward_with_stg``: Wan's returns its input; CogVideoX's runs the block and puts the
    perturbed rows (``restore_rows``) back to their inputs."""
    originals = [block.forward for block in blocks]

    def wan_forward(self, hidden_states, *args, **kwargs):
        return hidden_states

    def cogvideox_forward(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        hidden, encoder = type(self).forward(self, hidden_states, encoder_hidden_states, *args, **kwargs)
        hidden, encoder = hidden.clone(), encoder.clone()
        hidden[restore_rows] = hidden_states[restore_rows]
        encoder[restore_rows] = encoder_hidden_states[restore_rows]
        return hidden, encoder

    for block in blocks:
        block.forward = types.MethodType(wan_forward if restore_rows is None else cogvideox_forward, block)
    try:
        yield
    finally:
        for block, original in zip(blocks, originals):
            del block.forward
            assert block.forward == original


def test_wan_formula_with_block_skip_matches_the_authors_wan_pipeline():
    family, scale, guidance = "wan", 2.0, 5.0
    (c_args, c_kwargs), (u_args, u_kwargs), *_ = first_step_inputs(family, guidance_scale=guidance)
    transformer = pipeline(family).transformer
    with torch.no_grad():
        eps_c = transformer(*c_args, **c_kwargs)[0]
        eps_u = transformer(*u_args, **u_kwargs)[0]
        noise_pred = eps_u + guidance * (eps_c - eps_u)
        with authors_skip([transformer.blocks[1]]):
            noise_perturb = transformer(*u_args, **u_kwargs)[0]
        noise_pred = noise_pred + scale * (noise_pred - noise_perturb)
    assert (noise_perturb - eps_u).abs().max() > 1e-4
    effect = SpatioTemporalSkipGuidance(scale, layers="blocks.1", guidance="cfg")
    ours = guided_first_step(family, effect, guidance_scale=guidance)
    assert (ours - noise_pred).abs().max() <= TOLERANCE


def test_block_skip_default_formula_and_rescaling_match_the_authors_cogvideox_pipeline():
    family, scale, guidance = "cogvideox", 1.5, 6.0
    (args, kwargs), *_ = first_step_inputs(family, guidance_scale=guidance)
    transformer = pipeline(family).transformer
    rows = args[0].shape[0] if args else kwargs["hidden_states"].shape[0]
    assert rows % 2 == 0
    half = rows // 2
    with torch.no_grad():
        uncond, text = transformer(*args, **kwargs)[0].float().chunk(2)
        # The authors batch [uncond, cond, perturbed]: append the cond rows and restore them in block 0.
        index = torch.cat([torch.arange(rows), torch.arange(half, rows)])
        widened = {
            key: value[index] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows else value
            for key, value in kwargs.items()
        }
        with authors_skip([transformer.transformer_blocks[0]], restore_rows=slice(rows, rows + half)):
            perturb = transformer(*args, **widened)[0].float()[rows:]
        noise_pred = uncond + guidance * (text - uncond) + scale * (text - perturb)
        factor = text.std() / noise_pred.std()
        rescaled = noise_pred * (0.7 * factor + (1 - 0.7))
    assert (perturb - text).abs().max() > 1e-4
    plain = SpatioTemporalSkipGuidance(scale, layers="transformer_blocks.0")
    assert (guided_first_step(family, plain, guidance_scale=guidance).float() - noise_pred).abs().max() <= TOLERANCE
    with_rescale = SpatioTemporalSkipGuidance(scale, layers="transformer_blocks.0", rescale=0.7)
    ours = guided_first_step(family, with_rescale, guidance_scale=guidance).float()
    assert (ours - rescaled).abs().max() <= TOLERANCE


def test_block_mode_is_the_default_on_video_and_skip_on_images():
    effect = SpatioTemporalSkipGuidance(1.0, layers="blocks.1")
    transformer = pipeline("wan").transformer
    with visattn.attach(pipeline("wan"), effect) as handle:
        # Block mode perturbs no attention call: no attention module is hooked, block 1 is.
        assert handle.run_of(effect).mode == "block"
        assert all(layer_hook(module) is None for module in attention_layers(transformer).values())
        name = f"visattn.stg_block.{effect.branch}"
        hooked = [
            m for m in transformer.blocks if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.get_hook(name)
        ]
        assert hooked == [transformer.blocks[1]]
    assert transformer.blocks[1]._diffusers_hook.get_hook(name) is None  # removed on detach
    image = SpatioTemporalSkipGuidance(1.0, layers="mid")
    with visattn.attach(pipeline("unet"), image) as handle:
        assert handle.run_of(image).mode == "skip"


def test_bad_parameters_name_parameter_value_and_range():
    with pytest.raises(ValueError, match=r"guidance must be one of \('cond', 'cfg'\); got 'wan'"):
        SpatioTemporalSkipGuidance(1.0, layers="self", guidance="wan")
    for rescale in (1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"rescale=.* must be None or a number in the range \[0, 1\]"):
            SpatioTemporalSkipGuidance(1.0, layers="self", rescale=rescale)


def test_block_mode_on_a_bare_denoiser_is_a_clear_error():
    transformer = pipeline("wan").transformer
    capture = Capture()
    with visattn.attach(pipeline("wan"), capture):
        pipeline("wan")(**call_kwargs("wan"))
    args, kwargs = capture.calls[0]
    with visattn.attach(transformer, SpatioTemporalSkipGuidance(1.0, layers="blocks.1")):
        with pytest.raises(ValueError, match="mode='block'.*attach the pipeline, not a bare denoiser"):
            transformer(*args, **kwargs)
