"""``visattn edit`` and :func:`visattn.edit.edit`: prompt edits, reweights and real-image edits, saved with heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visattn.cli import main
from visattn.edit import edit, parse_weights
from visattn.generate import UsageError
from visattn.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("unet")


def _metadata(path):
    return json.loads(path.with_suffix(".json").read_text())


def test_prompt_edit_writes_source_edit_and_one_sheet_of_word_maps(pipe, tmp_path):
    written = edit("a red circle", "a blue circle", pipeline=pipe, steps=2, height=32, width=32, out_dir=tmp_path)
    source, edited = Image.open(written["source"]), Image.open(written["edit"])
    assert source.size == edited.size == (32, 32)
    assert not np.array_equal(np.asarray(source), np.asarray(edited))
    meta = _metadata(written["edit"])
    assert (meta["source"], meta["target"], meta["mode"], meta["role"]) == (
        "a red circle",
        "a blue circle",
        "replace",
        "edit",
    )
    # Full parameters: the prompt of each image, its size, the effect, the steps and guidance used.
    assert meta["prompt"] == "a blue circle" and _metadata(written["source"])["prompt"] == "a red circle"
    assert (meta["width"], meta["height"], meta["steps"]) == (32, 32, 2)
    assert meta["guidance"] is not None and "PromptToPrompt" in meta["effects"][0]
    # One labelled sheet of per-word maps (source and edit rows), and no per-word files.
    sheet = Image.open(written["maps"])
    assert sheet.width > 4 * 32 and sheet.height > 2 * 32
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json"] * 3 + [".png"] * 3


def test_source_equals_a_plain_generation(pipe, tmp_path):
    import torch

    written = edit("a red circle", "a blue circle", pipeline=pipe, steps=2, height=32, width=32, out_dir=tmp_path)
    plain = pipe(
        "a red circle", num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0)
    ).images[0]
    diff = np.abs(np.asarray(plain, dtype=int) - np.asarray(Image.open(written["source"]), dtype=int)).max()
    assert diff <= 1  # equal up to 8-bit rounding of float noise


def test_cli_reweight_and_refine(pipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("visattn.edit.load_pipeline", lambda *a, **k: pipe)
    args = [
        "edit",
        "--source",
        "a red circle",
        "--reweight",
        "red=3",
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
    ]
    assert main([*args, "--out", str(tmp_path / "rw"), "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    assert any(p.endswith("-edit.png") for p in printed) and any(p.endswith("-maps.png") for p in printed)
    edited = next(p for p in printed if p.endswith("-edit.png"))
    assert _metadata(Path(edited))["mode"] == "reweight"
    swap = ["edit", "--source", "a red circle", "--target", "a blue circle", "--local-blend", "circle"]
    swap += [
        "--blend-subtract",
        "red",
        "blue",
        "--blend-threshold",
        "0.5",
        "--steps",
        "2",
        "--no-heatmaps",
        "--height",
        "32",
        "--width",
        "32",
    ]
    assert main([*swap, "--out", str(tmp_path / "sb"), "--quiet"]) == 0
    edited = next(p for p in capsys.readouterr().out.split() if p.endswith("-edit.png"))
    meta = _metadata(Path(edited))
    assert meta["local_blend"] == ["circle"] and meta["blend_subtract"] == ["red", "blue"]
    assert meta["blend_threshold"] == 0.5 and "threshold=0.5" in meta["effects"][0]
    assert "subtract=('red', 'blue')" in meta["effects"][0]
    assert meta["blend_variant"] == "authors" and meta["blend_radius"] == 1 and meta["blend_start"] is None
    options = ["--blend-variant", "prediction", "--blend-radius", "2", "--blend-subtract-threshold", "0.6"]
    assert main([*swap, *options, "--out", str(tmp_path / "pr"), "--quiet"]) == 0
    edited = next(p for p in capsys.readouterr().out.split() if p.endswith("-edit.png"))
    meta = _metadata(Path(edited))
    assert meta["blend_variant"] == "prediction" and meta["blend_radius"] == 2
    assert meta["blend_subtract_threshold"] == 0.6
    for shown in ("variant='prediction'", "radius=2", "subtract_threshold=0.6", "start=0.0"):
        assert shown in meta["effects"][0], shown
    refine = ["edit", "--source", "a circle", "--target", "a red circle", "--steps", "2", "--no-heatmaps"]
    assert main([*refine, "--height", "32", "--width", "32", "--out", str(tmp_path / "rf"), "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2  # source and edit, no heatmaps


def test_image_edit_inverts_then_edits(pipe, tmp_path):
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    path = tmp_path / "in.png"
    image.save(path)
    written = edit(
        "a red circle",
        "a blue circle",
        image=path,
        inversion="negative-prompt",
        pipeline=pipe,
        steps=2,
        out_dir=tmp_path / "out",
        heatmaps=False,
    )
    assert {"source", "edit", "reconstruction"} <= set(written)
    meta = _metadata(written["reconstruction"])
    assert meta["inversion"] == "negative-prompt" and meta["steps"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": None}, "needs --target"),
        ({"target": "a blue circle", "reweight": {"green": 2.0}}, "green"),
        ({"target": "a big blue circle", "mode": "replace"}, "refine"),
        ({"target": "a blue circle", "inversion": "magic"}, "inversion='magic'"),
        ({"target": "a blue circle", "blend_subtract": ["red"]}, r"blend_subtract=\['red'\] is not allowed: needs"),
        ({"target": "a blue circle", "local_blend": ["circle"], "blend_subtract": ["green"]}, "subtract word 'green'"),
        (
            {"target": "a blue circle", "local_blend": ["circle"], "blend_subtract": [""]},
            "subtract must be one or more",
        ),
        (
            {"target": "a blue circle", "local_blend": ["circle"], "blend_threshold": 1.5},
            r"blend_threshold=1.5 is not allowed: must be a number in \(0, 1\)",
        ),
        ({"target": "a blue circle", "blend_radius": 3}, "blend_radius=3 is not allowed: needs local_blend"),
        ({"target": "a blue circle", "local_blend": ["circle"], "blend_radius": -1}, "blend_radius=-1 is not allowed"),
        ({"target": "a blue circle", "local_blend": ["circle"], "blend_variant": "x"}, "blend_variant='x' is not"),
        ({"target": "a blue circle", "local_blend": ["circle"], "blend_start": 1.5}, "blend_start=1.5 is not"),
        (
            {"target": "a blue circle", "local_blend": ["circle"], "blend_variant": "prediction", "blend_start": 0.2},
            "blend_start=0.2 is not allowed: must be 0 with blend_variant='prediction'",
        ),
        (
            {"target": "a blue circle", "local_blend": ["circle"], "blend_subtract_threshold": 0.5},
            "blend_subtract_threshold=0.5 is not allowed: needs blend_subtract",
        ),
        (
            {
                "target": "a blue circle",
                "local_blend": ["circle"],
                "blend_subtract": ["red"],
                "blend_subtract_threshold": 0,
            },
            r"blend_subtract_threshold=0 is not allowed: must be a number in \(0, 1\)",
        ),
    ],
)
def test_bad_requests_are_usage_errors(pipe, tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        edit("a red circle", pipeline=pipe, steps=2, out_dir=tmp_path, **kwargs)


def test_unreadable_image_and_bad_weights(pipe, tmp_path, capsys):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(UsageError, match="cannot be read as an image"):
        edit("a red circle", "a blue circle", image=bad, pipeline=pipe, steps=2, out_dir=tmp_path)
    assert parse_weights(["red car=0.5", "fluffy=2"]) == {"red car": 0.5, "fluffy": 2.0}
    with pytest.raises(UsageError, match="WORD=SCALE"):
        parse_weights(["fluffy"])
    assert main(["edit", "--source", "a red circle", "--reweight", "red=-1", "--out", str(tmp_path)]) == 2
    assert "reweight" in capsys.readouterr().err


@pytest.fixture(scope="module")
def toy():
    from visattn.toy import load_toy_pipeline

    return load_toy_pipeline("image")


@pytest.mark.parametrize("inversion", ["ddim", "null-text", "negative-prompt"])
def test_an_upload_keeps_its_background_outside_the_local_blend(toy, tmp_path, inversion, capfd):
    """Issue 28: outside the blend region an edit of an uploaded image keeps the upload (mean within 3/255 of it
    on the background), whatever the inversion; inside, the edit may change it."""
    from visattn.toy.data import Scene, ShapeSpec, render_scene

    circle = ShapeSpec("circle", "red", "large", "center", (32.0, 32.0), 12.0)
    upload = render_scene(Scene("blue", (circle,), 64))
    upload_path = tmp_path / "upload.png"
    upload.save(upload_path)
    written = edit(
        "a large red circle in the center on a blue background",
        "a large green circle in the center on a blue background",
        image=upload_path,
        inversion=inversion,
        local_blend=["circle"],
        pipeline=toy,
        steps=10,
        out_dir=tmp_path / inversion,
        heatmaps=False,
        progress=False,
    )
    edited = np.asarray(Image.open(written["edit"]).convert("RGB"), dtype=np.float64)
    original = np.asarray(upload, dtype=np.float64)
    yy, xx = np.mgrid[:64, :64]
    background = (yy - 32) ** 2 + (xx - 32) ** 2 > 22**2  # well away from the circle and the blend's dilation
    assert np.abs(edited - original)[background].mean() <= 3.0
    assert "inversion" not in capfd.readouterr().err  # progress=False silences the inversion's own bar too
