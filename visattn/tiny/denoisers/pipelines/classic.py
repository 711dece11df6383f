"""Tiny pipelines of the UNet-era and other one-of-a-kind denoisers: one :class:`PipelineSpec` per diffusers pipeline.

The video UNets (ModelScope, AnimateDiff, I2VGen-XL, Stable Video Diffusion), the unconditional and class-conditional
ones (DDPM, DiT), aMUSEd, the Stable Cascade prior, UniDiffuser, HunyuanDiT, OmniGen, HunyuanVideo Framepack,
HiDream-Image and DreamLite. Each reuses its class's tiny denoiser from :mod:`visattn.tiny.denoisers` (or a variant
of that config where the pipeline fixes other sizes), with the in-code tokenizers and tiny encoders of
:mod:`visattn.tiny` and :mod:`.classic_encoders`. Calls run 2 steps at 32x32 pixels (3 frames for the video UNets)
unless a pipeline fixes its resolution (noted at its spec).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import (
    AmusedPipeline,
    AmusedScheduler,
    AnimateDiffPipeline,
    AutoencoderKLTemporalDecoder,
    AutoencoderTiny,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DDPMWuerstchenScheduler,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    DreamLiteMobilePipeline,
    DreamLitePipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HunyuanDiTPipeline,
    HunyuanVideoFramepackPipeline,
    I2VGenXLPipeline,
    MotionAdapter,
    OmniGenPipeline,
    StableCascadePriorPipeline,
    StableDiffusionControlNetXSPipeline,
    StableDiffusionXLControlNetXSPipeline,
    StableVideoDiffusionPipeline,
    TextToVideoSDPipeline,
    UniDiffuserModel,
    UniDiffuserPipeline,
    UniDiffuserTextDecoder,
    VQModel,
)
from PIL import Image
from transformers import SiglipImageProcessor
from transformers import logging as transformers_logging

from visattn.tiny.denoisers import tiny_denoiser_entry, unets
from visattn.tiny.denoisers.denoiser_spec import built
from visattn.tiny.denoisers.pipelines.classic_encoders import (
    allow_omnigen_without_torchvision,
    bert_model,
    bert_tokenizer,
    clip_image_encoder,
    clip_image_processor,
    gpt2_tokenizer,
    llama_causal_lm,
    omnigen_tokenizer,
    siglip_image_encoder,
)
from visattn.tiny.denoisers.pipelines.common import IMAGE_SIZE, TEXT_TOKENS, image_call
from visattn.tiny.denoisers.pipelines.qwen_text import qwen3_vl_model, qwen3_vl_processor, qwen_tokenizer
from visattn.tiny.image_pipelines import sdxl_components
from visattn.tiny.pipeline_spec import ComponentFactory, PipelineSpec
from visattn.tiny.text_encoders import clip_text_model, llama_model, t5_encoder
from visattn.tiny.tokenizers import clip_tokenizer, llama_tokenizer, t5_tokenizer
from visattn.tiny.vaes import FLOW_IMAGE_VAE, IMAGE_VAE, hunyuan_video_vae, image_vae
from visattn.tiny.video_pipelines import hunyuan_prompt_template

#: frames of the video UNet pipelines, which compress no time and take any count
VIDEO_FRAMES = 3

#: Stable Diffusion 1.x betas, the video UNets' schedule
_SD_BETAS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _ddim() -> DDIMScheduler:
    return DDIMScheduler(**_SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _video_call(**extra: Any) -> dict[str, Any]:
    return image_call(num_frames=VIDEO_FRAMES, **extra)


def condition_image(size: int = IMAGE_SIZE) -> Image.Image:
    """The input image of the image-conditioned pipelines: a smooth colour ramp with a bright square."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    quarter = size // 4
    pixels[quarter : 2 * quarter, quarter : 2 * quarter] = 240
    return Image.fromarray(pixels.astype(np.uint8))


def _clip_text() -> torch.nn.Module:
    return clip_text_model(clip_tokenizer())


# --- StableDiffusionControlNetXSPipeline (UNetControlNetXSModel) -------------------------------------------------


