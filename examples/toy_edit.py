"""Prompt-to-Prompt on the embedded default pipeline: a word swap with local blending, a re-weighting, heatmaps.

Runs offline on a CPU in a few seconds (the default pipeline's weights ship with visattn; nothing is
downloaded). What it shows, with the same calls you would make on Stable Diffusion 1.5 (see
``sd15_prompt_to_prompt.py``):

1. a word swap ("red" -> "green", Hertz et al. 2022) where :class:`~visattn.effects.LocalBlend` keeps every
   latent outside the circle's attention region equal to the source;
2. per-word attention heatmaps of source and edit, collected by :class:`~visattn.effects.AttentionMaps`
   while the edit runs (an observer: it never changes the images);
3. a re-weighting of one word ("red") from one prompt, by the weight measured to show on the toy model
   (:func:`visattn.defaults.reweight_defaults`: its cross-attention is spread over all text positions, so a
   weight near 1 barely moves the colour).

The default pipeline is visattn's trained toy-world model (``visattn/toy-image``: 64 px shapes on plain
backgrounds), so the edit is a real one: the circle turns green where it was, the background stays.

    python examples/toy_edit.py --out outputs/toy_edit --steps 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import visattn
from visattn.charts import image_grid
from visattn.defaults import DEFAULT_MODEL, load_default_pipeline, reweight_defaults
from visattn.effects import AttentionMaps, LocalBlend, PromptToPrompt

SOURCE = "a small red circle at the top left on a blue background"
TARGET = "a small green circle at the top left on a blue background"
VIEW_SIZE = 256  # the toy images are tiny; saved views are enlarged (nearest neighbour) to this height, labelled


def main(out_dir: str | Path = "outputs/toy_edit", steps: int = 10, seed: int = 0) -> list[Path]:
    """Run the three edits and write PNGs into ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    written: list[Path] = []

    def save(image: Image.Image, name: str) -> None:
        path = out_dir / name
        image.save(path)
        written.append(path)
        print(f"wrote {path}")

    # 1. Word swap. Cross-attention is injected for the first 80% of the steps, self-attention for the first 40%
    # (the paper's defaults); LocalBlend lets only the region the word "circle" attends to change.
    blend = LocalBlend("circle", threshold=0.3)
    p2p = PromptToPrompt.replace(SOURCE, TARGET, cross_steps=0.8, self_steps=0.4, local_blend=blend)
    # One AttentionMaps for both prompts: maps are kept per prompt (index 0 = source, 1 = edit).
    maps = AttentionMaps(prompt=p2p.prompts)
    with visattn.attach(pipe, p2p, maps):
        # p2p.generator(seed) gives the source and the target row the same noise, which the edit relies on.
        source, edit = pipe(prompt=p2p.prompts, generator=p2p.generator(seed), num_inference_steps=steps).images
    save(
        image_grid([[source, edit]], column_titles=["source", "edit: 'red' -> 'green'"], cell=VIEW_SIZE), "replace.png"
    )
    # blend.mask: the latent cells allowed to change; everywhere else the edit's latents are the source's.
    region = float(blend.mask.float().mean())
    print(f"local blend: the 'circle' region covers {region:.0%} of the latent grid; the rest is kept from the source")

    # 2. Heatmaps: each word's map drawn over the image it belongs to.
    for index, (role, image) in enumerate((("source", source), ("edit", edit))):
        overlays = maps.overlay(image, prompt=index)
        save(
            image_grid([list(overlays.values())], column_titles=list(overlays), cell=VIEW_SIZE), f"heatmaps_{role}.png"
        )
        print(f"  {role} heatmaps, left to right: {', '.join(overlays)}")

    # 3. Re-weighting: the same prompt twice; the edit's attention to "red" is multiplied by the measured weight.
    weight = reweight_defaults(DEFAULT_MODEL)["weight"]
    reweight = PromptToPrompt.reweight(SOURCE, {"red": weight})
    with visattn.attach(pipe, reweight):
        plain, stronger = pipe(
            prompt=reweight.prompts, generator=reweight.generator(seed), num_inference_steps=steps
        ).images
    save(
        image_grid([[plain, stronger]], column_titles=["source", f"'red' weighted x{weight:g}"], cell=VIEW_SIZE),
        "reweight.png",
    )
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_edit"), help="output folder")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(out_dir=args.out, steps=args.steps, seed=args.seed)
