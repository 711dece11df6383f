"""Configs and builders for the tiny VAEs.

The configs are plain dicts so that :mod:`visattn.tiny.grids` can derive latent grids from exactly the
values the models are built from. All VAEs compress space by 2 or 4 (real ones use 8) to keep decoding cheap;
the video VAEs keep the real temporal compression of 4 because their causal chunking assumes it.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLHunyuanVideo, AutoencoderKLWan

LATENT_CHANNELS = 4

#: SD / SDXL / PixArt: two levels, so the spatial scale factor is 2.
IMAGE_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 8,
    "sample_size": 32,
}

#: SD3 / Flux: their pipelines apply ``shift_factor`` unconditionally, and the real VAEs have no quant convs.
FLOW_IMAGE_VAE: dict[str, Any] = {
    **IMAGE_VAE,
    "scaling_factor": 1.5,
    "shift_factor": 0.1,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

#: Wan: the pipeline reads the scale factors from the config, so they must match ``dim_mult`` (3 levels = 4x
#: spatially) and ``temperal_downsample`` (2 temporal halvings = 4x). Means/stds need one entry per channel.
WAN_VAE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [True, True],
    "latents_mean": [0.1, -0.1, 0.2, -0.2],
    "latents_std": [1.5, 2.0, 1.0, 2.5],
    "scale_factor_spatial": 4,
    "scale_factor_temporal": 4,
}

#: CogVideoX: three blocks = 4x spatially; the first log2(4) = 2 blocks also halve time.
COGVIDEOX_VAE: dict[str, Any] = {
    "down_block_types": ("CogVideoXDownBlock3D",) * 3,
    "up_block_types": ("CogVideoXUpBlock3D",) * 3,
    "block_out_channels": (8, 8, 8),
    "latent_channels": LATENT_CHANNELS,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "temporal_compression_ratio": 4,
    "sample_height": 32,
    "sample_width": 32,
}

#: HunyuanVideo: three blocks, the first two downsample both space and time.
HUNYUAN_VIDEO_VAE: dict[str, Any] = {
    "latent_channels": LATENT_CHANNELS,
    "down_block_types": ("HunyuanVideoDownBlock3D",) * 3,
    "up_block_types": ("HunyuanVideoUpBlock3D",) * 3,
    "block_out_channels": (8, 8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "spatial_compression_ratio": 4,
    "temporal_compression_ratio": 4,
}


def image_vae(config: dict[str, Any] = IMAGE_VAE) -> AutoencoderKL:
    """An image VAE built from ``config`` (:data:`IMAGE_VAE` or :data:`FLOW_IMAGE_VAE`)."""
    return AutoencoderKL(**config).eval()


def wan_vae() -> AutoencoderKLWan:
    """Wan's causal video VAE."""
    return AutoencoderKLWan(**WAN_VAE).eval()


def cogvideox_vae() -> AutoencoderKLCogVideoX:
    """CogVideoX's video VAE."""
    return AutoencoderKLCogVideoX(**COGVIDEOX_VAE).eval()


def hunyuan_video_vae() -> AutoencoderKLHunyuanVideo:
    """HunyuanVideo's video VAE."""
    return AutoencoderKLHunyuanVideo(**HUNYUAN_VIDEO_VAE).eval()
