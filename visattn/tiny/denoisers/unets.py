"""Tiny UNet-style (and a few odd transformer) denoisers of diffusers, with forward inputs shaped like their pipelines.

Each entry is built from a config with 32/64 channels, one layer per block where the class allows, text of 7 tokens
and a non-square latent (8 x 12 unless noted; video: 3 frames of 8 x 12), so height/width mix-ups show. ``grid`` is
the top-level latent ``(frames, height, width)``; UNet levels halve it (rounding up).

Left out: none. Notes on the borderline ones:

* ``UniDiffuserModel`` only takes a square latent (its output unpatchify takes ``sqrt`` of the token count and its
  position table is sized from ``sample_size``) and exactly ``num_text_tokens`` text tokens: it runs 8 x 8 here.
* ``UVit2DModel`` (aMUSEd) takes VQ token ids (int64), not a float latent.
* ``Kandinsky3UNet`` needs 4 levels (its per-level attention flags are hard-coded 4-tuples), ``layers_per_block >= 2``
  (with 1 the up blocks never reach their output width) and sides divisible by 8 (2x2 stride-2 down convolutions):
  it runs 16 x 24.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from visattn.tiny.denoisers.denoiser_spec import TinyDenoiser, built, constant_timesteps, input_generator, randn

H, W = 8, 12  # latent height, width
FRAMES = 3
TEXT = 7


# --- UNet3DConditionModel (TextToVideoSDPipeline) ---------------------------------------------------------------

_UNET3D = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 16,  # the 3D blocks use it as head dim (heads = channels // 16); transformer_in: 8 x 16
}


def _unet3d_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "sample": randn(g, b, 4, FRAMES, H, W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, 32),
        "return_dict": False,
    }


# --- UNetMotionModel (AnimateDiffPipeline: UNet2DConditionModel + MotionAdapter) --------------------------------

_MOTION_UNET2D = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}

_MOTION_ADAPTER = {
    "block_out_channels": (32, 64),
    "motion_layers_per_block": 1,
    "motion_transformer_layers_per_block": 1,
    "motion_mid_block_layers_per_block": 1,
    "motion_transformer_layers_per_mid_block": 1,
    "motion_num_attention_heads": 2,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}


@contextlib.contextmanager
def _diffusers_errors_only():
    """diffusers' logging at errors only: its from_unet builders warn about their own ``.to(dtype)`` calls."""
    from diffusers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _build_motion() -> torch.nn.Module:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_MOTION_UNET2D)
    adapter = MotionAdapter(**_MOTION_ADAPTER)
    with _diffusers_errors_only():
        return UNetMotionModel.from_unet2d(unet, adapter).eval()


def _motion_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "sample": randn(g, b, 4, FRAMES, H, W),
        "timestep": constant_timesteps(b),
        # AnimateDiffPipeline repeats the prompt embeddings per frame BEFORE the call: (B * F, T, D)
        "encoder_hidden_states": randn(g, b, TEXT, 32).repeat_interleave(FRAMES, dim=0),
        "return_dict": False,
    }


# --- I2VGenXLUNet (I2VGenXLPipeline) ----------------------------------------------------------------------------

_I2VGEN = {
    "in_channels": 4,  # image_latents_proj_in hard-codes 4 input channels
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 16,  # head dim in the 3D blocks, as for UNet3DConditionModel
}
#: cross-attention context = text + 8x8 image-latent tokens (adaptive pool to 32x32, two stride-2 convs) + in_channels
I2VGEN_CONTEXT = TEXT + 64 + 4


def _i2vgen_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "sample": randn(g, b, 4, FRAMES, H, W),
        "timestep": constant_timesteps(b),
        "fps": torch.full((b,), 16, dtype=torch.int64),
        # the pipeline's image latents: the VAE latent at frame 0, then per-frame position masks
        "image_latents": randn(g, b, 4, FRAMES, H, W),
        "image_embeddings": randn(g, b, 1, 32),
        "encoder_hidden_states": randn(g, b, TEXT, 32),
        "return_dict": False,
    }


# --- UNetSpatioTemporalConditionModel (StableVideoDiffusionPipeline) --------------------------------------------

_SVD = {
    "in_channels": 8,  # noise latents + conditioning-image latents, concatenated on channels by the pipeline
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "block_out_channels": (32, 64),  # group norms are fixed at 32 groups
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 24,  # 3 added time ids x 8
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "num_attention_heads": (2, 4),
    "num_frames": FRAMES,
}


