"""Tiny image families: SD, SDXL, PixArt-alpha, SD3 and Flux.

Denoiser configs are module-level dicts so the grid functions read the same values the models are built
from. Text-encoder widths are chosen to satisfy each pipeline's wiring (noted next to each config).
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from visattn.tiny import grids
from visattn.tiny.pipeline_spec import PipelineSpec
from visattn.tiny.text_encoders import clip_text_model, t5_encoder
from visattn.tiny.tokenizers import clip_tokenizer, t5_tokenizer
from visattn.tiny.vaes import FLOW_IMAGE_VAE, IMAGE_VAE, LATENT_CHANNELS, image_vae

TEXT_WIDTH = 32  # hidden size of every CLIP/T5 encoder below unless noted
IMAGE_SIZE = 32  # pixels; 16x16 latents with the 2x image VAE

# Stable Diffusion 1.x betas; both UNet families use them.
_SD_BETAS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

_UNET_COMMON: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 2,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    # Cross-attention at both resolution levels (and in the mid block), so attention runs at two scales.
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}

#: SD 1.x style: a constant head count (UNet2DConditionModel's ``attention_head_dim`` is really the number
#: of heads), so head width grows with depth: 16 then 32.
SD_UNET: dict[str, Any] = {**_UNET_COMMON, "attention_head_dim": 2, "cross_attention_dim": TEXT_WIDTH}

#: SDXL style: constant head width 16 (2 then 4 heads), linear projections, two transformer layers at the
#: deeper level, and "text_time" micro-conditioning: 6 time ids x 8 + the pooled text projection.
SDXL_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 2),
    "use_linear_projection": True,
    "cross_attention_dim": 2 * TEXT_WIDTH,  # the two CLIP encoders' hidden states are concatenated
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + TEXT_WIDTH,
}

#: PixArt-alpha: ``sample_size`` != 128 switches off its resolution/aspect-ratio conditioning.
#: ``out_channels`` is doubled because PixArt predicts a learned variance, which the pipeline drops.
PIXART_TRANSFORMER: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 2,
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "out_channels": 2 * LATENT_CHANNELS,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "caption_channels": TEXT_WIDTH,
    "norm_num_groups": 8,
}

#: SD3: the pipeline zero-pads the concatenated CLIP states (32 + 32) to the T5 width, so T5 must be at
#: least 64 wide; the pooled input is both CLIP projections concatenated.
SD3_T5_WIDTH = 2 * TEXT_WIDTH
SD3_TRANSFORMER: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 2,
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "joint_attention_dim": SD3_T5_WIDTH,
    "caption_projection_dim": 32,  # must equal heads * head_dim: text and image streams share widths
    "pooled_projection_dim": 2 * TEXT_WIDTH,
    "pos_embed_max_size": IMAGE_SIZE // 2,
}

#: Flux-dev style (guidance-distilled): one double-stream and one single-stream block; the pipeline packs
#: 2x2 latent patches, hence 4x the latent channels in; the RoPE axes must add up to the head width.
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4 * LATENT_CHANNELS,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "joint_attention_dim": TEXT_WIDTH,
    "pooled_projection_dim": TEXT_WIDTH,  # CLIPTextModel's pooled output
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}


def _image_call(**extra: Any) -> dict[str, Any]:
    return {
        "prompt": "a red circle",
        "num_inference_steps": 2,
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "output_type": "np",
        **extra,
    }


def _sd_components() -> dict[str, Any]:
    return {
        "vae": image_vae,
        "text_encoder": lambda: clip_text_model(clip_tokenizer()),
        "tokenizer": clip_tokenizer,
        "unet": lambda: UNet2DConditionModel(**SD_UNET).eval(),
        "scheduler": lambda: DDIMScheduler(**_SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        "safety_checker": lambda: None,
        "feature_extractor": lambda: None,
    }


def sdxl_components() -> dict[str, Any]:
    """The tiny SDXL pipeline's component factories (shared with the SDXL ControlNet-XS pipeline)."""
    return {
        "vae": image_vae,
        "text_encoder": lambda: clip_text_model(clip_tokenizer()),
        "text_encoder_2": lambda: clip_text_model(clip_tokenizer(), projection_dim=TEXT_WIDTH),
        "tokenizer": clip_tokenizer,
        "tokenizer_2": clip_tokenizer,
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET).eval(),
        "scheduler": lambda: EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading", steps_offset=1),
    }


