"""One Wan2.1-1.3B transformer forward at 81 frames 480p, dense vs radial vs 3-D neighborhood attention.

The transformer is built from Wan2.1-T2V-1.3B's published config with random weights (the time of a forward
does not depend on the weights' values), in bf16, and called once per denoising step with the CFG batch the
pipeline would use. What it reports is seconds per denoising step for each attention and the speedup over
dense; the sparse effects are attached with :func:`visattn.attach`, as a user would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .timing import time_call

#: Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer config (diffusers' WanTransformer3DModel arguments)
WAN21_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
#: 81 frames at 480x832 through Wan's VAE (4x temporal, 8x spatial compression): 21 x 60 x 104 latents
WAN_480P_81F_LATENTS = (21, 60, 104)
WAN_TEXT_TOKENS = 512

# A CPU-sized model with the same structure, for --quick.
_QUICK_CONFIG = {**WAN21_1_3B, "num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 64, "num_layers": 2}
_QUICK_CONFIG |= {"text_dim": 32, "freq_dim": 32}
_QUICK_LATENTS = (4, 8, 12)


def default_effects(quick: bool = False) -> dict[str, list]:
    """The attention variants compared: dense, Radial Attention, and a 3-D neighborhood of similar density."""
    from ..effects import NeighborhoodAttention, RadialAttention

    kernel = (3, 3, 5) if quick else (5, 15, 27)
    return {
        "dense": [],
        "radial": [RadialAttention(dense_steps=None)],
        f"neighborhood {'x'.join(map(str, kernel))}": [NeighborhoodAttention(kernel_size=kernel)],
    }


def wan_forward(
    *,
    quick: bool = False,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    batch: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    effects: dict[str, Sequence] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Seconds per Wan transformer forward (one denoising step, CFG batch of ``batch``) per attention variant.

    Returns ``{"config": ..., "seconds": {variant: s}, "speedup_vs_dense": {variant: x}}``.
    """
    from diffusers import WanTransformer3DModel

    from .. import attach

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not quick:
        raise ValueError("the full Wan2.1-1.3B forward needs a CUDA device; use quick=True on CPU")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = _QUICK_CONFIG if quick else WAN21_1_3B
    frames, height, width = _QUICK_LATENTS if quick else WAN_480P_81F_LATENTS
    text_tokens = 8 if quick else WAN_TEXT_TOKENS
    torch.manual_seed(0)
    model = WanTransformer3DModel(**config).to(device=device, dtype=dtype).eval()
    generator = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.randn(batch, config["in_channels"], frames, height, width, generator=generator)
    text = torch.randn(batch, text_tokens, config["text_dim"], generator=generator)
    inputs = {
        "hidden_states": sample.to(device, dtype),
        "timestep": torch.full((batch,), 500, device=device, dtype=torch.long),
        "encoder_hidden_states": text.to(device, dtype),
        "return_dict": False,
    }
    variants = effects if effects is not None else default_effects(quick)
    seconds: dict[str, float] = {}
    for name, variant in tqdm(variants.items(), desc="wan forward", disable=not progress):
        with torch.inference_mode():
            if variant:
                with attach(model, *variant):
                    seconds[name] = time_call(lambda: model(**inputs), repeats=repeats, warmup=warmup) / 1e3
            else:
                seconds[name] = time_call(lambda: model(**inputs), repeats=repeats, warmup=warmup) / 1e3
    dense = seconds.get("dense")
    return {
        "config": {"model": "Wan2.1-T2V-1.3B" if not quick else "Wan (quick)", "latents": [frames, height, width]}
        | {"batch": batch, "dtype": str(dtype).removeprefix("torch."), "device": str(device)},
        "seconds": seconds,
        "speedup_vs_dense": {k: dense / v for k, v in seconds.items()} if dense else {},
    }


#: Stable Diffusion 1.5's UNet (diffusers' UNet2DConditionModel defaults with CLIP-L's 768-wide text)
SD15_UNET: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}


def _sd_pipeline(quick: bool, device: torch.device, dtype: torch.dtype):
    """A StableDiffusionPipeline: the tiny test one (quick), or SD 1.5's UNet with random weights and a 1-layer
    768-wide text encoder (the UNet is what TGATE changes; the text encoder runs once per generation)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from ..tiny import tiny_pipeline
    from ..tiny.text_encoders import clip_text_model
    from ..tiny.tokenizers import clip_tokenizer
    from ..tiny.vaes import image_vae

    if quick:
        pipe = tiny_pipeline("unet")
        return pipe if (device.type, dtype) == ("cpu", torch.float32) else pipe.to(device=device, dtype=dtype)
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=image_vae(),
        text_encoder=clip_text_model(tokenizer, hidden_size=768),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD15_UNET).eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device=device, dtype=dtype)


def tgate_speedup(
    *,
    quick: bool = False,
    steps: int = 25,
    gate_step: int = 10,
    repeats: int = 3,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Seconds per generation with and without :class:`~visattn.effects.CrossAttentionCache` (TGATE).

    SD 1.5's UNet at 512 px with classifier-free guidance (``steps`` DDIM steps, cross-attention cached after
    ``gate_step``; latents returned, so the VAE is not timed). ``quick`` uses the tiny test pipeline on CPU.
    """
    from .. import attach
    from ..effects import CrossAttentionCache

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not quick:
        raise ValueError("the SD 1.5 TGATE timing needs a CUDA device; use quick=True on CPU")
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    pipe = _sd_pipeline(quick, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    size = 32 if quick else 512
    call = {"prompt": "a red circle", "num_inference_steps": steps, "height": size, "width": size}
    call |= {"guidance_scale": 7.5, "output_type": "latent"}

    def generate():
        return pipe(**call, generator=torch.Generator("cpu").manual_seed(0))

    seconds = {}
    for name in tqdm(("dense", "tgate"), desc="tgate", disable=not progress):
        if name == "dense":
            seconds[name] = time_call(generate, repeats=repeats, warmup=1) / 1e3
        else:
            with attach(pipe, CrossAttentionCache(gate_step=gate_step)):
                seconds[name] = time_call(generate, repeats=repeats, warmup=1) / 1e3
    return {
        "config": {"model": "tiny SD (quick)" if quick else "SD 1.5 UNet, random weights", "size": size}
        | {"steps": steps, "gate_step": gate_step, "dtype": str(dtype).removeprefix("torch."), "device": str(device)},
        "seconds": seconds,
        "speedup": seconds["dense"] / seconds["tgate"],
    }
