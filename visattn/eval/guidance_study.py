"""Perturbed-attention guidance as a function of scale and strength: PAG (Ahn et al., 2024; strength 1, the
self-attention map replaced by the identity) and SoftPAG (HeadHunter, "Fine-Grained Perturbation Guidance via
Attention Head Selection"; strength ``a < 1`` interpolates the map toward the identity, ``(1 - a) A + a I``).

On held-out one-object captions (the prompt-accuracy samples, so scale 0 is exactly that study's images) each
configuration reports the mean *sharpness* (:func:`~visattn.eval.metrics.sharpness`, variance of the
Laplacian: the structure PAG is meant to restore) and the mean attribute accuracy, and their change against
scale 0 (per sample, then averaged). The perturbed layers are :attr:`EvalConfig.pag_layers
<visattn.eval.EvalConfig>` (the up blocks by default).
"""

from __future__ import annotations

from typing import Any

from ..effects import PerturbedAttentionGuidance
from .accuracy_study import grade
from .gallery import short_caption
from .generation import EvalContext
from .metrics import mean, sharpness
from .prompts import single_object_scenes
from .tables import table

NAME = "perturbation_guidance"


def method_name(scale: float, strength: float) -> str:
    """``"none"`` at scale 0, ``"PAG"`` at strength 1, else ``"SoftPAG"``."""
    if scale == 0:
        return "none"
    return "PAG" if strength == 1.0 else "SoftPAG"


def run(ctx: EvalContext) -> dict[str, Any]:
    image, config = ctx.need_image(NAME), ctx.config
    scenes = single_object_scenes(config.samples, seed=config.data_seed, size=image.size)
    captions, seeds = [s.caption for s in scenes], ctx.seeds(len(scenes))
    grid = [(0.0, None)] + [(float(s), float(a)) for s in config.pag_scales if s != 0 for a in config.pag_strengths]
    rows = []
    baseline: list[tuple[float, float]] = []
    with ctx.bar(len(grid) * len(captions), "perturbation guidance") as bar:
        for scale, strength in grid:
            effects = ()
            if scale != 0:
                effects = (PerturbedAttentionGuidance(scale, layers=config.pag_layers, strength=strength),)
            images = image.generate(captions, seeds, effects=effects, done=bar.update)
            values = [(sharpness(img), grade(img, caption)["accuracy"]) for img, caption in zip(images, captions)]
            if scale == 0:
                baseline = values
            ctx.show(
                "Perturbation guidance: scale and strength",
                "no guidance" if scale == 0 else f"{method_name(scale, strength)} s{scale:g}, strength {strength:g}",
                images,
                rows=[short_caption(c) for c in captions],
                notes=[f"sharpness {1000 * v[0]:.2f}, accuracy {v[1]:.2f}" for v in values],  # x1000 as in the table
            )
            rows.append(
                {
                    "method": method_name(scale, 1.0 if strength is None else strength),
                    "scale": scale,
                    "strength": strength,
                    "sharpness": mean([v[0] for v in values]),
                    "sharpness_change": mean([v[0] - b[0] for v, b in zip(values, baseline)]),
                    "accuracy": mean([v[1] for v in values]),
                    "accuracy_change": mean([v[1] - b[1] for v, b in zip(values, baseline)]),
                    "n": len(values),
                }
            )
    return {"layers": config.pag_layers, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            r["method"],
            r["scale"],
            r["strength"],
            r["sharpness"],
            r["sharpness_change"],
            r["accuracy"],
            r["accuracy_change"],
        ]
        for r in result["rows"]
    ]
    return (
        f"Perturbed layers: {result['layers']}. Sharpness = variance of the Laplacian of luminance (x1000); "
        "changes are against scale 0 on the same seeds.\n\n"
        + table(
            ["method", "scale", "strength", "sharpness", "Δ sharpness", "accuracy", "Δ accuracy"],
            [[r[0], r[1], r[2], *(None if v is None else 1000 * v for v in r[3:5]), *r[5:]] for r in rows],
            digits=3,
        )
    )


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    return {}
