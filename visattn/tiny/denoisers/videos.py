"""Tiny text-to-video transformers of diffusers, each with forward inputs shaped like its pipeline's call.

Every entry is built from a config with 2 heads x 16 dims (Allegro: 2 x 24; audio streams may be narrower), 1-2
layers per block kind, and a latent token grid of 3 frames x 4 x 6 (non-square, several frames) after patchify, except
ChronoEdit (2 frames, its edit call) and JoyImage-Edit (2 items of 1 frame). Text is 7 tokens unless the class fixes it
(Wan image-conditioned variants need exactly 512). ``SDPA_TOKENS`` lists the (Nq, Nk) of every
``scaled_dot_product_attention`` call one forward makes (``tests/families/test_coverage.py`` checks them); what visattn
must know to read each class's latent grid lives in :mod:`visattn.families`.

Left out: none of the 25 requested classes. Caveats, in the entries' notes:
- CosmosTransformer3DModel is built with ``concat_padding_mask=False``: the released configs resize a padding mask
  with torchvision, which this environment does not have.
- Cosmos3OmniTransformer has no batch dimension (one packed sample per call): its ``inputs`` ignore ``batch_size``.
- WanAnimate2Transformer3DModel is called in its denoising ('cached') mode, whose self-attention is flex attention
  with a BlockMask; ``build`` makes that mask eagerly (the class compiles it, which takes seconds on CPU).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from visattn.tiny.denoisers.denoiser_spec import TinyDenoiser, built, constant_timesteps, input_generator, randn

F, H, W = 3, 4, 6  # latent tokens after patchify
TEXT = 7  # text tokens
C = 4  # latent channels
DIM = 32  # 2 heads x 16


# --- Wan family -------------------------------------------------------------------------------------------------

_WAN = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": DIM,
    "freq_dim": 32,
    "ffn_dim": 64,
    "rope_max_seq_len": 32,
}


def _wan_vace_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        # inactive + reactive latents (2C) and the 8x8 pixel mask folded into 64 channels
        "control_hidden_states": randn(g, b, 2 * C + 64, F, 2 * H, 2 * W),
        "control_hidden_states_scale": torch.ones(1),
        "return_dict": False,
    }


WAN_ANIMATE_TEXT = 512  # WanAttnProcessor splits image tokens off the context as everything but the last 512
WAN_ANIMATE_IMAGE = 4  # CLIP image tokens (257 in the real model)
WAN_ANIMATE_FACE = 5  # face video pixel frames -> (5 - 1) / 4 + 1 = 2 motion frames, + 1 zero frame = F


def _wan_animate_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, 2 * C + 4, F, 2 * H, 2 * W),  # noise, reference/mask channels
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, WAN_ANIMATE_TEXT, DIM),
        "encoder_hidden_states_image": randn(g, b, WAN_ANIMATE_IMAGE, 16),
        "pose_hidden_states": randn(g, b, C, F - 1, 2 * H, 2 * W),
        "face_pixel_values": randn(g, b, 3, WAN_ANIMATE_FACE, 8, 8),
        "return_dict": False,
    }


WAN_ANIMATE2_IMAGE = 4  # CLIP image tokens (257 in the real model); their width is fixed at 1280 by the class


def _wan_animate2_build() -> torch.nn.Module:
    import diffusers
    import diffusers.models.transformers.transformer_wan_animate_2 as module

    torch.manual_seed(0)
    model = diffusers.WanAnimate2Transformer3DModel(
        text_len=TEXT,
        in_dim=3 * C,
        dim=DIM,
        ffn_dim=64,
        freq_dim=32,
        text_dim=DIM,
        out_dim=C,
        num_heads=2,
        num_layers=2,
    ).eval()
    # The generation pass attends through a flex BlockMask built with ``_compile=True`` (seconds of torch.compile
    # on CPU); build the same mask eagerly here, under the key ``forward`` looks it up by.
    make = module.create_block_mask
    module.create_block_mask = lambda *args, **kwargs: make(*args, **{**kwargs, "_compile": False})
    try:
        model.block_masks[(F - 1, H * W)] = model.create_mask(F - 1, H * W, torch.device("cpu"))
    finally:
        module.create_block_mask = make
    return model


def _wan_animate2_inputs(b: int) -> dict[str, Any]:
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    g = input_generator()
    ref = (F - 1) * H * W  # driving-video tokens: one latent frame fewer than the generation (no reference slot)
    cache = WanAnimate2KVCache(2)
    for layer in cache.layer_caches:  # what the "extract" pass stores: pre-RoPE K/V [B, ref, heads, head_dim]
        layer.store(randn(g, b, ref, 2, 16), randn(g, b, ref, 2, 16))
    return {
        "hidden_states": [randn(g, C, F, 2 * H, 2 * W) for _ in range(b)],
        "timestep": constant_timesteps(1),
        "encoder_hidden_states": [randn(g, TEXT, DIM) for _ in range(b)],
        "condition_latents": [randn(g, 2 * C, F, 2 * H, 2 * W) for _ in range(b)],  # i2v mask + reference latents
        "kv_cache": cache,
        "kv_cache_mode": "cached",
        "seq_len": F * H * W,
        "encoder_hidden_states_image": randn(g, b, WAN_ANIMATE2_IMAGE, 1280),
        "reference_grid_sizes": torch.tensor([[F - 1, H, W]] * b),
        "origin_len": 4 * (F - 2) + 1,  # segment pixel frames: origin_len // 4 + 1 = F - 1 latent frames
        "origin_area": [16 * H, 16 * W],  # pixels; the model takes area // 256 as tokens per frame
        "return_dict": False,
    }


def _wan_t2v_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "return_dict": False,
    }


CHRONO_F = 2  # the edit call: input-image frame + edited frame (5 pixel frames), the default without reasoning
CHRONO_IMAGE = 4  # CLIP image tokens (257 in the real model)


def _chronoedit_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, 2 * C + 4, CHRONO_F, 2 * H, 2 * W),  # latents, 4 mask + C image-condition
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, WAN_ANIMATE_TEXT, DIM),
        "encoder_hidden_states_image": randn(g, b, CHRONO_IMAGE, 16),
        "return_dict": False,
    }


HELIOS_HISTORY = (4, 2, 1)  # long, mid, short (1x) history latent frames, sorted big to small as the pipeline does


def _helios_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    long, mid, short = HELIOS_HISTORY
    # keep_first_frame: [prefix | long | mid | 1x | chunk] frame indices; the short history is prefix + 1x
    idx = torch.arange(1 + long + mid + short + F).split([1, long, mid, short, F])
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "indices_hidden_states": idx[4].unsqueeze(0),
        "indices_latents_history_short": torch.cat([idx[0], idx[3]]).unsqueeze(0),
        "indices_latents_history_mid": idx[2].unsqueeze(0),
        "indices_latents_history_long": idx[1].unsqueeze(0),
        "latents_history_short": randn(g, b, C, 1 + short, 2 * H, 2 * W),
        "latents_history_mid": randn(g, b, C, mid, 2 * H, 2 * W),
        "latents_history_long": randn(g, b, C, long, 2 * H, 2 * W),
        "return_dict": False,
    }


# history tokens prepended to the video tokens in self-attention: short 2x4x6 (patch 1,2,2), mid 1x2x3 (2,4,4),
# long 1x1x2 (4,8,8, width padded 12 -> 16)
HELIOS_HISTORY_TOKENS = 2 * H * W + 1 * 2 * 3 + 1 * 1 * 2


def _anyflow_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, F, C, 2 * H, 2 * W),  # [B, F, C, H, W]
        "timestep": torch.full((b, F), 800.0),  # per-frame source time t
        "r_timestep": torch.full((b, F), 600.0),  # per-frame target time r
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "return_dict": False,
    }


# --- LTX family (packed tokens, patch size 1) ---------------------------------------------------------------------


def _text_mask(b: int, valid: int = TEXT - 2) -> torch.Tensor:
    """1 on the first ``valid`` text tokens, 0 on the padding after them."""
    mask = torch.zeros(b, TEXT)
    mask[:, :valid] = 1.0
    return mask


def _packed(g: torch.Generator, b: int, channels: int) -> torch.Tensor:
    """[B, F*H*W, C] tokens in (frame, row, column) order, as the LTX pipelines' ``_pack_latents`` lays them out."""
    return randn(g, b, channels, F, H, W).permute(0, 2, 3, 4, 1).reshape(b, F * H * W, channels)


