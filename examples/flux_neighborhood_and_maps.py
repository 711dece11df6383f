"""FLUX.1-dev with visattn: per-word maps from joint attention, neighborhood attention on a fused backend, and
perturbed-attention guidance on a guidance-distilled model.

Model: ``black-forest-labs/FLUX.1-dev`` (bf16, about 34 GB with its T5 encoder; a gated model: accept its
license on the Hugging Face Hub and log in with ``hf auth login`` first).
Hardware: one CUDA GPU with 40 GB or more (H100/A100 80 GB: everything stays on the GPU); with 24 GB pass
``--offload`` (diffusers' model CPU offload, slower). The ``triton`` backend needs a CUDA GPU; ``flex`` runs
anywhere (compiled on CUDA).
Runtime (estimated, not measured: 2-3 minutes on an H100): three 28-step generations at 1024 px, plus a
one-time compilation of the sparse kernel.

What it shows:

1. :class:`~visattn.effects.AttentionMaps` on joint attention: Flux has no cross-attention layers; the
   image-query/text-key block of each joint softmax is the cross-attention map, read without changing the image;
2. :class:`~visattn.effects.NeighborhoodAttention` (Hassani et al. 2023): each image token attends to a
   32 x 32 window of the 64 x 64 latent grid (text tokens stay global), on the Triton or FlexAttention backend,
   with the first 20% of the steps left dense to lay out the composition;
3. :class:`~visattn.effects.PerturbedAttentionGuidance` (Ahn et al. 2024) on a guidance-distilled model: Flux
   dev runs one conditional branch (its guidance scale is an input of the model, not classifier-free guidance),
   so visattn adds the perturbed branch itself and folds ``scale * (eps_cond - eps_perturbed)`` into it.

    python examples/flux_neighborhood_and_maps.py --out outputs/flux --backend triton
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

import visattn
from visattn.diffusers_compat import dtype_kwargs  # dtype on diffusers >= 0.40, torch_dtype before
from visattn.effects import AttentionMaps, NeighborhoodAttention, PerturbedAttentionGuidance
from visattn.kernels import NeighborhoodPattern, available_backends, density

MODEL_ID = "black-forest-labs/FLUX.1-dev"
PROMPT = "a red fox reading a newspaper on a park bench, autumn leaves, soft morning light"
# Layers for PAG on Flux: three single-stream blocks early in the stack. A starting point to tune (or search
# heads with HeadHunter, see sdxl_pag_softpag.py); there is no published default for Flux.
PAG_LAYERS = r"single_transformer_blocks\.(7|8|9)\.attn"


def main(
    model_id: str = MODEL_ID,
    out_dir: str | Path = "outputs/flux",
    prompt: str = PROMPT,
    steps: int = 28,
    guidance: float = 3.5,
    height: int = 1024,
    width: int = 1024,
    seed: int = 0,
    kernel_size: int = 32,
    backend: str = "flex",
    pag_layers: str = PAG_LAYERS,
    pag_scale: float = 2.0,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    offload: bool = False,
) -> list[Path]:
    """Generate with maps, with neighborhood attention and with PAG; returns the written paths."""
    from diffusers import FluxPipeline

    usable, why = available_backends()[backend]
    if not usable:
        raise SystemExit(f"backend {backend!r} is not usable here: {why}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = FluxPipeline.from_pretrained(model_id, **dtype_kwargs(dtype))
    if offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    written: list[Path] = []

    def generate(*effects, backend: str = "auto") -> Image.Image:
        generator = torch.Generator("cpu").manual_seed(seed)
        started = time.perf_counter()
        with visattn.attach(pipe, *effects, backend=backend):
            image = pipe(
                prompt,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
            ).images[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        print(f"  generated in {time.perf_counter() - started:.1f} s")
        return image

    def save(picture: Image.Image, name: str) -> None:
        picture.save(out_dir / name)
        written.append(out_dir / name)
        print(f"wrote {out_dir / name}")

    # 1. Dense generation with per-word maps (the observer recomputes only the image-to-text block it needs).
    maps = AttentionMaps(prompt=prompt)
    dense = generate(maps)
    save(dense, "dense.png")
    for word, heat in maps.overlay(dense).items():
        save(heat, f"heatmap_{word.replace(' ', '_')}.png")

    # 2. Neighborhood attention. Flux packs 2 x 2 latent pixels into one token: the grid is size / (8 * 2).
    grid = (height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2)
    stats = density(NeighborhoodPattern(grid, kernel_size=kernel_size), grid, tile=(128, 128))
    print(
        f"neighborhood {kernel_size}x{kernel_size} on the {grid[0]}x{grid[1]} grid keeps {stats.kept_fraction:.0%} "
        f"of image pairs and {stats.tile_fraction:.0%} of 128x128 tiles ({backend} backend)"
    )
    sparse = NeighborhoodAttention(kernel_size=kernel_size, steps=(0.2, 1.0))
    save(generate(sparse, backend=backend), f"neighborhood_{kernel_size}.png")

    # 3. PAG on the guidance-distilled model: the perturbed branch is added to the denoiser's batch.
    save(generate(PerturbedAttentionGuidance(scale=pag_scale, layers=pag_layers)), "pag.png")
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL_ID, help="diffusers model id or local folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/flux"))
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernel-size", type=int, default=32, help="neighborhood window in latent tokens")
    parser.add_argument("--backend", choices=("flex", "triton", "natten"), default="flex")
    parser.add_argument("--offload", action="store_true", help="model CPU offload, for GPUs under 40 GB")
    args = parser.parse_args()
    main(
        model_id=args.model,
        out_dir=args.out,
        prompt=args.prompt,
        steps=args.steps,
        seed=args.seed,
        kernel_size=args.kernel_size,
        backend=args.backend,
        offload=args.offload,
    )