def _pixart_components() -> dict[str, Any]:
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": lambda: t5_encoder(t5_tokenizer(), d_model=TEXT_WIDTH),
        "vae": image_vae,
        "transformer": lambda: PixArtTransformer2DModel(**PIXART_TRANSFORMER).eval(),
        "scheduler": DPMSolverMultistepScheduler,
    }


def _sd3_components() -> dict[str, Any]:
    return {
        "transformer": lambda: SD3Transformer2DModel(**SD3_TRANSFORMER).eval(),
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": lambda: image_vae(FLOW_IMAGE_VAE),
        "text_encoder": lambda: clip_text_model(clip_tokenizer(), projection_dim=TEXT_WIDTH),
        "tokenizer": clip_tokenizer,
        "text_encoder_2": lambda: clip_text_model(clip_tokenizer(), projection_dim=TEXT_WIDTH),
        "tokenizer_2": clip_tokenizer,
        "text_encoder_3": lambda: t5_encoder(t5_tokenizer(), d_model=SD3_T5_WIDTH),
        "tokenizer_3": t5_tokenizer,
    }


def _flux_components() -> dict[str, Any]:
    return {
        # Flux-dev's schedule: the shift grows with the image token count.
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        "vae": lambda: image_vae(FLOW_IMAGE_VAE),
        "text_encoder": lambda: clip_text_model(clip_tokenizer()),
        "tokenizer": clip_tokenizer,
        "text_encoder_2": lambda: t5_encoder(t5_tokenizer(), d_model=TEXT_WIDTH),
        "tokenizer_2": t5_tokenizer,
        "transformer": lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER).eval(),
    }


IMAGE_PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="unet",
        pipeline_cls=StableDiffusionPipeline,
        denoiser="unet",
        components=_sd_components,
        call_defaults=lambda: _image_call(guidance_scale=7.5),
        grid=lambda kwargs: grids.unet_grid(IMAGE_VAE, kwargs),
        pipeline_kwargs={"requires_safety_checker": False},
    ),
    PipelineSpec(
        family="unet",
        pipeline_cls=StableDiffusionXLPipeline,
        default=False,
        denoiser="unet",
        components=sdxl_components,
        call_defaults=lambda: _image_call(guidance_scale=5.0),
        grid=lambda kwargs: grids.unet_grid(IMAGE_VAE, kwargs),
    ),
    PipelineSpec(
        family="pixart",
        pipeline_cls=PixArtAlphaPipeline,
        denoiser="transformer",
        components=_pixart_components,
        # Resolution binning would snap 32x32 to a 1024-scale bucket; caption cleaning needs bs4 + ftfy.
        call_defaults=lambda: _image_call(
            guidance_scale=4.5, max_sequence_length=16, use_resolution_binning=False, clean_caption=False
        ),
        grid=lambda kwargs: grids.patched_image_grid(IMAGE_VAE, PIXART_TRANSFORMER, kwargs),
    ),
    PipelineSpec(
        family="sd3",
        pipeline_cls=StableDiffusion3Pipeline,
        denoiser="transformer",
        components=_sd3_components,
        call_defaults=lambda: _image_call(guidance_scale=7.0, max_sequence_length=16),
        grid=lambda kwargs: grids.patched_image_grid(FLOW_IMAGE_VAE, SD3_TRANSFORMER, kwargs),
    ),
    PipelineSpec(
        family="flux",
        pipeline_cls=FluxPipeline,
        denoiser="transformer",
        components=_flux_components,
        # Guidance-distilled: guidance_scale is embedded, not CFG. True CFG (two transformer passes) needs
        # true_cfg_scale > 1 and a negative_prompt, which callers can pass as overrides.
        call_defaults=lambda: _image_call(guidance_scale=3.5, max_sequence_length=16),
        grid=lambda kwargs: grids.flux_grid(FLOW_IMAGE_VAE, kwargs),
    ),
)
