"""The sweep behind the toy image model's guidance and re-weighting defaults: how much each candidate setting
changes the image, and whether the image still shows its caption.

Perturbation guidance (PAG, Ahn et al. 2024; SoftPAG, HeadHunter's "Fine-Grained Perturbation Guidance via
Attention Head Selection"; SEG, Hong 2024) steers away from a prediction whose self-attention was perturbed, so
what it does depends on where that attention matters. On the toy UNet the mid block works on 4 x 4 latent pixels
and barely shapes the image: PAG there (the authors' and diffusers' default for Stable Diffusion) moves pixels by
about 1e-4, a no-op to the eye. This study measures, on held-out one-object captions (the prompt-accuracy
samples and seeds), every method over candidate layer selections (:attr:`EvalConfig.sweep_layers
<visattn.eval.EvalConfig>`) and scales (:attr:`~visattn.eval.EvalConfig.sweep_scales`):

* ``change``: mean absolute pixel difference from the unguided image (``[0, 1]`` units), over the whole image;
* ``object change``: the same over the unguided image's object (its foreground grown by one pixel), where the
  guidance acts (most of a toy image is flat background);
* ``accuracy`` and its change: the attribute accuracy of :mod:`.accuracy` (colour, shape, size, position,
  count read back from the pixels), the quality proxy the toy world allows.

For each method it picks the setting with the largest ``change`` whose accuracy stays within
:attr:`~visattn.eval.EvalConfig.sweep_max_accuracy_drop` of the unguided images (:func:`choose`); those choices
are the toy model's defaults in :mod:`visattn.defaults`.

Prompt-to-Prompt re-weighting (Hertz et al. 2022) multiplies the weighted word's cross-attention probabilities by
its scale during ``cross_steps``. The toy model's cross-attention is spread almost evenly over all 32 text
positions (the colour word holds a few percent of it) and its causal text encoder writes the colour into every
later token, padding included, so a moderate weight moves little. The second table weights the colour word of the
same captions by :attr:`~visattn.eval.EvalConfig.sweep_reweight_scales` under the authors' ``cross_steps`` (0.8)
and with the word controlled through every step (1.0), and reports the change of the object's mean colour
(``colour change``: the mean over RGB channels of the absolute difference of the region's mean colour, ``[0, 1]``
units) and the object's mean absolute pixel change.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..effects import PerturbedAttentionGuidance, PromptToPrompt, SmoothedEnergyGuidance
from .accuracy_study import grade
from .gallery import short_caption
from .generation import EvalContext
from .metrics import foreground_mask, grow, mean
from .prompts import single_object_scenes
from .tables import table

NAME = "guidance_sweep"
#: The methods swept, in report order: PAG (strength 1), SoftPAG (:attr:`EvalConfig.sweep_softpag_strength`),
#: SEG (the authors' infinite blur).
METHODS: tuple[str, ...] = ("PAG", "SoftPAG", "SEG")


def guidance_effect(method: str, layers: str, scale: float, softpag_strength: float = 0.5) -> Any:
    """The effect of one sweep setting."""
    if method == "PAG":
        return PerturbedAttentionGuidance(scale, layers=layers)
    if method == "SoftPAG":
        return PerturbedAttentionGuidance(scale, layers=layers, strength=softpag_strength)
    if method == "SEG":
        return SmoothedEnergyGuidance(scale, layers=layers)
    raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")


def pixel_change(reference: np.ndarray, image: np.ndarray, region: np.ndarray | None = None) -> float | None:
    """Mean absolute pixel difference in ``[0, 1]`` units, over ``region`` (boolean ``[H, W]``) or the whole
    image; ``None`` for an empty region."""
    difference = np.abs(np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64)) / 255.0
    if region is None:
        return float(difference.mean())
    if not region.any():
        return None
    return float(difference[region].mean())


def color_change(reference: np.ndarray, image: np.ndarray, region: np.ndarray) -> float | None:
    """Change of ``region``'s mean colour: the mean over RGB channels of ``|mean(reference) - mean(image)|`` over
    the region, in ``[0, 1]`` units; ``None`` for an empty region."""
    if not region.any():
        return None
    before = np.asarray(reference, dtype=np.float64)[region].mean(axis=0)
    after = np.asarray(image, dtype=np.float64)[region].mean(axis=0)
    return float(np.abs(after - before).mean() / 255.0)


def object_region(image: np.ndarray) -> np.ndarray:
    """The object of a toy image: its foreground grown by one pixel (soft edges count)."""
    return grow(foreground_mask(image), 1)


def choose(rows: list[dict[str, Any]], method: str, max_accuracy_drop: float) -> dict[str, Any] | None:
    """The setting of ``method`` with the largest ``change`` among those whose accuracy change is at least
    ``-max_accuracy_drop`` (ties: the smaller scale); ``None`` when none qualifies."""
    allowed = [
        r
        for r in rows
        if r["method"] == method and r["change"] is not None and r["accuracy_change"] >= -max_accuracy_drop - 1e-9
    ]
    if not allowed:
        return None
    return max(allowed, key=lambda r: (r["change"], -r["scale"]))


def selectable(pipe: Any, candidates: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``(kept, skipped)``: the candidate layer selections that pick at least one self-attention layer of the
    pipeline's UNet, and those that pick none (a UNet with fewer levels than the toy model's)."""
    from ..attachment import layer_roles
    from ..layers import normalize_layers, select_layers

    roles = {name: role for name, role in layer_roles(pipe.unet).items() if role == "self"}
    kept, skipped = [], []
    for layers in candidates:
        try:
            select_layers(roles, normalize_layers(layers))
        except ValueError:
            skipped.append(layers)
        else:
            kept.append(layers)
    return kept, skipped


