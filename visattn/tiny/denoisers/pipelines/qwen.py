"""Tiny pipelines whose text encoder is a Qwen model (Qwen2-VL, Qwen2.5-VL, Qwen3, Qwen3-VL): one
:class:`PipelineSpec` per diffusers pipeline.

All of them share the tiny Qwen tokenizer of :mod:`visattn.tiny.denoisers.pipelines.qwen_text` (and the Qwen2-VL /
Qwen2.5-VL / Qwen3-VL processors built on it); the text encoders are tiny random ``transformers`` models sized to it.
Their prompts go through chat templates whose system prefix the pipelines crop by a fixed token count, which no
:class:`visattn.families.PromptRecipe` kind expresses, so their families declare no tokenizer ladder and the tests
skip the words checks. Every call runs classifier-free guidance (an empty negative prompt where the pipeline needs
one), so that both branches go through visattn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AdaptiveProjectedMixGuidance,
    AutoencoderKLFlux2,
    AutoencoderKLHunyuanImage,
    AutoencoderKLHunyuanVideo15,
    AutoencoderKLMagvit,
    AutoencoderKLQwenImage,
    AutoencoderKLQwenImage21,
    AutoencoderKLWan,
    BriaFibo2Pipeline,
    ClassifierFreeGuidance,
    EasyAnimatePipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanImagePipeline,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Pipeline,
    JoyImageEditPipeline,
    Kandinsky5T2VPipeline,
    Kandinsky6TI2VAPipeline,
    Krea2Pipeline,
    LongCatImagePipeline,
    NucleusMoEImagePipeline,
    OvisImagePipeline,
    QwenImage21Pipeline,
    QwenImagePipeline,
    ZImagePipeline,
)
from transformers import ByT5Tokenizer, SiglipImageProcessor, T5EncoderModel

from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.denoisers.denoiser_spec import TinyDenoiser
from visattn.tiny.denoisers.images import (
    BRIA_FIBO2,
    HUNYUAN_IMAGE,
    KREA2,
    LONGCAT_IMAGE,
    NUCLEUS_MOE_IMAGE,
    OVIS_IMAGE,
    QWEN_IMAGE,
    QWEN_IMAGE_21,
    Z_IMAGE,
)
from visattn.tiny.denoisers.pipelines.classic_encoders import siglip_image_encoder
from visattn.tiny.denoisers.pipelines.common import IMAGE_SIZE, TEXT_TOKENS, flow_vae, image_call
from visattn.tiny.denoisers.pipelines.qwen_text import (
    qwen2_5_vl_model,
    qwen2_5_vl_processor,
    qwen2_5_vl_text_model,
    qwen2_vl_model,
    qwen2_vl_processor,
    qwen3_model,
    qwen3_vl_base_model,
    qwen3_vl_model,
    qwen3_vl_processor,
    qwen_tokenizer,
)
from visattn.tiny.pipeline_spec import PipelineSpec
from visattn.tiny.text_encoders import clip_text_model, t5_encoder
from visattn.tiny.tokenizers import clip_tokenizer
from visattn.tiny.vaes import hunyuan_video_vae

#: the Qwen text encoders' width (the tiny denoisers' text input width)
TEXT_WIDTH = 32
#: pixels of the pipelines whose VAE compresses 16x (4x4 latent tokens)
LARGE_IMAGE_SIZE = 64
#: video frames: two latent frames with the 4x temporal VAEs
NUM_FRAMES = 5
#: the true-CFG pipelines' guidance: on, with an empty negative prompt, so that both branches run
TRUE_CFG: dict[str, Any] = {"true_cfg_scale": 2.0, "negative_prompt": ""}


def _adapted(entry: TinyDenoiser, **config: Any) -> Callable[[], torch.nn.Module]:
    """``entry``'s tiny denoiser with some config values replaced (the widths its pipeline feeds it); ``entry.build``
    must take config keywords (the image entries' ``functools.partial`` builders do)."""
    return functools.partial(entry.build, **config)


def qwen_image_vae(z_dim: int = 16) -> AutoencoderKLQwenImage:
    """Qwen-Image's causal VAE with one 2x level (the pipelines read the scale from ``temperal_downsample``)."""
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1 * (i % 3 - 1) for i in range(z_dim)],
        latents_std=[1.0 + 0.25 * (i % 4) for i in range(z_dim)],
    ).eval()


