"""The toy-world models: component configs, builders and the loader of the weights shipped with visattn.

Both pipelines are made of diffusers' and transformers' own classes, so a trained folder loads with the stock
``from_pretrained`` and every visattn effect sees exactly what it sees on a real checkpoint:

* **image** (:class:`~diffusers.StableDiffusionPipeline`, 64 x 64 px): a word-level CLIP tokenizer, a tiny
  :class:`~transformers.CLIPTextModel`, a tiny :class:`~diffusers.AutoencoderKL` that compresses 4x (16 x 16 x 4
  latents, so a small shape still covers a few latent pixels) and a tiny
  :class:`~diffusers.UNet2DConditionModel` with self- and cross-attention at all three resolutions (16, 8 and
  4 latent pixels); v-prediction on Stable Diffusion's noise schedule rescaled to zero terminal SNR, sampled
  with DDIM from the pure-noise step.
* **video** (:class:`~diffusers.WanPipeline`, 9 frames of 32 x 32 px): a word-level T5 tokenizer, a tiny
  :class:`~transformers.UMT5EncoderModel`, a tiny :class:`~diffusers.AutoencoderKLWan` that compresses space
  4x and time not at all (every frame is one latent frame, so motion is the transformer's job and its temporal
  attention is what visattn's video effects act on) and a tiny :class:`~diffusers.WanTransformer3DModel`
  (a 3-D DiT with factorized RoPE); flow matching, sampled with the flow-matching Euler scheduler.

Weights are trained by the repository's lab (``python -m lab train``, ``lab/train.py``; not installed) and shipped
in ``visattn/toy/weights/{image,video}``; :func:`load_toy_pipeline` loads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

from ..diffusers_compat import dtype_kwargs
from .vocab import CLIP_MAX_LENGTH, clip_tokenizer, t5_tokenizer

#: Kinds of toy pipeline: :func:`load_toy_pipeline` and ``python -m lab train --which``.
KINDS: tuple[str, ...] = ("image", "video")

IMAGE_SIZE = 64  # pixels
LATENT_CHANNELS = 4
IMAGE_TEXT_WIDTH = 64

#: Video clips: 9 frames of 32 x 32 px. The toy VAE does not compress time, so the transformer sees 9 latent frames.
VIDEO_SIZE = 32
VIDEO_FRAMES = 9
#: What to pass ``WanPipeline(num_frames=...)`` for a clip of :data:`VIDEO_FRAMES` frames. With no temporal
#: compression (``scale_factor_temporal`` 1) the pipeline's rounding of ``num_frames`` to ``1 + k * factor``
#: (``num_frames % 1 != 1`` always holds) adds one frame to whatever is asked: 8 gives 9, 16 gives 17, 32 gives 33.
#: :func:`visattn.frames.num_frames_argument` computes this for any clip length.
PIPELINE_NUM_FRAMES = VIDEO_FRAMES - 1
#: The object's speed in the training clips (pixels per frame): :func:`visattn.toy.data.sample_clip`'s default
#: for :data:`VIDEO_FRAMES` frames. Longer test clips pass it as ``speed`` so the motion they ask for is the
#: motion the model learned.
VIDEO_SPEED = (VIDEO_SIZE - 2 * (0.16 * VIDEO_SIZE + 1)) / (VIDEO_FRAMES - 1)
VIDEO_TEXT_WIDTH = 64
#: Wan pads text to ``max_sequence_length`` (512 by default) with zero vectors; training varies the padded
#: length up to this, so the model works at any length a caller picks.
VIDEO_MAX_TEXT_TOKENS = 512

#: Image VAE: three levels = 4x spatial compression; narrow at full resolution, where convolutions cost most.
#: No attention in the mid block: fully convolutional, it trains on crops around objects (most of a toy image is
#: flat background) and works unchanged on whole images.
IMAGE_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (16, 32, 64),
    "layers_per_block": 1,
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
    "mid_block_add_attention": False,
}

#: Image UNet on 16 x 16 latents: cross-attention at 16, 8 and 4 latent pixels (and in the mid block). Convolution
#: zero padding is what tells a UNet where it is; three levels make "top left" a few pixels from a border at
#: every scale. ``attention_head_dim`` is, as in SD 1.x, really the number of heads (head width 16 everywhere).
IMAGE_UNET: dict[str, Any] = {
    "sample_size": IMAGE_SIZE // 4,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3,
    "up_block_types": ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": (2, 4, 4),
    "cross_attention_dim": IMAGE_TEXT_WIDTH,
}

IMAGE_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": IMAGE_TEXT_WIDTH,
    "intermediate_size": 2 * IMAGE_TEXT_WIDTH,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "projection_dim": IMAGE_TEXT_WIDTH,
}

#: Stable Diffusion 1.x's noise schedule rescaled to zero terminal SNR, with v-prediction (training and sampling
#: share it). Lin et al., 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed": SD's own schedule
#: leaves 7% of the image's signal in its last training step, so the model learns to read the layout from the
#: noise; on a 16 x 16 latent with one small object that leak decides where the object goes (the same seed put it
#: in the same place whatever the caption said). With the last step pure noise, the layout can only come from the
#: text. v-prediction is what makes a zero-SNR step predictable.
IMAGE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
}

#: Wan VAE: ``dim_mult`` of three levels = 4x spatially; no temporal downsampling, so one latent frame per frame.
#: The pipeline reads the scale factors from the config; ``latents_mean``/``latents_std`` are measured after
#: training (``lab/train.py``), these are placeholders of the right length.
VIDEO_VAE: dict[str, Any] = {
    "base_dim": 16,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, False],
    "latents_mean": [0.0] * LATENT_CHANNELS,
    "latents_std": [1.0] * LATENT_CHANNELS,
    "scale_factor_spatial": 4,
    "scale_factor_temporal": 1,
}

#: Wan DiT on (9, 8, 8) latents: 2 x 2 patches give a (9, 4, 4) token grid. Head width 32 splits into RoPE
#: bands of 12 (time), 10 and 10 (height, width).
VIDEO_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "text_dim": VIDEO_TEXT_WIDTH,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 4,
}

VIDEO_TEXT_ENCODER: dict[str, Any] = {
    "d_model": VIDEO_TEXT_WIDTH,
    "d_kv": 16,
    "d_ff": 2 * VIDEO_TEXT_WIDTH,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "use_cache": False,
}

#: Flow-matching shift: > 1 spends more sampling steps at high noise, where layout and motion are decided.
VIDEO_FLOW_SHIFT = 3.0


def image_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """The image model's CLIP text encoder, sized to ``tokenizer`` (vocabulary and special-token ids)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        # CLIP pools at the first eos_token_id; it must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **IMAGE_TEXT_ENCODER,
    )
    return CLIPTextModel(config)