def _ltx_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": _packed(g, b, C),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": constant_timesteps(b),
        "encoder_attention_mask": _text_mask(b),
        "num_frames": F,
        "height": H,
        "width": W,
        "rope_interpolation_scale": (8 / 25, 32, 32),  # (temporal compression / frame rate, spatial, spatial)
        "return_dict": False,
    }


LTX2_AUDIO = 5  # audio latent frames = audio tokens (25 per second in the real model)
LTX2_AUDIO_DIM = 16  # 2 audio heads x 8


def _ltx2_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    t = constant_timesteps(b)
    return {
        "hidden_states": _packed(g, b, C),
        "audio_hidden_states": randn(g, b, LTX2_AUDIO, 8),  # [B, L, C_audio * mel_bins]
        "encoder_hidden_states": randn(g, b, TEXT, DIM),  # connector outputs
        "audio_encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": t,
        "sigma": t,
        "encoder_attention_mask": _text_mask(b),
        "audio_encoder_attention_mask": _text_mask(b),
        "num_frames": F,
        "height": H,
        "width": W,
        "fps": 24.0,
        "audio_num_frames": LTX2_AUDIO,
        "return_dict": False,
    }


# --- HunyuanVideo family (joint [video, text] attention) -----------------------------------------------------------

HY15_BYT5 = 4  # ByT5 glyph tokens (256 in the real model)
HY15_IMAGE = 3  # SigLIP image tokens (729 in the real model; zeros with an all-False mask for text-to-video)
HY15_CONTEXT = TEXT + HY15_BYT5 + HY15_IMAGE


def _hy15_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    mask_2 = torch.zeros(b, HY15_BYT5)
    mask_2[:, :2] = 1.0
    return {
        "hidden_states": randn(g, b, 2 * C + 1, F, H, W),  # latents, zero image-condition latents, zero mask
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "encoder_attention_mask": _text_mask(b),
        "encoder_hidden_states_2": randn(g, b, HY15_BYT5, 16),
        "encoder_attention_mask_2": mask_2,
        "image_embeds": torch.zeros(b, HY15_IMAGE, 16),  # what the text-to-video pipeline passes
        "return_dict": False,
    }


FRAMEPACK_IMAGE = 3  # SigLIP image tokens (729 in the real model)
FRAMEPACK_HISTORY = (4, 2, 1)  # 4x, 2x, 1x history latent frames (16, 2, 1 in the real vanilla sampling)
# clean latents (image prefix + 1x history) 2x4x6 at patch (1,2,2); 2x history 1x2x3 at (2,4,4); 4x history 1x1x2 at
# (4,8,8) with the width padded 12 -> 16
FRAMEPACK_HISTORY_TOKENS = 2 * H * W + 1 * 2 * 3 + 1 * 1 * 2


def _framepack_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    h4, h2, h1 = FRAMEPACK_HISTORY
    # vanilla sampling: [prefix | 4x | 2x | 1x | window] frame indices (1-D, shared by the batch)
    prefix, i4, i2, i1, window = torch.arange(1 + h4 + h2 + h1 + F).split([1, h4, h2, h1, F])
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "encoder_attention_mask": _text_mask(b),
        "pooled_projections": randn(g, b, DIM),
        "image_embeds": randn(g, b, FRAMEPACK_IMAGE, 16),
        "indices_latents": window,
        "guidance": torch.full((b,), 10.0 * 1000.0),  # the pipeline embeds guidance_scale * 1000
        "latents_clean": randn(g, b, C, 1 + h1, 2 * H, 2 * W),
        "indices_latents_clean": torch.cat([prefix, i1]),
        "latents_history_2x": randn(g, b, C, h2, 2 * H, 2 * W),
        "indices_latents_history_2x": i2,
        "latents_history_4x": randn(g, b, C, h4, 2 * H, 2 * W),
        "indices_latents_history_4x": i4,
        "return_dict": False,
    }


# --- Mochi, Allegro, Latte ----------------------------------------------------------------------------------------


def _mochi_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    mask = torch.zeros(b, TEXT, dtype=torch.long)
    for row in range(b):  # rows differ in valid text length, so the per-row SDPA calls differ in length
        mask[row, : TEXT - 2 - row % 2] = 1
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": constant_timesteps(b),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


ALLEGRO_HEAD = 24  # Allegro's RoPE splits the head in three equal (even) bands: 8/8/8


def _allegro_inputs(b: int) -> dict[str, Any]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    g = input_generator()
    # what AllegroPipeline._prepare_rotary_positional_embeddings builds (interpolation scales t, h, w = 1)
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=ALLEGRO_HEAD,
        crops_coords=((0, 0), (H, W)),
        grid_size=(H, W),
        temporal_size=F,
        interpolation_scale=(1.0, 1.0, 1.0),
    )
    pos = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long())
    pos = pos.reshape(-1, 3).transpose(0, 1).reshape(3, 1, -1).contiguous()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": constant_timesteps(b),
        "encoder_attention_mask": _text_mask(b),
        "image_rotary_emb": ((freqs_t, freqs_h, freqs_w), tuple(pos)),
        "return_dict": False,
    }


def _latte_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "enable_temporal_attentions": True,
        "return_dict": False,
    }


# --- EasyAnimate, ConsisID, Cosmos --------------------------------------------------------------------------------


def _easyanimate_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "return_dict": False,
    }