def _controlnet_xs_components() -> dict[str, ComponentFactory]:
    # The pipeline fuses a UNet2DConditionModel with the adapter itself; it is handed the fused model, made that way
    # (so the denoiser factory is the whole model), and the adapter is only stored.
    return {
        "vae": image_vae,
        "text_encoder": _clip_text,
        "tokenizer": clip_tokenizer,
        "unet": unets.controlnet_xs_model,
        "controlnet": lambda: unets.controlnet_xs_adapter(unets.controlnet_xs_base()),
        "scheduler": _ddim,
        "safety_checker": lambda: None,
        "feature_extractor": lambda: None,
    }


def _sdxl_controlnet_xs_components() -> dict[str, ComponentFactory]:
    # SDXL's two CLIP encoders and text_time conditioning around an SDXL-shaped UNet fused with its adapter.
    return {
        **sdxl_components(),
        "unet": lambda: unets.controlnet_xs_model(sdxl=True),
        "controlnet": lambda: unets.controlnet_xs_adapter(unets.controlnet_xs_base(sdxl=True)),
    }


def _controlnet_xs_call() -> dict[str, Any]:
    # A control image in pixels (the pipeline resizes it to the call's size); one image serves every prompt.
    control = torch.linspace(0.0, 1.0, 3 * IMAGE_SIZE * IMAGE_SIZE).reshape(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return image_call(guidance_scale=7.5, image=control)


# --- TextToVideoSDPipeline (UNet3DConditionModel) ----------------------------------------------------------------


def _text_to_video_components() -> dict[str, ComponentFactory]:
    # ModelScope: SD's CLIP text encoder and image VAE (frames decoded one by one), the 3D UNet over all frames.
    return {
        "vae": image_vae,
        "text_encoder": _clip_text,
        "tokenizer": clip_tokenizer,
        "unet": tiny_denoiser_entry("UNet3DConditionModel").build,
        "scheduler": _ddim,
    }


# --- AnimateDiffPipeline (UNetMotionModel) ------------------------------------------------------------------------


def _animatediff_components() -> dict[str, ComponentFactory]:
    # The pipeline makes a UNetMotionModel of a UNet2DConditionModel + MotionAdapter; it is handed the UNetMotionModel
    # the coverage entry builds that way, so the denoiser factory is the whole model. The adapter is only stored.
    return {
        "vae": image_vae,
        "text_encoder": _clip_text,
        "tokenizer": clip_tokenizer,
        "unet": tiny_denoiser_entry("UNetMotionModel").build,
        "motion_adapter": lambda: MotionAdapter(**unets._MOTION_ADAPTER).eval(),
        "scheduler": _ddim,
        "feature_extractor": lambda: None,
        "image_encoder": lambda: None,
    }


# --- I2VGenXLPipeline (I2VGenXLUNet) ------------------------------------------------------------------------------


def _i2vgen_components() -> dict[str, ComponentFactory]:
    # The CLIP image embedding (32 wide: the UNet's cross_attention_dim) is taken at the feature extractor's crop
    # size, to which the pipeline resizes the input image.
    return {
        "vae": image_vae,
        "text_encoder": _clip_text,
        "tokenizer": clip_tokenizer,
        "image_encoder": lambda: clip_image_encoder(IMAGE_SIZE),
        "feature_extractor": lambda: clip_image_processor(IMAGE_SIZE),
        "unet": tiny_denoiser_entry("I2VGenXLUNet").build,
        "scheduler": _ddim,
    }


def _i2vgen_call() -> dict[str, Any]:
    # The pipeline encodes the input image with latent_dist.sample() and no generator, i.e. from the global RNG:
    # seed that here, right before each call, so that two calls are bit-equal. clip_skip=None: its default (1)
    # reads text_encoder.text_model, which transformers 5's CLIPTextModel no longer has.
    torch.manual_seed(0)
    return _video_call(image=condition_image(), guidance_scale=9.0, clip_skip=None)


# --- StableVideoDiffusionPipeline (UNetSpatioTemporalConditionModel) ---------------------------------------------

#: the temporal-decoder VAE: two levels (2x), 4 latent channels (the UNet takes noise + image latents: 8)
_SVD_VAE: dict[str, Any] = {
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "block_out_channels": (32, 64),  # its group norms have 32 groups
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": IMAGE_SIZE,
}


def _svd_components() -> dict[str, ComponentFactory]:
    # No text: the cross-attention context is the CLIP embedding of the input image, which the pipeline resizes to
    # 224 pixels itself (patches of 56: 4x4 tokens).
    return {
        "vae": lambda: AutoencoderKLTemporalDecoder(**_SVD_VAE).eval(),
        "image_encoder": lambda: clip_image_encoder(224, patch_size=56),
        "feature_extractor": lambda: clip_image_processor(224),
        "unet": tiny_denoiser_entry("UNetSpatioTemporalConditionModel").build,
        # SVD's EDM-style schedule: continuous timesteps, v-prediction, Karras sigmas.
        "scheduler": lambda: EulerDiscreteScheduler(
            prediction_type="v_prediction",
            timestep_type="continuous",
            use_karras_sigmas=True,
            sigma_min=0.002,
            sigma_max=700.0,
            interpolation_type="linear",
            steps_offset=1,
        ),
    }


def _svd_call() -> dict[str, Any]:
    # No prompt; CFG's scale ramps over the frames from min_guidance_scale to max_guidance_scale.
    return {
        "image": condition_image(),
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "num_frames": VIDEO_FRAMES,
        "num_inference_steps": 2,
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 3.0,
        "decode_chunk_size": VIDEO_FRAMES,
        "output_type": "np",
    }


# --- DDPMPipeline (UNet2DModel) ----------------------------------------------------------------------------------

#: pixel space: the unconditional UNet denoises RGB images of its config's sample_size
_DDPM_UNET: dict[str, Any] = {**unets._UNET2D, "sample_size": IMAGE_SIZE, "in_channels": 3, "out_channels": 3}


def _ddpm_components() -> dict[str, ComponentFactory]:
    return {"unet": built("UNet2DModel", **_DDPM_UNET), "scheduler": DDPMScheduler}


# --- DiTPipeline (DiTTransformer2DModel) -------------------------------------------------------------------------

#: the pipeline's null class is label 1000 (ImageNet's), so the label table has 1000 classes; the latent side is the
#: config's sample_size (16: 32x32 pixels with the 2x VAE)
_DIT: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 8,  # learned sigma
    "num_layers": 2,
    "sample_size": IMAGE_SIZE // 2,
    "patch_size": 2,
    "num_embeds_ada_norm": 1000,
}


