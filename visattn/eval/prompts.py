"""Held-out evaluation prompts from the toy grammar: scenes and clips of a data seed training does not use.

Training samples :func:`visattn.toy.data.sample_scene` / :func:`~visattn.toy.data.sample_clip` under data seed 0;
the evaluation draws from :data:`HELD_OUT_SEED`, so its scenes (layouts, jitter, colour combinations) are new to
the model. Captions can still repeat training captions: the grammar has a finite number of them, and a caption
alone is what the model is asked to draw.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from ..toy.data import BACKGROUNDS, COLORS, SHAPES, Scene, sample_clip, sample_scene

#: Data seed of every evaluation prompt.
HELD_OUT_SEED = 1000
# Sample indices of each prompt set start at a different offset, so the sets are independent draws.
_OFFSETS = {"single": 0, "multi": 100_000, "swap": 200_000, "clip": 300_000}


def single_object_scenes(count: int, *, seed: int = HELD_OUT_SEED, size: int = 64) -> list[Scene]:
    """``count`` one-object scenes."""
    return [sample_scene(_OFFSETS["single"] + i, seed=seed, size=size, max_objects=1) for i in range(count)]


def multi_object_scenes(count: int, *, seed: int = HELD_OUT_SEED, size: int = 64) -> list[Scene]:
    """``count`` scenes of two or three objects (the first that many such scenes of the held-out seed)."""
    scenes, index = [], _OFFSETS["multi"]
    while len(scenes) < count:
        scene = sample_scene(index, seed=seed, size=size, max_objects=3)
        if len(scene.objects) > 1:
            scenes.append(scene)
        index += 1
    return scenes


@dataclass(frozen=True)
class Swap:
    """A Prompt-to-Prompt word swap on a one-object caption: ``attribute`` goes from ``before`` to ``after``.

    ``source_scene`` and ``target_scene`` are the two captions' scenes with the same layout: their renders are what
    a perfect edit would turn the one into, so metrics on them are the ceiling an editor can reach.
    """

    source: str
    target: str
    attribute: str  # "color" or "shape"
    before: str
    after: str
    source_scene: Scene
    target_scene: Scene


def word_swaps(attribute: str, count: int, *, seed: int = HELD_OUT_SEED) -> list[Swap]:
    """``count`` word swaps of ``attribute`` ("color" or "shape") on held-out one-object captions.

    The new colour is never the background's (the object would vanish into it); choices are seeded per sample.
    """
    if attribute not in ("color", "shape"):
        raise ValueError(f"attribute={attribute!r} must be 'color' or 'shape'")
    swaps = []
    for i in range(count):
        index = _OFFSETS["swap"] + i
        scene = sample_scene(index, seed=seed, max_objects=1)
        (spec,) = scene.objects
        rng = random.Random(f"visattn-toy/eval-swap/{attribute}/{seed}/{index}")
        if attribute == "color":
            background = BACKGROUNDS[scene.background]
            options = [c for c in COLORS if c != spec.color and COLORS[c] != background]
        else:
            options = [s for s in SHAPES if s != spec.shape]
        after = rng.choice(options)
        edited = dataclasses.replace(spec, **{attribute: after})
        target = dataclasses.replace(scene, objects=(edited,), caption=Scene.caption_of(scene.background, (edited,)))
        swaps.append(Swap(scene.caption, target.caption, attribute, getattr(spec, attribute), after, scene, target))
    return swaps


@dataclass(frozen=True)
class ClipPrompt:
    """A held-out clip caption and what the tracker needs: the object's colour and direction."""

    caption: str
    color: str
    direction: str


def clip_prompts(count: int, *, seed: int = HELD_OUT_SEED, size: int = 32) -> list[ClipPrompt]:
    """``count`` held-out one-object motion captions (``"a red circle moving right on a black background"``)."""
    clips = [sample_clip(_OFFSETS["clip"] + i, seed=seed, frames=2, size=size) for i in range(count)]
    return [ClipPrompt(c.caption, c.color, c.direction) for c in clips]