CONSISID_FACE_TOKENS = 4  # LFE_num_querie: face tokens the perceiver cross-attention reads (32 in the real model)


def _consisid_inputs(b: int) -> dict[str, Any]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    g = input_generator()
    # what ConsisIDPipeline._prepare_rotary_positional_embeddings builds (sample size = the latent size here)
    crops = get_resize_crop_region_for_grid((H, W), W, H)
    rotary = get_3d_rotary_pos_embed(embed_dim=16, crops_coords=crops, grid_size=(H, W), temporal_size=F)
    return {
        "hidden_states": randn(g, b, F, 2 * C, 2 * H, 2 * W),  # [B, F, C, H, W]: latents + image latents
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": constant_timesteps(b),
        "image_rotary_emb": rotary,
        "id_cond": randn(g, b, 16),  # ArcFace + CLIP id embedding (1280 in the real model)
        "id_vit_hidden": [randn(g, b, 5, 16) for _ in range(2)],  # one EVA-CLIP hidden state per scale
        "return_dict": False,
    }


def _cosmos_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "timestep": torch.full((b,), 0.25 * math.log(20.0)),  # EDM c_noise = ln(sigma) / 4
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "fps": 24,
        "return_dict": False,
    }


def _cosmos3_inputs(b: int) -> dict[str, Any]:
    # One packed sample per call: the forward has no batch dimension, so ``b`` is not used.
    from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import (
        get_3d_mrope_ids_text_tokens,
        get_3d_mrope_ids_vae_tokens,
    )

    g = input_generator()
    text_ids, offset = get_3d_mrope_ids_text_tokens(TEXT, 0, use_float_positions=True)
    vision_ids, _ = get_3d_mrope_ids_vae_tokens(
        F, H, W, temporal_offset=offset + 15000, fps=24.0, base_fps=24.0, temporal_compression_factor=4
    )
    n = F * H * W
    return {
        "input_ids": torch.randint(0, 64, (TEXT,), generator=g),
        "text_indexes": torch.arange(TEXT),
        "position_ids": torch.cat([text_ids, vision_ids], dim=1),  # [3, text + N] mRoPE (t, h, w) ids
        "und_len": TEXT,
        "sequence_length": TEXT + n,
        "vision_tokens": [randn(g, 1, C, F, 2 * H, 2 * W)],
        "vision_token_shapes": [(F, H, W)],
        "vision_sequence_indexes": torch.arange(TEXT, TEXT + n),
        "vision_mse_loss_indexes": torch.arange(TEXT, TEXT + n),  # text-to-video: every frame is noisy
        "vision_timesteps": torch.full((n,), 500.0),  # scheduler t; the model multiplies by timestep_scale 0.001
        "vision_noisy_frame_indexes": [torch.arange(F)],
        "return_dict": False,
    }


# --- Sana video models (linear self-attention) ---------------------------------------------------------------------


def _sana_video_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, C, F, 2 * H, 2 * W),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": constant_timesteps(b),
        "encoder_attention_mask": _text_mask(b),
        "return_dict": False,
    }


def _sana_wm_inputs(b: int) -> dict[str, Any]:
    import numpy as np
    from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

    g = input_generator()
    # a camera dollying along x over (F - 1) * 8 + 1 pixel frames (LTX-2 VAE: 8x temporal, 32x spatial)
    n_pix = (F - 1) * 8 + 1
    c2w = np.tile(np.eye(4, dtype=np.float32), (n_pix, 1, 1))
    c2w[:, 0, 3] = np.linspace(0.0, 1.0, n_pix, dtype=np.float32)
    intrinsics = np.tile(np.array([[100.0, 100.0, 16.0 * W, 16.0 * H]], dtype=np.float32), (n_pix, 1))
    cam = prepare_camera(c2w, intrinsics, target_size=(32 * H, 32 * W), vae_stride=(8, 32, 32))
    timestep = torch.full((b, 1, F), 500.0)
    timestep[:, :, 0] = 0.0  # the first latent frame is the clean conditioning image
    return {
        "hidden_states": randn(g, b, C, F, H, W),
        "timestep": timestep,  # per frame [B, 1, F]
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "mask": _text_mask(b).long(),
        "data_info": {"img_hw": torch.tensor([[32.0 * H, 32.0 * W]])},
        "camera_conditions": cam["raymap"].unsqueeze(0).repeat(b, 1, 1),  # [B, F, 20]: relative c2w + fx fy cx cy
        "chunk_plucker": cam["chunk_plucker"].unsqueeze(0).repeat(b, 1, 1, 1, 1),  # [B, 48, F, H, W]
        "return_dict": False,
    }


# --- Kandinsky 5 / 6 (channels-last latents) -----------------------------------------------------------------------


def _kandinsky5_build() -> torch.nn.Module:
    """Kandinsky 5 zero-initializes its modulation output layers (adaLN-Zero), whose gates scale every attention
    output: seed them, so that attention reaches the output of the untrained model."""
    model = built(
        "Kandinsky5Transformer3DModel",
        in_visual_dim=C,
        in_text_dim=DIM,
        in_text_dim2=16,
        time_dim=16,
        out_visual_dim=C,
        patch_size=(1, 2, 2),
        model_dim=DIM,
        ff_dim=64,
        num_text_blocks=1,
        num_visual_blocks=2,
        axes_dims=(4, 6, 6),
        visual_cond=True,
    )()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modulation.out_layer" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _kandinsky5_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    latents = randn(g, b, F, 2 * H, 2 * W, C)  # [B, F, H, W, C]
    cond = torch.zeros(b, F, 2 * H, 2 * W, C + 1)  # text-to-video: zero condition latents and zero mask
    return {
        "hidden_states": torch.cat([latents, cond], dim=-1),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),  # Qwen2.5-VL tokens
        "timestep": constant_timesteps(b),
        "pooled_projections": randn(g, b, 16),  # CLIP pooled
        "visual_rope_pos": [torch.arange(F), torch.arange(H), torch.arange(W)],
        "text_rope_pos": torch.arange(TEXT),
        "scale_factor": (1.0, 2.0, 2.0),  # the pipeline's 480p value
        "sparse_params": None,
        "return_dict": False,
    }


K6_AUDIO = 5  # audio latent tokens


def _kandinsky6_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    latents = randn(g, b, F, 2 * H, 2 * W, C)  # [B, F, H, W, C]
    cond = torch.zeros(b, F, 2 * H, 2 * W, C + 1)
    return {
        "hidden_states": torch.cat([latents, cond], dim=-1),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "pooled_projections": randn(g, b, 16),
        "timestep": constant_timesteps(b),
        "audio_hidden_states": randn(g, b, K6_AUDIO, C),  # [B, L, C_audio]
        "encoder_attention_mask": _text_mask(b).bool(),
        "return_dict": False,
    }


# --- MiniMax-H3, Motif-Video, JoyImage-Edit -----------------------------------------------------------------------

H3_AUDIO = 3  # audio latents per channel; the soundtrack is stereo, packed channel-major: 2 * 3 = 6 audio rows


