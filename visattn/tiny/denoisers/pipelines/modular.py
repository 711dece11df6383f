"""Tiny modular pipelines: the covered denoiser classes that diffusers drives only through a ``ModularPipeline``.

Flux 3, Wan-Animate 2 and MiniMax-H3 have no classic ``DiffusionPipeline``; diffusers ships their pipelines as
blocks (``Flux3AutoBlocks``, ...) that a ``ModularPipeline`` runs. Each :class:`PipelineSpec` here names the
modular pipeline class, the blocks it is made from (``pipeline_kwargs["blocks"]``: a zero-argument factory, so each
pipeline gets its own blocks), and the tiny offline components :func:`visattn.tiny.tiny_pipeline` sets on it
with ``update_components``. Flux 3 and Wan-Animate 2 guide through a diffusers guider (``ClassifierFreeGuidance``,
the component ``guider``): one denoiser call per branch the guider prepared, conditional first, with no
``cache_context`` name (visattn reads the branch from the guider, see
:func:`visattn.families.pipelines.pipeline_guider_call`); MiniMax-H3 is guidance-distilled (one call per step).

A call returns the ``PipelineState``; its ``images`` or ``videos`` hold the output (MiniMax-H3's ``latents``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    MiniMaxH3Scheduler,
    MiniMaxH3Transformer3DModel,
)
from diffusers.modular_pipelines import (
    Flux3AutoBlocks,
    Flux3ModularPipeline,
    MiniMaxH3Blocks,
    MiniMaxH3ModularPipeline,
    SequentialPipelineBlocks,
    WanAnimate2Blocks,
    WanAnimate2ModularPipeline,
)
from transformers import CLIPVisionConfig, CLIPVisionModel

from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.denoisers.images import FLUX3
from visattn.tiny.denoisers.pipelines.common import IMAGE_SIZE, TEXT_TOKENS, image_call
from visattn.tiny.denoisers.pipelines.llm import flux2_vae
from visattn.tiny.denoisers.pipelines.qwen_text import qwen3_vl_model, qwen3_vl_processor, qwen_tokenizer
from visattn.tiny.denoisers.pipelines.t5_video import drifting_frames, input_image
from visattn.tiny.denoisers.videos import TEXT
from visattn.tiny.pipeline_spec import ComponentFactory, PipelineSpec
from visattn.tiny.text_encoders import umt5_encoder
from visattn.tiny.tokenizers import t5_tokenizer
from visattn.tiny.vaes import WAN_VAE

# --- Flux 3 ---------------------------------------------------------------------------------------------------------
#: the Qwen3-VL hidden states Flux 3 stacks per text token (8 of 32 in the real model); two of the tiny encoder's
#: two layers, 16 wide each, give the tiny transformer's 32-wide text input
FLUX3_TEXT_LAYERS = (1, 2)


def _flux3_blocks() -> Flux3AutoBlocks:
    # The auto blocks start with a prompt upsampler (a Qwen3.5 that rewrites the prompt); diffusers' docstring says
    # to pop it to encode the prompt as given, which keeps the call deterministic and the words the user's.
    blocks = Flux3AutoBlocks()
    blocks.sub_blocks.pop("prompt_upsampler")
    return blocks


def _flux3_components() -> dict[str, ComponentFactory]:
    # Qwen3-VL over the chat template, the window right-padded to a multiple of 80 tokens and capped at
    # max_sequence_length (16 here); the 2x Flux 2 VAE's 4 latent channels packed 2x2 give the 16 the tiny
    # transformer takes. The guider is the blocks' default ClassifierFreeGuidance (scale 3.5): two calls per step.
    return {
        "tokenizer": qwen3_vl_processor,
        "text_encoder": lambda: qwen3_vl_model(qwen3_vl_processor().tokenizer, hidden_size=16),
        "vae": flux2_vae,
        "transformer": FLUX3.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }


def _flux3_call() -> dict[str, Any]:
    return image_call(max_sequence_length=TEXT_TOKENS, text_encoder_out_layers=FLUX3_TEXT_LAYERS)


FLUX3_PIPELINE = PipelineSpec(
    family="flux3",
    pipeline_cls=Flux3ModularPipeline,
    denoiser="transformer",
    components=_flux3_components,
    call_defaults=_flux3_call,
    pipeline_kwargs={"blocks": _flux3_blocks},
    one_prompt_per_call="the Flux 3 text encoder step takes one prompt (a string) per call",
)

# --- MiniMax-H3 -----------------------------------------------------------------------------------------------------
MINIMAX_H3 = tiny_denoiser_entry("MiniMaxH3Transformer3DModel")

#: the Qwen3-VL hidden state MiniMax-H3 conditions on is ``hidden_states[50]``, and the text encoder step refuses a
#: stack of 50 layers or fewer (its last state is post-norm), so the tiny encoder has 51 (16 wide: fast all the same)
MINIMAX_H3_TEXT_LAYERS = 51

#: the pipeline's shortest video is 5 s at its fixed 24 fps, snapped up to the VAE's 17 * n + 5 frames: 124 frames,
#: 37 latent frames of 1x1 patches at 32x32 pixels, and 207 audio latents per stereo channel
MINIMAX_H3_FRAMES = 124


def _minimax_h3_blocks() -> SequentialPipelineBlocks:
    # The text-to-video-and-audio workflow without its two decode steps (diffusers' after-denoise step says popping
    # them leaves the latents in hand): MiniMax-H3's video VAE (a transformer decoder) and audio codec have no tiny
    # versions here, so the pipeline returns the denoised video latents, which the checks compare.
    blocks = MiniMaxH3Blocks().get_workflow("t2va")
    blocks.sub_blocks.pop("decode.video")
    blocks.sub_blocks.pop("decode.audio")
    return blocks


def _minimax_h3_transformer() -> MiniMaxH3Transformer3DModel:
    # Without a VAE the pipeline sizes its latents by the released checkpoint (24 video, 32 audio channels): the
    # tiny transformer takes those.
    config = {**MINIMAX_H3.build().config, "in_channels": 24, "audio_in_channels": 32}
    torch.manual_seed(0)
    return MiniMaxH3Transformer3DModel.from_config(config).eval()


def _minimax_h3_components() -> dict[str, ComponentFactory]:
    # Guidance-distilled: no guider, one denoiser call per step over the packed [text | audio | video] rows. The
    # prompt is tokenized verbatim (no chat template, no special tokens).
    return {
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "processor": qwen3_vl_processor,
        "text_encoder": lambda: qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=32, layers=MINIMAX_H3_TEXT_LAYERS),
        "transformer": _minimax_h3_transformer,
        "scheduler": MiniMaxH3Scheduler,
        "audio_scheduler": MiniMaxH3Scheduler,
    }


def _minimax_h3_call() -> dict[str, Any]:
    # Its scheduler's n steps end on the clean endpoint, so it denoises n - 1 times: 3 gives the two steps of the
    # other tiny calls.
    call = image_call(num_frames=MINIMAX_H3_FRAMES, num_inference_steps=3)
    del call["output_type"]  # no decode step reads it
    return call


MINIMAX_H3_PIPELINE = PipelineSpec(
    family="minimax_h3",
    pipeline_cls=MiniMaxH3ModularPipeline,
    denoiser="transformer",
    components=_minimax_h3_components,
    call_defaults=_minimax_h3_call,
    pipeline_kwargs={"blocks": _minimax_h3_blocks},
    one_prompt_per_call="the MiniMax-H3 text encoder step takes one prompt (a string) per call",
)

# --- Wan-Animate 2 --------------------------------------------------------------------------------------------------
WAN_ANIMATE2 = tiny_denoiser_entry("WanAnimate2Transformer3DModel")

#: pixel frames of the one segment the call generates (and of the driving video): 2 latent frames
WAN_ANIMATE2_FRAMES = 5

#: the tiny CLIP vision tower: the class fixes the width of its image tokens at 1280, the pipeline resizes the image
#: to 224 pixels and reads ``hidden_states[-2]``; 32-pixel patches keep it at 50 tokens
WAN_ANIMATE2_CLIP: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 32,
}


def _wan_animate2_vae() -> AutoencoderKLWan:
    # The transformer sizes its flex block mask by area // 256 tokens a frame: 8x VAE and 2x2 patches, as released
    # (the other tiny Wan VAEs are 4x), so three downsamples, the last two in time too.
    config = {**WAN_VAE, "dim_mult": [1, 1, 1, 1], "temperal_downsample": [False, True, True]}
    return AutoencoderKLWan(**{**config, "scale_factor_spatial": 8}).eval()


def _wan_animate2_transformer() -> torch.nn.Module:
    # The denoising pass attends through a flex BlockMask the model builds per (latent frames, tokens a frame) with
    # torch.compile (seconds on CPU); build the pipeline's mask eagerly, as the coverage denoiser does its own.
    import diffusers.models.transformers.transformer_wan_animate_2 as module

    model = WAN_ANIMATE2.build()
    make = module.create_block_mask
    module.create_block_mask = lambda *args, **kwargs: make(*args, **{**kwargs, "_compile": False})
    try:
        latent_frames, tokens = WAN_ANIMATE2_FRAMES // 4 + 1, IMAGE_SIZE * IMAGE_SIZE // 256
        model.block_masks[(latent_frames, tokens)] = model.create_mask(latent_frames, tokens, torch.device("cpu"))
    finally:
        module.create_block_mask = make
    return model


def _wan_animate2_components() -> dict[str, ComponentFactory]:
    # Character animation in segments: per segment an "extract" pass fills the transformer's KV cache from the
    # driving video, then the denoising passes attend to it (flex attention, not taken over) and cross-attend to the
    # umT5 text and the CLIP tokens of the reference image. CFG through the blocks' ClassifierFreeGuidance.
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": lambda: umt5_encoder(t5_tokenizer(), d_model=32),
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**WAN_ANIMATE2_CLIP)).eval(),
        "vae": _wan_animate2_vae,
        "transformer": _wan_animate2_transformer,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0),
    }


def _wan_animate2_call() -> dict[str, Any]:
    # The model pads the text to its text_len (7 in the tiny config), so the text is cut to that.
    return image_call(
        image=input_image(),
        driving_video=drifting_frames(WAN_ANIMATE2_FRAMES, IMAGE_SIZE),
        segment_frame_length=WAN_ANIMATE2_FRAMES,
        max_sequence_length=TEXT,
    )


WAN_ANIMATE2_PIPELINE = PipelineSpec(
    family="wan_animate_2",
    pipeline_cls=WanAnimate2ModularPipeline,
    denoiser="transformer",
    components=_wan_animate2_components,
    call_defaults=_wan_animate2_call,
    pipeline_kwargs={"blocks": WanAnimate2Blocks},
    one_prompt_per_call="the Wan-Animate 2 text encoder step takes one prompt (a string) per call",
)

PIPELINES: tuple[PipelineSpec, ...] = (FLUX3_PIPELINE, WAN_ANIMATE2_PIPELINE, MINIMAX_H3_PIPELINE)

#: pipelines whose end-to-end test fails today, by key, with the reason
KNOWN_PIPELINE_LIMITS: dict[str, str] = {}