def _dit_components() -> dict[str, ComponentFactory]:
    return {"transformer": built("DiTTransformer2DModel", **_DIT), "vae": image_vae, "scheduler": _ddim}


def _dit_call() -> dict[str, Any]:
    # Class-conditional (ImageNet ids, no prompt); CFG batches [labels, null class].
    return {"class_labels": [207], "guidance_scale": 4.0, "num_inference_steps": 2, "output_type": "np"}


# --- AmusedPipeline (UVit2DModel) --------------------------------------------------------------------------------

#: the VQ-GAN: two levels (2x), the UVit's codebook looked up at decode, 8-wide codes
_AMUSED_VQ: dict[str, Any] = {
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "latent_channels": 8,
    "num_vq_embeddings": unets.UVIT_CODEBOOK,
    "norm_num_groups": 8,
    "lookup_from_codebook": True,
    "sample_size": IMAGE_SIZE,
}


def _amused_components() -> dict[str, ComponentFactory]:
    # The UVit reads CLIP's penultimate hidden states and projected text embedding (both 24 wide); it unmasks VQ
    # tokens, starting from all mask tokens (the last id of its vocabulary).
    mask_token_id = unets._UVIT["vocab_size"] - 1
    return {
        "vqvae": lambda: VQModel(**_AMUSED_VQ).eval(),
        "tokenizer": clip_tokenizer,
        "text_encoder": lambda: clip_text_model(clip_tokenizer(), hidden_size=24, projection_dim=24),
        "transformer": tiny_denoiser_entry("UVit2DModel").build,
        "scheduler": lambda: AmusedScheduler(mask_token_id=mask_token_id),
    }


# --- StableCascadePriorPipeline (StableCascadeUNet, stage C) -----------------------------------------------------