def video_call(**extra: Any) -> dict[str, Any]:
    """A two-step :data:`NUM_FRAMES`-frame call at :data:`IMAGE_SIZE` with numpy output."""
    return image_call(num_frames=NUM_FRAMES, **extra)


def input_image(size: int = IMAGE_SIZE) -> PIL.Image.Image:
    """A small RGB test image for the edit pipelines: a red disc on a blue-green gradient."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    pixels = np.stack([x, y, 1.0 - x], axis=-1) * 0.6
    pixels[(x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.09] = (0.9, 0.1, 0.1)
    return PIL.Image.fromarray((pixels * 255).round().astype(np.uint8))


def byt5_encoder(d_model: int) -> T5EncoderModel:
    """A T5 encoder sized to the byte-level ByT5 tokenizer (which needs no vocabulary file)."""
    return t5_encoder(ByT5Tokenizer(), d_model=d_model)


# Qwen-Image: Qwen2.5-VL's last hidden state, the 34-token system prefix cropped; true CFG runs the branches as two
# calls the pipeline names itself (cache_context "cond" / "uncond").
def _qwen_image_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": qwen_image_vae,
        "text_encoder": lambda: qwen2_5_vl_model(qwen_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer": qwen_tokenizer,
        "transformer": QWEN_IMAGE.build,
    }


# LongCat-Image: a fixed 512-token text block (the prompt padded between the template's prefix and suffix, both
# cropped); the pipeline packs 2x2 patches of 16 latent channels, so the tiny transformer takes 64. The prompt
# rewrite (generating with the Qwen2.5-VL) is switched off: it would decode 512 new tokens.
def _longcat_image_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: flow_vae(16),
        "text_encoder": lambda: qwen2_5_vl_model(qwen_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer": qwen_tokenizer,
        "text_processor": qwen2_vl_processor,
        "transformer": _adapted(LONGCAT_IMAGE, in_channels=64),
    }


# Z-Image: Qwen3 (chat template with thinking on, so no reasoning block), its second-to-last hidden state with the
# padding dropped: per-row lists of text features; CFG runs [cond, uncond] in one call.
def _z_image_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": flow_vae,
        "text_encoder": lambda: qwen3_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH),
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "transformer": Z_IMAGE.build,
    }


# Ovis-Image: Qwen3Model's last hidden state (thinking off: an empty reasoning block), the 28-token system prefix
# cropped; CFG as two named calls.
def _ovis_image_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": flow_vae,
        "text_encoder": lambda: qwen3_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH),
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "transformer": OVIS_IMAGE.build,
    }


# HunyuanImage 2.1: Qwen2.5-VL's third-to-last hidden state over a fixed 1000-token block (the 34-token prefix
# cropped), plus ByT5 over the quoted text of the prompt (the call quotes a word so that it runs). Guidance goes
# through a diffusers guider, whose calls are named "pred_cond" / "pred_uncond"; a 4x HunyuanImage VAE.
def _hunyuan_image_vae() -> AutoencoderKLHunyuanImage:
    return AutoencoderKLHunyuanImage(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(32, 32, 32),  # the VAE's group norms take 32 groups
        layers_per_block=1,
        spatial_compression_ratio=4,
        sample_size=32,
        scaling_factor=1.5,
    ).eval()


def _hunyuan_image_components() -> dict[str, Any]:
    return {
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": _hunyuan_image_vae,
        "text_encoder": lambda: qwen2_5_vl_model(qwen_tokenizer(), hidden_size=TEXT_WIDTH, layers=3),
        "tokenizer": qwen_tokenizer,
        "text_encoder_2": lambda: byt5_encoder(24),
        "tokenizer_2": ByT5Tokenizer,
        "transformer": HUNYUAN_IMAGE.build,
        "guider": lambda: AdaptiveProjectedMixGuidance(guidance_scale=2.0),
        "ocr_guider": lambda: None,
    }


# HunyuanVideo 1.5: the Qwen2.5-VL language model alone, its third-to-last hidden state over a fixed 1000-token
# block (system turn cropped at 108 tokens), ByT5 glyph text (256 tokens, zeros without quotes) and 729 zero image
# tokens; CFG through a ClassifierFreeGuidance guider ("pred_cond" / "pred_uncond" calls). The text encoder starts
# from a wide initialization: with Qwen's 0.02 its features are too small for the tiny denoiser to tell prompts apart.
def _hunyuan_video15_vae() -> AutoencoderKLHunyuanVideo15:
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=4,
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        downsample_match_channel=False,
        upsample_match_channel=False,
    ).eval()
    # Its mid-block attention broadcasts a [B, L, L] causal mask against [B, 1, L, L] scores, which fails for a
    # batch of more than one video (diffusers 0.42.1): decode one video at a time, as a Prompt-to-Prompt call needs.
    vae.enable_slicing()
    return vae


def _hunyuan_video15_components() -> dict[str, Any]:
    return {
        "text_encoder": lambda: qwen2_5_vl_text_model(
            qwen_tokenizer(), hidden_size=TEXT_WIDTH, layers=3, initializer_range=0.5
        ),
        "tokenizer": qwen_tokenizer,
        "transformer": tiny_denoiser_entry("HunyuanVideo15Transformer3DModel").build,
        "vae": _hunyuan_video15_vae,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder_2": lambda: byt5_encoder(16),
        "tokenizer_2": ByT5Tokenizer,
        "guider": lambda: ClassifierFreeGuidance(guidance_scale=2.0),
    }


# HunyuanVideo 1.5 image-to-video: the same components, plus a SigLIP whose 729 tokens of the image (216 pixels in
# patches of 8: the real model's vision_num_semantic_tokens) join the text, valid, ahead of the prompt. The pipeline
# sizes the video from the image to about the transformer's target_size pixels (640), here IMAGE_SIZE.
#: SigLIP's input size for 27 x 27 = 729 patches of 8 pixels
_HY15_SIGLIP_SIZE = 27 * 8


def _hunyuan_video15_i2v_transformer() -> torch.nn.Module:
    model = tiny_denoiser_entry("HunyuanVideo15Transformer3DModel").build()
    model.register_to_config(target_size=IMAGE_SIZE)
    return model


def _hunyuan_video15_i2v_components() -> dict[str, Any]:
    return {
        **_hunyuan_video15_components(),
        "transformer": _hunyuan_video15_i2v_transformer,
        "image_encoder": lambda: siglip_image_encoder(_HY15_SIGLIP_SIZE),
        "feature_extractor": lambda: SiglipImageProcessor(
            size={"height": _HY15_SIGLIP_SIZE, "width": _HY15_SIGLIP_SIZE}
        ),
    }


def _hunyuan_video15_i2v_call() -> dict[str, Any]:
    # its size comes from the image: no height or width
    call = video_call(image=input_image(), prompt='a red circle, "ok"', negative_prompt="")
    return {name: value for name, value in call.items() if name not in ("height", "width")}


# Kandinsky 5 (text-to-video): its "tokenizer" is a Qwen2-VL processor; Qwen2.5-VL's last hidden state with the
# 128-token system prefix cropped, and a CLIP pooled embedding. CFG as two unnamed calls, the conditional first.
def _kandinsky5_components() -> dict[str, Any]:
    return {
        "transformer": tiny_denoiser_entry("Kandinsky5Transformer3DModel").build,
        "vae": hunyuan_video_vae,
        "text_encoder": lambda: qwen2_5_vl_model(qwen_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer": qwen2_vl_processor,
        "text_encoder_2": lambda: clip_text_model(clip_tokenizer(), hidden_size=16),
        "tokenizer_2": clip_tokenizer,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0),
    }


# Kandinsky 6 (text+image to video+audio): as Kandinsky 5 (a 129-token crop, a Qwen2.5-VL processor) with a padding
# mask over a fixed max_sequence_length and CFG as two named calls. The audio branch is off (sample_audio=False):
# the transformer then runs video only.
def _kandinsky6_components() -> dict[str, Any]:
    return {
        "transformer": tiny_denoiser_entry("Kandinsky6Transformer3DModel").build,
        "vae": hunyuan_video_vae,
        "text_encoder": lambda: qwen2_5_vl_model(qwen_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer": qwen2_5_vl_processor,
        "text_encoder_2": lambda: clip_text_model(clip_tokenizer(), hidden_size=16),
        "tokenizer_2": clip_tokenizer,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0),
        "audio_vae": lambda: None,
        "vocoder": lambda: None,
    }


# EasyAnimate: Qwen2-VL's second-to-last hidden state over a fixed 256-token chat-template block (a default system
# turn), CFG batched [uncond, cond]; a 4x Magvit VAE (temporal 2x here: 5 frames give 3 latent frames).
def _easyanimate_vae() -> AutoencoderKLMagvit:
    return AutoencoderKLMagvit(
        down_block_types=("SpatialDownBlock3D", "SpatialTemporalDownBlock3D", "SpatialTemporalDownBlock3D"),
        up_block_types=("SpatialUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialTemporalUpBlock3D"),
        block_out_channels=(8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        spatial_group_norm=False,
    ).eval()


def _easyanimate_components() -> dict[str, Any]:
    return {
        "vae": _easyanimate_vae,
        "text_encoder": lambda: qwen2_vl_model(qwen_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer": qwen_tokenizer,
        "transformer": tiny_denoiser_entry("EasyAnimateTransformer3DModel").build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }


# Qwen-Image 2.1: a Qwen3-VL processor and model (its last decoder layer before the final norm), the system turn
# dropped; a 16x VAE (64x64 pixels give 4x4 latent tokens) with RGBA in and out; block-causal joint attention whose
# text keys and values are cached after the first step (use_kv_cache); true CFG as two named calls.
def _qwen_image_21_vae() -> AutoencoderKLQwenImage21:
    return AutoencoderKLQwenImage21(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False] * 4,
        latents_mean=[0.1 * (i % 3 - 1) for i in range(16)],
        latents_std=[1.0 + 0.25 * (i % 4) for i in range(16)],
    ).eval()


def _qwen_image_21_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": _qwen_image_21_vae,
        "text_encoder": lambda: qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH),
        "processor": qwen3_vl_processor,
        "transformer": QWEN_IMAGE_21.build,
    }


# Krea 2: Qwen-Image's template as a fixed block [prefix | prompt | padding | suffix], three tapped hidden states of a
# Qwen3VLModel per token (text_encoder_select_layers, one per transformer text layer), the 34-token prefix cropped;
# CFG as two unnamed calls, conditional first, combined as cond + g * (cond - uncond).
def _krea2_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: qwen_image_vae(z_dim=4),
        "text_encoder": lambda: qwen3_vl_base_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH, layers=3),
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "transformer": KREA2.build,
    }


# NucleusMoE-Image: a Qwen3-VL processor and model, a system turn and the prompt padded to a multiple of 8; it reads
# hidden_states[return_index] (-8 by default, which needs 8 layers: the tiny encoder has 3, the call passes -2). The
# processor truncates the whole chat (system turn first) at max_sequence_length, so the call keeps its default (1024).
# CFG as two unnamed calls, conditional first.
def _nucleus_moe_image_components() -> dict[str, Any]:
    return {
        "transformer": NUCLEUS_MOE_IMAGE.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: qwen_image_vae(z_dim=4),
        "text_encoder": lambda: qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH, layers=3),
        "processor": qwen3_vl_processor,
    }


# Bria Fibo 2: six bundles of three Qwen3-VL hidden states each, RMS-normalized and concatenated (3 x 32 wide, so
# the tiny transformer's cap_feat_dim is 96); the pipeline taps layers up to 35, so the tiny Qwen3-VL has 35 layers.
# A prompt that is not a JSON caption is encoded as given; CFG as two unnamed calls, conditional first; a 2x Flux 2
# VAE whose batch-norm statistics normalize the patchified latents.
def _bria_fibo2_vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def _bria_fibo2_components() -> dict[str, Any]:
    return {
        "transformer": _adapted(BRIA_FIBO2, cap_feat_dim=3 * TEXT_WIDTH),
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": _bria_fibo2_vae,
        "text_encoder": lambda: qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH, layers=35),
        "processor": qwen3_vl_processor,
    }


# JoyImage-Edit: the input image is a second item of the 6-D latent [B, items, C, T, H, W]; the prompt goes with the
# image through a Qwen3-VL processor and the last decoder layer's pre-norm output (the 34-token system prefix
# dropped); CFG as two unnamed calls, conditional first. The pipeline always resizes to one of its ~1024x1024 buckets
# (whatever height/width say), so the tiny Wan VAE compresses 32x (16x16 pixel patches, one 2x level): 32x32 latents,
# 16x16 tokens per item.
def _joyimage_edit_vae() -> AutoencoderKLWan:
    patch = 16
    return AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1],
        num_res_blocks=1,
        temperal_downsample=[False],
        is_residual=False,
        patch_size=patch,
        in_channels=3 * patch * patch,
        out_channels=3 * patch * patch,
        latents_mean=[0.1, -0.1, 0.2, -0.2],
        latents_std=[1.5, 2.0, 1.0, 2.5],
        scale_factor_spatial=32,
        scale_factor_temporal=4,
    ).eval()


def _joyimage_edit_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": _joyimage_edit_vae,
        "text_encoder": lambda: qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=TEXT_WIDTH),
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "transformer": tiny_denoiser_entry("JoyImageEditTransformer3DModel").build,
        "processor": qwen3_vl_processor,
    }


def _joyimage_edit_call() -> dict[str, Any]:
    # The pipeline samples the input image's latents with the global RNG (``latent_dist.sample()`` without the
    # call's generator), so each call's kwargs reseed it: two calls with the same kwargs then give the same images.
    torch.manual_seed(0)
    return image_call(image=input_image(), guidance_scale=2.0, negative_prompt="", max_sequence_length=TEXT_TOKENS)


PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="qwen_image",
        pipeline_cls=QwenImagePipeline,
        denoiser="transformer",
        components=_qwen_image_components,
        call_defaults=lambda: image_call(max_sequence_length=TEXT_TOKENS, **TRUE_CFG),
    ),
    PipelineSpec(
        family="longcat_image",
        pipeline_cls=LongCatImagePipeline,
        denoiser="transformer",
        components=_longcat_image_components,
        call_defaults=lambda: image_call(guidance_scale=2.0, enable_prompt_rewrite=False),
    ),
    PipelineSpec(
        family="z_image",
        pipeline_cls=ZImagePipeline,
        denoiser="transformer",
        components=_z_image_components,
        call_defaults=lambda: image_call(guidance_scale=2.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="ovis_image",
        pipeline_cls=OvisImagePipeline,
        denoiser="transformer",
        components=_ovis_image_components,
        call_defaults=lambda: image_call(guidance_scale=2.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="hunyuan_image",
        pipeline_cls=HunyuanImagePipeline,
        denoiser="transformer",
        components=_hunyuan_image_components,
        call_defaults=lambda: image_call(prompt='a red circle, "ok"', negative_prompt=""),
        # one negative prompt string serves one prompt only (its embeddings are viewed as the batch's)
        per_prompt_inputs=("negative_prompt",),
    ),
    PipelineSpec(
        family="hunyuan_video15",
        pipeline_cls=HunyuanVideo15Pipeline,
        denoiser="transformer",
        components=_hunyuan_video15_components,
        call_defaults=lambda: video_call(prompt='a red circle, "ok"', negative_prompt=""),
        # one negative prompt string serves one prompt only (its embeddings are viewed as the batch's)
        per_prompt_inputs=("negative_prompt",),
    ),
    PipelineSpec(
        family="hunyuan_video15",
        pipeline_cls=HunyuanVideo15ImageToVideoPipeline,
        default=False,
        denoiser="transformer",
        components=_hunyuan_video15_i2v_components,
        call_defaults=_hunyuan_video15_i2v_call,
        # one negative prompt string serves one prompt only (its embeddings are viewed as the batch's)
        per_prompt_inputs=("negative_prompt",),
    ),
    PipelineSpec(
        family="kandinsky5",
        pipeline_cls=Kandinsky5T2VPipeline,
        denoiser="transformer",
        components=_kandinsky5_components,
        call_defaults=lambda: video_call(guidance_scale=2.0, negative_prompt="", max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="kandinsky6",
        pipeline_cls=Kandinsky6TI2VAPipeline,
        denoiser="transformer",
        components=_kandinsky6_components,
        call_defaults=lambda: video_call(
            guidance_scale=2.0, negative_prompt="", max_sequence_length=TEXT_TOKENS, sample_audio=False
        ),
    ),
    PipelineSpec(
        family="easyanimate",
        pipeline_cls=EasyAnimatePipeline,
        denoiser="transformer",
        components=_easyanimate_components,
        call_defaults=lambda: video_call(guidance_scale=2.0, negative_prompt=""),
        # one negative prompt string serves one prompt only (its embeddings are viewed as the batch's)
        per_prompt_inputs=("negative_prompt",),
    ),
    PipelineSpec(
        family="qwen_image_21",
        pipeline_cls=QwenImage21Pipeline,
        denoiser="transformer",
        components=_qwen_image_21_components,
        call_defaults=lambda: image_call(height=LARGE_IMAGE_SIZE, width=LARGE_IMAGE_SIZE, **TRUE_CFG),
        # one negative prompt string serves one prompt only (its embeddings are not repeated for the batch)
        per_prompt_inputs=("negative_prompt",),
    ),
    PipelineSpec(
        family="krea2",
        pipeline_cls=Krea2Pipeline,
        denoiser="transformer",
        components=_krea2_components,
        call_defaults=lambda: image_call(guidance_scale=2.0, negative_prompt="", max_sequence_length=TEXT_TOKENS),
        pipeline_kwargs={"text_encoder_select_layers": (1, 2, 3)},
    ),
    PipelineSpec(
        family="nucleus_moe_image",
        pipeline_cls=NucleusMoEImagePipeline,
        denoiser="transformer",
        components=_nucleus_moe_image_components,
        call_defaults=lambda: image_call(guidance_scale=2.0, negative_prompt="", return_index=-2),
        # one negative prompt string serves one prompt only (its embeddings are not repeated for the batch)
        per_prompt_inputs=("negative_prompt",),
    ),
    PipelineSpec(
        family="bria_fibo2",
        pipeline_cls=BriaFibo2Pipeline,
        denoiser="transformer",
        components=_bria_fibo2_components,
        call_defaults=lambda: image_call(guidance_scale=2.0, negative_prompt=""),
    ),
    PipelineSpec(
        family="joyimage_edit",
        pipeline_cls=JoyImageEditPipeline,
        denoiser="transformer",
        components=_joyimage_edit_components,
        call_defaults=_joyimage_edit_call,
        # one negative prompt string serves one prompt only (its embeddings are viewed as the batch's)
        per_prompt_inputs=("negative_prompt",),
        # Words address the text-only path (with an image, its tokens precede the words): no input image, and
        # room for the words after the tokens the 34-token crop leaves of the system prefix (the tiny tokenizer
        # spells the prefix's " \\n" and a few words byte by byte: 9 tokens, where the real one leaves fewer). The
        # tiny model's ~20 text keys beside 1024 image keys move its images little (plain "red" and "blue" images
        # differ by 3e-5 at guidance 2): guidance 20 makes an edit of one word measurable (3e-4).
        words_call={"image": None, "max_sequence_length": 64, "guidance_scale": 20.0},
    ),
)

#: pipelines whose end-to-end test fails today because of visattn, by key, with the reason
KNOWN_PIPELINE_LIMITS: dict[str, str] = {}
