"""Tiny video families: Wan, CogVideoX and HunyuanVideo.

All three run 9 frames at 32x32, i.e. 3 latent frames of 8x8 latents and a (3, 4, 4) token grid after 2x2
patchify, so attention always spans more than one latent frame.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    WanPipeline,
    WanTransformer3DModel,
)

from visattn.tiny import grids
from visattn.tiny.pipeline_spec import PipelineSpec
from visattn.tiny.text_encoders import clip_text_model, llama_model, t5_encoder, umt5_encoder
from visattn.tiny.tokenizers import clip_tokenizer, llama_tokenizer, t5_tokenizer
from visattn.tiny.vaes import (
    COGVIDEOX_VAE,
    HUNYUAN_VIDEO_VAE,
    LATENT_CHANNELS,
    WAN_VAE,
    cogvideox_vae,
    hunyuan_video_vae,
    wan_vae,
)

TEXT_WIDTH = 32
VIDEO_SIZE = 32
NUM_FRAMES = 9  # 1 + 2 * 4: three latent frames with 4x temporal compression
TEXT_TOKENS = 16

#: Wan splits each head into (t, h, w) RoPE bands of sizes (d - 4*(d//6), 2*(d//6), 2*(d//6)): 8/4/4 at 16.
WAN_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "text_dim": TEXT_WIDTH,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 32,
}

#: CogVideoX 1.0 (no temporal patches, sin-cos positions). Its patch embedding adds a positional table of
#: exactly ``max_text_seq_length`` text slots, so calls must use ``max_sequence_length == TEXT_TOKENS``.
COGVIDEOX_TRANSFORMER: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "time_embed_dim": 32,
    "text_embed_dim": TEXT_WIDTH,
    "num_layers": 2,
    "sample_width": VIDEO_SIZE // 4,
    "sample_height": VIDEO_SIZE // 4,
    "sample_frames": NUM_FRAMES,
    "patch_size": 2,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": TEXT_TOKENS,
}

#: HunyuanVideo: one double-stream, one single-stream and one token-refiner block; RoPE axes sum to 16.
HUNYUAN_VIDEO_TRANSFORMER: dict[str, Any] = {
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_refiner_layers": 1,
    "patch_size": 2,
    "patch_size_t": 1,
    "text_embed_dim": TEXT_WIDTH,  # Llama hidden states
    "pooled_projection_dim": TEXT_WIDTH,  # CLIP pooled output
    "rope_axes_dim": (4, 6, 6),
}

# Shaped like HunyuanVideo's Llama-3 chat template, but with a space (not "\n\n") before each text part:
# stock LlamaTokenizer only marks a word after a space with "▁", and transformers rebuilds a saved
# LlamaTokenizer with its stock pre-tokenizer, so this keeps crop_start valid after save/load too.
_HUNYUAN_TEMPLATE = (
    "<|start_header_id|> system<|end_header_id|> describe the video.<|eot_id|>"
    "<|start_header_id|> user<|end_header_id|> {}<|eot_id|>"
)


@lru_cache(maxsize=1)
def _hunyuan_crop_start() -> int:
    # Every token before the prompt, BOS included.
    return len(llama_tokenizer()(_HUNYUAN_TEMPLATE.split("{}")[0]).input_ids)


def hunyuan_prompt_template() -> dict[str, Any]:
    """A short HunyuanVideo prompt template whose ``crop_start`` fits the tiny Llama tokenizer.

    The pipeline's default template hard-codes ``crop_start=95`` for the real Llama-3 tokenizer, and leaving
    it out makes the pipeline pad the template to ``model_max_length`` before counting, so the right value
    is counted here from the tiny tokenizer.
    """
    return {"template": _HUNYUAN_TEMPLATE, "crop_start": _hunyuan_crop_start()}


def _video_call(**extra: Any) -> dict[str, Any]:
    return {
        "prompt": "a red circle",
        "num_inference_steps": 2,
        "height": VIDEO_SIZE,
        "width": VIDEO_SIZE,
        "num_frames": NUM_FRAMES,
        "max_sequence_length": TEXT_TOKENS,
        "output_type": "np",
        **extra,
    }


def _wan_components() -> dict[str, Any]:
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": lambda: umt5_encoder(t5_tokenizer(), d_model=TEXT_WIDTH),
        "vae": wan_vae,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0),
        "transformer": lambda: WanTransformer3DModel(**WAN_TRANSFORMER).eval(),
    }


def _cogvideox_components() -> dict[str, Any]:
    return {
        "tokenizer": t5_tokenizer,
        "text_encoder": lambda: t5_encoder(t5_tokenizer(), d_model=TEXT_WIDTH),
        "vae": cogvideox_vae,
        "transformer": lambda: CogVideoXTransformer3DModel(**COGVIDEOX_TRANSFORMER).eval(),
        "scheduler": lambda: CogVideoXDDIMScheduler(
            beta_schedule="scaled_linear",
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            rescale_betas_zero_snr=True,
        ),
    }


def _hunyuan_video_components() -> dict[str, Any]:
    return {
        "text_encoder": lambda: llama_model(llama_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer": llama_tokenizer,
        "transformer": lambda: HunyuanVideoTransformer3DModel(**HUNYUAN_VIDEO_TRANSFORMER).eval(),
        "vae": hunyuan_video_vae,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder_2": lambda: clip_text_model(clip_tokenizer(), hidden_size=TEXT_WIDTH),
        "tokenizer_2": clip_tokenizer,
    }


VIDEO_PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="wan",
        pipeline_cls=WanPipeline,
        denoiser="transformer",
        components=_wan_components,
        call_defaults=lambda: _video_call(guidance_scale=5.0),
        grid=lambda kwargs: grids.wan_grid(WAN_VAE, WAN_TRANSFORMER, kwargs),
    ),
    PipelineSpec(
        family="cogvideox",
        pipeline_cls=CogVideoXPipeline,
        denoiser="transformer",
        components=_cogvideox_components,
        call_defaults=lambda: _video_call(guidance_scale=6.0),
        grid=lambda kwargs: grids.cogvideox_grid(COGVIDEOX_VAE, COGVIDEOX_TRANSFORMER, kwargs),
    ),
    PipelineSpec(
        family="hunyuan_video",
        pipeline_cls=HunyuanVideoPipeline,
        denoiser="transformer",
        components=_hunyuan_video_components,
        # Guidance-distilled like Flux: guidance_scale is embedded; true CFG needs true_cfg_scale > 1 and a
        # negative_prompt.
        call_defaults=lambda: _video_call(guidance_scale=6.0, prompt_template=hunyuan_prompt_template()),
        grid=lambda kwargs: grids.hunyuan_video_grid(HUNYUAN_VIDEO_VAE, HUNYUAN_VIDEO_TRANSFORMER, kwargs),
    ),
)
