"""Prompt accuracy: does the image show what the caption says? Read back by the toy world's pixel analyzer.

For held-out single-object and multi-object captions, each generated image is graded by
:func:`visattn.toy.analyze.prompt_accuracy`: per attribute (colour, shape, size, position) the fraction of
described objects the image gets right, and ``count`` (exactly as many objects as described). A sample's
*attribute accuracy* is the mean of those five scores; a prompt set's ``accuracy`` is the mean over its samples
(the quality bar's number), and ``all_correct`` the share of samples with everything right.

For the single-object set the study also tabulates the *shapes drawn*: per described size and shape, how often the
analyzer reads each shape from the object of the caption's colour. A shape score alone says how often the model
misses; this says what it draws instead (a model that draws every square as a circle shows it in one cell).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..toy.analyze import find_objects, prompt_accuracy
from ..toy.data import SHAPES, SIZES, Scene
from .gallery import short_caption
from .generation import EvalContext
from .metrics import mean
from .prompts import multi_object_scenes, single_object_scenes
from .tables import table

NAME = "prompt_accuracy"
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "count")
#: Columns of the shapes-drawn table: every shape, and ``none`` where no object of the caption's colour was found.
DRAWN: tuple[str, ...] = (*SHAPES, "none")


def attribute_accuracy(scores: dict[str, float | None]) -> float:
    """The mean of a :func:`~visattn.toy.analyze.prompt_accuracy` result's five attribute scores (those the
    caption states)."""
    value = mean([scores[a] for a in ATTRIBUTES])
    return 0.0 if value is None else value


def grade(image: np.ndarray, caption: str) -> dict[str, float | None]:
    """The analyzer's scores for one image plus its ``accuracy`` (:func:`attribute_accuracy`)."""
    scores = prompt_accuracy(image, caption)
    return {**{a: scores[a] for a in ATTRIBUTES}, "all": scores["all"], "accuracy": attribute_accuracy(scores)}


def summarize(graded: list[dict[str, float | None]]) -> dict[str, Any]:
    """Per-attribute means, ``accuracy`` (mean attribute accuracy) and ``all_correct`` over samples."""
    summary: dict[str, Any] = {a: mean([g[a] for g in graded]) for a in ATTRIBUTES}
    summary["accuracy"] = mean([g["accuracy"] for g in graded])
    summary["all_correct"] = mean([g["all"] for g in graded])
    summary["n"] = len(graded)
    return summary


def drawn_shape(image: np.ndarray, scene: Scene) -> str:
    """The shape the analyzer reads from the largest object of the colour of ``scene``'s first object (``none``:
    no object of that colour)."""
    _, found = find_objects(image)
    want = scene.objects[0].color
    return next((obj.shape for obj in found if obj.color == want), "none")


def drawn_shapes(scenes: list[Scene], drawn: list[str]) -> dict[str, dict[str, int]]:
    """Per described ``"<size> <shape>"`` of one-object ``scenes`` (rows in size, then shape order; only those that
    occur), how many times each shape in :data:`DRAWN` was drawn for it."""
    counts = {f"{size} {shape}": dict.fromkeys(DRAWN, 0) for size in SIZES for shape in SHAPES}
    for scene, shape in zip(scenes, drawn, strict=True):
        spec = scene.objects[0]
        counts[f"{spec.size} {spec.shape}"][shape] += 1
    return {row: cells for row, cells in counts.items() if sum(cells.values())}


def run(ctx: EvalContext) -> dict[str, Any]:
    image = ctx.need_image(NAME)
    n, data_seed = ctx.config.samples, ctx.config.data_seed
    sets = {"single": single_object_scenes(n, seed=data_seed, size=image.size)}
    if not ctx.config.bar_only:  # the quality bar checks the single-object accuracy alone
        sets["multi"] = multi_object_scenes(n, seed=data_seed, size=image.size)
    result: dict[str, Any] = {}
    with ctx.bar(len(sets) * n, "prompt accuracy") as bar:
        for name, scenes in sets.items():
            captions, seeds = [s.caption for s in scenes], ctx.seeds(len(scenes))
            images = image.generate(captions, seeds, done=bar.update)
            graded = [grade(img, caption) for img, caption in zip(images, captions)]
            ctx.show(
                f"Prompt accuracy: {name}-object captions",
                "generated",
                images,
                rows=[short_caption(c) for c in captions],
                notes=[f"accuracy {g['accuracy']:.2f}" for g in graded],
            )
            samples = [{"caption": c, "seed": s, **g} for c, s, g in zip(captions, seeds, graded)]
            result[name] = {**summarize(graded), "samples": samples}
            if name == "single":
                drawn = [drawn_shape(img, scene) for img, scene in zip(images, scenes)]
                for sample, shape in zip(samples, drawn):
                    sample["drawn_shape"] = shape
                result[name]["drawn_shapes"] = drawn_shapes(scenes, drawn)
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [f"{name}-object", r["n"], *(r[a] for a in ATTRIBUTES), r["accuracy"], r["all_correct"]]
        for name, r in result.items()
    ]
    text = (
        "Held-out captions graded by the pixel analyzer: share of described objects with the right attribute; "
        "count = exactly as many objects as described; accuracy = mean of the five; all = everything right.\n\n"
        + table(["prompts", "n", *ATTRIBUTES, "accuracy", "all"], rows)
    )
    drawn = result.get("single", {}).get("drawn_shapes")
    if drawn:
        text += (
            "\nShapes drawn for one-object captions: per described size and shape, how many images show each "
            "shape (read from the object of the caption's colour; none = no such object).\n\n"
            + table(["described", "n", *DRAWN], [[row, sum(c.values()), *c.values()] for row, c in drawn.items()])
        )
    return text


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    return {f"accuracy ({name}-object)": r["accuracy"] for name, r in result.items()}