def _minimax_h3_inputs(b: int) -> dict[str, Any]:
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep

    g = input_generator()
    # the t2va layout [text | audio | video]: tags 0 video, 1 text, 2 audio; (t, h, w) rotary coordinates per row
    position_ids, token_tags, video_indices, audio_indices, text_indices, _, _ = (
        MiniMaxH3PrepareLayoutStep.build_packed_sequence(
            text_token_tags=torch.ones(TEXT, dtype=torch.long),
            num_latent_frames=F,
            latent_height=2 * H,
            latent_width=2 * W,
            num_audio_latents=H3_AUDIO,
            patch_size=(1, 2, 2),
            audio_channels=2,
            audio_tag=2,
            video_tag=0,
        )
    )
    return {
        "hidden_states": randn(g, b, F * H * W, 4 * C),  # patchified rows in (f, h, w) order, C * 1 * 2 * 2 wide
        "audio_hidden_states": randn(g, b, 2 * H3_AUDIO, 4),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "timestep": torch.tensor([0.4]),  # the distinct timesteps in the sequence, in [0, 1] (1 = clean)
        "timestep_indices": torch.zeros(position_ids.shape[0], dtype=torch.long),
        "token_tags": token_tags,
        "position_ids": position_ids,
        "video_indices": video_indices,
        "audio_indices": audio_indices,
        "text_indices": text_indices,
        "return_dict": False,
    }


def _motif_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    latents = randn(g, b, C, F, 2 * H, 2 * W)
    cond = torch.zeros(b, C + 1, F, 2 * H, 2 * W)  # text-to-video: zero condition latents and mask
    return {
        "hidden_states": torch.cat([latents, cond], dim=1),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "encoder_attention_mask": _text_mask(b),
        "return_dict": False,
    }


#: JoyImage-Edit and JoyImage-Edit Plus: the same transformer sizes (the RoPE axes add up to the head width, 16)
_JOYIMAGE: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "in_channels": C,
    "hidden_size": DIM,
    "num_attention_heads": 2,
    "text_dim": DIM,
    "mlp_width_ratio": 2.0,
    "num_layers": 2,
    "rope_dim_list": [4, 6, 6],
}


def _joyimage_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    # [B, items, C, T, H, W]: the reference image latent first, the generated (noisy) one last, one frame each
    return {
        "hidden_states": randn(g, b, 2, C, 1, 2 * H, 2 * W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "return_dict": False,
    }


JOY_PLUS_REFERENCE = (1, 2, 2)  # one reference image's patches (t, h, w)
JOY_PLUS_PADDING = 2  # padding patches after the items (to the batch's longest sample in the pipeline)


def _joyimage_plus_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    patches = H * W + math.prod(JOY_PLUS_REFERENCE) + JOY_PLUS_PADDING
    mask = _text_mask(b)
    return {
        # [B, max_patches, C, pt, ph, pw]: the generated image's patches, the reference's, then padding
        "hidden_states": randn(g, b, patches, C, 1, 2, 2),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, DIM),
        "encoder_hidden_states_mask": mask,
        "shape_list": [[(1, H, W), JOY_PLUS_REFERENCE] for _ in range(b)],
        "return_dict": False,
    }