def _svd_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "sample": randn(g, b, FRAMES, 8, H, W),
        "timestep": torch.full((b,), 0.7, dtype=torch.float32),
        "encoder_hidden_states": randn(g, b, 1, 32),  # one CLIP image token
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * b),  # fps - 1, motion bucket id, noise aug strength
        "return_dict": False,
    }


# --- Kandinsky3UNet (Kandinsky3Pipeline) ------------------------------------------------------------------------

K3_H, K3_W = 16, 24
_KANDINSKY3 = {
    "in_channels": 4,
    "time_embedding_dim": 32,
    "groups": 8,
    "attention_head_dim": 8,  # Attention default heads (8) x 8
    "layers_per_block": 2,
    "block_out_channels": (32, 32, 64, 64),
    "cross_attention_dim": 32,
    "encoder_hid_dim": 24,
}


def _kandinsky3_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    mask = torch.ones(b, TEXT, dtype=torch.int64)
    mask[:, -1] = 0  # the pipeline keeps one padding token after the longest prompt
    return {
        "sample": randn(g, b, 4, K3_H, K3_W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, 24),
        "encoder_attention_mask": mask,  # required: the attention pooling calls .to() on it
        "return_dict": False,
    }


# --- StableCascadeUNet, prior / stage C (StableCascadePriorPipeline) --------------------------------------------

CASCADE_CLIP_SEQ = 4
_CASCADE_PRIOR = {
    "in_channels": 16,
    "out_channels": 16,
    "timestep_ratio_embedding_dim": 16,
    "patch_size": 1,
    "conditioning_dim": 32,
    "block_out_channels": (32, 64),
    "num_attention_heads": (2, 4),
    "down_num_layers_per_block": (1, 1),
    "up_num_layers_per_block": (1, 1),
    "down_blocks_repeat_mappers": (1, 1),
    "up_blocks_repeat_mappers": (1, 1),
    "block_types_per_layer": (
        ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
        ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
    ),
    "clip_text_in_channels": 24,
    "clip_text_pooled_in_channels": 24,
    "clip_image_in_channels": 16,
    "clip_seq": CASCADE_CLIP_SEQ,
    "dropout": (0.0, 0.0),
    "self_attn": True,
    "timestep_conditioning_type": ("sca", "crp"),
    "switch_level": (False,),  # the prior never changes resolution between its two levels
}


def _cascade_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "sample": randn(g, b, 16, H, W),
        "timestep_ratio": torch.full((b,), 0.5, dtype=torch.float32),
        "clip_text_pooled": randn(g, b, 1, 24),
        "clip_text": randn(g, b, TEXT, 24),
        "clip_img": randn(g, b, 1, 16),
        "return_dict": False,
    }


# --- UVit2DModel (AmusedPipeline) -------------------------------------------------------------------------------

UVIT_CODEBOOK = 32
_UVIT = {
    "hidden_size": 32,
    "use_bias": False,
    "cond_embed_dim": 24,
    "micro_cond_encode_dim": 4,
    "micro_cond_embed_dim": 20,  # 5 micro conditions x 4
    "encoder_hidden_size": 24,
    "vocab_size": UVIT_CODEBOOK + 8,  # codebook + mask token, rounded up
    "codebook_size": UVIT_CODEBOOK,
    "in_channels": 16,
    "block_out_channels": 32,
    "num_res_blocks": 1,
    "downsample": True,
    "upsample": True,
    "block_num_heads": 2,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "sample_size": H,
}


def _uvit_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    ids = torch.randint(0, UVIT_CODEBOOK, (b, H, W), generator=g)
    ids[:, ::2] = UVIT_CODEBOOK + 8 - 1  # mask token (vocab_size - 1), as the first steps of the pipeline see
    return {
        "input_ids": ids,
        "encoder_hidden_states": randn(g, b, TEXT, 24),
        "pooled_text_emb": randn(g, b, 24),
        "micro_conds": torch.tensor([[96.0, 64.0, 0.0, 0.0, 6.0]] * b),  # width, height, crop (2), aesthetic score
    }


# --- UNet2DModel (DDPMPipeline, unconditional) ------------------------------------------------------------------