def _guidance(ctx: EvalContext, captions: list[str], seeds: list[int]) -> dict[str, Any]:
    image, config = ctx.image, ctx.config
    candidates, skipped = selectable(image.pipe, config.sweep_layers)
    plain = image.generate(captions, seeds)
    regions = [object_region(img) for img in plain]
    baseline = [grade(img, caption)["accuracy"] for img, caption in zip(plain, captions)]
    grid = [(m, layers, float(s)) for layers in candidates for m in METHODS for s in config.sweep_scales]
    rows = []
    images_of: dict[tuple[str, str, float], list[np.ndarray]] = {}
    with ctx.bar(len(grid) * len(captions), "guidance sweep") as bar:
        for method, layers, scale in grid:
            effect = guidance_effect(method, layers, scale, config.sweep_softpag_strength)
            images = image.generate(captions, seeds, effects=(effect,), done=bar.update)
            images_of[(method, layers, scale)] = images
            accuracy = [grade(img, caption)["accuracy"] for img, caption in zip(images, captions)]
            rows.append(
                {
                    "method": method,
                    "layers": layers,
                    "scale": scale,
                    "change": mean([pixel_change(p, img) for p, img in zip(plain, images)]),
                    "object_change": mean([pixel_change(p, img, r) for p, img, r in zip(plain, images, regions)]),
                    "accuracy": mean(accuracy),
                    "accuracy_change": mean([a - b for a, b in zip(accuracy, baseline)]),
                    "n": len(images),
                }
            )
    chosen = {m: choose(rows, m, config.sweep_max_accuracy_drop) for m in METHODS}
    labels = [short_caption(c) for c in captions]
    ctx.show("Guidance sweep: the chosen defaults", "no guidance", plain, rows=labels)
    for method, row in chosen.items():
        if row is not None:
            ctx.show(
                "Guidance sweep: the chosen defaults",
                f"{method} {row['layers']} s{row['scale']:g}",
                images_of[(method, row["layers"], row["scale"])],
                rows=labels,
            )
    return {
        "layers": candidates,
        "skipped_layers": skipped,
        "scales": list(config.sweep_scales),
        "softpag_strength": config.sweep_softpag_strength,
        "max_accuracy_drop": config.sweep_max_accuracy_drop,
        "baseline_accuracy": mean(baseline),
        "rows": rows,
        "chosen": chosen,
    }


def _reweighting(ctx: EvalContext, scenes: list[Any], seeds: list[int]) -> dict[str, Any]:
    image, config = ctx.image, ctx.config
    settings = [(float(c), float(w)) for c in config.sweep_reweight_cross_steps for w in config.sweep_reweight_scales]
    rows = []
    with ctx.bar(len(settings) * len(scenes), "re-weighting sweep") as bar:
        for cross_steps, weight in settings:
            colour, change = [], []
            for scene, seed in zip(scenes, seeds):
                word = scene.objects[0].color
                edit = PromptToPrompt.reweight(
                    scene.caption, {word: weight}, cross_steps=cross_steps, self_steps=config.self_steps
                )
                source, target = image.edit(edit, seed)
                region = object_region(source)
                colour.append(color_change(source, target, region))
                change.append(pixel_change(source, target, region))
                bar.update(1)
            rows.append(
                {
                    "cross_steps": cross_steps,
                    "weight": weight,
                    "color_change": mean(colour),
                    "object_change": mean(change),
                    "n": len(scenes),
                }
            )
    return {"word": "colour", "self_steps": config.self_steps, "rows": rows}


