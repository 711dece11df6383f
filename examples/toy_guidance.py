"""Perturbation guidance on the embedded default pipeline: PAG, SoftPAG on chosen heads, and SEG.

Runs offline on a CPU in a few seconds. Every guidance here adds a perturbed copy of the conditional rows to the
denoiser's batch and steers away from it; no pipeline subclass is involved, the stock pipeline's own
classifier-free guidance does the arithmetic (``eps_cfg + scale * (eps_cond - eps_perturbed)``):

* PAG (Ahn et al. 2024): self-attention replaced by the identity map;
* SoftPAG on chosen heads (HeadHunter, "Fine-Grained Perturbation Guidance via Attention Head Selection"): only
  the chosen heads are pulled halfway toward the identity, here from a :class:`~visattn.guidance.HeadSet` that
  is saved to JSON and loaded back, as a head set found by ``visattn hunt`` would be;
* SEG (Hong 2024): the queries blurred (the authors' infinite blur: their mean over the grid).

Layers and scales are the toy model's measured defaults (:func:`visattn.defaults.guidance_defaults`, picked by
``visattn eval --studies guidance_sweep``): the full-resolution up block, where the toy UNet's self-attention
shapes the image. PAG's usual place, the mid block, works on 4 x 4 latent pixels in this model and changes the
image by about 1e-4 (try ``--layers mid``).

Writes the unguided image and the three guided ones side by side, prints how far each moved from the unguided
image. The default pipeline is visattn's trained toy-world model (``visattn/toy-image``), shipped with the package.

    python examples/toy_guidance.py --out outputs/toy_guidance --steps 25
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import visattn
from visattn.charts import image_grid
from visattn.defaults import DEFAULT_MODEL, guidance_defaults, load_default_pipeline
from visattn.effect_specs import build_effect
from visattn.guidance import HeadSet, layer_heads
from visattn.layers import ROLE_KEYWORDS, matches

PROMPT = "a large yellow star in the center on a gray background"
VIEW_SIZE = 256  # the toy images are tiny; saved views are enlarged (nearest neighbour) to this height


def main(
    out_dir: str | Path = "outputs/toy_guidance", steps: int = 25, seed: int = 0, layers: str | None = None
) -> list[Path]:
    """Generate unguided, PAG, SoftPAG-per-head and SEG images into ``out_dir``; returns the written paths.
    ``layers`` replaces the measured layers of every method (e.g. ``"mid"``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    specs = guidance_defaults(DEFAULT_MODEL)  # {"pag": {...}, "softpag": {...}, "seg": {...}}, effect specs
    if layers is not None:
        for spec in specs.values():
            spec["layers"] = layers

    def generate() -> Image.Image:
        # A fresh generator per call: every variant starts from the same noise.
        generator = torch.Generator().manual_seed(seed)
        return pipe(PROMPT, num_inference_steps=steps, generator=generator).images[0]

    # Heads to perturb: every head of the SoftPAG layers (layer_heads lists the self-attention layers, so the role
    # keyword "self" takes them all). HeadHunter would pick heads by search (see sdxl_pag_softpag.py); here the set
    # is written and read back like a saved search result.
    soft = specs["softpag"]
    every = soft["layers"] in ROLE_KEYWORDS
    chosen = [(name, count) for name, count in layer_heads(pipe).items() if every or matches(soft["layers"], name)]
    heads = [(name, head) for name, count in chosen for head in range(count)]
    heads_path = HeadSet(heads, model=DEFAULT_MODEL).save(out_dir / "heads.json")
    print(f"wrote {heads_path} (a head set: {HeadSet.load(heads_path)})")

    variants = {
        f"PAG ({specs['pag']['layers']}, s{specs['pag']['scale']:g})": build_effect(specs["pag"]),
        f"SoftPAG ({len(heads)} heads, strength {soft['strength']:g}, s{soft['scale']:g})": HeadSet.load(
            heads_path
        ).effect(scale=soft["scale"], strength=soft["strength"]),
        f"SEG ({specs['seg']['layers']}, s{specs['seg']['scale']:g})": build_effect(specs["seg"]),
    }
    unguided = generate()
    images = [unguided]
    for name, effect in variants.items():
        with visattn.attach(pipe, effect):
            image = generate()
        images.append(image)
        change = np.abs(np.asarray(image, dtype=np.float64) - np.asarray(unguided, dtype=np.float64)).mean() / 255
        print(f"{name:40s} mean pixel change from unguided: {change:.4f}")

    path = out_dir / "guidance.png"
    image_grid([images], column_titles=["unguided", *variants], title=PROMPT, cell=VIEW_SIZE).save(path)
    print(f"wrote {path} (left to right: unguided, {', '.join(variants)})")
    return [heads_path, path]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_guidance"), help="output folder")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", default=None, help="perturb these layers instead (e.g. mid)")
    args = parser.parse_args()
    main(out_dir=args.out, steps=args.steps, seed=args.seed, layers=args.layers)