_UNET2D = {
    "sample_size": (H, W),
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "attention_head_dim": 16,
    "norm_num_groups": 8,
}


def _unet2d_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {"sample": randn(g, b, 4, H, W), "timestep": constant_timesteps(b), "return_dict": False}


# --- UNetControlNetXSModel (StableDiffusionControlNetXSPipeline) -------------------------------------------------

_CONTROLNET_XS_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 2,  # the ControlNet-XS blocks take two resnets per down block
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,  # head count (legacy naming)
}


#: SDXL's: text_time micro-conditioning (6 time ids x 8 + the pooled text), the two CLIP encoders' 2 x 32 wide text
_SDXL_CONTROLNET_XS_UNET = {
    **_CONTROLNET_XS_UNET,
    "cross_attention_dim": 64,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
}


def controlnet_xs_base(sdxl: bool = False) -> torch.nn.Module:
    """The tiny UNet2DConditionModel a ControlNet-XS model is made from (seeded), SD- or SDXL-shaped."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**(_SDXL_CONTROLNET_XS_UNET if sdxl else _CONTROLNET_XS_UNET)).eval()


def controlnet_xs_adapter(unet: torch.nn.Module) -> torch.nn.Module:
    """A tiny ControlNetXSAdapter for ``unet`` (half its channels, a two-level control image embedding)."""
    from diffusers import ControlNetXSAdapter

    with _diffusers_errors_only():
        return ControlNetXSAdapter.from_unet(
            unet,
            size_ratio=0.5,
            num_attention_heads=[2, 2],
            conditioning_embedding_out_channels=(8, 16),
            learn_time_embedding=True,
        ).eval()


def controlnet_xs_model(sdxl: bool = False) -> torch.nn.Module:
    """The tiny UNetControlNetXSModel, made as its pipelines make it: the base UNet fused with its adapter."""
    from diffusers import UNetControlNetXSModel

    unet = controlnet_xs_base(sdxl)
    adapter = controlnet_xs_adapter(unet)
    with _diffusers_errors_only():
        return UNetControlNetXSModel.from_unet(unet, adapter).eval()


def _controlnet_xs_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "sample": randn(g, b, 4, H, W),
        "timestep": constant_timesteps(b),
        "encoder_hidden_states": randn(g, b, TEXT, 32),
        "controlnet_cond": randn(g, b, 3, 2 * H, 2 * W),  # the control image at twice the latent size (8x in SD)
        "return_dict": False,
    }


# --- DreamLiteUNetModel (DreamLitePipeline) ---------------------------------------------------------------------

_DREAMLITE = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
    "up_block_types": ("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,  # head count (legacy naming)
    "encoder_hid_dim": 24,
    "encoder_hid_dim_type": "text_proj_rms",
    "addition_embed_type": "time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 16,  # 2 time ids (original width, height) x 8
    "ff_mult": 2,
    "num_kv_heads": 1,
}


def _dreamlite_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    noisy = randn(g, b, 4, H, W // 2)
    cond = torch.zeros(b, 4, H, W // 2)  # text-to-image: zero condition latents, concatenated on WIDTH
    mask = torch.ones(b, TEXT, dtype=torch.int64)
    mask[0, -2:] = 0
    return {
        "sample": torch.cat([noisy, cond], dim=3),
        "timestep": torch.full((b,), 0.8, dtype=torch.float32),
        "encoder_hidden_states": randn(g, b, TEXT, 24),
        "encoder_attention_mask": mask,
        "added_cond_kwargs": {"time_ids": torch.tensor([[48.0, 64.0]] * b)},
        "return_dict": False,
    }


# --- Transformer2DModel, continuous input (the UNet transformer block, used alone) ------------------------------

_T2D = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "num_layers": 1,
    "norm_num_groups": 4,
    "cross_attention_dim": 24,
}


def _t2d_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "hidden_states": randn(g, b, 4, H, W),
        "encoder_hidden_states": randn(g, b, TEXT, 24),
        "timestep": constant_timesteps(b),
        "return_dict": False,
    }


# --- UniDiffuserModel (UniDiffuserPipeline) ---------------------------------------------------------------------

UNIDIFFUSER_SIDE = 8  # square only
_UNIDIFFUSER = {
    "text_dim": 16,
    "clip_img_dim": 16,
    "num_text_tokens": TEXT,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 3,  # 1 in-block, the mid block, 1 out-block (long skip)
    "sample_size": UNIDIFFUSER_SIDE,
    "patch_size": 2,
    "use_data_type_embedding": True,  # UniDiffuser-v1
}


def _build_unidiffuser() -> torch.nn.Module:
    from diffusers import UniDiffuserModel

    torch.manual_seed(0)
    return UniDiffuserModel(**_UNIDIFFUSER).eval()


def _unidiffuser_inputs(b: int) -> dict[str, Any]:
    g = input_generator()
    return {
        "latent_image_embeds": randn(g, b, 4, UNIDIFFUSER_SIDE, UNIDIFFUSER_SIDE),
        "image_embeds": randn(g, b, 1, 16),
        "prompt_embeds": randn(g, b, TEXT, 16),
        "timestep_img": constant_timesteps(b),
        "timestep_text": constant_timesteps(b, 0.0),  # text-to-image mode: the text is clean
        "data_type": 1,
    }


TINY_DENOISERS: tuple[TinyDenoiser, ...] = (
    TinyDenoiser(
        class_name="UNet3DConditionModel",
        build=built("UNet3DConditionModel", **_UNET3D),
        inputs=_unet3d_inputs,
        grid=(FRAMES, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="TextToVideoSDPipeline",
        notes="Spatial attention runs per frame (SDPA batch B*F); temporal attention (transformer_in and every "
        "temp_attentions.*) runs over the F frames with batch B*h*w and has no text (attn1 and attn2 both self). Mid "
        "block sits at the deepest level. transformer_in always has 8 heads of attention_head_dim.",
    ),
    TinyDenoiser(
        class_name="UNetMotionModel",
        build=_build_motion,
        inputs=_motion_inputs,
        grid=(FRAMES, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="AnimateDiffPipeline",
        notes="Built as the pipeline does: UNetMotionModel.from_unet2d(UNet2DConditionModel, MotionAdapter). Spatial "
        "attention per frame (batch B*F); motion modules (*.motion_modules.*, also in the blocks without "
        "cross-attention) attend over F frames with batch B*h*w, attn1 and attn2 both self, after sinusoidal frame "
        "positions. Input is (B, C, F, H, W) although the docstring says (B, F, C, H, W). Text must come already "
        "repeated per frame, (B*F, T, D), as AnimateDiffPipeline passes it (the model does not repeat it).",
    ),
    TinyDenoiser(
        class_name="I2VGenXLUNet",
        build=built("I2VGenXLUNet", **_I2VGEN),
        inputs=_i2vgen_inputs,
        grid=(FRAMES, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="I2VGenXLPipeline",
        notes=f"Cross-attention context is text ({TEXT}) + 64 image-latent tokens + 4 CLIP-image tokens = "
        f"{I2VGEN_CONTEXT} keys: text comes first. image_latents_temporal_encoder runs one extra temporal "
        "self-attention over F frames (batch B*H*W at full latent size) before conv_in.",
    ),
    TinyDenoiser(
        class_name="UNetSpatioTemporalConditionModel",
        build=built("UNetSpatioTemporalConditionModel", **_SVD),
        inputs=_svd_inputs,
        grid=(FRAMES, H, W),
        text_tokens=1,
        text_position=None,
        pipeline="StableVideoDiffusionPipeline",
        notes="No text: the cross-attention context is ONE CLIP image token. Latents are (B, F, C, H, W). Each "
        "TransformerSpatioTemporalModel runs spatial attn1/attn2 per frame then temporal_transformer_blocks "
        "attn1 (self over F, batch B*h*w) and attn2 (cross to the image token, batch B*h*w, Nq=F, Nk=1).",
    ),
    TinyDenoiser(
        class_name="Kandinsky3UNet",
        build=built("Kandinsky3UNet", **_KANDINSKY3),
        inputs=_kandinsky3_inputs,
        grid=(1, K3_H, K3_W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="Kandinsky3Pipeline",
        notes="4 levels; level 0 (16x24) has no attention, so attention runs at 8x12, 4x6, 2x3. Self-attention "
        "and text cross-attention are separate Kandinsky3AttentionBlock modules: attentions.0 is self (first in "
        "down blocks, LAST in up blocks), attentions.1.. are cross. add_time_condition.attention "
        "pools the text into the time embedding (Nq=1, Nk=text). Text mask becomes an additive -10000 float mask "
        "(B, 1, T) on every cross call.",
    ),
    TinyDenoiser(
        class_name="StableCascadeUNet",
        build=built("StableCascadeUNet", **_CASCADE_PRIOR),
        inputs=_cascade_inputs,
        grid=(1, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="StableCascadePriorPipeline",
        notes="Prior (stage C) config. SDCascadeAttnBlock with self_attn: queries are the h*w image tokens, keys are "
        f"[h*w image tokens, {TEXT} text, {CASCADE_CLIP_SEQ} pooled-text, {CASCADE_CLIP_SEQ} image-embed tokens] "
        "(self and cross fused in one call, text after the image in the keys only). switch_level=(False,): both "
        "levels at the full latent size. Decoder (stage B, StableCascadeDecoderPipeline) has only the pooled text.",
    ),
    TinyDenoiser(
        class_name="UVit2DModel",
        build=built("UVit2DModel", **_UVIT),
        inputs=_uvit_inputs,
        grid=(1, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="AmusedPipeline",
        notes="Input is int64 VQ token ids (B, H, W); output logits (B, codebook, H, W). downsample=True: all "
        "attention runs at H/2 x W/2. UVitBlock SkipFFTransformerBlock attn1 AND attn2 are both cross-attention to "
        "text; only transformer_layers.*.attn1 is self-attention.",
    ),
    TinyDenoiser(
        class_name="UNet2DModel",
        build=built("UNet2DModel", **_UNET2D),
        inputs=_unet2d_inputs,
        grid=(1, H, W),
        text_tokens=None,
        text_position=None,
        pipeline="DDPMPipeline",
        notes="Unconditional: self-attention only (AttnDownBlock2D / AttnUpBlock2D / mid), heads = channels // "
        "attention_head_dim.",
    ),
    TinyDenoiser(
        class_name="UNetControlNetXSModel",
        build=controlnet_xs_model,
        inputs=_controlnet_xs_inputs,
        grid=(1, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="StableDiffusionControlNetXSPipeline",
        notes="Built as the pipeline's model is: UNetControlNetXSModel.from_unet(UNet2DConditionModel, "
        "ControlNetXSAdapter). Every block holds the base UNet's attention (base_attentions, base_midblock) and the "
        "smaller control branch's (ctrl_attentions, ctrl_midblock), both self and cross-attention to the text at "
        "the block's grid; controlnet_cond is the control image in pixels.",
    ),
    TinyDenoiser(
        class_name="DreamLiteUNetModel",
        build=built("DreamLiteUNetModel", **_DREAMLITE),
        inputs=_dreamlite_inputs,
        grid=(1, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline="DreamLitePipeline",
        notes=f"The pipeline concatenates noisy latents and condition-image latents on WIDTH: the UNet sees a "
        f"{H}x{W} diptych whose left half ({H}x{W // 2}) is the image being denoised; output is sliced back to the "
        "left half. DreamLiteAttnProcessor2_0 (GQA: 1 kv head repeated to all heads before SDPA, RMS qk-norm) goes "
        "through dispatch_attention_fn. *NoSelfAttn* blocks have cross-attention only.",
    ),
    TinyDenoiser(
        class_name="Transformer2DModel",
        build=built("Transformer2DModel", **_T2D),
        inputs=_t2d_inputs,
        grid=(1, H, W),
        text_tokens=TEXT,
        text_position=None,
        pipeline=None,
        notes="Continuous input (GroupNorm, 1x1 conv proj_in, residual out): the transformer stage of SD UNets used "
        "alone; no pipeline drives it as the denoiser (VQDiffusionPipeline uses the discrete variant). timestep is "
        "ignored with layer_norm blocks.",
    ),
    TinyDenoiser(
        class_name="UniDiffuserModel",
        build=_build_unidiffuser,
        inputs=_unidiffuser_inputs,
        grid=(1, UNIDIFFUSER_SIDE // 2, UNIDIFFUSER_SIDE // 2),
        text_tokens=TEXT,
        text_position="first",
        pipeline="UniDiffuserPipeline",
        notes="Joint self-attention only over [t_img, t_text, data_type, text (7), clip image (1), image (h*w)]: "
        "3 tokens precede the text and 1 CLIP token sits between text and image; image tokens are last. Square "
        "latents only; text length must equal num_text_tokens. Returns (image, clip image, text) predictions.",
    ),
)