def run(ctx: EvalContext) -> dict[str, Any]:
    image, config = ctx.need_image(NAME), ctx.config
    scenes = single_object_scenes(config.samples, seed=config.data_seed, size=image.size)
    captions, seeds = [s.caption for s in scenes], ctx.seeds(len(scenes))
    return {"guidance": _guidance(ctx, captions, seeds), "reweighting": _reweighting(ctx, scenes, seeds)}


def markdown(result: dict[str, Any]) -> str:
    guidance, reweighting = result["guidance"], result["reweighting"]
    rows = [
        [
            r["method"],
            r["layers"],
            f"{r['scale']:g}",
            r["change"],
            r["object_change"],
            r["accuracy"],
            r["accuracy_change"],
        ]
        for r in guidance["rows"]
    ]
    chosen = [
        [m, r["layers"], f"{r['scale']:g}", r["change"], r["object_change"], r["accuracy_change"]]
        for m, r in guidance["chosen"].items()
        if r is not None
    ]
    none = [m for m, r in guidance["chosen"].items() if r is None]
    text = (
        f"Unguided accuracy {guidance['baseline_accuracy']:.3f}. Change = mean absolute pixel difference from the "
        "unguided image on the same seed (0-1), over the whole image and over the unguided image's object. "
        f"SoftPAG strength {guidance['softpag_strength']:g}; SEG with the authors' infinite blur. Chosen per "
        f"method: the largest change with accuracy within {guidance['max_accuracy_drop']:g} of unguided.\n\n"
        + table(["method", "layers", "scale", "change", "object change", "Δ accuracy"], chosen, digits=4)
    )
    if guidance.get("skipped_layers"):
        text += f"\nSkipped (no self-attention layer of this UNet matches): {', '.join(guidance['skipped_layers'])}.\n"
    if none:
        text += f"\nNo setting of {', '.join(none)} kept the accuracy.\n"
    text += "\nEvery setting:\n\n" + table(
        ["method", "layers", "scale", "change", "object change", "accuracy", "Δ accuracy"], rows, digits=4
    )
    rw = [
        [f"{r['cross_steps']:g}", f"{r['weight']:g}", r["color_change"], r["object_change"]]
        for r in reweighting["rows"]
    ]
    text += (
        "\nRe-weighting the colour word (`PromptToPrompt.reweight`, self_steps "
        f"{reweighting['self_steps']:g}): change of the object's mean colour and its mean absolute pixel change, "
        "edit vs source (0-1).\n\n" + table(["cross_steps", "weight", "colour change", "object change"], rw, digits=4)
    )
    return text


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    return {}


def chart(result: dict[str, Any]) -> Any:
    """A PIL image: per method, the image change against the scale, one line per layer selection; hollow markers
    where the accuracy fell by more than the allowed drop, a star on the chosen setting."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from PIL import Image

    guidance = result["guidance"]
    figure = Figure(figsize=(4 * (len(METHODS) + 1), 3.6), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(METHODS) + 1)
    limit = guidance["max_accuracy_drop"]
    for ax, method in zip(axes, METHODS):
        for layers in guidance["layers"]:
            rows = [r for r in guidance["rows"] if r["method"] == method and r["layers"] == layers]
            scales = [r["scale"] for r in rows]
            (line,) = ax.plot(scales, [r["change"] for r in rows], marker="o", label=layers)
            bad = [r for r in rows if r["accuracy_change"] < -limit - 1e-9]
            ax.scatter(
                [r["scale"] for r in bad], [r["change"] for r in bad], s=70, facecolors="white",
                edgecolors=line.get_color(), zorder=3,
            )  # fmt: skip
        pick = guidance["chosen"].get(method)
        if pick is not None:
            ax.scatter([pick["scale"]], [pick["change"]], marker="*", s=220, color="black", zorder=4)
        ax.set_title(method)
        ax.set_xlabel("scale")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean |pixel change| vs unguided (0-1)")
    axes[0].legend(title="layers", fontsize=8)
    ax = axes[-1]
    reweighting = result["reweighting"]
    for cross_steps in sorted({r["cross_steps"] for r in reweighting["rows"]}):
        rows = [r for r in reweighting["rows"] if r["cross_steps"] == cross_steps]
        ax.plot([r["weight"] for r in rows], [r["color_change"] for r in rows], marker="o", label=f"{cross_steps:g}")
    ax.set_title("re-weighting the colour word")
    ax.set_xlabel("weight")
    ax.set_ylabel("object's mean colour change (0-1)")
    ax.legend(title="cross_steps", fontsize=8)
    ax.grid(alpha=0.3)
    figure.suptitle("Guidance sweep on the toy image model (hollow: accuracy fell; star: chosen)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as picture:
        return picture.convert("RGB")
