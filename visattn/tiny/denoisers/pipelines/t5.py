"""Tiny pipelines whose text encoder is T5 (or umT5): one :class:`PipelineSpec` per diffusers pipeline.

Every pipeline reuses its class's tiny denoiser from :mod:`visattn.tiny.denoisers` (adapted where the pipeline
needs other channel counts), the in-code T5 tokenizer and a random T5/umT5 encoder as wide as the denoiser's text
input. The video pipelines live in :mod:`visattn.tiny.denoisers.pipelines.t5_video` and are listed here too.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    AuraFlowPipeline,
    AutoencoderKL,
    BriaPipeline,
    ChromaPipeline,
    CogVideoXDDIMScheduler,
    CogView3PlusPipeline,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    GlmImagePipeline,
    Kandinsky3Pipeline,
    VQModel,
)
from transformers import (
    GlmImageConfig,
    GlmImageForConditionalGeneration,
    GlmImageImageProcessorPil,
    GlmImageProcessor,
    TokenizersBackend,
)

from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.denoisers.images import AURAFLOW, BRIA, CHROMA, COGVIEW3PLUS, GLM_IMAGE
from visattn.tiny.denoisers.pipelines import t5_video
from visattn.tiny.denoisers.pipelines.common import TEXT_TOKENS, flow_vae, image_call
from visattn.tiny.pipeline_spec import ComponentFactory, PipelineSpec
from visattn.tiny.text_encoders import t5_encoder, umt5_encoder
from visattn.tiny.tokenizers import llama_tokenizer, t5_tokenizer
from visattn.tiny.vaes import image_vae

KANDINSKY3 = tiny_denoiser_entry("Kandinsky3UNet")

#: Kandinsky 3's MoVQ: a 2x VQ-GAN with a spatially normalized decoder (``norm_type="spatial"``) over 4 channels.
MOVQ: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    "up_block_types": ("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (32, 64),  # the spatial norm's GroupNorm has 32 groups
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "norm_type": "spatial",
    "num_vq_embeddings": 16,
    "vq_embed_dim": 4,
}


def _t5(width: int) -> ComponentFactory:
    return lambda: t5_encoder(t5_tokenizer(), d_model=width)


def _kandinsky3_components() -> dict[str, ComponentFactory]:
    # The pipeline sizes latents as ceil(pixels / 64) * 8 whatever the MoVQ, so 32 pixels give an 8x8 latent
    # (attention at 4x4, 2x2, 1x1). It cuts the 128-token text to the longest prompt plus one padding token, so
    # the text length depends on the prompts (no tokenizer ladder is declared). CFG is (g + 1) * cond - g * uncond.
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _t5(24),  # the tiny UNet's encoder_hid_dim
        "unet": KANDINSKY3.build,
        "scheduler": lambda: DDPMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="squaredcos_cap_v2", steps_offset=1, clip_sample=True
        ),
        "movq": lambda: VQModel(**MOVQ).eval(),
    }


def _cogview3plus_components() -> dict[str, ComponentFactory]:
    # CFG in one batched call; the size/crop micro-conditioning goes through the tiny condition_dim embedding.
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": _t5(32),
        "vae": image_vae,
        "transformer": COGVIEW3PLUS.build,
        "scheduler": lambda: CogVideoXDDIMScheduler(
            beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing"
        ),
    }


def _auraflow_components() -> dict[str, ComponentFactory]:
    # umT5 text encoder with the T5 tokenizer; the transformer prepends 8 register tokens to the text, so its
    # joint sequences hold 8 more non-image tokens than the text input (visattn leaves them unplaced: no grid).
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": lambda: umt5_encoder(t5_tokenizer(), d_model=32),
        "vae": image_vae,
        "transformer": AURAFLOW.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }


def _bria_components() -> dict[str, ComponentFactory]:
    # Flux-like packing (2x2 latent patches: 4 latent channels in, the tiny Bria takes 16); the pipeline's
    # vae_scale_factor counts the packing (2 ** levels). The text is T5 tokens, zero-padded to max length.
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": flow_vae,
        "text_encoder": _t5(32),
        "tokenizer": t5_tokenizer,
        "transformer": BRIA.build,
        "image_encoder": lambda: None,
        "feature_extractor": lambda: None,
    }


def _chroma_components() -> dict[str, ComponentFactory]:
    # The pipeline packs 2x2 latent patches: 4 latent channels in, the tiny Chroma takes 16.
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": flow_vae,
        "text_encoder": _t5(32),
        "tokenizer": t5_tokenizer,
        "transformer": CHROMA.build,
        "image_encoder": lambda: None,
        "feature_extractor": lambda: None,
    }


# --- GLM-Image -----------------------------------------------------------------------------------------------------

#: the special tokens of GLM-Image's AR tokenizer that the processor and the AR model look for
GLM_SPECIAL_TOKENS: dict[str, str] = {
    "image_token": "<|image|>",
    "grid_bos_token": "<sop>",
    "grid_eos_token": "<eop>",
    "bos_token": "<|begin_of_image|>",  # the processor ends the prompt with it: generation starts an image
    "image_end_token": "<|end_of_image|>",
}
#: a GLM-4-style chat template reduced to what text-to-image uses: the user's text, then the assistant's turn
GLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|user|>\n{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% endfor %}<|assistant|>\n"
)
#: the AR model's image-token vocabulary: the tiny DiT's prior codebook
GLM_VISION_VOCAB = 32
#: pixels of GLM-Image calls: the AR model draws one token per 32 pixels (2x2 here), upsampled 2x to the DiT grid
GLM_IMAGE_SIZE = 64


def glm_ar_tokenizer() -> TokenizersBackend:
    """The tiny Llama tokenizer with GLM-Image's special tokens, no automatic BOS and left padding."""
    tokenizer = llama_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [*GLM_SPECIAL_TOKENS.values(), "<|user|>", "<|assistant|>"]}
    )
    tokenizer.bos_token = GLM_SPECIAL_TOKENS["bos_token"]
    tokenizer.add_bos_token = False
    tokenizer.padding_side = "left"
    for name in ("image_token", "grid_bos_token", "grid_eos_token"):
        setattr(tokenizer, name, GLM_SPECIAL_TOKENS[name])
    return tokenizer


