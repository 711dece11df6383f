"""Perturbation guidance on the embedded default pipeline: PAG, SoftPAG on single heads, and SEG.

Runs offline on a CPU in a few seconds. Every guidance here adds a perturbed copy of the conditional rows to the
denoiser's batch and steers away from it; no pipeline subclass is involved, the stock pipeline's own
classifier-free guidance does the arithmetic (``eps_cfg + scale * (eps_cond - eps_perturbed)``):

* PAG (Ahn et al. 2024): self-attention of the mid block replaced by the identity map;
* SoftPAG on single heads (HeadHunter, "Fine-Grained Perturbation Guidance via Attention Head Selection"): only
  the chosen heads are pulled halfway toward the identity, here from a :class:`~visattn.guidance.HeadSet` that
  is saved to JSON and loaded back, as a head set found by ``visattn hunt`` would be;
* SEG (Hong 2024): the mid block's queries blurred with a Gaussian.

Writes the unguided image and the three guided ones side by side, prints how far each moved from the unguided
image. The default pipeline is visattn's trained toy-world model (``visattn/toy-image``), shipped with the package.

    python examples/toy_guidance.py --out outputs/toy_guidance --steps 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import visattn
from visattn.charts import image_grid
from visattn.defaults import DEFAULT_MODEL, load_default_pipeline
from visattn.effects import PerturbedAttentionGuidance, SmoothedEnergyGuidance
from visattn.guidance import HeadSet, layer_heads

PROMPT = "a large yellow star in the center on a gray background"
VIEW_SIZE = 256  # the toy images are tiny; saved views are enlarged (nearest neighbour) to this height


def main(out_dir: str | Path = "outputs/toy_guidance", steps: int = 10, seed: int = 0) -> list[Path]:
    """Generate unguided, PAG, SoftPAG-per-head and SEG images into ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)

    def generate() -> Image.Image:
        # A fresh generator per call: every variant starts from the same noise.
        generator = torch.Generator().manual_seed(seed)
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, generator=generator).images[0]

    # Heads to perturb: the first head of the first self-attention layer of the mid block. HeadHunter would pick
    # them by search (see sdxl_pag_softpag.py); here the set is written and read back like a saved search result.
    mid_layer = next(name for name in layer_heads(pipe) if name.startswith("mid_block"))
    heads_path = HeadSet([(mid_layer, 0)], model=DEFAULT_MODEL).save(out_dir / "heads.json")
    print(f"wrote {heads_path} (a head set: {HeadSet.load(heads_path)})")

    variants = {
        "PAG (mid block)": PerturbedAttentionGuidance(scale=3.0, layers="mid"),
        "SoftPAG (1 head, strength 0.5)": HeadSet.load(heads_path).effect(scale=3.0, strength=0.5),
        "SEG (mid block, sigma 4)": SmoothedEnergyGuidance(scale=3.0, sigma=4.0, layers="mid"),
    }
    unguided = generate()
    images = [unguided]
    for name, effect in variants.items():
        with visattn.attach(pipe, effect):
            image = generate()
        images.append(image)
        change = np.abs(np.asarray(image, dtype=np.float64) - np.asarray(unguided, dtype=np.float64)).mean() / 255
        print(f"{name:32s} mean pixel change from unguided: {change:.4f}")

    path = out_dir / "guidance.png"
    image_grid([images], column_titles=["unguided", *variants], title=PROMPT, cell=VIEW_SIZE).save(path)
    print(f"wrote {path} (left to right: unguided, {', '.join(variants)})")
    return [heads_path, path]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_guidance"), help="output folder")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(out_dir=args.out, steps=args.steps, seed=args.seed)
