"""Prompt-to-Prompt (Hertz et al., 2022) on the toy world: word swap, re-weighting and local blending.

* **Word swap** (:meth:`~visattn.effects.PromptToPrompt.replace`): a held-out one-object caption has its colour
  word (``"red"`` -> ``"green"``) or its shape word swapped. *Success*: the largest object the analyzer finds in
  the edit has the target's colour (shape). *Structure preservation*: the IoU of the source's and the edit's
  foreground masks (pixels far from the analyzer's background estimate). ``source_correct`` checks the source
  image already had the source's attribute (an edit of a failed source says little). *Without P2P*: the same
  IoU, and the same success, for a plain generation of the target prompt from the same noise. The IoU is the
  baseline P2P has to beat: the same seed alone often keeps much of the layout, and the gap (``iou_gain``) is what
  the attention injection adds. The success is what the model can draw at all: an edit succeeds less often than
  a plain generation when the injected maps hold on to the source's outline. *Perfect edit*: the same success and
  IoU for the renders of the two captions' scenes (same layout, only the word's attribute changed), the ceiling
  of any editor on this metric. A colour swap keeps the silhouette, so its perfect IoU is near 1; a shape swap
  changes it (a triangle inside a circle's outline covers about 40% of it), so a faithful shape swap has a low
  IoU by construction. *Background change*: the mean
  absolute pixel difference (0-1) between source and edit away from both images' objects
  (:func:`~visattn.eval.metrics.background_change`); a word swap should leave it near 0, and mottling shows
  as a rise.
* **Re-weighting** (:meth:`~visattn.effects.PromptToPrompt.reweight`): the colour word of a one-object caption
  gets weight 0.5, 1, 2, 4 (weight 1 is the unedited source). The object's *colour mass*
  (:func:`~visattn.eval.metrics.color_mass`: area weighted by closeness to the pure colour, so it rises with
  size and with saturation) should rise with the weight. *Monotonicity*: the fraction of consecutive weights at
  which it strictly rises (1.0 = strictly increasing); ``fully_monotone`` is the share of prompts where it does
  at every step.
* **Local blend** (:class:`~visattn.effects.LocalBlend` on the two colour words): outside the blend region
  (the effect's latent mask, upsampled to pixels) the edit should equal the source. Reported: the mean absolute
  pixel difference there with the blend and without it (the same swap), over the same region.
* **Edits of an upload** (:mod:`visattn.eval.upload_edit`): a rendered held-out scene is inverted with each
  inversion ``visattn edit`` offers and colour-swapped with a local blend; the mean change of its background, in
  0-255 units, should stay within 3 (issue 28).
* **Word maps** (:class:`~visattn.effects.AttentionMaps`): where a one-object caption's colour and shape words
  attend (raw attention probabilities), averaged over layers and steps. *On the object*: the share of the word's
  map in the latent cells the generated object touches; *object area*: the share of cells it touches, what a map
  spread evenly would score. Local blend's region and the edit's reach are only as tight as these maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..effects import AttentionMaps, LocalBlend, PromptToPrompt
from ..toy.analyze import find_objects
from ..toy.data import COLORS, render_scene
from .gallery import short_caption
from .generation import EvalContext
from .metrics import (
    background_change,
    cells_touched,
    color_mass,
    foreground_iou,
    foreground_mask,
    map_share,
    mean,
    monotonicity,
    outside_change,
    upsample_mask,
)
from .prompts import single_object_scenes, word_swaps
from .tables import table
from .upload_edit import count as upload_count
from .upload_edit import headline as upload_headline
from .upload_edit import markdown as upload_markdown
from .upload_edit import run as upload_run

NAME = "prompt_to_prompt"


def largest_attribute(image: np.ndarray, attribute: str) -> str | None:
    """``attribute`` (``"color"``/``"shape"``/...) of the largest object the analyzer finds (``None``: none)."""
    _, found = find_objects(image)
    return getattr(found[0], attribute) if found else None


def _color_word(caption: str) -> str:
    # One-object captions: the first colour word is the object's (the background's comes last).
    return next(word for word in caption.split() if word in COLORS)


def run(ctx: EvalContext) -> dict[str, Any]:
    image, config = ctx.need_image(NAME), ctx.config
    n = config.samples
    seeds = ctx.seeds(n)
    steps = {"cross_steps": config.cross_steps, "self_steps": config.self_steps}
    # The quality bar checks the colour swap alone (EvalConfig.bar_only runs nothing else).
    attributes = ("color",) if config.bar_only else ("color", "shape")
    swaps = {attribute: word_swaps(attribute, n, seed=config.data_seed) for attribute in attributes}
    scenes = single_object_scenes(n, seed=config.data_seed, size=image.size)
    # weight 1 is the source itself; a valid config has at least one other weight (two distinct values)
    reweighted = [w for w in config.reweight_scales if w != 1.0]
    total = 2 * n if config.bar_only else 6 * n + n * len(reweighted) + upload_count(config)
    result: dict[str, Any] = {"settings": dict(steps)}
    plain_swaps: list[tuple[np.ndarray, np.ndarray]] = []
    with ctx.bar(total, "prompt-to-prompt") as bar:
        word_swap = {}
        for attribute, pairs in swaps.items():
            samples, shown, renders = [], [], []
            # what regenerating the target from the same noise keeps of the source, with no attention injected
            plain_targets = image.generate([swap.target for swap in pairs], seeds, done=bar.update)
            for swap, seed, plain_target in zip(pairs, seeds, plain_targets):
                source, edit = image.edit(PromptToPrompt.replace(swap.source, swap.target, **steps), seed)
                bar.update()
                rendered_source, rendered_target = (
                    np.asarray(render_scene(s)) for s in (swap.source_scene, swap.target_scene)
                )
                renders.append(rendered_target)
                shown.append((source, edit))
                if attribute == "color":
                    plain_swaps.append((source, edit))
                samples.append(
                    {
                        "source": swap.source,
                        "target": swap.target,
                        "seed": seed,
                        "success": float(largest_attribute(edit, attribute) == swap.after),
                        "success_without_p2p": float(largest_attribute(plain_target, attribute) == swap.after),
                        "source_correct": float(largest_attribute(source, attribute) == swap.before),
                        "iou": foreground_iou(source, edit),
                        "iou_without_p2p": foreground_iou(source, plain_target),
                        "background_change": background_change(source, edit),
                        "background_change_without_p2p": background_change(source, plain_target),
                        "success_perfect_edit": float(largest_attribute(rendered_target, attribute) == swap.after),
                        "iou_perfect_edit": foreground_iou(rendered_source, rendered_target),
                    }
                )
            _show_swaps(ctx, attribute, pairs, shown, plain_targets, renders, samples)
            iou_with = mean([s["iou"] for s in samples])
            iou_without = mean([s["iou_without_p2p"] for s in samples])
            word_swap[attribute] = {
                "success": mean([s["success"] for s in samples]),
                "success_without_p2p": mean([s["success_without_p2p"] for s in samples]),
                "iou": iou_with,
                "iou_without_p2p": iou_without,
                "iou_gain": iou_with - iou_without,
                "background_change": mean([s["background_change"] for s in samples]),
                "background_change_without_p2p": mean([s["background_change_without_p2p"] for s in samples]),
                "source_correct": mean([s["source_correct"] for s in samples]),
                "success_perfect_edit": mean([s["success_perfect_edit"] for s in samples]),
                "iou_perfect_edit": mean([s["iou_perfect_edit"] for s in samples]),
                "n": len(samples),
                "samples": samples,
            }
        result["word_swap"] = word_swap
        if config.bar_only:
            return result

        blend_samples, blended = [], []
        for swap, seed, (plain_source, plain_edit) in zip(swaps["color"], seeds, plain_swaps):
            blend = LocalBlend((swap.before, swap.after))
            source, edit = image.edit(
                PromptToPrompt.replace(swap.source, swap.target, local_blend=blend, **steps), seed
            )
            bar.update()
            region = upsample_mask(blend.mask[0, 0].cpu().numpy(), edit.shape[:2])
            blended.append((edit, region))
            blend_samples.append(
                {
                    "source": swap.source,
                    "target": swap.target,
                    "seed": seed,
                    "region_fraction": float(region.mean()),
                    "outside_change_blend": outside_change(source, edit, region),
                    "outside_change_plain": outside_change(plain_source, plain_edit, region),
                }
            )
        _show_blends(ctx, swaps["color"], plain_swaps, blended, blend_samples)
        with_blend = mean([s["outside_change_blend"] for s in blend_samples])
        without = mean([s["outside_change_plain"] for s in blend_samples])
        result["local_blend"] = {
            "outside_change_blend": with_blend,
            "outside_change_plain": without,
            # share of the plain edit's change outside the region that the blend removes
            "reduction": None if with_blend is None or not without else 1.0 - with_blend / without,
            "region_fraction": mean([s["region_fraction"] for s in blend_samples]),
            "n": len(blend_samples),
            "samples": blend_samples,
        }

        weight_samples, weighted = [], []
        for scene, seed in zip(scenes, seeds):
            color = _color_word(scene.caption)
            edits: dict[float, np.ndarray] = {}
            for weight in reweighted:
                source, edits[weight] = image.edit(
                    PromptToPrompt.reweight(scene.caption, {color: weight}, **steps), seed
                )
                bar.update()
            edits[1.0] = source  # weight 1 is the source itself, the same in every call (same seed)
            values = [color_mass(edits[w], color) for w in config.reweight_scales]
            weighted.append([edits[w] for w in config.reweight_scales])
            weight_samples.append(
                {
                    "caption": scene.caption,
                    "word": color,
                    "seed": seed,
                    "color_mass": values,
                    "monotonicity": monotonicity(values),
                }
            )
        for column, weight in enumerate(config.reweight_scales):
            ctx.show(
                "Prompt-to-Prompt: re-weighting the colour word",
                f"weight {weight:g}" + (" (source)" if weight == 1.0 else ""),
                [images[column] for images in weighted],
                rows=[f"{short_caption(s['caption'])}: '{s['word']}'" for s in weight_samples],
                notes=[f"colour mass {s['color_mass'][column]:.3f}" for s in weight_samples],
            )
        result["reweight"] = {
            "weights": list(config.reweight_scales),
            "color_mass": [
                mean([s["color_mass"][i] for s in weight_samples]) for i in range(len(config.reweight_scales))
            ],
            "monotonicity": mean([s["monotonicity"] for s in weight_samples]),
            "fully_monotone": mean([float(s["monotonicity"] == 1.0) for s in weight_samples]),
            "n": len(weight_samples),
            "samples": weight_samples,
        }
        result["word_maps"] = _word_maps(ctx, scenes, seeds, bar.update)
        result["upload_edit"] = upload_run(ctx, NAME, bar.update)
    return result


def _word_maps(ctx: EvalContext, scenes: list, seeds: list[int], done: Any) -> dict[str, Any]:
    image = ctx.need_image(NAME)
    samples, shown = [], []
    for scene, seed in zip(scenes, seeds):
        spec = scene.objects[0]
        # raw probabilities: renormalising each pixel over the meaningful words would inflate the background
        maps = AttentionMaps(words=[spec.color, spec.shape], drop_special=False)
        (generated,) = image.generate([scene.caption], [seed], effects=[maps])
        done(1)
        words = maps.maps()
        if ctx.gallery is not None and len(shown) < ctx.gallery.samples:
            overlays = maps.overlay(generated)
            shown.append([generated, overlays[spec.color], overlays[spec.shape]])
        grid = tuple(words[spec.color].shape[-2:])
        region = cells_touched(foreground_mask(generated), grid)
        samples.append(
            {
                "caption": scene.caption,
                "seed": seed,
                "color_on_object": map_share(words[spec.color][0].numpy(), region),
                "shape_on_object": map_share(words[spec.shape][0].numpy(), region),
                "object_area": float(region.mean()),
            }
        )
    for column, title in enumerate(("generated", "colour word's map", "shape word's map")):
        key = (None, "color_on_object", "shape_on_object")[column]
        ctx.show(
            "Prompt-to-Prompt: where the words attend (AttentionMaps, raw probabilities)",
            title,
            [images[column] for images in shown],
            rows=[short_caption(s["caption"]) for s in samples],
            notes=[None if key is None or s[key] is None else f"on the object {s[key]:.2f}" for s in samples],
        )
    return {
        "color_on_object": mean([s["color_on_object"] for s in samples]),
        "shape_on_object": mean([s["shape_on_object"] for s in samples]),
        "object_area": mean([s["object_area"] for s in samples]),
        "n": len(samples),
        "samples": samples,
    }


def _swap_note(sample: dict[str, Any], suffix: str) -> str:
    right = "right" if sample["success" + suffix] else "wrong"
    change = sample["background_change" + suffix]
    background = "" if change is None else f"; background {change:.3f}"
    return f"IoU {sample['iou' + suffix]:.2f}, {right}{background}"


def _show_swaps(
    ctx: EvalContext,
    attribute: str,
    pairs: list,
    shown: list[tuple[np.ndarray, np.ndarray]],
    plain_targets: list[np.ndarray],
    renders: list[np.ndarray],
    samples: list[dict[str, Any]],
) -> None:
    section = f"Prompt-to-Prompt: {'colour' if attribute == 'color' else attribute} word swap"
    rows = [f"{short_caption(swap.source)}: {swap.before} -> {swap.after}" for swap in pairs]
    mark = {1.0: "right", 0.0: "wrong"}
    columns = (
        ("source", [source for source, _ in shown], [f"source {mark[s['source_correct']]}" for s in samples]),
        ("P2P edit", [edit for _, edit in shown], [_swap_note(s, "") for s in samples]),
        (
            "target, no P2P",
            plain_targets,
            [_swap_note(s, "_without_p2p") for s in samples],
        ),
        (
            "perfect edit (render)",
            renders,  # 64 px; the gallery's grid scales every cell to one height
            [f"IoU {s['iou_perfect_edit']:.2f}" for s in samples],
        ),
    )
    for title, images, notes in columns:
        ctx.show(section, title, images, rows=rows, notes=notes)


def _change(value: float | None) -> str:
    return "region is everything" if value is None else f"outside {value:.3f}"


def _show_blends(
    ctx: EvalContext,
    pairs: list,
    plain_swaps: list[tuple[np.ndarray, np.ndarray]],
    blended: list[tuple[np.ndarray, np.ndarray]],
    samples: list[dict[str, Any]],
) -> None:
    section = "Prompt-to-Prompt: local blend (change outside the region, 0-1)"
    rows = [f"{short_caption(swap.source)}: {swap.before} -> {swap.after}" for swap in pairs]
    regions = [(np.repeat(region[..., None], 3, axis=-1) * 255).astype(np.uint8) for _, region in blended]
    columns = (
        ("source", [source for source, _ in plain_swaps], None),
        ("edit, no blend", [edit for _, edit in plain_swaps], [_change(s["outside_change_plain"]) for s in samples]),
        ("edit with blend", [edit for edit, _ in blended], [_change(s["outside_change_blend"]) for s in samples]),
        ("blend region (white)", regions, [f"{s['region_fraction']:.0%} of the image" for s in samples]),
    )
    for title, images, notes in columns:
        ctx.show(section, title, images, rows=rows, notes=notes)


def markdown(result: dict[str, Any]) -> str:
    swap_rows = [
        [
            f"{attribute} swap",
            r["n"],
            r["success"],
            r["success_without_p2p"],
            r["iou"],
            r["iou_without_p2p"],
            r["background_change"],
            r["background_change_without_p2p"],
            r["source_correct"],
            r["success_perfect_edit"],
            r["iou_perfect_edit"],
        ]
        for attribute, r in result["word_swap"].items()
    ]
    blend = result["local_blend"]
    weights = result["reweight"]
    weight_cells = ", ".join(f"{w:g}: {m:.4f}" for w, m in zip(weights["weights"], weights["color_mass"]))
    return (
        "Word swap: success = the edit's largest object has the target's attribute; IoU = foreground IoU "
        "between source and edit; background change = mean |edit - source| (0-1) away from both images' objects; "
        "without P2P = the same for a plain generation of the target prompt from the same noise (what the model "
        "draws at all, and what the seed alone keeps); perfect edit = the same for the renders of the two captions' "
        "scenes, the ceiling of any editor (a shape swap changes the silhouette, so even a perfect one keeps little "
        "of the source's foreground).\n\n"
        + table(
            [
                "edit",
                "n",
                "success",
                "success without P2P",
                "foreground IoU",
                "IoU without P2P",
                "background change",
                "without P2P",
                "source correct",
                "perfect edit: success",
                "perfect edit: IoU",
            ],
            swap_rows,
            digits=3,
        )
        + "\nRe-weighting the colour word: colour mass per weight ("
        + weight_cells
        + ").\n\n"
        + table(
            ["edit", "n", "monotonicity", "fully monotone"],
            [["re-weight colour word", weights["n"], weights["monotonicity"], weights["fully_monotone"]]],
        )
        + "\nLocal blend: mean |edit - source| (0-1) outside the blend region (region covers "
        + (f"{blend['region_fraction']:.0%}" if blend["region_fraction"] is not None else "–")
        + " of the image).\n\n"
        + table(
            ["edit", "n", "with blend", "without blend", "reduction"],
            [
                [
                    "colour swap",
                    blend["n"],
                    blend["outside_change_blend"],
                    blend["outside_change_plain"],
                    blend["reduction"],
                ]
            ],
            digits=4,
        )
        + _word_maps_markdown(result["word_maps"])
        + (upload_markdown(result["upload_edit"]) if "upload_edit" in result else "")
    )


def _word_maps_markdown(maps: dict[str, Any]) -> str:
    return (
        "\nWord maps: share of the word's attention (raw probabilities, mean over layers and steps) in the latent "
        "cells the object touches; object area = the share those cells are of the grid (an evenly spread map).\n\n"
        + table(
            ["word", "n", "on the object", "object area"],
            [
                ["colour", maps["n"], maps["color_on_object"], maps["object_area"]],
                ["shape", maps["n"], maps["shape_on_object"], maps["object_area"]],
            ],
        )
    )


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    swap = result["word_swap"]
    return {
        "colour swap success": swap["color"]["success"],
        "colour swap IoU": swap["color"]["iou"],
        "colour swap IoU without P2P": swap["color"]["iou_without_p2p"],
        "shape swap success": swap["shape"]["success"],
        "shape swap success without P2P": swap["shape"]["success_without_p2p"],
        "shape swap IoU": swap["shape"]["iou"],
        "shape swap IoU of a perfect edit": swap["shape"]["iou_perfect_edit"],
        "re-weight monotonicity": result["reweight"]["monotonicity"],
        "colour word's map on the object": result["word_maps"]["color_on_object"],
        "shape word's map on the object": result["word_maps"]["shape_on_object"],
        **(upload_headline(result["upload_edit"]) if "upload_edit" in result else {}),
    }
