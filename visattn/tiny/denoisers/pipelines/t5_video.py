"""Tiny text-to-video pipelines whose text encoder is T5 (or umT5): one :class:`PipelineSpec` per pipeline.

All run 2 steps of a short clip at 32x32 (9 frames where the VAE's temporal compression allows it) with a 16-token
text where the pipeline takes ``max_sequence_length``; :mod:`visattn.tiny.denoisers.pipelines.t5` lists them.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

import numpy as np
import torch
from diffusers import (
    AllegroPipeline,
    AnyFlowPipeline,
    AutoencoderKL,
    AutoencoderKLAllegro,
    AutoencoderKLCosmos,
    AutoencoderKLLTXVideo,
    AutoencoderKLMochi,
    ChronoEditPipeline,
    CosmosTextToWorldPipeline,
    DDIMScheduler,
    EDMEulerScheduler,
    FlowMapEulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeliosPipeline,
    HeliosScheduler,
    LattePipeline,
    LTXPipeline,
    MochiPipeline,
    SkyReelsV2Pipeline,
    UniPCMultistepScheduler,
    WanAnimatePipeline,
    WanVACEPipeline,
)
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.denoisers.denoiser_spec import built
from visattn.tiny.denoisers.pipelines.common import IMAGE_SIZE, PROMPT, TEXT_TOKENS
from visattn.tiny.pipeline_spec import ComponentFactory, PipelineSpec
from visattn.tiny.text_encoders import t5_encoder, umt5_encoder
from visattn.tiny.tokenizers import t5_tokenizer
from visattn.tiny.vaes import IMAGE_VAE, LATENT_CHANNELS, WAN_VAE, wan_vae

#: pixel frames of the clips: three latent frames with the 4x temporal VAEs
NUM_FRAMES = 9


def video_call(**extra: Any) -> dict[str, Any]:
    """A two-step call of a :data:`NUM_FRAMES`-frame clip at 32x32 with numpy output."""
    return {
        "prompt": PROMPT,
        "num_inference_steps": 2,
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "num_frames": NUM_FRAMES,
        "output_type": "np",
        **extra,
    }


def _t5(width: int) -> ComponentFactory:
    return lambda: t5_encoder(t5_tokenizer(), d_model=width)


# --- LTX-Video -------------------------------------------------------------------------------------------------

#: LTX's VAE: two space-time downsamplings (4x, 4x) over 4 latent channels, no timestep conditioning.
LTX_VAE: dict[str, Any] = {
    "latent_channels": LATENT_CHANNELS,
    "block_out_channels": (8, 8, 8, 8),
    "decoder_block_out_channels": (8, 8, 8, 8),
    "layers_per_block": (1, 1, 1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1, 1, 1),
    "spatio_temporal_scaling": (True, True, False, False),
    "decoder_spatio_temporal_scaling": (True, True, False, False),
    "decoder_inject_noise": (False, False, False, False, False),
    "upsample_residual": (False, False, False, False),
    "upsample_factor": (1, 1, 1, 1),
    "timestep_conditioning": False,
    "patch_size": 1,
    "patch_size_t": 1,
}


def _ltx_vae() -> AutoencoderKLLTXVideo:
    vae = AutoencoderKLLTXVideo(**LTX_VAE).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return vae


def _ltx_components() -> dict[str, ComponentFactory]:
    # Packed [B, F*H*W, C] tokens (patch 1); the T5 text mask becomes a -10000 bias on the cross-attention.
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": _ltx_vae,
        "text_encoder": _t5(32),
        "tokenizer": t5_tokenizer,
        "transformer": tiny_denoiser_entry("LTXVideoTransformer3DModel").build,
    }


# --- Mochi -----------------------------------------------------------------------------------------------------

#: Mochi's VAE is fixed at 8x space and 6x time; without latents_mean/std the pipeline only divides by the scale
#: (it hard-codes 12 channels for the statistics).
MOCHI_VAE: dict[str, Any] = {
    "latent_channels": LATENT_CHANNELS,
    "out_channels": 3,
    "encoder_block_out_channels": (32, 32, 32, 32),
    "decoder_block_out_channels": (32, 32, 32, 32),
    "layers_per_block": (1, 1, 1, 1, 1),
    "latents_mean": None,
    "latents_std": None,
}
MOCHI_FRAMES = 13  # 6x temporal compression: three latent frames


def _mochi_components() -> dict[str, ComponentFactory]:
    # Joint [video, text] attention run per batch row over the valid text only; called with 1000 - t.
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: AutoencoderKLMochi(**MOCHI_VAE).eval(),
        "text_encoder": _t5(32),
        "tokenizer": t5_tokenizer,
        "transformer": tiny_denoiser_entry("MochiTransformer3DModel").build,
    }


# --- Allegro ---------------------------------------------------------------------------------------------------

#: Allegro's VAE: three levels (4x space), two temporal halvings (4x time). It only decodes tiled, over
#: kernel-sized tiles that :func:`_allegro_vae` makes one tile of the whole clip (so every frame is decoded).
ALLEGRO_VAE: dict[str, Any] = {
    "down_block_types": ("AllegroDownBlock3D",) * 3,
    "up_block_types": ("AllegroUpBlock3D",) * 3,
    "block_out_channels": (8, 8, 8),
    "temporal_downsample_blocks": (True, True, False),
    "temporal_upsample_blocks": (False, True, True),
    "latent_channels": LATENT_CHANNELS,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "temporal_compression_ratio": 4,
    "sample_size": IMAGE_SIZE,
}
ALLEGRO_FRAMES = 8  # even: the pipeline makes 8 / 4 = 2 latent frames, decoded back to 8

#: the tiny Allegro sized for the pipeline's 8x8 latents and 2 latent frames (head dim 24: three RoPE bands)
ALLEGRO_TRANSFORMER = built(
    "AllegroTransformer3DModel",
    patch_size=2,
    patch_size_t=1,
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    num_layers=2,
    cross_attention_dim=48,
    sample_height=IMAGE_SIZE // 4,
    sample_width=IMAGE_SIZE // 4,
    sample_frames=ALLEGRO_FRAMES // 4,
    caption_channels=32,
    interpolation_scale_h=1.0,
    interpolation_scale_w=1.0,
    interpolation_scale_t=1.0,
)


def _allegro_vae() -> AutoencoderKLAllegro:
    vae = AutoencoderKLAllegro(**ALLEGRO_VAE).eval()
    vae.enable_tiling()
    vae.enable_slicing()  # the tiled decode handles one video at a time
    vae.kernel = vae.stride = (ALLEGRO_FRAMES, IMAGE_SIZE, IMAGE_SIZE)
    return vae


def _allegro_components() -> dict[str, ComponentFactory]:
    # The pipeline computes the 3-D RoPE and passes it to the transformer; cross-attention to T5 text.
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _t5(32),
        "vae": _allegro_vae,
        "transformer": ALLEGRO_TRANSFORMER,
        "scheduler": DDIMScheduler,
    }


# --- Latte -----------------------------------------------------------------------------------------------------

#: the tiny Latte with one temporal position per pixel frame (the image VAE keeps every frame) at 16x16 latents
LATTE_TRANSFORMER = built(
    "LatteTransformer3DModel",
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=LATENT_CHANNELS,
    out_channels=2 * LATENT_CHANNELS,
    num_layers=2,
    cross_attention_dim=32,
    sample_size=IMAGE_SIZE // 2,
    patch_size=2,
    norm_type="ada_norm_single",
    num_embeds_ada_norm=1000,
    caption_channels=32,
    video_length=NUM_FRAMES,
)


def _latte_components() -> dict[str, ComponentFactory]:
    # Frames go through the 2x image VAE one by one; spatial and temporal transformer blocks alternate. The
    # pipeline cuts the 120-token T5 text to the prompt's tokens (mask_feature) for a single prompt only, so the
    # text a prompt gets depends on the batch (no tokenizer ladder is declared).
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _t5(32),
        "vae": lambda: AutoencoderKL(**IMAGE_VAE).eval(),
        "transformer": LATTE_TRANSFORMER,
        "scheduler": DDIMScheduler,
    }


def _latte_call() -> dict[str, Any]:
    # mask_feature (the default) keeps one prompt's valid text tokens but a batch of prompts' 120, padding zeroed:
    # a two-prompt call's first video would not be the one-prompt call's. Without it every call keeps 120 tokens.
    call = video_call(guidance_scale=7.5, video_length=NUM_FRAMES, clean_caption=False, mask_feature=False)
    del call["num_frames"]  # Latte calls it video_length
    return call


# --- the Wan family ---------------------------------------------------------------------------------------------

#: the tiny Wan-style transformers' shared config (2 heads x 16, RoPE bands 8/4/4, 32-wide umT5 text)
WAN: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "rope_max_seq_len": 32,
}
#: pixels per side of one latent pixel of the Wan VAE (the pipelines read it from its config)
WAN_SPATIAL = WAN_VAE["scale_factor_spatial"]


def _plain_text_without_ftfy(module: str) -> None:
    """Let a Wan-family pipeline module clean prompts when ftfy is not installed.

    Those modules import ftfy only when it is installed but their ``basic_clean`` calls ``ftfy.fix_text``
    unconditionally (WanPipeline checks first). A stand-in that returns the text unchanged does what ftfy does to
    the plain ASCII prompts of the tests (and what WanPipeline does without ftfy).
    """
    pipeline_module = importlib.import_module(f"diffusers.pipelines.{module}")
    if not hasattr(pipeline_module, "ftfy"):
        pipeline_module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)


def _umt5() -> Any:
    return umt5_encoder(t5_tokenizer(), d_model=32)


def _wan_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=5.0)


#: VACE: the control input is the inactive and reactive latents (2 x 4 channels) and the pixel mask folded into
#: WAN_SPATIAL ** 2 channels, so vace_in_channels = 24 with the 4x Wan VAE.
WAN_VACE_TRANSFORMER = built(
    "WanVACETransformer3DModel",
    **WAN,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    num_layers=2,
    vace_layers=[0],
    vace_in_channels=2 * LATENT_CHANNELS + WAN_SPATIAL**2,
)


def _wan_vace_components() -> dict[str, ComponentFactory]:
    # Without a video the pipeline generates from scratch: a zero control video under an all-ones mask. CFG runs
    # as two calls (cache_context "cond" then "uncond").
    _plain_text_without_ftfy("wan.pipeline_wan_vace")
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _umt5,
        "vae": wan_vae,
        "scheduler": _wan_flow_scheduler,
        "transformer": WAN_VACE_TRANSFORMER,
        "transformer_2": lambda: None,
    }


def _skyreels_v2_components() -> dict[str, ComponentFactory]:
    # Wan-like text-to-video with SkyReels' flow UniPC schedule; CFG as two named calls.
    _plain_text_without_ftfy("skyreels_v2.pipeline_skyreels_v2")
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _umt5,
        "transformer": tiny_denoiser_entry("SkyReelsV2Transformer3DModel").build,
        "vae": wan_vae,
        "scheduler": lambda: UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0
        ),
    }


#: Helios's history latent frames (long, mid, short): the pipeline prepends them, patchified 4x, 2x and 1x, to the
#: video's self-attention (zeros on the first chunk)
HELIOS_HISTORY = [4, 2, 1]
#: latent frames per chunk: one chunk of 9 pixel frames
HELIOS_CHUNK = 3


def _helios_components() -> dict[str, ComponentFactory]:
    # Chunked autoregressive video: one chunk here, its self-attention over [history | video]; CFG as two calls.
    _plain_text_without_ftfy("helios.pipeline_helios")
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _umt5,
        "vae": wan_vae,
        "scheduler": lambda: HeliosScheduler(stage_range=[0, 1], stages=1, use_dynamic_shifting=True),
        "transformer": tiny_denoiser_entry("HeliosTransformer3DModel").build,
    }


def _anyflow_components() -> dict[str, ComponentFactory]:
    # Flow-map sampling: latents [B, F, C, H, W] with per-frame timesteps t and targets r; batched CFG.
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _umt5,
        "transformer": tiny_denoiser_entry("AnyFlowTransformer3DModel").build,
        "vae": wan_vae,
        "scheduler": lambda: FlowMapEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
    }


#: the image encoder of ChronoEdit and Wan-Animate: a CLIP vision tower as wide as their tiny transformers'
#: image_dim, 2x2 patches of 16 pixels (5 image tokens with the class token); the pipelines read its second-to-last
#: hidden states.
CLIP_VISION: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": 16,
}
#: pixel frames of the edit call: the input image and the edit, two latent frames
CHRONO_FRAMES = 5
#: the Wan-I2V text length: the attention processor takes everything before the last 512 tokens as image tokens
WAN_I2V_TEXT = 512


def _clip_image_processor() -> CLIPImageProcessorPil:
    # The PIL backend: CLIPImageProcessor needs torchvision (and falls back to this one, with a warning).
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def _chronoedit_components() -> dict[str, ComponentFactory]:
    # Image editing on a Wan-I2V backbone: CLIP image tokens join the umT5 text in cross-attention, the input
    # image's latent is concatenated channel-wise with a 4-channel mask; CFG as two calls (conditional first).
    _plain_text_without_ftfy("chronoedit.pipeline_chronoedit")
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _umt5,
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION)).eval(),
        "image_processor": _clip_image_processor,
        "transformer": tiny_denoiser_entry("ChronoEditTransformer3DModel").build,
        "vae": wan_vae,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=7.0),
    }


def input_image() -> Image.Image:
    """A small RGB test image built in code: a red disc on a blue-green gradient."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE - 1)
    pixels = np.stack([0.2 + 0.0 * x, 0.3 + 0.5 * x, 0.8 - 0.5 * y], axis=-1)
    disc = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08
    pixels[disc] = (0.9, 0.1, 0.1)
    return Image.fromarray((pixels * 255).astype(np.uint8))