def _cascade_prior_components() -> dict[str, ComponentFactory]:
    # The prior reads CLIP's last hidden states and pooled projection (both 24 wide); without input images it feeds
    # zero image embeddings. Its output is the stage-C latent (image_embeddings for the decoder), not an image.
    return {
        "tokenizer": clip_tokenizer,
        "text_encoder": lambda: clip_text_model(clip_tokenizer(), hidden_size=24, projection_dim=24),
        "prior": tiny_denoiser_entry("StableCascadeUNet").build,
        "scheduler": DDPMWuerstchenScheduler,
    }


# --- UniDiffuserPipeline (UniDiffuserModel) ----------------------------------------------------------------------

#: the U-ViT at the pipeline's sizes: CLIP's 77 text tokens (made 16 wide by the text decoder's prefix encoder) and a
#: 16x16 latent (square only: its position table is sized from sample_size)
_UNIDIFFUSER: dict[str, Any] = {**unets._UNIDIFFUSER, "num_text_tokens": 77, "sample_size": IMAGE_SIZE // 2}


def _unidiffuser_text_decoder() -> UniDiffuserTextDecoder:
    # The GPT-2 captioner of the text modes; text2img only uses its prefix encoder (CLIP's 32 wide -> 16). Its
    # GPT2Config keeps GPT-2's end-of-text id (50256), which transformers warns is outside the tiny vocabulary.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return UniDiffuserTextDecoder(
            prefix_length=77,
            prefix_inner_dim=32,
            prefix_hidden_dim=_UNIDIFFUSER["text_dim"],
            vocab_size=len(gpt2_tokenizer()),
            n_positions=128,
            n_embd=32,
            n_layer=1,
            n_head=2,
        ).eval()
    finally:
        transformers_logging.set_verbosity(verbosity)


def _unidiffuser_components() -> dict[str, ComponentFactory]:
    # text2img mode (a prompt, no image): the image latent and a CLIP image embedding are denoised together in one
    # joint sequence with the text; CFG is a second call with the text replaced by noise at the last timestep.
    return {
        "vae": image_vae,
        "text_encoder": _clip_text,
        "image_encoder": lambda: clip_image_encoder(IMAGE_SIZE, projection_dim=_UNIDIFFUSER["clip_img_dim"]),
        "clip_image_processor": lambda: clip_image_processor(IMAGE_SIZE),
        "clip_tokenizer": clip_tokenizer,
        "text_decoder": _unidiffuser_text_decoder,
        "text_tokenizer": gpt2_tokenizer,
        "unet": lambda: UniDiffuserModel(**_UNIDIFFUSER).eval(),
        "scheduler": lambda: DPMSolverMultistepScheduler(**_SD_BETAS),
    }


# --- HunyuanDiTPipeline (HunyuanDiT2DModel) ----------------------------------------------------------------------

#: HunyuanDiT's and OmniGen's pipelines count 16 pixels a token (an 8x VAE, patches of 2): four VAE levels, and
#: 64x64 pixels for 8x8 latents, a 4x4 token grid
_VAE_8X: dict[str, Any] = {
    **IMAGE_VAE,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
}
SIZE_8X = 64

#: the text lengths are the pipeline's fixed ones (BERT 77, mT5 256), which the model's padding tables must match
_HUNYUAN_DIT: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "patch_size": 2,
    "sample_size": SIZE_8X // 8,
    "hidden_size": 32,
    "num_layers": 4,
    "cross_attention_dim": 32,  # BERT
    "cross_attention_dim_t5": 24,  # mT5
    "pooled_projection_dim": 16,
    "text_len": 77,
    "text_len_t5": 256,
}


def _hunyuan_dit_components() -> dict[str, ComponentFactory]:
    # Bilingual BERT and mT5 (the T5 tokenizer stands in for mT5's), both read whole: [BERT, mT5] cross-attention.
    return {
        "vae": lambda: image_vae(_VAE_8X),
        "text_encoder": lambda: bert_model(bert_tokenizer()),
        "tokenizer": bert_tokenizer,
        "transformer": built("HunyuanDiT2DModel", **_HUNYUAN_DIT),
        "scheduler": lambda: DDPMScheduler(
            beta_start=0.00085, beta_end=0.03, beta_schedule="scaled_linear", prediction_type="v_prediction"
        ),
        "safety_checker": lambda: None,
        "feature_extractor": lambda: None,
        "text_encoder_2": lambda: t5_encoder(t5_tokenizer(), d_model=24),
        "tokenizer_2": t5_tokenizer,
    }


