"""Prompt-to-Prompt on Stable Diffusion 3.5, an MM-DiT: a refinement kept to its region by a local blend, a
re-weighting of one word, and per-word heatmaps of each, all through joint attention.

Model: ``stabilityai/stable-diffusion-3.5-medium`` (bf16, about 16 GB with its three text encoders; a gated model:
accept its license on the Hugging Face Hub and log in with ``hf auth login`` first).
Hardware: one CUDA GPU with 24 GB or more; with 16 GB pass ``--offload`` (diffusers' model CPU offload, slower).
Runtime (estimated, not measured: about a minute on an H100): three 28-step generations of a batch of two
prompts at 1024 px (the refinement, the re-weighting, each with its source), classifier-free guidance on.

What it shows:

1. SD3 has no cross-attention layers: in each joint attention call the image queries' block over the text keys is
   the cross-attention map, and Prompt-to-Prompt (Hertz et al. 2022) edits that block, the image keys taking what
   it leaves of each row. visattn computes the edit as attention calls over block values, without materializing
   the probabilities (``visattn.kernels.TextBlockEdit``), so the source image is exactly a plain generation of the
   source prompt;
2. a refinement, "a cat sitting on a wooden chair" -> "a cat wearing a red hat sitting on a wooden chair", the
   added words getting their own attention and everything outside the cat and the hat kept by
   :class:`~visattn.effects.LocalBlend` (the authors' latent blend after each step);
3. a re-weighting of "wooden" (x3) on the source prompt;
4. :class:`~visattn.effects.AttentionMaps` of each edit's target row, overlaid on its image.

    python examples/sd35_prompt_to_prompt.py --out outputs/sd35_p2p
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

import visattn
from visattn.diffusers_compat import dtype_kwargs  # dtype on diffusers >= 0.40, torch_dtype before
from visattn.effects import AttentionMaps, LocalBlend, PromptToPrompt

MODEL_ID = "stabilityai/stable-diffusion-3.5-medium"
SOURCE = "a cat sitting on a wooden chair"
TARGET = "a cat wearing a red hat sitting on a wooden chair"


def main(
    model_id: str = MODEL_ID,
    out_dir: str | Path = "outputs/sd35_p2p",
    source: str = SOURCE,
    target: str = TARGET,
    blend_words: tuple[str, ...] = ("cat", "hat"),
    reweight_word: str = "wooden",
    reweight_scale: float = 3.0,
    steps: int = 28,
    guidance: float = 4.5,
    height: int = 1024,
    width: int = 1024,
    seed: int = 0,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    offload: bool = False,
) -> list[Path]:
    """Generate the refinement and the re-weighting with their sources and heatmaps; returns the written paths."""
    from diffusers import StableDiffusion3Pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusion3Pipeline.from_pretrained(model_id, **dtype_kwargs(dtype))
    if offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    written: list[Path] = []

    def save(picture: Image.Image, name: str) -> None:
        picture.save(out_dir / name)
        written.append(out_dir / name)
        print(f"wrote {out_dir / name}")

    def edit(p2p: PromptToPrompt, name: str) -> None:
        # The maps of the target prompt's row (the second of the batch: p2p.prompts is [source, target]).
        maps = AttentionMaps(prompt=p2p.prompts)
        started = time.perf_counter()
        with visattn.attach(pipe, p2p, maps):
            images = pipe(
                prompt=p2p.prompts,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                # One identically seeded generator per row: the source image is a plain generation with this seed.
                generator=p2p.generator(seed),
            ).images
        print(f"{name}: generated in {time.perf_counter() - started:.1f} s")
        save(images[0], f"{name}_source.png")
        save(images[1], f"{name}_edit.png")
        for word, heat in maps.overlay(images[1], prompt=1).items():
            save(heat, f"{name}_heatmap_{word.replace(' ', '_')}.png")

    # 1. A refinement (words added), kept to the cat and the hat by the authors' local blend.
    blend = LocalBlend(list(blend_words))
    edit(PromptToPrompt.refine(source, target, local_blend=blend), "refine")
    # 2. A re-weighting of one word of the source prompt (its attention scaled in the target row).
    edit(PromptToPrompt.reweight(source, {reweight_word: reweight_scale}), "reweight")
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL_ID, help="diffusers model id or local folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/sd35_p2p"))
    parser.add_argument("--source", default=SOURCE)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--blend", default="cat hat", help="local-blend words, space separated")
    parser.add_argument("--reweight", default="wooden", help="the word to re-weight")
    parser.add_argument("--scale", type=float, default=3.0, help="its attention scale")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--offload", action="store_true", help="model CPU offload, for GPUs under 24 GB")
    args = parser.parse_args()
    main(
        model_id=args.model,
        out_dir=args.out,
        source=args.source,
        target=args.target,
        blend_words=tuple(args.blend.split()),
        reweight_word=args.reweight,
        reweight_scale=args.scale,
        steps=args.steps,
        seed=args.seed,
        offload=args.offload,
    )