TINY_DENOISERS: tuple[TinyDenoiser, ...] = (
    TinyDenoiser(
        class_name="WanVACETransformer3DModel",
        build=built(
            "WanVACETransformer3DModel",
            **_WAN,
            in_channels=C,
            out_channels=C,
            num_layers=2,
            vace_layers=[0],
            vace_in_channels=2 * C + 64,
        ),
        inputs=_wan_vace_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="WanVACEPipeline",
        notes="VACE blocks run their own self+cross attention on the control tokens (same grid) before the main "
        "blocks: per VACE layer one extra (N, N) and (N, text) SDPA pair.",
    ),
    TinyDenoiser(
        class_name="WanAnimateTransformer3DModel",
        build=built(
            "WanAnimateTransformer3DModel",
            **_WAN,
            in_channels=2 * C + 4,
            latent_channels=C,
            out_channels=C,
            num_layers=2,
            image_dim=16,
            added_kv_proj_dim=DIM,
            motion_encoder_channel_sizes={"8": 8, "4": 8},
            motion_encoder_size=8,
            motion_style_dim=16,
            motion_dim=4,
            motion_encoder_dim=16,
            face_encoder_hidden_dim=16,
            face_encoder_num_heads=2,
            inject_face_latents_blocks=1,
            motion_encoder_batch_size=8,
        ),
        inputs=_wan_animate_inputs,
        grid=(F, H, W),
        text_tokens=WAN_ANIMATE_TEXT,
        text_position=None,
        pipeline="WanAnimatePipeline",
        notes="Text must be exactly 512 tokens: the processor takes the CLIP image tokens as context[:, :-512] and "
        "attends to them in a second SDPA (N, 4 image tokens) added to the text cross-attention. Latent frame 0 is "
        "the reference frame; pose latents cover frames 1.. . Face adapter after every block (inject_face_latents_"
        "blocks=1 here): per-frame cross-attention, SDPA batch B*F with (H*W, face heads + 1 = 3) tokens.",
    ),
    TinyDenoiser(
        class_name="WanAnimate2Transformer3DModel",
        build=_wan_animate2_build,
        inputs=_wan_animate2_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="WanAnimate2ModularPipeline",
        notes="Inputs are per-sample lists ([C, F, H, W] each) and the call is the denoising ('cached') pass: its "
        "self-attention does NOT call SDPA but flex_attention (backend FLEX forced, module blocks.*.self_attn) "
        "over a 128-padded [generation | reference] buffer with a BlockMask: queries 72 tokens (padded to 128), keys "
        "72 + 48 driving-video tokens from the KV cache (padded to 128 + 128); each generation frame t >= 1 sees the "
        "driving frame t - 1. Latent frame 0 is the reference-image slot. The KV cache is filled beforehand by an "
        "'extract' forward (dense SDPA over the driving-video tokens). Cross-attention: text zero-padded to "
        "text_len (512 real, 7 here) plus a second SDPA over the CLIP image tokens (4 here, width 1280).",
    ),
    TinyDenoiser(
        class_name="SkyReelsV2Transformer3DModel",
        build=built("SkyReelsV2Transformer3DModel", **_WAN, in_channels=C, out_channels=C, num_layers=2),
        inputs=_wan_t2v_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="SkyReelsV2Pipeline",
        notes="Wan-like. The diffusion-forcing pipelines (SkyReelsV2DiffusionForcingPipeline) pass per-frame "
        "timesteps [B, F], enable_diffusion_forcing=True and fps; with num_frame_per_block > 1 self-attention gets "
        "a bool block-causal attn_mask [1, 1, N, N]. An image-conditioned config (added_kv_proj_dim) needs text of "
        "exactly 512 tokens.",
    ),
    TinyDenoiser(
        class_name="ChronoEditTransformer3DModel",
        build=built(
            "ChronoEditTransformer3DModel",
            **_WAN,
            in_channels=2 * C + 4,
            out_channels=C,
            num_layers=2,
            image_dim=16,
            added_kv_proj_dim=DIM,
            rope_temporal_skip_len=8,
        ),
        inputs=_chronoedit_inputs,
        grid=(CHRONO_F, H, W),
        text_tokens=WAN_ANIMATE_TEXT,
        text_position=None,
        pipeline="ChronoEditPipeline",
        notes="Image editing on a Wan-I2V backbone: 2 latent frames (input image, edit) whose RoPE time positions "
        "are 0 and rope_temporal_skip_len - 1 (temporal reasoning runs more frames, then drops to 2). Text must be "
        "exactly 512 tokens: the CLIP image tokens are context[:, :-512] and get a second SDPA (N, 4) added to the "
        "text cross-attention.",
    ),
    TinyDenoiser(
        class_name="HeliosTransformer3DModel",
        build=built(
            "HeliosTransformer3DModel",
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=C,
            out_channels=C,
            text_dim=DIM,
            freq_dim=32,
            ffn_dim=64,
            num_layers=2,
            rope_dim=(4, 6, 6),
        ),
        inputs=_helios_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="HeliosPipeline",
        notes=f"Self-attention runs over [history | video]: {HELIOS_HISTORY_TOKENS} history tokens (short {2 * H * W}"
        f", mid 6, long 2 here, from latents_history_* at 1x, 2x, 4x patch sizes) come FIRST, then the {F * H * W} "
        "grid tokens (SDPA Nq = Nk = history + N). Cross-attention (guidance_cross_attn) queries only the last N "
        "tokens. History RoPE uses absolute frame indices from indices_*; the output keeps the last N tokens.",
    ),
    TinyDenoiser(
        class_name="AnyFlowTransformer3DModel",
        build=built(
            "AnyFlowTransformer3DModel",
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=C,
            out_channels=C,
            text_dim=DIM,
            freq_dim=32,
            ffn_dim=64,
            num_layers=2,
            rope_max_seq_len=32,
        ),
        inputs=_anyflow_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="AnyFlowPipeline",
        notes="Latents are [B, F, C, H, W]; timestep and r_timestep are per frame [B, F] (flow-map t -> r). The FAR "
        "causal sibling (AnyFlowFARTransformer3DModel, AnyFlowFARPipeline) uses a flex BlockMask and a KV cache.",
    ),
    TinyDenoiser(
        class_name="LTXVideoTransformer3DModel",
        build=built(
            "LTXVideoTransformer3DModel",
            in_channels=C,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            cross_attention_dim=DIM,
            num_layers=2,
            caption_channels=DIM,
        ),
        inputs=_ltx_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="LTXPipeline",
        notes="Packed tokens [B, F*H*W, C] (patch 1); the grid comes from the num_frames/height/width kwargs (or "
        "video_coords). The 0/1 text mask becomes an additive float bias (-10000) attn_mask [B, heads, 1, text] "
        "on the text cross-attention.",
    ),
    TinyDenoiser(
        class_name="LTX2VideoTransformer3DModel",
        build=built(
            "LTX2VideoTransformer3DModel",
            in_channels=C,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            cross_attention_dim=DIM,
            audio_in_channels=8,
            audio_out_channels=8,
            audio_num_attention_heads=2,
            audio_attention_head_dim=8,
            audio_cross_attention_dim=LTX2_AUDIO_DIM,
            num_layers=2,
            caption_channels=DIM,
        ),
        inputs=_ltx2_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="LTX2Pipeline",
        notes=f"Audio-video model; returns (video, audio). Per block 6 SDPA calls: video self (N, N), audio self "
        f"({LTX2_AUDIO}, {LTX2_AUDIO}) over audio_num_frames tokens, video->text and audio->text cross-attention "
        f"with float -10000 padding masks [B, heads, 1, text], audio-to-video (N, {LTX2_AUDIO}) and video-to-audio "
        f"({LTX2_AUDIO}, N) cross-attention (no mask; queries/keys get separate temporal RoPE). Audio heads differ "
        "from video heads (here 2 x 8 vs 2 x 16). Packed video tokens as in LTX, grid from num_frames/height/width "
        "(or video_coords).",
    ),
    TinyDenoiser(
        class_name="HunyuanVideo15Transformer3DModel",
        build=built(
            "HunyuanVideo15Transformer3DModel",
            in_channels=2 * C + 1,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=DIM,
            text_embed_2_dim=16,
            image_embed_dim=16,
            rope_axes_dim=(4, 6, 6),
        ),
        inputs=_hy15_inputs,
        grid=(F, H, W),
        text_tokens=HY15_CONTEXT,
        text_position="last",
        pipeline="HunyuanVideo15Pipeline",
        notes=f"Patch size 1 (the VAE compresses 16x). Joint attention over [video | context] where the context is "
        f"re-ordered PER SAMPLE as [valid image, valid ByT5, valid LLM, invalid image, invalid ByT5 (zeroed), "
        f"invalid LLM (zeroed)]: {TEXT} LLM + {HY15_BYT5} ByT5 + {HY15_IMAGE} image = {HY15_CONTEXT} context "
        "tokens, so a text token's position depends on the masks (text-to-video: image tokens invalid, at the "
        "end). Bool attn_mask [B, 1, S, S] (key AND query valid; fully-masked padding rows). The token refiner "
        "(context_embedder) runs its own masked self-attention SDPA over the LLM text (text, text).",
    ),
    TinyDenoiser(
        class_name="HunyuanVideoFramepackTransformer3DModel",
        build=built(
            "HunyuanVideoFramepackTransformer3DModel",
            in_channels=C,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            text_embed_dim=DIM,
            pooled_projection_dim=DIM,
            rope_axes_dim=(4, 6, 6),
            has_image_proj=True,
            image_proj_dim=16,
            has_clean_x_embedder=True,
        ),
        inputs=_framepack_inputs,
        grid=(F, H, W),
        text_tokens=FRAMEPACK_IMAGE + TEXT,
        text_position="last",
        pipeline="HunyuanVideoFramepackPipeline",
        notes=f"Joint attention over [history | video | image | text]: {FRAMEPACK_HISTORY_TOKENS} history tokens "
        f"(4x, 2x, clean) come FIRST, then the {F * H * W} grid tokens, then the context = {FRAMEPACK_IMAGE} SigLIP "
        f"image tokens followed by {TEXT} LLM tokens (text_tokens counts both). Batch > 1: bool key mask [B, 1, 1, S] "
        "valid for the first (latent + valid context) positions (assumes right-padded text); batch 1 instead "
        "truncates the context and passes no mask. Double- and single-stream blocks; token refiner runs a masked "
        "(text, text) SDPA. Frame indices for RoPE come from indices_* (1-D).",
    ),
    TinyDenoiser(
        class_name="MochiTransformer3DModel",
        build=built(
            "MochiTransformer3DModel",
            patch_size=2,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            pooled_projection_dim=16,
            in_channels=C,
            text_embed_dim=DIM,
            time_embed_dim=16,
            max_sequence_length=TEXT,
        ),
        inputs=_mochi_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position="last",
        pipeline="MochiPipeline",
        notes="Joint [video | text] attention run PER BATCH ROW (MochiAttnProcessor2_0 loops over the batch and "
        "calls SDPA on batch 1 with only the VALID text tokens: Nq = Nk = N + valid_text(row), no attn_mask; the "
        "output is zero-padded back to N + text). The caption attention pool (time_embed.pooler, 8 fixed heads) "
        "makes one more SDPA: a single query over [mean token | text] (Nq 1, Nk text + 1, 8 x 4 heads, bool mask). "
        "Last block is "
        "context_pre_only. Patch embedding is 2-D per frame (no temporal patch). The pipeline passes inverted "
        "timesteps (1000 - t of the usual convention).",
    ),
    TinyDenoiser(
        class_name="AllegroTransformer3DModel",
        build=built(
            "AllegroTransformer3DModel",
            patch_size=2,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=ALLEGRO_HEAD,
            in_channels=C,
            out_channels=C,
            num_layers=2,
            cross_attention_dim=2 * ALLEGRO_HEAD,
            sample_height=2 * H,
            sample_width=2 * W,
            sample_frames=F,
            caption_channels=DIM,
            interpolation_scale_h=1.0,
            interpolation_scale_w=1.0,
            interpolation_scale_t=1.0,
        ),
        inputs=_allegro_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="AllegroPipeline",
        notes="RoPE is computed by the PIPELINE and passed as image_rotary_emb ((cos/sin per axis), (t, h, w) "
        "positions). Head dim 24 here (RoPE needs three equal bands). Text padding mask becomes an additive float "
        "bias (-10000) [B, heads, 1, text] on the cross-attention.",
    ),
    TinyDenoiser(
        class_name="LatteTransformer3DModel",
        build=built(
            "LatteTransformer3DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=C,
            out_channels=2 * C,
            num_layers=2,
            cross_attention_dim=DIM,
            sample_size=2 * H,
            patch_size=2,
            norm_type="ada_norm_single",
            num_embeds_ada_norm=1000,
            caption_channels=DIM,
            video_length=F,
        ),
        inputs=_latte_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="LattePipeline",
        notes="Factorised attention, no full 3-D attention: spatial blocks attend within each frame (SDPA batch "
        "B*F, Nq = H*W, self (H*W, H*W) and cross (H*W, text)), temporal blocks attend along time at each position "
        "(SDPA batch B*H*W, (F, F), temporal-only, no text). video_length must equal the latent frames. "
        "Output has 2C channels (learned sigma).",
    ),
    TinyDenoiser(
        class_name="EasyAnimateTransformer3DModel",
        build=built(
            "EasyAnimateTransformer3DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=C,
            out_channels=C,
            patch_size=2,
            sample_width=2 * W,
            sample_height=2 * H,
            num_layers=2,
            mmdit_layers=1,
            time_embed_dim=DIM,
            text_embed_dim=DIM,
        ),
        inputs=_easyanimate_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position="first",
        pipeline="EasyAnimatePipeline",
        notes="Joint [text | video] attention; calls F.scaled_dot_product_attention directly (not "
        "dispatch_attention_fn). First mmdit_layers blocks have separate text projections (MMDiT), the rest "
        "project text and video with shared weights. No text mask. Patch embedding is 2-D per frame; the RoPE "
        "crop assumes a 90x60 base latent.",
    ),
    TinyDenoiser(
        class_name="ConsisIDTransformer3DModel",
        build=built(
            "ConsisIDTransformer3DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=2 * C,
            out_channels=C,
            time_embed_dim=DIM,
            text_embed_dim=DIM,
            num_layers=2,
            sample_width=2 * W,
            sample_height=2 * H,
            sample_frames=4 * (F - 1) + 1,
            patch_size=2,
            use_rotary_positional_embeddings=True,
            is_train_face=True,
            cross_attn_interval=1,
            cross_attn_dim_head=8,
            cross_attn_num_heads=2,
            LFE_id_dim=16,
            LFE_vit_dim=16,
            LFE_depth=2,
            LFE_dim_head=8,
            LFE_num_heads=2,
            LFE_num_id_token=2,
            LFE_num_querie=CONSISID_FACE_TOKENS,
            LFE_output_dim=21,
            LFE_ff_mult=2,
            LFE_num_scale=2,
        ),
        inputs=_consisid_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position="first",
        pipeline="ConsisIDPipeline",
        notes="CogVideoX backbone: latents [B, F, C, H, W], joint [text | video] SDPA (CogVideoXAttnProcessor2_0), "
        "RoPE computed by the PIPELINE (image_rotary_emb). Identity branch does NOT call SDPA: "
        "local_facial_extractor.layers.*.0 (PerceiverAttention) and perceiver_cross_attention.* "
        f"(PerceiverCrossAttention: video queries N over {CONSISID_FACE_TOKENS} face tokens, after every "
        "cross_attn_interval-th block) use explicit matmul + softmax. The perceiver kv width is int(inner * 2/3) "
        "(21 here), which LFE_output_dim must match.",
    ),
    TinyDenoiser(
        class_name="CosmosTransformer3DModel",
        build=built(
            "CosmosTransformer3DModel",
            in_channels=C,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            mlp_ratio=2.0,
            text_embed_dim=DIM,
            adaln_lora_dim=8,
            max_size=(8, 16, 16),
            patch_size=(1, 2, 2),
            concat_padding_mask=False,
        ),
        inputs=_cosmos_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="CosmosTextToWorldPipeline",
        notes="Built with concat_padding_mask=False: the real configs concatenate a padding-mask channel resized "
        "with torchvision, which is not installed here (with torchvision, pass padding_mask [1, 1, H, W] zeros as "
        "the pipeline does). Timestep is EDM c_noise (ln(sigma)/4), not 0-1000; Cosmos 2/2.5 pipelines pass "
        "sigma and a condition_mask instead. Self-attention (N, N) and text cross-attention (N, text), no mask.",
    ),
    TinyDenoiser(
        class_name="Cosmos3OmniTransformer",
        build=built(
            "Cosmos3OmniTransformer",
            head_dim=16,
            hidden_size=DIM,
            intermediate_size=64,
            latent_channel=C,
            latent_patch_size=2,
            num_attention_heads=2,
            num_hidden_layers=2,
            num_key_value_heads=1,
            patch_latent_dim=4 * C,
            vocab_size=64,
            rope_axes_dim=(4, 2, 2),
        ),
        inputs=_cosmos3_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position="first",
        pipeline="Cosmos3OmniPipeline",
        notes="Packed, batch-free forward: ONE sample per call (inputs() ignores batch_size; the pipeline runs "
        "cond and uncond as separate calls); text enters as token ids, vision as a list of [1, C, F, H, W] "
        "latents; output is a list. Mixture-of-transformers layers make 2 SDPA calls, both with GQA "
        "(enable_gqa=True, 2 query heads / 1 kv head here): text ('understanding') causal self-attention "
        "(is_causal, (text, text)) and vision ('generation') attention over [text | vision] keys (N, text + N). "
        "Text does not see vision. mRoPE (t, h, w) position ids from the pipeline; vision temporal ids start "
        "15000 after the text.",
    ),
    TinyDenoiser(
        class_name="SanaVideoTransformer3DModel",
        build=built(
            "SanaVideoTransformer3DModel",
            in_channels=C,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=16,
            cross_attention_dim=DIM,
            caption_channels=DIM,
            sample_size=2 * H,
            patch_size=(1, 2, 2),
            rope_max_seq_len=32,
        ),
        inputs=_sana_video_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="SanaVideoPipeline",
        notes="Self-attention is LINEAR attention that does NOT call SDPA (transformer_blocks.*.attn1, "
        "SanaLinearAttnProcessor3_0: ReLU kernels + Wan RoPE, explicit matmuls), so only the text cross-attention "
        "(attn2, (N, text), additive float -10000 mask [B, heads, 1, text]) is SDPA.",
    ),
    TinyDenoiser(
        class_name="SanaWMTransformer3DModel",
        build=built(
            "SanaWMTransformer3DModel",
            in_channels=C,
            num_layers=2,
            hidden_size=DIM,
            num_attention_heads=2,
            softmax_every_n=2,
            linear_head_dim=16,
            chunk_plucker_post_attn_blocks=-1,
            image_size=32 * 2 * H,
            caption_channels=DIM,
            mlp_ratio=2.0,
        ),
        inputs=_sana_wm_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="SanaWMPipeline",
        notes="Camera-controlled image-to-world model; patch 1 (LTX-2 VAE, 32x). Per-frame timesteps [B, 1, F] "
        "(first frame 0 = clean image). Block i uses gated-delta-net LINEAR attention (no SDPA: blocks.*.attn, "
        "BidirectionalGDNUCPESinglePathLiteLA, main and camera branches, chunked recurrence) except every "
        "softmax_every_n-th block (here block 1 of 2), whose main branch calls F.scaled_dot_product_attention "
        "(N, N) directly and whose camera (UCPE ray-space) branch calls it again; both run in bfloat16 on float32 "
        "models, and the camera call zero-pads the head dim 16 -> 128 (so SDPA's default scale is 1/sqrt(128)). "
        "Cross-attention (blocks.*.cross_attn, "
        "dispatch) (N, text) with a bool key mask [B, 1, 1, text] in every block.",
    ),
    TinyDenoiser(
        class_name="Kandinsky5Transformer3DModel",
        build=_kandinsky5_build,
        inputs=_kandinsky5_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="Kandinsky5T2VPipeline",
        notes="Channels-LAST latents [B, F, H, W, 2C+1] (noise, condition latents, condition mask) in and "
        "[B, F, H, W, C] out; return_dict=False returns the bare tensor, not a tuple. Text runs through its own "
        "encoder blocks first (text self-attention SDPA "
        "(text, text)), then each visual block has self (N, N) and cross (N, text) SDPA, no masks. RoPE "
        "positions come from the pipeline (visual_rope_pos, text_rope_pos, scale_factor); RoPE is applied in "
        "bfloat16. The 10 s models pass sparse_params (NABLA): a block-sparse mask and 'fractal' token reordering "
        "in 8x8 spatial tiles (not exercised here).",
    ),
    TinyDenoiser(
        class_name="Kandinsky6Transformer3DModel",
        build=built(
            "Kandinsky6Transformer3DModel",
            in_visual_dim=C,
            out_visual_dim=C,
            in_text_dim=DIM,
            in_text_dim2=16,
            time_dim=16,
            patch_size=(1, 2, 2),
            model_dim=DIM,
            ff_dim=64,
            num_text_blocks=1,
            num_visual_blocks=2,
            axes_dims=(4, 6, 6),
            visual_cond=True,
            in_audio_dim=C,
            out_audio_dim=C,
            model_dim_a=DIM,
            time_dim_a=16,
            ff_dim_a=32,
            text_token_padding=True,
            ca_rope=True,
            cross_gates=True,
            fix_modulation=True,
        ),
        inputs=_kandinsky6_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="Kandinsky6TI2VAPipeline",
        notes="Video + audio model, channels-LAST latents [B, F, H, W, 2C+1]; returns (video, audio). Separate "
        f"video and audio text encoders (text self-attention each). Per fused block: video self (N, N), video->text "
        f"(N, text), audio self ({K6_AUDIO}, {K6_AUDIO}), audio->text ({K6_AUDIO}, text), video->audio "
        f"(N, {K6_AUDIO}) and audio->video ({K6_AUDIO}, N) cross-attention. The bool text padding mask [B, text] "
        "reaches SDPA as [B, 1, 1, text] in text self-attention and both text cross-attentions. With an image the "
        "pipeline appends "
        "the reference latent as an EXTRA LAST frame (RoPE time 0, token type 1): grid F + 1 frames.",
    ),
    TinyDenoiser(
        class_name="MiniMaxH3Transformer3DModel",
        build=built(
            "MiniMaxH3Transformer3DModel",
            num_attention_heads=2,
            attention_head_dim=16,
            hidden_size=DIM,
            num_layers=2,
            num_refiner_layers=1,
            ffn_dim=64,
            in_channels=C,
            audio_in_channels=4,
            patch_size=(1, 2, 2),
            text_dim=DIM,
            freq_dim=16,
            time_embed_hidden_dim=DIM,
            time_embed_dim=16,
            rope_freq_dim=2,
        ),
        inputs=_minimax_h3_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position="first",
        pipeline="MiniMaxH3ModularPipeline",
        notes=f"One packed sequence per sample with a layout shared by the batch: [text {TEXT} | audio "
        f"{2 * H3_AUDIO} (stereo, channel-major) | video {F * H * W}] (t2va; keyframe-conditioned tasks insert "
        "condition video rows between text and audio). Inputs are already patchified rows: video [B, N, C*4], "
        "audio [B, rows, C_audio]; row positions come from video/audio/text_indices, RoPE from position_ids "
        "[S, 3] (rotates the first 6 * rope_freq_dim channels of each head), AdaLN per (timestep_indices, "
        "token_tags). Full self-attention over all rows, no mask, no cross-attention: (S, S) with S = text + "
        "audio + N. The text token refiner runs (text, text) SDPA first. Returns (video rows, audio rows).",
    ),
    TinyDenoiser(
        class_name="MotifVideoTransformer3DModel",
        build=built(
            "MotifVideoTransformer3DModel",
            in_channels=2 * C + 1,
            out_channels=C,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=2,
            num_decoder_layers=1,
            mlp_ratio=2.0,
            patch_size=2,
            patch_size_t=1,
            text_embed_dim=DIM,
            rope_axes_dim=(4, 6, 6),
            enable_text_cross_attention_dual=True,
            enable_text_cross_attention_single=True,
        ),
        inputs=_motif_inputs,
        grid=(F, H, W),
        text_tokens=TEXT,
        text_position="last",
        pipeline="MotifVideoPipeline",
        notes="Joint [video | text] attention in the dual- and single-stream blocks with a bool key mask "
        "[B, 1, 1, N + text] (video always valid). Built here with both optional extras on: an extra text "
        "cross-attention after the joint attention (N, text) with the text part of that mask, and "
        "num_decoder_layers=1 (the last single block re-runs as a decoder: fresh copies of the embedded video "
        "tokens attend jointly with the encoder's output video tokens, (2N, 2N), no mask, no text). I2V adds "
        "image tokens before the text (image_embeds).",
    ),
    TinyDenoiser(
        class_name="JoyImageEditTransformer3DModel",
        build=built("JoyImageEditTransformer3DModel", **_JOYIMAGE),
        inputs=_joyimage_inputs,
        grid=(2, H, W),
        text_tokens=TEXT,
        text_position="last",
        pipeline="JoyImageEditPipeline",
        notes="Image editing: 6-D input [B, items, C, T, H, W] (reference latent(s) first, the generated latent "
        "last; items=1 without a reference). The model moves the LAST item to the front and concatenates items "
        "along time, so grid frame 0 is the generated image and frame 1 the reference (T=1 each). Joint "
        "[image | text] SDPA, no mask. Output keeps the input item order.",
    ),
    TinyDenoiser(
        class_name="JoyImageEditPlusTransformer3DModel",
        build=built("JoyImageEditPlusTransformer3DModel", **_JOYIMAGE),
        inputs=_joyimage_plus_inputs,
        grid=(1, H, W),
        text_tokens=TEXT,
        text_position="last",
        pipeline="JoyImageEditPlusPipeline",
        notes="Multi-image editing: each item (the generated image, then the references) patchified on its own "
        "into one padded sequence [B, max_patches, C, pt, ph, pw]; shape_list gives each sample's items' (t, h, w) "
        "in patches. Joint [patches | text] SDPA with a bool mask [B, 1, 1, patches + text] over the padding and "
        "the text padding. Output in the input's patch layout.",
    ),
)


