"""Token grids ``(frames, height, width)`` that each pipeline's denoiser sees, derived from configs.

Each function repeats its pipeline's own arithmetic (latent shape from the VAE's scale factors, then the
denoiser's patchify), so a test can check an automatically derived grid against an independent source.
They accept any mapping, so both the dict configs in :mod:`visattn.tiny.vaes` and a built model's
``.config`` work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Grid = tuple[int, int, int]
Config = Mapping[str, Any]


def _autoencoder_kl_scale(vae: Config) -> int:
    # What the image pipelines and CogVideoX compute: one 2x downsample between consecutive blocks.
    return 2 ** (len(vae["block_out_channels"]) - 1)


def _latent_frames(num_frames: int, temporal_scale: int) -> int:
    # Causal video VAEs keep the first frame and compress the rest: 1 + (n - 1) / t latent frames.
    return (num_frames - 1) // temporal_scale + 1


def unet_grid(vae: Config, kwargs: Config) -> Grid:
    """SD / SDXL: the latent grid at the UNet's top (full-resolution) level."""
    scale = _autoencoder_kl_scale(vae)
    return 1, kwargs["height"] // scale, kwargs["width"] // scale


def patched_image_grid(vae: Config, transformer: Config, kwargs: Config) -> Grid:
    """PixArt / SD3: latents patchified by ``patch_size`` x ``patch_size``."""
    scale, patch = _autoencoder_kl_scale(vae), transformer["patch_size"]
    return 1, kwargs["height"] // scale // patch, kwargs["width"] // scale // patch


def flux_grid(vae: Config, kwargs: Config) -> Grid:
    """Flux: the pipeline packs 2x2 latent patches itself (the transformer's own ``patch_size`` is 1)."""
    scale = _autoencoder_kl_scale(vae)
    # FluxPipeline rounds the latent size down to an even number before packing.
    latent_h = 2 * (kwargs["height"] // (scale * 2))
    latent_w = 2 * (kwargs["width"] // (scale * 2))
    return 1, latent_h // 2, latent_w // 2


def wan_grid(vae: Config, transformer: Config, kwargs: Config) -> Grid:
    """Wan: scale factors come straight from the VAE config; the pipeline first rounds its inputs."""
    spatial, temporal = vae["scale_factor_spatial"], vae["scale_factor_temporal"]
    patch_t, patch_h, patch_w = transformer["patch_size"]
    num_frames = kwargs["num_frames"]
    if num_frames % temporal != 1:  # WanPipeline rounds to the nearest valid frame count
        num_frames = num_frames // temporal * temporal + 1
    num_frames = max(num_frames, 1)
    height = kwargs["height"] // (spatial * patch_h) * (spatial * patch_h)
    width = kwargs["width"] // (spatial * patch_w) * (spatial * patch_w)
    return (
        _latent_frames(num_frames, temporal) // patch_t,
        height // spatial // patch_h,
        width // spatial // patch_w,
    )


def cogvideox_grid(vae: Config, transformer: Config, kwargs: Config) -> Grid:
    """CogVideoX: 1.0 patchifies only in space; 1.5 (``patch_size_t``) pads latent frames to a multiple."""
    spatial, patch = _autoencoder_kl_scale(vae), transformer["patch_size"]
    frames = _latent_frames(kwargs["num_frames"], vae["temporal_compression_ratio"])
    patch_t = transformer.get("patch_size_t") or 1
    frames = -(-frames // patch_t)  # the pipeline pads up to a multiple of patch_size_t
    return frames, kwargs["height"] // spatial // patch, kwargs["width"] // spatial // patch


def hunyuan_video_grid(vae: Config, transformer: Config, kwargs: Config) -> Grid:
    """HunyuanVideo: explicit compression ratios on the VAE, ``patch_size_t`` x ``patch_size``^2 patches."""
    spatial, temporal = vae["spatial_compression_ratio"], vae["temporal_compression_ratio"]
    patch, patch_t = transformer["patch_size"], transformer["patch_size_t"]
    return (
        _latent_frames(kwargs["num_frames"], temporal) // patch_t,
        kwargs["height"] // spatial // patch,
        kwargs["width"] // spatial // patch,
    )