# --- OmniGenPipeline (OmniGenTransformer2DModel) -----------------------------------------------------------------


def _omnigen_transformer() -> torch.nn.Module:
    # The token table covers the tokenizer; the positions cover the pipeline's long default negative prompt (which
    # the tiny vocabulary splits into characters), the time token and the image.
    config = {
        "in_channels": 4,
        "patch_size": 2,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "num_layers": 2,
        "pad_token_id": 2,  # the processor pads with id 2
        "vocab_size": len(omnigen_tokenizer()),
        "max_position_embeddings": 1024,
        "original_max_position_embeddings": 1024,
        "rope_scaling": {"short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
        "pos_embed_max_size": 16,
        "time_step_dim": 32,
    }
    return built("OmniGenTransformer2DModel", **config)()


def _omnigen_components() -> dict[str, ComponentFactory]:
    # One Phi-3-style model reads [instruction tokens, time token, image]; no text encoder. Without torchvision the
    # pipeline's processor needs stand-ins for its transforms (see allow_omnigen_without_torchvision).
    allow_omnigen_without_torchvision()
    return {
        "transformer": _omnigen_transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: image_vae(_VAE_8X),
        "tokenizer": omnigen_tokenizer,
    }


# --- HunyuanVideoFramepackPipeline (HunyuanVideoFramepackTransformer3DModel) -------------------------------------

#: 9 frames = one section of 3 latent frames (the 4x temporal VAE); the 4x/2x/1x history starts as zeros
FRAMEPACK_FRAMES = 9
FRAMEPACK_WINDOW = 3


def _framepack_components() -> dict[str, ComponentFactory]:
    # HunyuanVideo's Llama + CLIP text encoders and VAE, plus the SigLIP tokens (16 wide: the tiny model's
    # image_proj_dim) of the input image, the first frame.
    return {
        "text_encoder": lambda: llama_model(llama_tokenizer(), hidden_size=32),
        "tokenizer": llama_tokenizer,
        "transformer": tiny_denoiser_entry("HunyuanVideoFramepackTransformer3DModel").build,
        "vae": hunyuan_video_vae,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "text_encoder_2": _clip_text,
        "tokenizer_2": clip_tokenizer,
        "image_encoder": lambda: siglip_image_encoder(IMAGE_SIZE, hidden_size=16),
        "feature_extractor": lambda: SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
    }


def _framepack_call() -> dict[str, Any]:
    # Guidance-distilled (guidance_scale is embedded); true CFG needs true_cfg_scale > 1 and a negative prompt.
    return image_call(
        image=condition_image(),
        num_frames=FRAMEPACK_FRAMES,
        latent_window_size=FRAMEPACK_WINDOW,
        guidance_scale=10.0,
        prompt_template=hunyuan_prompt_template(),
        max_sequence_length=TEXT_TOKENS,
    )


# --- HiDreamImagePipeline (HiDreamImageTransformer2DModel) -------------------------------------------------------

#: the pipeline rescales every request to the area of its hard-coded default (128 latents a side), whatever the VAE:
#: a one-level (1x) flow VAE keeps that at 128x128 pixels, and patches of 8 make a 16x16 token grid
HIDREAM_SIZE = 128
_HIDREAM_VAE: dict[str, Any] = {
    **FLOW_IMAGE_VAE,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (16,),
}
_HIDREAM_LLAMA_WIDTH = 24
_HIDREAM: dict[str, Any] = {
    "patch_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "caption_channels": [32, _HIDREAM_LLAMA_WIDTH],  # T5, Llama
    "text_emb_dim": 16,  # the two CLIP projections (8 each), concatenated
    "num_routed_experts": 2,
    "num_activated_experts": 1,
    "axes_dims_rope": (4, 6, 6),
    "max_resolution": (HIDREAM_SIZE, HIDREAM_SIZE),
    "llama_layers": [0, 1],
}


def _hidream_components() -> dict[str, ComponentFactory]:
    # Four text encoders: two projected CLIPs (pooled only), T5, and a Llama whose per-layer hidden states are
    # stacked [layers, B, L, D] (each block reads one); every tokenizer pads to max_sequence_length.
    return {
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": lambda: image_vae(_HIDREAM_VAE),
        "text_encoder": lambda: clip_text_model(clip_tokenizer(), projection_dim=8),
        "tokenizer": clip_tokenizer,
        "text_encoder_2": lambda: clip_text_model(clip_tokenizer(), projection_dim=8),
        "tokenizer_2": clip_tokenizer,
        "text_encoder_3": lambda: t5_encoder(t5_tokenizer(), d_model=32),
        "tokenizer_3": t5_tokenizer,
        "text_encoder_4": lambda: llama_causal_lm(llama_tokenizer(), hidden_size=_HIDREAM_LLAMA_WIDTH),
        "tokenizer_4": llama_tokenizer,
        "transformer": built("HiDreamImageTransformer2DModel", **_HIDREAM),
    }


# --- DreamLitePipeline, DreamLiteMobilePipeline (DreamLiteUNetModel) ---------------------------------------------

#: the mobile VAE: two encoder blocks (one stride-2: 2x), 4 latent channels (the UNet's input)
_DREAMLITE_VAE: dict[str, Any] = {
    "encoder_block_out_channels": (16, 16),
    "decoder_block_out_channels": (16, 16),
    "num_encoder_blocks": (1, 1),
    "num_decoder_blocks": (1, 1),
    "latent_channels": 4,
}


#: why the DreamLite pipelines run no two-prompt call
_DREAMLITE_ONE_PROMPT = "the DreamLite pipelines take one prompt (a string) per call"
#: the DreamLite calls' max_sequence_length: their "[Generate]: " prefix alone takes 12 tokens of the tiny vocabulary
_DREAMLITE_TEXT_TOKENS = 2 * TEXT_TOKENS


def _dreamlite_components() -> dict[str, ComponentFactory]:
    # The UNet denoises [noisy | condition] latents side by side (along the width); its text is a Qwen3-VL's last
    # hidden state (24 wide: the UNet's encoder_hid_dim) after the pipeline's fixed 34-token crop of the system
    # prefix, which the tiny Qwen tokenizer matches. (DreamLiteTransformer2DModel is the UNet's inner transformer:
    # no pipeline drives it alone.)
    return {
        "text_encoder": lambda: qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=24),
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "processor": qwen3_vl_processor,
        "vae": lambda: AutoencoderTiny(**_DREAMLITE_VAE).eval(),
        "unet": tiny_denoiser_entry("DreamLiteUNetModel").build,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
    }