def _n(f: int = F, h: int = H, w: int = W) -> int:
    return f * h * w


#: The (Nq, Nk) token counts of every scaled_dot_product_attention call one forward of each entry makes (checked by
#: tests/families/test_coverage.py; batch rows, heads and masks aside). Classes whose self-attention is not SDPA lack
#: (N, N).
SDPA_TOKENS: dict[str, set[tuple[int, int]]] = {
    "WanVACETransformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "WanAnimateTransformer3DModel": {
        (_n(), _n()),
        (_n(), WAN_ANIMATE_TEXT),
        (_n(), WAN_ANIMATE_IMAGE),
        (H * W, 3),
    },
    "WanAnimate2Transformer3DModel": {(_n(), TEXT), (_n(), WAN_ANIMATE2_IMAGE)},
    "SkyReelsV2Transformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "ChronoEditTransformer3DModel": {
        (_n(CHRONO_F), _n(CHRONO_F)),
        (_n(CHRONO_F), WAN_ANIMATE_TEXT),
        (_n(CHRONO_F), CHRONO_IMAGE),
    },
    "HeliosTransformer3DModel": {(HELIOS_HISTORY_TOKENS + _n(), HELIOS_HISTORY_TOKENS + _n()), (_n(), TEXT)},
    "AnyFlowTransformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "LTXVideoTransformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "LTX2VideoTransformer3DModel": {
        (_n(), _n()),
        (_n(), TEXT),
        (LTX2_AUDIO, LTX2_AUDIO),
        (LTX2_AUDIO, TEXT),
        (_n(), LTX2_AUDIO),
        (LTX2_AUDIO, _n()),
    },
    "HunyuanVideo15Transformer3DModel": {(TEXT, TEXT), (_n() + HY15_CONTEXT, _n() + HY15_CONTEXT)},
    "HunyuanVideoFramepackTransformer3DModel": {
        (TEXT, TEXT),
        (FRAMEPACK_HISTORY_TOKENS + _n() + FRAMEPACK_IMAGE + TEXT,) * 2,
    },
    # per batch row: row 0 has TEXT - 2 valid text tokens, row 1 TEXT - 3; the caption pool adds one mean token
    "MochiTransformer3DModel": {(1, TEXT + 1), (_n() + TEXT - 2, _n() + TEXT - 2), (_n() + TEXT - 3, _n() + TEXT - 3)},
    "AllegroTransformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "LatteTransformer3DModel": {(H * W, H * W), (H * W, TEXT), (F, F)},
    "EasyAnimateTransformer3DModel": {(TEXT + _n(), TEXT + _n())},
    "ConsisIDTransformer3DModel": {(TEXT + _n(), TEXT + _n())},
    "CosmosTransformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "Cosmos3OmniTransformer": {(TEXT, TEXT), (_n(), TEXT + _n())},
    "SanaVideoTransformer3DModel": {(_n(), TEXT)},
    "SanaWMTransformer3DModel": {(_n(), _n()), (_n(), TEXT)},
    "Kandinsky5Transformer3DModel": {(TEXT, TEXT), (_n(), _n()), (_n(), TEXT)},
    "Kandinsky6Transformer3DModel": {
        (TEXT, TEXT),
        (_n(), _n()),
        (_n(), TEXT),
        (K6_AUDIO, K6_AUDIO),
        (K6_AUDIO, TEXT),
        (_n(), K6_AUDIO),
        (K6_AUDIO, _n()),
    },
    "MiniMaxH3Transformer3DModel": {(TEXT, TEXT), (TEXT + 2 * H3_AUDIO + _n(), TEXT + 2 * H3_AUDIO + _n())},
    "MotifVideoTransformer3DModel": {(_n() + TEXT, _n() + TEXT), (_n(), TEXT), (2 * _n(), 2 * _n())},
    "JoyImageEditTransformer3DModel": {(_n(2) + TEXT, _n(2) + TEXT)},
    "JoyImageEditPlusTransformer3DModel": {
        (_n(1) + math.prod(JOY_PLUS_REFERENCE) + JOY_PLUS_PADDING + TEXT,) * 2,
    },
}

_WAN_PATCH = {"patch": "patch_size (t, h, w)", "grid_from": None, "timestep_scale": 1}

#: What a generic tool needs to read the latent grid from a forward call. ``sample``/``timestep``/``text`` are
#: (keyword, position in ``forward``); ``layout`` names the sample's axes (B batch, C channels, F frames, H, W);
#: ``timestep_scale`` is what the pipeline divides scheduler timesteps by before the call.