def glm_processor() -> GlmImageProcessor:
    """GLM-Image's AR processor (chat template, target-grid tokens) over :func:`glm_ar_tokenizer`."""
    return GlmImageProcessor(
        image_processor=GlmImageImageProcessorPil(), tokenizer=glm_ar_tokenizer(), chat_template=GLM_CHAT_TEMPLATE
    )


def glm_ar_model() -> GlmImageForConditionalGeneration:
    """A 2-layer GLM-Image AR model over :func:`glm_ar_tokenizer` whose image tokens index the tiny DiT's codebook.

    Its end-of-image token lies outside the image-token vocabulary, so sampling always runs the full
    ``max_new_tokens`` (the pipeline reads fixed positions of the output).
    """
    tokenizer = glm_ar_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    config = GlmImageConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "vision_vocab_size": GLM_VISION_VOCAB,
            "rope_parameters": {"mrope_section": (4, 2, 2)},  # half the head width, split (t, h, w)
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": token(GLM_SPECIAL_TOKENS["image_end_token"]),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "num_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "intermediate_size": 32,
        },
        vq_config={"embed_dim": 32, "num_embeddings": GLM_VISION_VOCAB, "latent_channels": 32},
        image_token_id=token(GLM_SPECIAL_TOKENS["image_token"]),
        image_start_token_id=token(GLM_SPECIAL_TOKENS["bos_token"]),
        image_end_token_id=token(GLM_SPECIAL_TOKENS["image_end_token"]),
    )
    return GlmImageForConditionalGeneration(config).eval()


def _glm_vae() -> AutoencoderKL:
    # 8x: the DiT's 2x2 patches times the VAE must cover the 16 pixels of one upsampled AR token.
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=GLM_IMAGE_SIZE,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()


def _glm_image_components() -> dict[str, ComponentFactory]:
    # An AR model samples image tokens (a 16x16 preview, then the target grid), which the DiT embeds as a prior;
    # the DiT's text is T5 glyph embeddings of the prompt's quoted text only. CFG as two calls, the conditional
    # first (the unconditional one drops the prior tokens).
    return {
        "tokenizer": t5_tokenizer,
        "processor": glm_processor,
        "text_encoder": _t5(32),
        "vision_language_encoder": glm_ar_model,
        "vae": _glm_vae,
        "transformer": GLM_IMAGE.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }


IMAGE_PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="chroma",
        pipeline_cls=ChromaPipeline,
        denoiser="transformer",
        components=_chroma_components,
        call_defaults=lambda: image_call(guidance_scale=3.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="kandinsky3",
        pipeline_cls=Kandinsky3Pipeline,
        denoiser="unet",
        components=_kandinsky3_components,
        call_defaults=lambda: image_call(guidance_scale=3.0),
    ),
    PipelineSpec(
        family="cogview3plus",
        pipeline_cls=CogView3PlusPipeline,
        denoiser="transformer",
        components=_cogview3plus_components,
        call_defaults=lambda: image_call(guidance_scale=5.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="auraflow",
        pipeline_cls=AuraFlowPipeline,
        denoiser="transformer",
        components=_auraflow_components,
        # The tiny AuraFlow hardly reads its text: at guidance 3.5 "red" for "blue" moves the image by 2e-5.
        call_defaults=lambda: image_call(guidance_scale=50.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="bria",
        pipeline_cls=BriaPipeline,
        denoiser="transformer",
        components=_bria_components,
        call_defaults=lambda: image_call(guidance_scale=5.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="glm_image",
        pipeline_cls=GlmImagePipeline,
        denoiser="transformer",
        components=_glm_image_components,
        call_defaults=lambda: image_call(
            guidance_scale=1.5, height=GLM_IMAGE_SIZE, width=GLM_IMAGE_SIZE, max_sequence_length=TEXT_TOKENS
        ),
    ),
)

PIPELINES: tuple[PipelineSpec, ...] = IMAGE_PIPELINES + t5_video.PIPELINES

#: pipelines whose end-to-end test fails today, by key, with the reason
KNOWN_PIPELINE_LIMITS: dict[str, str] = {**t5_video.KNOWN_PIPELINE_LIMITS}
