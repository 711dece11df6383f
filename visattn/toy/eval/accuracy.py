"""Prompt accuracy: does the image show what the caption says? Read back by the toy world's pixel analyzer.

For held-out single-object and multi-object captions, each generated image is graded by
:func:`visattn.toy.analyze.prompt_accuracy`: per attribute (colour, shape, size, position) the fraction of
described objects the image gets right, and ``count`` (exactly as many objects as described). A sample's
*attribute accuracy* is the mean of those five scores; a prompt set's ``accuracy`` is the mean over its samples
(the quality bar's number), and ``all_correct`` the share of samples with everything right.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyze import prompt_accuracy
from .gallery import short_caption
from .metrics import mean
from .prompts import multi_object_scenes, single_object_scenes
from .runner import EvalContext
from .tables import table

NAME = "prompt_accuracy"
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "count")


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


def run(ctx: EvalContext) -> dict[str, Any]:
    image = ctx.need_image(NAME)
    n, data_seed = ctx.config.samples, ctx.config.data_seed
    sets = {
        "single": single_object_scenes(n, seed=data_seed, size=image.size),
        "multi": multi_object_scenes(n, seed=data_seed, size=image.size),
    }
    result: dict[str, Any] = {}
    with ctx.bar(2 * n, "prompt accuracy") as bar:
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
            result[name] = {
                **summarize(graded),
                "samples": [{"caption": c, "seed": s, **g} for c, s, g in zip(captions, seeds, graded)],
            }
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [f"{name}-object", r["n"], *(r[a] for a in ATTRIBUTES), r["accuracy"], r["all_correct"]]
        for name, r in result.items()
    ]
    return (
        "Held-out captions graded by the pixel analyzer: share of described objects with the right attribute; "
        "count = exactly as many objects as described; accuracy = mean of the five; all = everything right.\n\n"
        + table(["prompts", "n", *ATTRIBUTES, "accuracy", "all"], rows)
    )


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    return {f"accuracy ({name}-object)": r["accuracy"] for name, r in result.items()}