# --- Cosmos ----------------------------------------------------------------------------------------------------

#: Cosmos-1's VAE: Haar-wavelet patchify (4), then 4x space and 4x time over 4 latent channels, without the
#: released per-channel statistics (the pipeline then only divides by the scheduler's sigma_data).
COSMOS_VAE: dict[str, Any] = {
    "latent_channels": LATENT_CHANNELS,
    "encoder_block_out_channels": (8, 8, 8, 8),
    "decode_block_out_channels": (8, 8, 8, 8),
    "attention_resolutions": (8,),
    "resolution": 64,
    "num_layers": 2,
    "patch_size": 4,
    "patch_type": "haar",
    "spatial_compression_ratio": 4,
    "temporal_compression_ratio": 4,
    "latents_mean": None,
    "latents_std": None,
}


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """A stand-in for Cosmos Guardrail that lets every prompt and video through unchanged.

    CosmosTextToWorldPipeline cannot run without a safety checker: given ``None`` it builds ``CosmosSafetyChecker``
    (the ``cosmos_guardrail`` package, which downloads its models), and ``__call__`` refuses a pipeline whose
    checker was removed. diffusers' own fast tests pass a dummy like this one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_tracker", torch.zeros(1), persistent=False)

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        return frames


def _cosmos_components() -> dict[str, ComponentFactory]:
    # EDM sampling (the model sees c_noise = ln(sigma) / 4); CFG as two calls, the conditional first, combined as
    # cond + g * (cond - uncond). The tiny transformer skips the padding-mask channel (torchvision resizes it).
    # The decoded frames go through uint8 around the safety check, so outputs are equal only to 1/255.
    return {
        "text_encoder": _t5(32),
        "tokenizer": t5_tokenizer,
        "transformer": tiny_denoiser_entry("CosmosTransformer3DModel").build,
        "vae": lambda: AutoencoderKLCosmos(**COSMOS_VAE).eval(),
        "scheduler": lambda: EDMEulerScheduler(
            sigma_min=0.002,
            sigma_max=80,
            sigma_data=0.5,
            sigma_schedule="karras",
            num_train_timesteps=1000,
            prediction_type="epsilon",
            rho=7.0,
            final_sigmas_type="sigma_min",
        ),
        "safety_checker": PassThroughSafetyChecker,
    }


# --- Wan-Animate -------------------------------------------------------------------------------------------------

#: pixel frames of the one animation segment: the pipeline adds the reference image as latent frame 0
ANIMATE_FRAMES = NUM_FRAMES
#: the tiny Wan-Animate's motion_encoder_size: the face video's pixels per side
FACE_SIZE = 8


def _wan_animate_components() -> dict[str, ComponentFactory]:
    # Character animation: latents = [reference frame | segment], pose latents added after the patch embedding,
    # a face adapter (per-frame cross-attention to motion tokens of the face video) after every block, and CLIP
    # image tokens before the 512 umT5 tokens in cross-attention. CFG as two named calls (the unconditional one
    # with a blank face).
    _plain_text_without_ftfy("wan.pipeline_wan_animate")
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _umt5,
        "vae": wan_vae,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0),
        "image_processor": _clip_image_processor,
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION)).eval(),
        "transformer": tiny_denoiser_entry("WanAnimateTransformer3DModel").build,
    }


def drifting_frames(count: int, size: int) -> list[Image.Image]:
    """``count`` frames of :func:`input_image` at ``size`` pixels, the disc drifting right by a pixel a frame."""
    image = input_image().resize((size, size))
    return [Image.fromarray(np.roll(np.asarray(image), shift, axis=1)) for shift in range(count)]


def _wan_animate_call() -> dict[str, Any]:
    call = video_call(
        image=input_image(),
        pose_video=drifting_frames(ANIMATE_FRAMES, IMAGE_SIZE),
        face_video=drifting_frames(ANIMATE_FRAMES, FACE_SIZE),
        segment_frame_length=ANIMATE_FRAMES,
        prev_segment_conditioning_frames=1,
        mode="animate",
        guidance_scale=2.0,
        max_sequence_length=WAN_I2V_TEXT,
    )
    del call["num_frames"]  # the pose video sets the length
    return call


ALLEGRO = PipelineSpec(
    family="allegro",
    pipeline_cls=AllegroPipeline,
    denoiser="transformer",
    components=_allegro_components,
    # Caption cleaning needs bs4 + ftfy; without it the pipeline lower-cases and strips the prompt.
    call_defaults=lambda: video_call(
        guidance_scale=7.5, num_frames=ALLEGRO_FRAMES, max_sequence_length=TEXT_TOKENS, clean_caption=False
    ),
)

WAN_VACE = PipelineSpec(
    family="wan_vace",
    pipeline_cls=WanVACEPipeline,
    denoiser="transformer",
    components=_wan_vace_components,
    call_defaults=lambda: video_call(guidance_scale=5.0, max_sequence_length=TEXT_TOKENS),
)

PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="ltx",
        pipeline_cls=LTXPipeline,
        denoiser="transformer",
        components=_ltx_components,
        call_defaults=lambda: video_call(guidance_scale=3.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="mochi",
        pipeline_cls=MochiPipeline,
        denoiser="transformer",
        components=_mochi_components,
        call_defaults=lambda: video_call(guidance_scale=4.5, num_frames=MOCHI_FRAMES, max_sequence_length=TEXT_TOKENS),
    ),
    ALLEGRO,
    PipelineSpec(
        family="latte",
        pipeline_cls=LattePipeline,
        denoiser="transformer",
        components=_latte_components,
        call_defaults=_latte_call,
    ),
    WAN_VACE,
    PipelineSpec(
        family="skyreels_v2",
        pipeline_cls=SkyReelsV2Pipeline,
        denoiser="transformer",
        components=_skyreels_v2_components,
        call_defaults=lambda: video_call(guidance_scale=6.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="helios",
        pipeline_cls=HeliosPipeline,
        denoiser="transformer",
        components=_helios_components,
        call_defaults=lambda: video_call(
            guidance_scale=5.0,
            max_sequence_length=TEXT_TOKENS,
            history_sizes=list(HELIOS_HISTORY),
            num_latent_frames_per_chunk=HELIOS_CHUNK,
        ),
    ),
    PipelineSpec(
        family="anyflow",
        pipeline_cls=AnyFlowPipeline,
        denoiser="transformer",
        components=_anyflow_components,
        # Distilled checkpoints run without CFG (guidance_scale=1); 6 turns it on.
        call_defaults=lambda: video_call(guidance_scale=6.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="chronoedit",
        pipeline_cls=ChronoEditPipeline,
        denoiser="transformer",
        components=_chronoedit_components,
        call_defaults=lambda: video_call(
            image=input_image(), guidance_scale=5.0, num_frames=CHRONO_FRAMES, max_sequence_length=WAN_I2V_TEXT
        ),
    ),
    PipelineSpec(
        family="cosmos",
        pipeline_cls=CosmosTextToWorldPipeline,
        denoiser="transformer",
        components=_cosmos_components,
        call_defaults=lambda: video_call(guidance_scale=7.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="wan_animate",
        pipeline_cls=WanAnimatePipeline,
        denoiser="transformer",
        components=_wan_animate_components,
        call_defaults=_wan_animate_call,
    ),
)

#: pipelines whose end-to-end test fails today, by key, with the reason
KNOWN_PIPELINE_LIMITS: dict[str, str] = {
    WAN_VACE.key: (
        "diffusers' WanVACEPipeline refuses a list of prompts ('Passing a list of prompts is not yet supported'), "
        "so the two-prompt Prompt-to-Prompt call cannot run (identity, detach and PAG pass)"
    ),
}
