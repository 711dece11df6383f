"""Tiny text-to-image transformer denoisers of diffusers, built from configs, with forward inputs shaped as their
pipelines pass them (packed latents, position ids, text masks...), for the per-class coverage tests.

Every entry's ``grid``, ``text_tokens`` and ``text_position`` were read from the attention processors and checked at
run time by recording each ``torch.nn.functional.scaled_dot_product_attention`` call of one forward.
"""

# Left out: none. All 29 classes build tiny and run on CPU with diffusers 0.42.1. Work-arounds, in the entries:
# NucleusMoEImageTransformer2DModel leaves its expert weights uninitialized (build seeds them);
# DreamLiteTransformer2DModel needs the U-Net's DreamLiteAttnProcessor2_0 for GQA (build installs it);
# DiTTransformer2DModel only unpatchifies square grids (4x4 here); ErnieImage, PRX, LuminaNext and Bria Fibo 2
# zero-initialize gates or output layers (build seeds them so attention reaches the output).

from __future__ import annotations

import functools
from typing import Any

import torch

from visattn.tiny.denoisers.denoiser_spec import TinyDenoiser, randn


def _build(class_name: str, reinit: tuple[str, ...] = (), **config: Any) -> torch.nn.Module:
    """The class built from ``config`` with seeded weights, in eval mode. Parameters whose names contain one of
    ``reinit`` (zero-initialized gates and output layers) get seeded random values, so that attention reaches the
    output of the untrained model."""
    import diffusers

    torch.manual_seed(0)
    model = getattr(diffusers, class_name)(**config).eval()
    if reinit:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(part in name for part in reinit):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _builder(class_name: str, **config: Any):
    return functools.partial(_build, class_name, **config)