# Stable Cascade's prior stage: its UNet is the "prior" component and it returns image embeddings.
STABLE_CASCADE_PRIOR = PipelineSpec(
    family="stable_cascade",
    pipeline_cls=StableCascadePriorPipeline,
    denoiser="prior",
    components=_cascade_prior_components,
    call_defaults=lambda: image_call(guidance_scale=4.0),
    # 32 / 4: 8x8 latents (the real prior divides 1024 pixels by 42.67: 24x24).
    pipeline_kwargs={"resolution_multiple": 4.0},
)

PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="unet",
        pipeline_cls=StableDiffusionControlNetXSPipeline,
        default=False,
        denoiser="unet",
        components=_controlnet_xs_components,
        call_defaults=_controlnet_xs_call,
        pipeline_kwargs={"requires_safety_checker": False},
    ),
    PipelineSpec(
        family="unet",
        pipeline_cls=StableDiffusionXLControlNetXSPipeline,
        default=False,
        denoiser="unet",
        components=_sdxl_controlnet_xs_components,
        call_defaults=_controlnet_xs_call,
    ),
    PipelineSpec(
        family="unet_3d",
        pipeline_cls=TextToVideoSDPipeline,
        denoiser="unet",
        components=_text_to_video_components,
        call_defaults=lambda: _video_call(guidance_scale=9.0),
    ),
    PipelineSpec(
        family="animatediff",
        pipeline_cls=AnimateDiffPipeline,
        denoiser="unet",
        components=_animatediff_components,
        call_defaults=lambda: _video_call(guidance_scale=7.5),
    ),
    PipelineSpec(
        family="i2vgen_xl",
        pipeline_cls=I2VGenXLPipeline,
        denoiser="unet",
        components=_i2vgen_components,
        call_defaults=_i2vgen_call,
        per_prompt_inputs=("image",),
    ),
    PipelineSpec(
        family="svd",
        pipeline_cls=StableVideoDiffusionPipeline,
        denoiser="unet",
        components=_svd_components,
        call_defaults=_svd_call,
    ),
    PipelineSpec(
        family="unet_2d",
        pipeline_cls=DDPMPipeline,
        denoiser="unet",
        components=_ddpm_components,
        # Unconditional, in pixel space: the size is the UNet's sample_size.
        call_defaults=lambda: {"batch_size": 1, "num_inference_steps": 2, "output_type": "np"},
    ),
    PipelineSpec(
        family="dit",
        pipeline_cls=DiTPipeline,
        denoiser="transformer",
        components=_dit_components,
        call_defaults=_dit_call,
        pipeline_kwargs={"id2label": {207: "golden retriever", 360: "otter"}},
    ),
    PipelineSpec(
        family="amused",
        pipeline_cls=AmusedPipeline,
        denoiser="transformer",
        components=_amused_components,
        call_defaults=lambda: image_call(guidance_scale=10.0),
        one_prompt_per_call=(
            "AmusedScheduler.step samples every row's tokens and masks from one generator, so a row of a "
            "two-prompt call is not the plain generation of its prompt (nor does it take one generator per prompt)"
        ),
    ),
    STABLE_CASCADE_PRIOR,
    PipelineSpec(
        family="unidiffuser",
        pipeline_cls=UniDiffuserPipeline,
        denoiser="unet",
        components=_unidiffuser_components,
        call_defaults=lambda: image_call(guidance_scale=8.0),
    ),
    PipelineSpec(
        family="hunyuan_dit",
        pipeline_cls=HunyuanDiTPipeline,
        denoiser="transformer",
        components=_hunyuan_dit_components,
        # 64x64 (see _VAE_8X); resolution binning would snap it to a 1024-scale shape.
        call_defaults=lambda: image_call(
            guidance_scale=5.0, height=SIZE_8X, width=SIZE_8X, use_resolution_binning=False
        ),
        pipeline_kwargs={"requires_safety_checker": False},
    ),
    PipelineSpec(
        family="omnigen",
        pipeline_cls=OmniGenPipeline,
        denoiser="transformer",
        components=_omnigen_components,
        # 64x64 (see _VAE_8X); CFG is always on: [prompt, default negative prompt] in one batch.
        call_defaults=lambda: image_call(guidance_scale=2.5, height=SIZE_8X, width=SIZE_8X),
    ),
    PipelineSpec(
        family="hunyuan_video_framepack",
        pipeline_cls=HunyuanVideoFramepackPipeline,
        denoiser="transformer",
        components=_framepack_components,
        call_defaults=_framepack_call,
        # one image per prompt: the image latents and SigLIP tokens are encoded from the images given, unrepeated
        per_prompt_inputs=("image",),
    ),
    PipelineSpec(
        family="hidream_image",
        pipeline_cls=HiDreamImagePipeline,
        denoiser="transformer",
        components=_hidream_components,
        # 128x128: the pipeline's fixed area (see HIDREAM_SIZE).
        call_defaults=lambda: image_call(
            guidance_scale=5.0, height=HIDREAM_SIZE, width=HIDREAM_SIZE, max_sequence_length=TEXT_TOKENS
        ),
    ),
    PipelineSpec(
        family="dreamlite_unet",
        pipeline_cls=DreamLitePipeline,
        denoiser="unet",
        components=_dreamlite_components,
        call_defaults=lambda: image_call(guidance_scale=3.5, max_sequence_length=_DREAMLITE_TEXT_TOKENS),
        one_prompt_per_call=_DREAMLITE_ONE_PROMPT,
    ),
    PipelineSpec(
        family="dreamlite_unet",
        pipeline_cls=DreamLiteMobilePipeline,
        default=False,
        denoiser="unet",
        components=_dreamlite_components,
        # Distilled: no CFG (one batch row), and no guidance_scale (the pipeline warns when given one).
        call_defaults=lambda: image_call(max_sequence_length=_DREAMLITE_TEXT_TOKENS),
        one_prompt_per_call=_DREAMLITE_ONE_PROMPT,
    ),
)

#: pipelines whose end-to-end test fails today, by key, with the reason
KNOWN_PIPELINE_LIMITS: dict[str, str] = {}