def video_text_encoder(tokenizer: T5Tokenizer) -> UMT5EncoderModel:
    """The video model's UMT5 text encoder, sized to ``tokenizer``."""
    config = UMT5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **VIDEO_TEXT_ENCODER,
    )
    return UMT5EncoderModel(config)


def image_components() -> dict[str, Any]:
    """Freshly initialised components of the image pipeline (call :func:`torch.manual_seed` first to fix them)."""
    tokenizer = clip_tokenizer()
    return {
        "tokenizer": tokenizer,
        "text_encoder": image_text_encoder(tokenizer),
        "vae": AutoencoderKL(**IMAGE_VAE),
        "unet": UNet2DConditionModel(**IMAGE_UNET),
        "scheduler": image_sampling_scheduler(),
    }


def image_training_scheduler() -> DDPMScheduler:
    """The forward process the image UNet is trained on (v-prediction, zero terminal SNR)."""
    return DDPMScheduler(**IMAGE_SCHEDULE, clip_sample=False)


def image_sampling_scheduler() -> DDIMScheduler:
    """DDIM over the training schedule with "trailing" steps, so sampling starts at the pure-noise step (Lin et
    al., 2024)."""
    # steps_offset only moves "leading" steps; 1 keeps StableDiffusionPipeline from warning about SD configs.
    return DDIMScheduler(
        **IMAGE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing", steps_offset=1
    )


def video_components() -> dict[str, Any]:
    """Freshly initialised components of the video pipeline (call :func:`torch.manual_seed` first to fix them)."""
    tokenizer = t5_tokenizer(VIDEO_MAX_TEXT_TOKENS)
    return {
        "tokenizer": tokenizer,
        "text_encoder": video_text_encoder(tokenizer),
        "vae": AutoencoderKLWan(**VIDEO_VAE),
        "transformer": WanTransformer3DModel(**VIDEO_TRANSFORMER),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=VIDEO_FLOW_SHIFT),
    }


def assemble_pipeline(kind: str, components: dict[str, Any]) -> DiffusionPipeline:
    """The stock diffusers pipeline of ``kind`` around ``components`` (from :func:`image_components` or
    :func:`video_components`)."""
    _check_kind(kind)
    if kind == "image":
        return StableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    return WanPipeline(**components)


def parameter_bytes(kind: str, bytes_per_parameter: int = 2) -> int:
    """Bytes the weights of ``kind``'s configured models take at ``bytes_per_parameter`` (2 for fp16)."""
    _check_kind(kind)
    components = image_components() if kind == "image" else video_components()
    count = sum(
        p.numel() for module in components.values() if isinstance(module, torch.nn.Module) for p in module.parameters()
    )
    return count * bytes_per_parameter


def weights_root() -> Path:
    """The folder that holds the shipped weights, ``visattn/toy/weights`` inside the installed package."""
    return Path(str(resources.files("visattn.toy"))) / "weights"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")


def load_toy_pipeline(
    kind: str = "image",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    root: str | Path | None = None,
) -> DiffusionPipeline:
    """Load the trained toy pipeline of ``kind`` ("image" or "video") on ``device`` in ``dtype``.

    The weights are read from ``root/kind`` (default: :func:`weights_root`, shipped with the package); nothing is
    downloaded. Raises :class:`FileNotFoundError` that says how to train them when they are missing.
    """
    _check_kind(kind)
    folder = (Path(root) if root is not None else weights_root()) / kind
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no trained toy {kind} pipeline in {folder} (model_index.json is missing). Train it from a "
            f"checkout of the visattn repository with `python -m lab train --which {kind} --out {folder.parent}` "
            "(about an hour on two CPU cores, minutes on a GPU)."
        )
    pipeline_cls = StableDiffusionPipeline if kind == "image" else WanPipeline
    with _quiet_loading():
        pipe = pipeline_cls.from_pretrained(folder, **dtype_kwargs(dtype))
    return pipe.to(device)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No loading progress bars from diffusers and transformers: a 5 MB local model loads in a blink, and the
    command line keeps stderr for its own progress and errors."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    enabled = [(module, module.is_progress_bar_enabled()) for module in (diffusers_logging, transformers_logging)]
    for module, _ in enabled:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was_enabled in enabled:
            if was_enabled:
                module.enable_progress_bar()