def _build_nucleus(**config: Any) -> torch.nn.Module:
    """NucleusMoE's routed experts (SwiGLUExperts) allocate their weights with torch.empty and never initialize
    them: give them seeded values so two builds are equal and finite."""
    model = _build("NucleusMoEImageTransformer2DModel", **config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".experts." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def _flow_t(batch_size: int) -> torch.Tensor:
    """Flow-matching timesteps in [0, 1], one per row (as pipelines pass ``t / 1000``)."""
    return torch.linspace(0.8, 0.4, batch_size, dtype=torch.float32)


def _text_mask(batch_size: int, tokens: int, pad_last_row: int = 2) -> torch.Tensor:
    """All rows valid except the last, whose final ``pad_last_row`` tokens are padding (when batch_size > 1)."""
    mask = torch.ones(batch_size, tokens, dtype=torch.long)
    if batch_size > 1:
        mask[-1, tokens - pad_last_row :] = 0
    return mask


def _ids_thwl(height: int, width: int) -> torch.Tensor:
    """(t, h, w, l) position ids of an image grid, row-major (Flux 2 / Flux 3)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(height), torch.arange(width), torch.arange(1)).float()


def _ids_text_thwl(tokens: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(tokens)).float()


# --------------------------------------------------------------------------------------------------------- Qwen-Image
_QWEN_H, _QWEN_W, _QWEN_T = 4, 6, 7


def _qwen_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    return {
        "hidden_states": randn(gen, batch_size, _QWEN_H * _QWEN_W, 64),
        "encoder_hidden_states": randn(gen, batch_size, _QWEN_T, 32),
        "encoder_hidden_states_mask": _text_mask(batch_size, _QWEN_T),
        "timestep": _flow_t(batch_size),
        "img_shapes": [[(1, _QWEN_H, _QWEN_W)]] * batch_size,
        "return_dict": False,
    }


QWEN_IMAGE = TinyDenoiser(
    class_name="QwenImageTransformer2DModel",
    build=_builder(
        "QwenImageTransformer2DModel",
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
    ),
    inputs=_qwen_inputs,
    grid=(1, _QWEN_H, _QWEN_W),
    text_tokens=_QWEN_T,
    text_position="first",
    pipeline="QwenImagePipeline",
    notes="Joint [text, image] attention in every block; the text mask becomes a bool key mask [B, 1, 1, T+HW].",
)

# ----------------------------------------------------------------------------------------------------- Qwen-Image 2.1
_QWEN21_H, _QWEN21_W, _QWEN21_T = 4, 6, 7


def _qwen21_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(2)
    slots = _QWEN21_H * _QWEN21_W // 4
    img_mask = torch.zeros(batch_size, _QWEN21_T + slots, dtype=torch.bool)
    img_mask[:, _QWEN21_T:] = True
    return {
        "hidden_states": randn(gen, batch_size, _QWEN21_H * _QWEN21_W, 16),
        "encoder_hidden_states": randn(gen, batch_size, _QWEN21_T, 32),
        "encoder_hidden_states_mask": _text_mask(batch_size, _QWEN21_T),
        "timestep": _flow_t(batch_size),
        "img_shapes": [[(1, _QWEN21_H, _QWEN21_W)]] * batch_size,
        "img_mask": img_mask,
        "return_dict": False,
    }


QWEN_IMAGE_21 = TinyDenoiser(
    class_name="QwenImage21Transformer2DModel",
    build=_builder(
        "QwenImage21Transformer2DModel",
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        context_in_dim=32,
        axes_dims_rope=(4, 6, 6),
    ),
    inputs=_qwen21_inputs,
    grid=(1, _QWEN21_H, _QWEN21_W),
    text_tokens=_QWEN21_T,
    text_position="first",
    pipeline="QwenImage21Pipeline",
    notes=(
        "Single-stream over one joint [text, image] sequence, block-causal: the default QwenImage21AttnProcessor "
        "makes 2 SDPA calls per block, text queries over text keys (Nq=T, Nk=T, bool causal tril & key mask "
        "[B, 1, T, T]) and image queries over all keys (Nq=HW, Nk=T+HW, bool key mask [B, 1, 1, T+HW]). "
        "QwenImage21FlexAttnProcessor (opt-in) uses flex_attention instead of SDPA. img_mask marks one VLM slot per "
        "2x2 latent tokens (H, W even). The output covers the whole joint sequence [B, T+HW, C]; the pipeline keeps "
        "the last HW rows."
    ),
)

# ------------------------------------------------------------------------------------------------------------- Flux 2
_FLUX2_H, _FLUX2_W, _FLUX2_T = 4, 6, 7


def _flux2_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(3)
    return {
        "hidden_states": randn(gen, batch_size, _FLUX2_H * _FLUX2_W, 16),
        "encoder_hidden_states": randn(gen, batch_size, _FLUX2_T, 32),
        "timestep": _flow_t(batch_size),
        "img_ids": _ids_thwl(_FLUX2_H, _FLUX2_W).repeat(batch_size, 1, 1),
        "txt_ids": _ids_text_thwl(_FLUX2_T).repeat(batch_size, 1, 1),
        "guidance": torch.full((batch_size,), 4.0),
        "return_dict": False,
    }


FLUX2 = TinyDenoiser(
    class_name="Flux2Transformer2DModel",
    build=_builder(
        "Flux2Transformer2DModel",
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
    ),
    inputs=_flux2_inputs,
    grid=(1, _FLUX2_H, _FLUX2_W),
    text_tokens=_FLUX2_T,
    text_position="first",
    pipeline="Flux2Pipeline",
    notes=(
        "Double blocks (Flux2Attention) and single blocks (Flux2ParallelSelfAttention, fused QKV+MLP projection) both "
        "attend over [text, image]. img_ids/txt_ids are (t, h, w, l); only row 0 is used."
    ),
)

# ------------------------------------------------------------------------------------------------------------- Flux 3
_FLUX3_H, _FLUX3_W, _FLUX3_T = 4, 6, 7


def _flux3_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(4)
    return {
        "hidden_states": randn(gen, batch_size, _FLUX3_H * _FLUX3_W, 16),
        "encoder_hidden_states": randn(gen, batch_size, _FLUX3_T, 32),
        "timestep": _flow_t(batch_size),
        "img_ids": _ids_thwl(_FLUX3_H, _FLUX3_W) * torch.tensor([1.0, 0.5, 0.5, 1.0]),  # image_rope_scale 0.5
        "txt_ids": _ids_text_thwl(_FLUX3_T),
        "return_dict": False,
    }


FLUX3 = TinyDenoiser(
    class_name="Flux3Transformer2DModel",
    build=_builder(
        "Flux3Transformer2DModel",
        in_channels=16,
        cond_in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        timestep_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
    ),
    inputs=_flux3_inputs,
    grid=(1, _FLUX3_H, _FLUX3_W),
    text_tokens=_FLUX3_T,
    text_position="first",
    pipeline="Flux3ModularPipeline",
    notes=(
        "Per-mode blocks first: txt_mode_blocks self-attend over text only (Nq=Nk=T) and mode_blocks['image'] over "
        "the image only (Nq=Nk=HW); then single blocks attend over [text, image] (and reference tokens "
        "image_cond_hidden_states appended after the image, when given). No classic pipeline: only the modular "
        "Flux3ModularPipeline. img_ids/txt_ids are 2-D (N, 4), shared by all rows; the pipeline scales image h/w ids "
        "by image_rope_scale=0.5."
    ),
)

# ------------------------------------------------------------------------------------------------------------ Z-Image
_ZIMAGE_H, _ZIMAGE_W, _ZIMAGE_T = 4, 8, 7


def _zimage_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(5)
    return {
        "x": [randn(gen, 4, 1, 2 * _ZIMAGE_H, 2 * _ZIMAGE_W) for _ in range(batch_size)],
        "t": _flow_t(batch_size),
        "cap_feats": [randn(gen, _ZIMAGE_T, 32) for _ in range(batch_size)],
        "return_dict": False,
    }


Z_IMAGE = TinyDenoiser(
    class_name="ZImageTransformer2DModel",
    build=_builder(
        "ZImageTransformer2DModel",
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,
        axes_dims=[4, 6, 6],
        axes_lens=[256, 32, 32],
    ),
    inputs=_zimage_inputs,
    grid=(1, _ZIMAGE_H, _ZIMAGE_W),
    text_tokens=_ZIMAGE_T,
    text_position="last",
    pipeline="ZImagePipeline",
    notes=(
        "Inputs are per-row lists: x of [C, F, H, W] latents, cap_feats of [L, D]; the output is a list too. Each "
        "sequence is padded (unmasked, with learned x_pad_token / cap_pad_token) to a multiple of 32 tokens (the "
        "4x8 grid is exactly 32, the 7 text tokens become 32). noise_refiner: image-only attention (Nq=Nk=32); "
        "context_refiner: text-only (Nq=Nk=32 padded text); main layers: [image, text] (Nq=Nk=32+32=64). A bool key "
        "mask [B, 1, 1, N] appears only when rows differ in length. n_kv_heads is not used (no GQA)."
    ),
)

# --------------------------------------------------------------------------------------------------------------- Sana
_SANA_H, _SANA_W, _SANA_T = 4, 6, 7


def _sana_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(6)
    return {
        "hidden_states": randn(gen, batch_size, 4, _SANA_H, _SANA_W),
        "encoder_hidden_states": randn(gen, batch_size, _SANA_T, 32),
        "encoder_attention_mask": _text_mask(batch_size, _SANA_T),
        "timestep": torch.tensor([999.0, 500.0, 250.0, 10.0][:batch_size] + [500.0] * max(0, batch_size - 4)),
        "return_dict": False,
    }


SANA = TinyDenoiser(
    class_name="SanaTransformer2DModel",
    build=_builder(
        "SanaTransformer2DModel",
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=32,
        sample_size=8,
        patch_size=1,
    ),
    inputs=_sana_inputs,
    grid=(1, _SANA_H, _SANA_W),
    text_tokens=_SANA_T,
    text_position=None,
    pipeline="SanaPipeline",
    notes=(
        "Self-attention (transformer_blocks.*.attn1) is ReLU linear attention (SanaLinearAttnProcessor2_0): no SDPA "
        "call. Only the text cross-attention attn2 (SanaAttnProcessor2_0) calls SDPA, with an additive float key mask "
        "[B, heads, 1, T] (-10000 at padding) built from encoder_attention_mask."
    ),
)

# ----------------------------------------------------------------------------------------------------------- Lumina 2
_LUMINA2_H, _LUMINA2_W, _LUMINA2_T = 4, 6, 7


def _lumina2_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(7)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _LUMINA2_H, 2 * _LUMINA2_W),
        "timestep": _flow_t(batch_size),
        "encoder_hidden_states": randn(gen, batch_size, _LUMINA2_T, 32),
        "encoder_attention_mask": _text_mask(batch_size, _LUMINA2_T),
        "return_dict": False,
    }


LUMINA2 = TinyDenoiser(
    class_name="Lumina2Transformer2DModel",
    build=_builder(
        "Lumina2Transformer2DModel",
        sample_size=16,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 6, 6),
        axes_lens=(128, 32, 32),
        cap_feat_dim=32,
    ),
    inputs=_lumina2_inputs,
    grid=(1, _LUMINA2_H, _LUMINA2_W),
    text_tokens=_LUMINA2_T,
    text_position="first",
    pipeline="Lumina2Pipeline",
    notes=(
        "context_refiner: text-only attention (Nq=Nk=T, bool key mask [B, 1, 1, T]); noise_refiner: image-only "
        "(Nq=Nk=HW, no mask); main layers: joint [valid text, image, right padding] per row (Nq=Nk=max valid text + "
        "HW): a row with padded text has its image tokens shifted left to start at its own valid-text count, and "
        "gets a bool key mask [B, 1, 1, N] (only when rows' valid lengths differ). GQA (num_kv_heads < heads) is "
        "done by repeating K/V before SDPA (SDPA sees full heads, enable_gqa=False)."
    ),
)

# ------------------------------------------------------------------------------------------------------- Lumina-Next
_LNEXT_H, _LNEXT_W, _LNEXT_T = 4, 6, 7


def _lumina_next_inputs(batch_size: int) -> dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    gen = torch.Generator().manual_seed(8)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _LNEXT_H, 2 * _LNEXT_W),
        "timestep": _flow_t(batch_size),
        "encoder_hidden_states": randn(gen, batch_size, _LNEXT_T, 32),
        "encoder_mask": _text_mask(batch_size, _LNEXT_T),
        "image_rotary_emb": get_2d_rotary_pos_embed_lumina(16, 384, 384),
        # the pipeline's proportional attention: (sample_size * vae_scale_factor // 16) ** 2 = (16 * 8 // 16) ** 2
        "cross_attention_kwargs": {"base_sequence_length": 64},
        "return_dict": False,
    }


LUMINA_NEXT = TinyDenoiser(
    class_name="LuminaNextDiT2DModel",
    build=_builder(
        "LuminaNextDiT2DModel",
        reinit=(".gate",),
        sample_size=16,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        cross_attention_dim=32,
    ),
    inputs=_lumina_next_inputs,
    grid=(1, _LNEXT_H, _LNEXT_W),
    text_tokens=_LNEXT_T,
    text_position=None,
    pipeline="LuminaPipeline",
    notes=(
        "Per block: self-attention attn1 (Nq=Nk=HW) and text cross-attention attn2 (Nq=HW, Nk=T), both "
        "LuminaAttnProcessor2_0 with a bool mask expanded to [B, heads, Nq, Nk] (all-true for attn1). The pipeline "
        "passes cross_attention_kwargs={'base_sequence_length': ...} (proportional attention): attn1's SDPA gets "
        "scale=sqrt(log(HW, base)) / sqrt(head_dim) (1/sqrt(head_dim) without it); attn2 passes scale=None. "
        "attn1 has to_out = Identity: both outputs are mixed (cross-attention gated per head by tanh(gate)) and "
        "projected by attn2.to_out. GQA by repeating K/V before SDPA. image_rotary_emb is a "
        "precomputed 384x384 table (get_2d_rotary_pos_embed_lumina) sliced to the grid; learn_sigma doubles the "
        "output channels. The per-head cross-attention gates start at zero in diffusers: build seeds them."
    ),
)


def _ids_hw3(height: int, width: int) -> torch.Tensor:
    """(0, h, w) position ids of an image grid, row-major (Flux 1 style: Chroma, Bria, Ovis, LongCat...)."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def _packed_with_hw3_ids(seed: int, batch_size: int, height: int, width: int, text: int, timestep) -> dict[str, Any]:
    """Flux-style packed inputs: latent tokens with ``(0, h, w)`` ids and text with zero ids."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": randn(gen, batch_size, height * width, 16),
        "encoder_hidden_states": randn(gen, batch_size, text, 32),
        "timestep": timestep,
        "img_ids": _ids_hw3(height, width),
        "txt_ids": torch.zeros(text, 3),
        "return_dict": False,
    }


def _scheduler_t(batch_size: int) -> torch.Tensor:
    """Raw scheduler timesteps in [0, 1000], one per row."""
    return torch.linspace(800.0, 400.0, batch_size, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------- CogView4
_COGVIEW4_H, _COGVIEW4_W, _COGVIEW4_T = 4, 6, 7


def _cogview_inputs(batch_size: int, height: int, width: int, tokens: int, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.tensor([[16.0 * height, 16.0 * width]]).repeat(batch_size, 1)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * height, 2 * width),
        "encoder_hidden_states": randn(gen, batch_size, tokens, 32),
        "timestep": _scheduler_t(batch_size),
        "original_size": pixels,
        "target_size": pixels,
        "crop_coords": torch.zeros(batch_size, 2),
        "return_dict": False,
    }


COGVIEW4 = TinyDenoiser(
    class_name="CogView4Transformer2DModel",
    build=_builder(
        "CogView4Transformer2DModel",
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=32,
        time_embed_dim=16,
        condition_dim=8,
        pos_embed_max_size=16,
        sample_size=8,
        rope_axes_dim=(16, 16),
    ),
    inputs=functools.partial(_cogview_inputs, height=_COGVIEW4_H, width=_COGVIEW4_W, tokens=_COGVIEW4_T, seed=9),
    grid=(1, _COGVIEW4_H, _COGVIEW4_W),
    text_tokens=_COGVIEW4_T,
    text_position="first",
    pipeline="CogView4Pipeline",
    notes=(
        "CogView4AttnProcessor concatenates [text, image] (RoPE on the image part only) and calls SDPA directly. The "
        "optional forward attention_mask ([B, T] text mask, not passed by the pipeline) becomes a float 0/1 "
        "[B, 1, N, N] matrix."
    ),
)

# ------------------------------------------------------------------------------------------------------- CogView3Plus
_COGVIEW3_H, _COGVIEW3_W, _COGVIEW3_T = 4, 6, 7

COGVIEW3PLUS = TinyDenoiser(
    class_name="CogView3PlusTransformer2DModel",
    build=_builder(
        "CogView3PlusTransformer2DModel",
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        out_channels=4,
        text_embed_dim=32,
        time_embed_dim=16,
        condition_dim=8,
        pos_embed_max_size=16,
        sample_size=8,
    ),
    inputs=functools.partial(_cogview_inputs, height=_COGVIEW3_H, width=_COGVIEW3_W, tokens=_COGVIEW3_T, seed=10),
    grid=(1, _COGVIEW3_H, _COGVIEW3_W),
    text_tokens=_COGVIEW3_T,
    text_position="first",
    pipeline="CogView3PlusPipeline",
    notes="CogVideoXAttnProcessor2_0: joint [text, image] attention, SDPA called directly, no mask.",
)

# ------------------------------------------------------------------------------------------------------------- Chroma
_CHROMA_H, _CHROMA_W, _CHROMA_T = 4, 6, 7


def _chroma_inputs(batch_size: int) -> dict[str, Any]:
    # as ChromaPipeline: float text mask, extended with ones for the image tokens
    mask = torch.cat(
        [_text_mask(batch_size, _CHROMA_T).float(), torch.ones(batch_size, _CHROMA_H * _CHROMA_W, dtype=torch.bool)],
        dim=1,
    )
    inputs = _packed_with_hw3_ids(11, batch_size, _CHROMA_H, _CHROMA_W, _CHROMA_T, _flow_t(batch_size))
    return {**inputs, "attention_mask": mask}


CHROMA = TinyDenoiser(
    class_name="ChromaTransformer2DModel",
    build=_builder(
        "ChromaTransformer2DModel",
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    ),
    inputs=_chroma_inputs,
    grid=(1, _CHROMA_H, _CHROMA_W),
    text_tokens=_CHROMA_T,
    text_position="first",
    pipeline="ChromaPipeline",
    notes=(
        "Flux attention (FluxAttnProcessor) over [text, image] in double and single blocks. attention_mask "
        "[B, T+HW] (the pipeline's float text mask + ones) becomes the outer product [B, 1, N, N], a FLOAT 0/1 "
        "tensor that SDPA adds to the scores (it is not a boolean mask)."
    ),
)

# ---------------------------------------------------------------------------------------------------------- AuraFlow
_AURA_H, _AURA_W, _AURA_T = 4, 6, 7


def _auraflow_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(12)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _AURA_H, 2 * _AURA_W),
        "encoder_hidden_states": randn(gen, batch_size, _AURA_T, 32),
        "timestep": _flow_t(batch_size),
        "return_dict": False,
    }


AURAFLOW = TinyDenoiser(
    class_name="AuraFlowTransformer2DModel",
    build=_builder(
        "AuraFlowTransformer2DModel",
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=64,
    ),
    inputs=_auraflow_inputs,
    grid=(1, _AURA_H, _AURA_W),
    text_tokens=_AURA_T,
    text_position="first",
    pipeline="AuraFlowPipeline",
    notes=(
        "8 learned register tokens are prepended to the text: joint sequences are [8 registers, T text, HW image] "
        "(Nq=Nk=8+T+HW) in both MMDiT (AuraFlowAttnProcessor2_0) and single DiT blocks (AuraFlowAttnProcessor2_0, "
        "already joint)."
    ),
)

# ----------------------------------------------------------------------------------------------------- HiDream-Image
_HIDREAM_H, _HIDREAM_W, _HIDREAM_T5, _HIDREAM_LLAMA = 4, 6, 4, 3
_HIDREAM_MAX_SEQ = 36  # max_resolution (12, 12) / patch 2 squared: non-square grids are padded to this many tokens


def _hidream_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(13)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _HIDREAM_H, 2 * _HIDREAM_W),
        "timesteps": _scheduler_t(batch_size),
        "encoder_hidden_states_t5": randn(gen, batch_size, _HIDREAM_T5, 32),
        "encoder_hidden_states_llama3": randn(gen, 2, batch_size, _HIDREAM_LLAMA, 24),
        "pooled_embeds": randn(gen, batch_size, 16),
        "return_dict": False,
    }


HIDREAM = TinyDenoiser(
    class_name="HiDreamImageTransformer2DModel",
    build=_builder(
        "HiDreamImageTransformer2DModel",
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_channels=[32, 24],
        text_emb_dim=16,
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(4, 6, 6),
        max_resolution=(12, 12),
        llama_layers=[0, 1],
    ),
    inputs=_hidream_inputs,
    grid=(1, _HIDREAM_H, _HIDREAM_W),
    text_tokens=_HIDREAM_T5 + 2 * _HIDREAM_LLAMA,
    text_position="last",
    pipeline="HiDreamImagePipeline",
    notes=(
        "Joint [image, text] in double and single blocks (HiDreamAttnProcessor, SDPA called directly, no mask). "
        "Text per block = T5 tokens + one Llama layer's tokens carried from the start + the block's own Llama layer "
        "(encoder_hidden_states_llama3 is stacked [layers, B, L, D], indexed by llama_layers): T = T5 + 2*L = 10 here. "
        "A NON-SQUARE latent is padded to max_seq = max_resolution[0]*max_resolution[1]/p^2 tokens (36 here, 4096 "
        "in the real model): image part = 36 slots, the first HW=24 real (row-major), padding keys zeroed by "
        "multiplying K with hidden_states_masks (no SDPA mask), so Nq=Nk=36+T. A square latent is not padded. The "
        "pipeline negates the output."
    ),
)

# ------------------------------------------------------------------------------------------------------- Hunyuan-DiT
_HDIT_H, _HDIT_W, _HDIT_CLIP, _HDIT_T5 = 4, 6, 4, 3


def _hunyuan_dit_inputs(batch_size: int) -> dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    gen = torch.Generator().manual_seed(14)
    crops = get_resize_crop_region_for_grid((_HDIT_H, _HDIT_W), 512 // 8 // 2)
    size = [16.0 * _HDIT_H, 16.0 * _HDIT_W]
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _HDIT_H, 2 * _HDIT_W),
        "timestep": _scheduler_t(batch_size),
        "encoder_hidden_states": randn(gen, batch_size, _HDIT_CLIP, 32),
        "text_embedding_mask": _text_mask(batch_size, _HDIT_CLIP, pad_last_row=1),
        "encoder_hidden_states_t5": randn(gen, batch_size, _HDIT_T5, 24),
        "text_embedding_mask_t5": _text_mask(batch_size, _HDIT_T5, pad_last_row=1),
        "image_meta_size": torch.tensor([size + size + [0.0, 0.0]]).repeat(batch_size, 1),
        "style": torch.zeros(batch_size, dtype=torch.long),
        "image_rotary_emb": get_2d_rotary_pos_embed(16, crops, (_HDIT_H, _HDIT_W), output_type="pt"),
        "return_dict": False,
    }


HUNYUAN_DIT = TinyDenoiser(
    class_name="HunyuanDiT2DModel",
    build=_builder(
        "HunyuanDiT2DModel",
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        patch_size=2,
        sample_size=8,
        hidden_size=32,
        num_layers=4,
        cross_attention_dim=32,
        cross_attention_dim_t5=24,
        pooled_projection_dim=16,
        text_len=_HDIT_CLIP,
        text_len_t5=_HDIT_T5,
    ),
    inputs=_hunyuan_dit_inputs,
    grid=(1, _HDIT_H, _HDIT_W),
    text_tokens=_HDIT_CLIP + _HDIT_T5,
    text_position=None,
    pipeline="HunyuanDiTPipeline",
    notes=(
        "Per block: self-attention attn1 (Nq=Nk=HW, RoPE) and cross-attention attn2 to [CLIP, T5] text "
        "(Nq=HW, Nk=text_len+text_len_t5, which must equal the config); padded text positions are replaced by "
        "learned text_embedding_padding, no SDPA mask. The T5 pooler (HunyuanDiTAttentionPool) is attention through "
        "F.multi_head_attention_forward (1 query over 1+T5 keys): its inner SDPA is not seen by a "
        "TorchFunctionMode. U-Net-like skips between first and second half blocks. learn_sigma doubles output "
        "channels; image_rotary_emb is passed in."
    ),
)

# --------------------------------------------------------------------------------------------------- HunyuanImage 2.1
_HIMG_H, _HIMG_W, _HIMG_T, _HIMG_T2 = 4, 6, 5, 3


def _hunyuan_image_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(15)
    return {
        "hidden_states": randn(gen, batch_size, 8, _HIMG_H, _HIMG_W),
        "timestep": _scheduler_t(batch_size),
        "encoder_hidden_states": randn(gen, batch_size, _HIMG_T, 32),
        "encoder_attention_mask": _text_mask(batch_size, _HIMG_T),
        "encoder_hidden_states_2": randn(gen, batch_size, _HIMG_T2, 24),
        "encoder_attention_mask_2": _text_mask(batch_size, _HIMG_T2, pad_last_row=1),
        "return_dict": False,
    }


HUNYUAN_IMAGE = TinyDenoiser(
    class_name="HunyuanImageTransformer2DModel",
    build=_builder(
        "HunyuanImageTransformer2DModel",
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=(1, 1),
        text_embed_dim=32,
        text_embed_2_dim=24,
        rope_axes_dim=(8, 8),
    ),
    inputs=_hunyuan_image_inputs,
    grid=(1, _HIMG_H, _HIMG_W),
    text_tokens=_HIMG_T + _HIMG_T2,
    text_position="last",
    pipeline="HunyuanImagePipeline",
    notes=(
        "Token refiner (context_embedder) self-attends over the MLLM text only (Nq=Nk=T_mllm=5, bool mask "
        "[B, heads, T, T]); double and single blocks attend over [image, text] (Nq=Nk=HW+T_byt5+T_mllm) with a "
        "bool key mask [B, 1, 1, N]. With the ByT5 text (encoder_hidden_states_2), each row's text is reordered "
        "[valid ByT5, valid MLLM, padded ByT5, padded MLLM]. patch_size=(1, 1): no patchify."
    ),
)

# -------------------------------------------------------------------------------------------------------------- Bria
_BRIA_H, _BRIA_W, _BRIA_T = 4, 6, 7


def _bria_inputs(batch_size: int) -> dict[str, Any]:
    return _packed_with_hw3_ids(16, batch_size, _BRIA_H, _BRIA_W, _BRIA_T, _scheduler_t(batch_size))


BRIA = TinyDenoiser(
    class_name="BriaTransformer2DModel",
    build=_builder(
        "BriaTransformer2DModel",
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[4, 6, 6],
    ),
    inputs=_bria_inputs,
    grid=(1, _BRIA_H, _BRIA_W),
    text_tokens=_BRIA_T,
    text_position="first",
    pipeline="BriaPipeline",
    notes="Flux-like: joint [text, image] attention in double and single blocks, no mask.",
)

# --------------------------------------------------------------------------------------------------------- Bria Fibo
_FIBO_H, _FIBO_W, _FIBO_T = 4, 6, 7


def _bria_fibo_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(17)
    # as BriaFiboPipeline: a bool key-padding mask over [text, image], passed only when some text is padded
    mask = torch.cat(
        [_text_mask(batch_size, _FIBO_T), torch.ones(batch_size, _FIBO_H * _FIBO_W, dtype=torch.long)], dim=1
    ).bool()
    inputs = {
        "hidden_states": randn(gen, batch_size, _FIBO_H * _FIBO_W, 16),
        "encoder_hidden_states": randn(gen, batch_size, _FIBO_T, 32),
        "text_encoder_layers": [randn(gen, batch_size, _FIBO_T, 24) for _ in range(2)],
        "timestep": _scheduler_t(batch_size),
        "img_ids": _ids_hw3(_FIBO_H, _FIBO_W),
        "txt_ids": torch.zeros(_FIBO_T, 3),
        "return_dict": False,
    }
    if not mask.all():
        inputs["joint_attention_kwargs"] = {"attention_mask": mask[:, None, None, :]}
    return inputs


BRIA_FIBO = TinyDenoiser(
    class_name="BriaFiboTransformer2DModel",
    build=_builder(
        "BriaFiboTransformer2DModel",
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[4, 6, 6],
        text_encoder_dim=24,
    ),
    inputs=_bria_fibo_inputs,
    grid=(1, _FIBO_H, _FIBO_W),
    text_tokens=_FIBO_T,
    text_position="first",
    pipeline="BriaFiboPipeline",
    notes=(
        "Flux-like joint [text, image] attention; text_encoder_layers gives one text-encoder layer per block (half "
        "of each block's text channels). The pipeline passes a bool key mask [B, 1, 1, T+HW] in "
        "joint_attention_kwargs['attention_mask'] when some text is padded."
    ),
)

# -------------------------------------------------------------------------------------------------------- Bria Fibo 2
_FIBO2_H, _FIBO2_W, _FIBO2_T = 4, 6, 8
_FIBO2_GIST = 4  # gist tokens: fewer than the text's, so that neither count can stand for the other


def _bria_fibo2_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(18)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _FIBO2_H, 2 * _FIBO2_W),
        "timestep": _flow_t(batch_size),
        # [B, bundles, T, D]: bundle 0 feeds the Perceiver, bundle k the k-th injection layer
        "encoder_hidden_states": randn(gen, batch_size, 2, _FIBO2_T, 24),
        "encoder_attention_mask": _text_mask(batch_size, _FIBO2_T).bool(),
        "return_dict": False,
    }


BRIA_FIBO2 = TinyDenoiser(
    class_name="BriaFibo2Transformer2DModel",
    build=_builder(
        "BriaFibo2Transformer2DModel",
        reinit=("cross_attn_gate",),
        in_channels=4,
        patch_size=2,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        cap_feat_dim=24,
        injection_layer_ids=(1,),
        perceiver_num_layers=1,
        min_num_gist_tokens=_FIBO2_GIST,
        max_num_gist_tokens=_FIBO2_GIST,
        gist_step=_FIBO2_GIST,
        gist_min_text_len=4,
        gist_max_text_len=16,
        axes_dims=(4, 6, 6),
        axes_lens=(64, 32, 32),
    ),
    inputs=_bria_fibo2_inputs,
    grid=(1, _FIBO2_H, _FIBO2_W),
    text_tokens=_FIBO2_T,
    text_position=None,  # the main layers hold gist tokens, not the text (cross-attention reads the text)
    pipeline="BriaFibo2Pipeline",
    notes=(
        "Z-Image-like single stream of [G gist tokens, image] (Nq=Nk=G+HW). Gist tokens are not the text: a "
        "Perceiver (per layer: gist queries cross-attend to text bundle 0, Nq=G, Nk=T, bool key mask [B, 1, 1, T]; "
        "then gist self-attention Nq=Nk=G) makes G = compute_gist_count(valid text lengths) tokens; here "
        "min=max gist count = 4 != T = 8 (visattn counts G with diffusers' compute_gist_count). When rows get "
        "different G, the gist goes LAST ([image, gist]) with a bool key mask. noise_refiner: image-only "
        "attention (Nq=Nk=HW). Injection layers (injection_layer_ids) add gated cross-attention to their text "
        "bundle (Nq=G+HW, Nk=T, key mask; its zero-initialized cross_attn_gate is seeded by build). "
        "context_latents (edit images) append tokens after the image."
    ),
)

# ----------------------------------------------------------------------------------------------------------- OmniGen
_OMNIGEN_H, _OMNIGEN_W, _OMNIGEN_T = 4, 6, 7


def _omnigen_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(19)
    image_tokens = _OMNIGEN_H * _OMNIGEN_W
    prefix = _OMNIGEN_T + 1  # text tokens, then the time token
    n = prefix + image_tokens
    # as OmniGen's processor (no padding): causal over [text, time token]; the image attends to everything
    mask = torch.zeros(n, n)
    mask[:prefix, :prefix] = torch.tril(torch.ones(prefix, prefix))
    mask[prefix:, :] = 1.0
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _OMNIGEN_H, 2 * _OMNIGEN_W),
        "timestep": _flow_t(batch_size),
        "input_ids": torch.randint(1, 64, (batch_size, _OMNIGEN_T), generator=gen),
        "input_img_latents": [],
        "input_image_sizes": {},
        "attention_mask": mask.expand(batch_size, n, n).clone(),
        "position_ids": torch.arange(n).expand(batch_size, n).clone(),
        "return_dict": False,
    }


OMNIGEN = TinyDenoiser(
    class_name="OmniGenTransformer2DModel",
    build=_builder(
        "OmniGenTransformer2DModel",
        in_channels=4,
        patch_size=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_layers=2,
        pad_token_id=0,
        vocab_size=64,
        max_position_embeddings=256,
        original_max_position_embeddings=64,
        rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
        pos_embed_max_size=16,
        time_step_dim=32,
    ),
    inputs=_omnigen_inputs,
    grid=(1, _OMNIGEN_H, _OMNIGEN_W),
    text_tokens=_OMNIGEN_T,
    text_position="first",
    pipeline="OmniGenPipeline",
    notes=(
        "Phi-3-style decoder over [text tokens (input_ids embedded inside; input-image latents replace placeholder "
        "tokens), 1 time token, image]: Nq=Nk=T+1+HW. The pipeline's 3-D attention_mask [B, N, N] (causal over text + "
        "time token, image rows see everything, left padding masked) becomes an additive float mask [B, 1, N, N]. "
        "position_ids [B, N] (1-D RoPE over the whole sequence). Without left padding the image starts at T+1."
    ),
)

# --------------------------------------------------------------------------------------------------------- Ovis-Image
_OVIS_H, _OVIS_W, _OVIS_T = 4, 6, 7


def _ovis_inputs(batch_size: int) -> dict[str, Any]:
    return _packed_with_hw3_ids(20, batch_size, _OVIS_H, _OVIS_W, _OVIS_T, _flow_t(batch_size))


OVIS_IMAGE = TinyDenoiser(
    class_name="OvisImageTransformer2DModel",
    build=_builder(
        "OvisImageTransformer2DModel",
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
    ),
    inputs=_ovis_inputs,
    grid=(1, _OVIS_H, _OVIS_W),
    text_tokens=_OVIS_T,
    text_position="first",
    pipeline="OvisImagePipeline",
    notes="Flux-like: joint [text, image] attention in double and single blocks, no mask.",
)

# ----------------------------------------------------------------------------------------------------------------- PRX
_PRX_H, _PRX_W, _PRX_T = 4, 6, 7


def _prx_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(21)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _PRX_H, 2 * _PRX_W),
        "timestep": _flow_t(batch_size),
        "encoder_hidden_states": randn(gen, batch_size, _PRX_T, 32),
        "attention_mask": _text_mask(batch_size, _PRX_T).bool(),
        "return_dict": False,
    }


PRX = TinyDenoiser(
    class_name="PRXTransformer2DModel",
    build=_builder(
        "PRXTransformer2DModel",
        reinit=(".modulation.lin.",),
        in_channels=4,
        patch_size=2,
        context_in_dim=32,
        hidden_size=32,
        mlp_ratio=2.0,
        num_heads=2,
        depth=2,
        axes_dim=[8, 8],
    ),
    inputs=_prx_inputs,
    grid=(1, _PRX_H, _PRX_W),
    text_tokens=_PRX_T,
    text_position="first",
    pipeline="PRXPipeline",
    notes=(
        "Queries are image tokens only; keys/values are [text, image] (Nq=HW, Nk=T+HW): the text is never updated "
        "(key/value only). The text mask becomes a bool key mask [B, 1, 1, T+HW]. diffusers zero-initializes the "
        "blocks' modulation (every residual branch gated off): build gives it seeded values."
    ),
)

# ------------------------------------------------------------------------------------------------------ LongCat-Image
_LONGCAT_H, _LONGCAT_W, _LONGCAT_T = 4, 6, 7
_LONGCAT_TOKENIZER_MAX = 512  # the pipeline offsets image positions by tokenizer_max_length


def _longcat_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(22)
    img_ids = _ids_hw3(_LONGCAT_H, _LONGCAT_W)
    img_ids[:, 0] = 1.0
    img_ids[:, 1:] += _LONGCAT_TOKENIZER_MAX
    txt_ids = torch.zeros(_LONGCAT_T, 3)
    txt_ids[:, 1] = torch.arange(_LONGCAT_T)
    txt_ids[:, 2] = torch.arange(_LONGCAT_T)
    return {
        "hidden_states": randn(gen, batch_size, _LONGCAT_H * _LONGCAT_W, 16),
        "encoder_hidden_states": randn(gen, batch_size, _LONGCAT_T, 32),
        "timestep": _flow_t(batch_size),
        "img_ids": img_ids,
        "txt_ids": txt_ids,
        "return_dict": False,
    }


LONGCAT_IMAGE = TinyDenoiser(
    class_name="LongCatImageTransformer2DModel",
    build=_builder(
        "LongCatImageTransformer2DModel",
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 6, 6],
    ),
    inputs=_longcat_inputs,
    grid=(1, _LONGCAT_H, _LONGCAT_W),
    text_tokens=_LONGCAT_T,
    text_position="first",
    pipeline="LongCatImagePipeline",
    notes=(
        "Flux-like joint [text, image] attention, no mask. Position ids: text (0, i, i); image (1, 512+h, 512+w) "
        "(offset = tokenizer_max_length)."
    ),
)

# ---------------------------------------------------------------------------------------------------------- GLM-Image
_GLM_H, _GLM_W, _GLM_T = 4, 6, 7


def _glm_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(23)
    pixels = torch.tensor([[16.0 * _GLM_H, 16.0 * _GLM_W]]).repeat(batch_size, 1)
    prior = torch.randint(0, 32, (batch_size, _GLM_H * _GLM_W), generator=gen)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _GLM_H, 2 * _GLM_W),
        "encoder_hidden_states": randn(gen, batch_size, _GLM_T, 32),
        "prior_token_id": prior,
        "prior_token_drop": torch.zeros_like(prior, dtype=torch.bool),
        "timestep": _scheduler_t(batch_size) - 1,
        "target_size": pixels,
        "crop_coords": torch.zeros(batch_size, 2),
        "return_dict": False,
    }


GLM_IMAGE = TinyDenoiser(
    class_name="GlmImageTransformer2DModel",
    build=_builder(
        "GlmImageTransformer2DModel",
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=32,
        time_embed_dim=16,
        condition_dim=8,
        prior_vq_quantizer_codebook_size=32,
    ),
    inputs=_glm_inputs,
    grid=(1, _GLM_H, _GLM_W),
    text_tokens=_GLM_T,
    text_position="first",
    pipeline="GlmImagePipeline",
    notes=(
        "CogView4-like joint [text (glyph embeddings), image] attention. prior_token_id [B, HW] (AR-model image "
        "tokens upsampled to the token grid) is embedded and added to the image tokens. With condition images the "
        "pipeline fills kv_caches first and later calls read cached K/V (keys = cached + current)."
    ),
)

# ---------------------------------------------------------------------------------------------- NucleusMoE-Image
_NUCLEUS_H, _NUCLEUS_W, _NUCLEUS_T = 4, 6, 7


def _nucleus_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(24)
    return {
        "hidden_states": randn(gen, batch_size, _NUCLEUS_H * _NUCLEUS_W, 16),
        "img_shapes": [(1, _NUCLEUS_H, _NUCLEUS_W)] * batch_size,
        "encoder_hidden_states": randn(gen, batch_size, _NUCLEUS_T, 32),
        "encoder_hidden_states_mask": _text_mask(batch_size, _NUCLEUS_T),
        "timestep": _flow_t(batch_size),
        "return_dict": False,
    }


NUCLEUS_MOE_IMAGE = TinyDenoiser(
    class_name="NucleusMoEImageTransformer2DModel",
    build=functools.partial(
        _build_nucleus,
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        mlp_ratio=6.0,  # the dense blocks' SwiGLU width is rounded down to a multiple of 128
        dense_moe_strategy="leave_first_block_dense",
        num_experts=4,
        moe_intermediate_dim=16,
        capacity_factors=4.0,
    ),
    inputs=_nucleus_inputs,
    grid=(1, _NUCLEUS_H, _NUCLEUS_W),
    text_tokens=_NUCLEUS_T,
    text_position="last",
    pipeline="NucleusMoEImagePipeline",
    notes=(
        "Queries are image tokens only; keys/values are [image, text] (Nq=HW, Nk=HW+T): text is key/value only. "
        "GQA (num_key_value_heads < heads) by repeat_interleave before SDPA. The text mask becomes a bool key mask "
        "over [image, text]. img_shapes is a flat per-row list of (1, h, w). Blocks from the MoE start use an "
        "expert-choice MoE FFN whose expert weights diffusers leaves uninitialized (torch.empty): build seeds them."
    ),
)

# ------------------------------------------------------------------------------------------------------- ERNIE-Image
_ERNIE_H, _ERNIE_W, _ERNIE_T = 4, 6, 7


def _ernie_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(25)
    lens = torch.full((batch_size,), _ERNIE_T, dtype=torch.long)
    if batch_size > 1:
        lens[-1] = _ERNIE_T - 2
    text = randn(gen, batch_size, _ERNIE_T, 32)
    text = text * (torch.arange(_ERNIE_T)[None, :, None] < lens[:, None, None])  # zero padding, as the pipeline
    return {
        "hidden_states": randn(gen, batch_size, 16, _ERNIE_H, _ERNIE_W),
        "timestep": _scheduler_t(batch_size),
        "text_bth": text,
        "text_lens": lens,
        "return_dict": False,
    }


ERNIE_IMAGE = TinyDenoiser(
    class_name="ErnieImageTransformer2DModel",
    build=_builder(
        "ErnieImageTransformer2DModel",
        reinit=("adaLN_modulation.", "final_linear."),
        hidden_size=32,
        num_attention_heads=2,
        num_layers=2,
        ffn_hidden_size=64,
        in_channels=16,
        out_channels=16,
        patch_size=1,
        text_in_dim=32,
        rope_axes_dim=(4, 6, 6),
    ),
    inputs=_ernie_inputs,
    grid=(1, _ERNIE_H, _ERNIE_W),
    text_tokens=_ERNIE_T,
    text_position="last",
    pipeline="ErnieImagePipeline",
    notes=(
        "Single stream [image, text] (Nq=Nk=HW+T), bool key mask [B, 1, 1, N] from text_lens (always passed). The "
        "model runs sequence-first [N, B, D] internally and permutes to batch-first around attention. Latents come "
        "2x2-packed into channels by the pipeline (config patch_size=1). diffusers zero-initializes adaLN_modulation "
        "and final_linear (output identically 0): build gives them seeded values."
    ),
)

# ----------------------------------------------------------------------------------------------------------- Krea 2
_KREA2_H, _KREA2_W, _KREA2_T, _KREA2_LAYERS = 4, 6, 7, 3


def _krea2_position_ids(height: int, width: int, tokens: int) -> torch.Tensor:
    image = torch.zeros(height, width, 3)
    image[..., 1] = torch.arange(height)[:, None]
    image[..., 2] = torch.arange(width)[None, :]
    return torch.cat([torch.zeros(tokens, 3), image.reshape(height * width, 3)], dim=0)


def _krea2_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(26)
    return {
        "hidden_states": randn(gen, batch_size, _KREA2_H * _KREA2_W, 16),
        "encoder_hidden_states": randn(gen, batch_size, _KREA2_T, _KREA2_LAYERS, 32),
        "timestep": _flow_t(batch_size),
        "position_ids": _krea2_position_ids(_KREA2_H, _KREA2_W, _KREA2_T),
        "encoder_attention_mask": _text_mask(batch_size, _KREA2_T).bool(),
        "return_dict": False,
    }


KREA2 = TinyDenoiser(
    class_name="Krea2Transformer2DModel",
    build=_builder(
        "Krea2Transformer2DModel",
        in_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        timestep_embed_dim=32,
        text_hidden_dim=32,
        num_text_layers=_KREA2_LAYERS,
        text_num_attention_heads=2,
        text_num_key_value_heads=2,
        text_intermediate_size=32,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6),
    ),
    inputs=_krea2_inputs,
    grid=(1, _KREA2_H, _KREA2_W),
    text_tokens=_KREA2_T,
    text_position="first",
    pipeline="Krea2Pipeline",
    notes=(
        "Text fusion first: layerwise blocks attend across the tapped text-encoder layers of each token (SDPA batch "
        "B*T, Nq=Nk=num_text_layers), refiner blocks over the text (Nq=Nk=T, bool key mask [B, 1, 1, T]); then main "
        "blocks over [text, image] (Nq=Nk=T+HW, bool key mask [B, 1, 1, N]). GQA by repeat_interleave before SDPA; "
        "attention output gated by sigmoid(to_gate). position_ids (T+HW, 3): text rows zero, image (0, h, w)."
    ),
)

# ------------------------------------------------------------------------------------------------------- Ideogram 4
_IDEO_H, _IDEO_W, _IDEO_T = 4, 6, 7
_IDEO_IMAGE_POSITION_OFFSET = 65536


def _ideogram4_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(27)
    image_tokens = _IDEO_H * _IDEO_W
    n = _IDEO_T + image_tokens
    # packed [left padding, text, image] rows, as Ideogram4Pipeline._prepare_ids builds them
    lengths = [_IDEO_T] * batch_size
    if batch_size > 1:
        lengths[-1] = _IDEO_T - 2
    grid = torch.cartesian_prod(torch.zeros(1, dtype=torch.long), torch.arange(_IDEO_H), torch.arange(_IDEO_W))
    position_ids = torch.zeros(batch_size, n, 3, dtype=torch.long)
    segment_ids = torch.full((batch_size, n), -1, dtype=torch.long)
    indicator = torch.zeros(batch_size, n, dtype=torch.long)
    text = torch.zeros(batch_size, n, 32)
    for row, length in enumerate(lengths):
        start = _IDEO_T - length
        position_ids[row, start:_IDEO_T] = torch.arange(length)[:, None]
        position_ids[row, _IDEO_T:] = grid + _IDEO_IMAGE_POSITION_OFFSET
        indicator[row, start:_IDEO_T] = 3  # LLM_TOKEN_INDICATOR
        indicator[row, _IDEO_T:] = 2  # OUTPUT_IMAGE_INDICATOR
        segment_ids[row, start:] = 1
        text[row, start:_IDEO_T] = randn(gen, length, 32)
    latents = torch.cat([torch.zeros(batch_size, _IDEO_T, 16), randn(gen, batch_size, image_tokens, 16)], dim=1)
    return {
        "hidden_states": latents,
        "timestep": 1.0 - _flow_t(batch_size),
        "encoder_hidden_states": text,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "indicator": indicator,
        "return_dict": False,
    }


IDEOGRAM4 = TinyDenoiser(
    class_name="Ideogram4Transformer2DModel",
    build=_builder(
        "Ideogram4Transformer2DModel",
        in_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        intermediate_size=64,
        adaln_dim=16,
        llm_features_dim=32,
        mrope_section=(4, 2, 2),
    ),
    inputs=_ideogram4_inputs,
    grid=(1, _IDEO_H, _IDEO_W),
    text_tokens=_IDEO_T,
    text_position="first",
    pipeline="Ideogram4Pipeline",
    notes=(
        "One packed sequence [left padding, text, image] of N=T+HW tokens in BOTH hidden_states (latents, zeros on "
        "text rows) and encoder_hidden_states (text features, zeros on image rows); indicator (3 text / 2 image) "
        "selects. Single stream Nq=Nk=T+HW with a bool block-diagonal mask [B, 1, N, N] from segment_ids (padding "
        "rows only see padding). Output covers all N rows; the pipeline keeps the last HW. The pipeline's "
        "unconditional_transformer pass is image-only (N=HW). Timestep is 1 - t/1000 (0 = noise)."
    ),
)

# ------------------------------------------------------------------------------------------------------------- DiT
_DIT_H, _DIT_W = 4, 4  # DiT's unpatchify assumes a square token grid (height = width = sqrt(N))


def _dit_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(28)
    return {
        "hidden_states": randn(gen, batch_size, 4, 2 * _DIT_H, 2 * _DIT_W),
        "timestep": torch.linspace(800, 400, batch_size).long(),
        "class_labels": torch.arange(batch_size) % 10,
        "return_dict": False,
    }


DIT = TinyDenoiser(
    class_name="DiTTransformer2DModel",
    build=_builder(
        "DiTTransformer2DModel",
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    ),
    inputs=_dit_inputs,
    grid=(1, _DIT_H, _DIT_W),
    text_tokens=None,
    text_position=None,
    pipeline="DiTPipeline",
    notes=(
        "Class-conditional (class_labels, num_embeds_ada_norm classes), no text. Self-attention only (Nq=Nk=HW, "
        "AttnProcessor2_0). Square grids only: unpatchify takes height = width = sqrt(N) (a non-square latent "
        "runs but comes back scrambled/with a wrong batch). "
        "out_channels = 2 * in_channels (learned sigma)."
    ),
)

# --------------------------------------------------------------------------------------------------------- DreamLite


def _build_dreamlite(**config: Any) -> torch.nn.Module:
    """The DreamLite U-Net installs DreamLiteAttnProcessor2_0 (GQA-aware) on its transformers; the standalone class
    keeps AttnProcessor2_0, which fails with num_kv_heads < heads. Install it the way the U-Net does."""
    from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0

    model = _build("DreamLiteTransformer2DModel", **config)
    for module in model.modules():
        if hasattr(module, "set_processor") and hasattr(module, "processor"):
            module.set_processor(DreamLiteAttnProcessor2_0())
    return model


_DREAMLITE_H, _DREAMLITE_W, _DREAMLITE_T = 4, 6, 7


def _dreamlite_inputs(batch_size: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(29)
    return {
        "hidden_states": randn(gen, batch_size, 32, _DREAMLITE_H, _DREAMLITE_W),
        "encoder_hidden_states": randn(gen, batch_size, _DREAMLITE_T, 24),
        "return_dict": False,
    }


DREAMLITE = TinyDenoiser(
    class_name="DreamLiteTransformer2DModel",
    build=functools.partial(
        _build_dreamlite,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=32,
        num_layers=1,
        norm_num_groups=8,
        cross_attention_dim=24,
        use_linear_projection=True,
        qk_norm="rms_norm",
        num_kv_heads=1,
        ff_mult=2,
    ),
    inputs=_dreamlite_inputs,
    grid=(1, _DREAMLITE_H, _DREAMLITE_W),
    text_tokens=_DREAMLITE_T,
    text_position=None,
    pipeline="DreamLitePipeline",
    notes=(
        "Not a whole denoiser: the spatial transformer inside DreamLiteUNet2DConditionModel's cross-attention blocks "
        "(the pipeline calls the U-Net). Input is a BCHW feature map, no patchify: self-attention attn1 (Nq=Nk=HW) "
        "and text cross-attention attn2 (Nq=HW, Nk=T), no mask. GQA (num_kv_heads < heads) works only with the U-Net's "
        "DreamLiteAttnProcessor2_0 (K/V repeat_interleave before SDPA), which build installs; the class default "
        "AttnProcessor2_0 fails on it. use_self_attention=False (some U-Net blocks) removes attn1."
    ),
)

TINY_DENOISERS: tuple[TinyDenoiser, ...] = (
    QWEN_IMAGE,
    QWEN_IMAGE_21,
    FLUX2,
    FLUX3,
    Z_IMAGE,
    SANA,
    LUMINA2,
    LUMINA_NEXT,
    COGVIEW4,
    COGVIEW3PLUS,
    CHROMA,
    AURAFLOW,
    HIDREAM,
    HUNYUAN_DIT,
    HUNYUAN_IMAGE,
    BRIA,
    BRIA_FIBO,
    BRIA_FIBO2,
    OMNIGEN,
    OVIS_IMAGE,
    PRX,
    LONGCAT_IMAGE,
    GLM_IMAGE,
    NUCLEUS_MOE_IMAGE,
    ERNIE_IMAGE,
    KREA2,
    IDEOGRAM4,
    DIT,
    DREAMLITE,
)


# What a generic tool needs to read the latent grid and the conditioning from a forward call, per class. "sample",
# "timestep" and "text" are (keyword, positional index); "timestep_scale" tells what the pipeline passes relative to
# the scheduler's timesteps t in [0, 1000].
