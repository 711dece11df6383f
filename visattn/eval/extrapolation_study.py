"""Extrapolation beyond the training size and length, with and without the training-free fixes.

* images at ``resolution_factor`` (2x) the training side: the *duplicated-object rate*, the share of held-out
  captions (one-object and multi-object alike) whose image shows more objects of a described colour than the
  caption describes (:func:`~visattn.eval.metrics.has_duplicate`), the classic failure of a model run above
  its training resolution (it repeats the content it knows per training-sized window). Conditions: none,
  :class:`~visattn.effects.EntropyScaling` (logits times ``log n / log n_train``; Jin et al., 2023) and
  :class:`~visattn.effects.ExtrapolationDecay` with ``train_size`` (UltraViCo's out-of-window decay, applied
  spatially). The 1x row is the same captions at the training size.
* video at each of ``length_factors`` (2x, 4x) the training length in temporal tokens: *motion continuity*,
  :func:`~visattn.toy.analyze.motion_continuity` of the captioned object's tracked path (share of consecutive
  frame pairs in which it is present and moves the captioned way by a plausible step), with and without
  :class:`~visattn.effects.ExtrapolationDecay` with ``train_frames`` (UltraViCo, 2025). ``presence`` is the
  share of frames in which the tracker finds the object at all.
"""

from __future__ import annotations

from typing import Any

from ..effects import EntropyScaling, ExtrapolationDecay
from ..toy.analyze import find_objects, motion_continuity, track
from .gallery import short_caption
from .generation import EvalContext
from .metrics import has_duplicate, mean
from .prompts import clip_prompts, multi_object_scenes, single_object_scenes
from .tables import table

IMAGE = "extrapolation_image"
VIDEO = "extrapolation_video"


def run_image(ctx: EvalContext) -> dict[str, Any]:
    image, config = ctx.need_image(IMAGE), ctx.config
    n = config.samples
    scenes = single_object_scenes(n, seed=config.data_seed, size=image.size)
    scenes += multi_object_scenes(n, seed=config.data_seed, size=image.size)
    captions = [s.caption for s in scenes]
    # noise seeds as in the prompt-accuracy study (sample i of each set uses seed + i), so 1x is that study's images
    seeds = ctx.seeds(n) + ctx.seeds(n)
    side = image.latent_side
    big = image.size * config.resolution_factor
    conditions = [
        ("1x", "none", image.size, ()),
        (f"{config.resolution_factor}x", "none", big, ()),
        (f"{config.resolution_factor}x", "entropy scaling", big, (EntropyScaling(side * side),)),
        (
            f"{config.resolution_factor}x",
            "extrapolation decay",
            big,
            (ExtrapolationDecay(train_size=side, factor=config.decay_factor),),
        ),
    ]
    if config.bar_only:
        # the quality bar compares the methods at the larger size alone
        conditions = [condition for condition in conditions if condition[0] != "1x"]
    rows = []
    with ctx.bar(len(conditions) * len(captions), "extrapolation (image)") as bar:
        for scale, method, size, effects in conditions:
            images = image.generate(captions, seeds, size=size, effects=effects, done=bar.update)
            duplicates = [float(has_duplicate(img, caption)) for img, caption in zip(images, captions)]
            for group, part in (("one-object", slice(0, n)), ("multi-object", slice(n, None))):
                ctx.show(
                    f"Extrapolation to {config.resolution_factor}x resolution: {group} captions",
                    f"{scale} ({size} px), {method}",
                    images[part],
                    rows=[short_caption(c) for c in captions[part]],
                    notes=["duplicated" if d else None for d in duplicates[part]],
                )
            rows.append(
                {
                    "scale": scale,
                    "size": size,
                    "method": method,
                    "settings": repr(effects[0]) if effects else None,
                    "duplicate_rate": mean(duplicates),
                    "objects_per_image": mean([float(len(find_objects(img)[1])) for img in images]),
                    "n": len(images),
                }
            )
    return {"train_size": image.size, "rows": rows}


def run_video(ctx: EvalContext) -> dict[str, Any]:
    video, config = ctx.need_video(VIDEO), ctx.config
    clips = clip_prompts(config.samples, seed=config.data_seed, size=video.size)
    captions, seeds = [c.caption for c in clips], ctx.seeds(len(clips))
    decay = ExtrapolationDecay(train_frames=video.latent_frames, factor=config.decay_factor)
    conditions = [(1, "none", ())]
    conditions += [
        (f, m, e) for f in config.length_factors for m, e in (("none", ()), ("extrapolation decay", (decay,)))
    ]
    rows = []
    with ctx.bar(len(conditions) * len(captions), "extrapolation (video)") as bar:
        for factor, method, effects in conditions:
            frames = video.frames_for(factor)
            outputs = video.generate(captions, seeds, frames=frames, effects=effects, done=bar.update)
            paths = [track(list(clip), c.color) for clip, c in zip(outputs, clips)]
            continuity = [motion_continuity(p, c.direction, video.size) for p, c in zip(paths, clips)]
            ctx.show(
                "Extrapolation to longer videos (4 frames of each clip, first to last)",
                f"{factor}x ({frames} frames), {method}",
                outputs,
                rows=[short_caption(c) for c in captions],
                notes=[f"continuity {v:.2f}" for v in continuity],
            )
            rows.append(
                {
                    "length": f"{factor}x",
                    "frames": frames,
                    "method": method,
                    "settings": repr(effects[0]) if effects else None,
                    "continuity": mean(continuity),
                    "presence": mean([sum(x is not None for x in p) / len(p) for p in paths]),
                    "n": len(outputs),
                }
            )
    return {"train_frames": video.frames, "train_latent_frames": video.latent_frames, "rows": rows}


def markdown_image(result: dict[str, Any]) -> str:
    rows = [
        [r["scale"], r["size"], r["method"], r["n"], r["duplicate_rate"], r["objects_per_image"]]
        for r in result["rows"]
    ]
    return (
        f"Trained at {result['train_size']} px. Duplicated-object rate = share of images with more objects of a "
        "described colour than described.\n\n"
        + table(["scale", "pixels", "method", "n", "duplicate rate", "objects / image"], rows)
    )


def markdown_video(result: dict[str, Any]) -> str:
    rows = [[r["length"], r["frames"], r["method"], r["n"], r["continuity"], r["presence"]] for r in result["rows"]]
    return (
        f"Trained on {result['train_frames']} frames ({result['train_latent_frames']} temporal tokens). Motion "
        "continuity = share of frame pairs where the tracked object moves the captioned way.\n\n"
        + table(["length", "frames", "method", "n", "motion continuity", "presence"], rows)
    )


def headline_image(result: dict[str, Any]) -> dict[str, float | None]:
    return {f"duplicate rate {r['scale']} ({r['method']})": r["duplicate_rate"] for r in result["rows"]}


def headline_video(result: dict[str, Any]) -> dict[str, float | None]:
    return {f"continuity {r['length']} ({r['method']})": r["continuity"] for r in result["rows"]}
