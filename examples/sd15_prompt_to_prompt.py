"""Prompt-to-Prompt on Stable Diffusion 1.5: a word swap with local blending, per-word heatmaps, and an edit of a
real image through null-text inversion.

Model: ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (about 4 GB of weights, downloaded on first use).
Hardware: one CUDA GPU with 16 GB or more; the script runs in fp32 (null-text inversion optimizes an
embedding through the UNet, which fp16 makes unstable). No edited attention call materializes its probabilities
(the authors' code does): the cross-attention edits run as attention over mixed values.
Runtime (estimated, not measured: a few minutes on an A100/H100): the generated edit is about one plain
generation of a batch of two; null-text inversion dominates (50 steps x up to 10 Adam iterations, about a
minute on an A100 per the paper).

What it shows:

1. a word swap, "squirrel" -> "lion" (Hertz et al. 2022), with :class:`~visattn.effects.LocalBlend` keeping
   everything outside the animal's attention region equal to the source;
2. per-word heatmaps of source and edit from :class:`~visattn.effects.AttentionMaps` (it only observes);
3. a real image edit: :func:`visattn.null_text_inversion` (Mokady et al. 2022) finds the noise and per-step
   unconditional embeddings that regenerate the image, then the same word swap runs from that noise. Without
   ``--image`` the source image of step 1 stands in for a real photo.

    python examples/sd15_prompt_to_prompt.py --out outputs/sd15_p2p
    python examples/sd15_prompt_to_prompt.py --image cat.jpg --image-prompt "a cat sitting on a bench" \\
        --image-target "a dog sitting on a bench" --blend "cat dog"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

import visattn
from visattn.diffusers_compat import dtype_kwargs  # dtype on diffusers >= 0.40, torch_dtype before
from visattn.effects import AttentionMaps, LocalBlend, PromptToPrompt

MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SOURCE = "a painting of a squirrel eating a burger"
TARGET = "a painting of a lion eating a burger"


def center_square(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``image``, resized to ``size`` (the VAE needs multiples of 8)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.convert("RGB").crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def main(
    model_id: str = MODEL_ID,
    out_dir: str | Path = "outputs/sd15_p2p",
    image: str | Path | None = None,
    image_prompt: str = SOURCE,
    image_target: str = TARGET,
    blend_words: tuple[str, ...] = ("squirrel", "lion"),
    steps: int = 50,
    guidance: float = 7.5,
    inner_steps: int = 10,
    seed: int = 8888,
    device: str = "cuda",
    dtype: torch.dtype = torch.float32,
) -> list[Path]:
    """Run the word swap, the heatmaps and the real-image edit; returns the written paths."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(model_id, **dtype_kwargs(dtype)).to(device)
    # Prompt-to-Prompt and null-text inversion both work on the deterministic DDIM sampler.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    written: list[Path] = []

    def save(picture: Image.Image, name: str) -> None:
        picture.save(out_dir / name)
        written.append(out_dir / name)
        print(f"wrote {out_dir / name}")

    # 1. Word swap with local blending. The target keeps the source's cross-attention maps for the first 80% of
    # the steps and its self-attention maps for the first 40% (the paper's settings for this example).
    p2p = PromptToPrompt.replace(
        SOURCE, TARGET, cross_steps=0.8, self_steps=0.4, local_blend=LocalBlend(["squirrel", "lion"])
    )
    maps = AttentionMaps(prompt=p2p.prompts)
    with visattn.attach(pipe, p2p, maps):
        source, edit = pipe(
            prompt=p2p.prompts, generator=p2p.generator(seed), num_inference_steps=steps, guidance_scale=guidance
        ).images
    save(source, "source.png")
    save(edit, "edit.png")

    # 2. Heatmaps: every word's map over the image it belongs to (prompt 0 = source, 1 = edit).
    for index, (role, picture) in enumerate((("source", source), ("edit", edit))):
        for word, heat in maps.overlay(picture, prompt=index).items():
            save(heat, f"heatmap_{role}_{word.replace(' ', '_')}.png")

    # 3. A real image: invert it, check the reconstruction, edit from the inverted noise.
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    real = center_square(Image.open(image), size) if image is not None else source
    inverted = visattn.null_text_inversion(
        pipe, real, image_prompt, num_inference_steps=steps, guidance_scale=guidance, inner_steps=inner_steps
    )
    save(visattn.reconstruct(pipe, inverted), "real_reconstruction.png")

    real_edit = PromptToPrompt.replace(
        image_prompt, image_target, cross_steps=0.8, self_steps=0.5, local_blend=LocalBlend(list(blend_words))
    )
    call = inverted.pipeline_kwargs()  # the inverted noise, schedule, guidance scale and size
    call["latents"] = call["latents"].repeat(2, 1, 1, 1)  # source and target rows start from the same noise
    original_scheduler, pipe.scheduler = pipe.scheduler, inverted.scheduler()
    try:
        # inverted.effect() feeds the optimized unconditional embeddings, step by step, to both rows.
        with visattn.attach(pipe, real_edit, inverted.effect()):
            _, edited = pipe(prompt=real_edit.prompts, **call).images
    finally:
        pipe.scheduler = original_scheduler
    save(real, "real_input.png")
    save(edited, "real_edit.png")
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL_ID, help="diffusers model id or local folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/sd15_p2p"))
    parser.add_argument("--image", type=Path, help="a real image to edit (default: the generated source image)")
    parser.add_argument("--image-prompt", default=SOURCE, help="a prompt describing --image")
    parser.add_argument("--image-target", default=TARGET, help="the edited prompt (same word count: a word swap)")
    parser.add_argument("--blend", default="squirrel lion", help="words whose region may change in the edit")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=8888)
    args = parser.parse_args()
    main(
        model_id=args.model,
        out_dir=args.out,
        image=args.image,
        image_prompt=args.image_prompt,
        image_target=args.image_target,
        blend_words=tuple(args.blend.split()),
        steps=args.steps,
        seed=args.seed,
    )
