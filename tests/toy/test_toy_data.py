"""The toy world's generator is deterministic and its pixel analyzer reads the ground truth back."""

from __future__ import annotations

import numpy as np
import pytest

from visattn.toy import render_scene, sample_clip, sample_scene
from visattn.toy.analyze import find_objects, motion_continuity, parse_caption, prompt_accuracy, track


def test_samples_are_deterministic_and_varied():
    a, b = sample_scene(7, seed=3), sample_scene(7, seed=3)
    assert a == b
    assert np.array_equal(np.asarray(render_scene(a)), np.asarray(render_scene(b)))
    captions = {sample_scene(i).caption for i in range(50)}
    assert len(captions) == 50
    counts = {len(sample_scene(i).objects) for i in range(50)}
    assert counts == {1, 2, 3}
    assert sample_scene(0, seed=1) != sample_scene(0, seed=2)


def test_caption_grammar_round_trips():
    scene = sample_scene(11)
    background, objects = parse_caption(scene.caption)
    assert background == scene.background
    assert [(o["color"], o["shape"], o["size"], o["position"]) for o in objects] == [
        (s.color, s.shape, s.size, s.position) for s in scene.objects
    ]
    with pytest.raises(ValueError, match="no toy-world object"):
        parse_caption("a photograph of a cat")


def test_analyzer_reads_rendered_scenes_back():
    scores = [prompt_accuracy(render_scene(s), s.caption)["all"] for s in map(sample_scene, range(120))]
    # the analyzer's ceiling: what it gets right on perfect renders bounds every model score it reports
    assert np.mean(scores) >= 0.97


def test_analyzer_on_a_hand_made_scene():
    from visattn.toy.data import Scene, ShapeSpec

    spec = ShapeSpec("square", "red", "large", "top left", (11.0, 11.0), 9.9)
    image = render_scene(Scene("white", (spec,), 64))
    background, found = find_objects(image)
    assert background == "white"
    assert [(o.shape, o.color, o.size, o.position) for o in found] == [("square", "red", "large", "top left")]
    # a wrong caption is graded as wrong
    wrong = prompt_accuracy(image, "a small blue circle at the bottom right on a white background")
    assert wrong["color"] == 0.0 and wrong["all"] == 0.0


def test_clips_move_and_are_tracked():
    clip = sample_clip(5, frames=8, size=32)
    assert len(clip.frames) == 8 and clip.frames[0].size == (32, 32)
    assert f"moving {clip.direction}" in clip.caption
    path = track(clip.frames, clip.color)
    assert motion_continuity(path, clip.direction, 32) == 1.0
    # a clip played backwards does not move the captioned way
    assert motion_continuity(path[::-1], clip.direction, 32) == 0.0
    # longer clips at the training speed wrap around instead of stopping
    long = sample_clip(5, frames=32, size=32, speed=2.0)
    assert motion_continuity(track(long.frames, long.color), long.direction, 32) >= 0.9


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sample_scene(-1), "index=-1"),
        (lambda: sample_scene(0, max_objects=4), "max_objects=4"),
        (lambda: sample_clip(0, frames=1), "frames=1"),
        (lambda: motion_continuity([], "sideways", 32), "direction='sideways'"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
