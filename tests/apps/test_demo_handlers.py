"""The editing demo without a browser: handlers on the tiny SD pipeline, upload checks, and ``visattn demo``."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visattn.app.handlers import DemoEngine, DemoError, DemoRequest, default_pag_layers, native_size, prompt_words
from visattn.app.uploads import UploadError, fit_to_size, open_upload
from visattn.cli import main
from visattn.defaults import DEFAULT_MODEL, EMBEDDED_CALL_DEFAULTS, TOY_VIDEO_MODEL
from visattn.guidance import HeadSet
from visattn.tiny import tiny_pipeline
from visattn.toy.models import VIDEO_FRAMES, VIDEO_SIZE, weights_root

MID = "mid_block.attentions.0.transformer_blocks.0.attn1"
STEPS = 2
#: The form's fields after the word sliders as a fresh page sends them (visattn.app.ui.FORM_FIELDS).
FORM_DEFAULTS = {
    "local_blend": "",
    "blend_threshold": 0.3,
    "cross_steps": 0.8,
    "self_steps": 0.4,
    "seed": 0,
    "steps": 1,
    "guidance": 7.5,
    "frames": None,
    "upload": None,
    "inversion": "ddim",
    "pag_scale": 0.0,
    "pag_strength": 1.0,
    "pag_layers": ["mid"],
    "head_set": None,
    "kernel_size": 0,
    "radial": False,
    "size_factor": 1.0,
    "decay": 1.0,
    "entropy_scaling": False,
    "blend_subtract": "",
    "blend_variant": "authors",
    "blend_radius": 1,
    "blend_subtract_threshold": 0.3,
}


@functools.cache
def engine() -> DemoEngine:
    return DemoEngine(pipeline=tiny_pipeline("unet"))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@functools.cache
def plain(prompt: str = "a red circle", seed: int = 0) -> np.ndarray:
    """The generation without edit or effects: what every source must reproduce."""
    return pixels(engine().run(DemoRequest(prompt, seed=seed, steps=STEPS)).source)


def write_png_header(path, width: int, height: int) -> None:
    """A PNG that declares ``width x height`` but holds one empty row: a decompression bomb's header, cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


# --- generation, edits, maps -------------------------------------------------------------------------------------
def test_generate_returns_image_heatmaps_per_word_and_progress():
    reports = []
    result = engine().run(DemoRequest("a red circle", steps=3), lambda f, d: reports.append((f, d)))
    height, width = native_size(tiny_pipeline("unet"))
    assert result.source.size == (width, height) == result.size and result.edit is None
    assert [caption for _, caption in result.heatmaps] == ["red", "circle"]  # stop word "a" dropped
    assert all(isinstance(image, Image.Image) and image.size == (width, height) for image, _ in result.heatmaps)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [d for _, d in reports if "step" in d] == [f"generating: step {i}/3" for i in (1, 2, 3)]
    assert result.effects == [] and result.edit_spec is None


def test_no_edit_with_effects_compares_plain_and_effects():
    request = DemoRequest("a red circle", steps=STEPS, pag_scale=3.0, pag_strength=0.5, kernel_size=3)
    result = engine().run(request)
    np.testing.assert_array_equal(pixels(result.source), plain())  # the left image has no effect
    assert np.abs(pixels(result.edit) - plain()).max() > 0
    assert result.effects == [
        {"type": "PerturbedAttentionGuidance", "scale": 3.0, "strength": 0.5, "layers": ["mid"]},
        {"type": "NeighborhoodAttention", "kernel_size": 3},
    ]
    assert "PerturbedAttentionGuidance" in result.summary()


def test_replace_with_local_blend_keeps_the_source_and_captions_both_prompts():
    request = DemoRequest(
        "a red circle", steps=STEPS, edit_mode="replace", target="a blue circle", local_blend="circle"
    )
    result = engine().run(request)
    # The source row of an edit is the plain generation (up to the rounding of a larger batch).
    assert np.abs(pixels(result.source) - plain()).max() <= 2
    assert np.abs(pixels(result.edit) - pixels(result.source)).max() > 0
    assert [c for _, c in result.heatmaps] == ["source: red", "source: circle", "edit: blue", "edit: circle"]
    assert result.edit_spec == {
        "source": "a red circle",
        "target": "a blue circle",
        "mode": "replace",
        "local_blend": ["circle"],
    }


def test_refine_maps_the_added_word():
    result = engine().run(DemoRequest("a red circle", steps=STEPS, edit_mode="refine", target="a big red circle"))
    assert [c for _, c in result.heatmaps if c.startswith("edit")] == ["edit: big", "edit: red", "edit: circle"]


def test_reweight_changes_the_edit_and_the_word_map():
    request = DemoRequest("a red circle", steps=STEPS, edit_mode="reweight", weights={"red": 4.0, "circle": 1.0})
    result = engine().run(request)
    assert result.edit_spec == {"prompt": "a red circle", "reweight": {"red": 4.0}}  # weight 1 is no re-weighting
    assert np.abs(pixels(result.source) - plain()).max() <= 2
    assert np.abs(pixels(result.edit) - pixels(result.source)).max() > 0
    maps = dict((caption, pixels(image)) for image, caption in result.heatmaps)
    assert set(maps) == {"source: red", "source: circle", "edit: red (x4)", "edit: circle"}
    assert np.abs(maps["edit: red (x4)"] - maps["source: red"]).max() > 0


def test_replace_steps_and_blend_threshold_reach_the_edit():
    base = {"edit_mode": "replace", "target": "a blue circle", "steps": STEPS}
    default = engine().run(DemoRequest("a red circle", **base))
    assert "cross_steps" not in default.edit_spec and "self_steps" not in default.edit_spec  # the authors' values
    changed = engine().run(DemoRequest("a red circle", cross_steps=0.0, self_steps=1.0, **base))
    assert changed.edit_spec["cross_steps"] == 0.0 and changed.edit_spec["self_steps"] == 1.0
    assert np.abs(pixels(changed.edit) - pixels(default.edit)).max() > 0  # the schedule changed the edit
    blended = engine().run(DemoRequest("a red circle", local_blend="circle", blend_threshold=0.6, **base))
    assert blended.edit_spec["local_blend"] == {"words": ["circle"], "threshold": 0.6}
    excepted = engine().run(DemoRequest("a red circle", local_blend="circle", blend_subtract="red", **base))
    assert excepted.edit_spec["local_blend"] == {"words": ["circle"], "subtract": ["red"]}
    with pytest.raises(DemoError, match="^blend_subtract='red' needs local-blend words"):
        engine().run(DemoRequest("a red circle", blend_subtract="red", **base))
    options = {"blend_variant": "prediction", "blend_radius": 2, "blend_subtract_threshold": 0.6}
    shaped = engine().run(DemoRequest("a red circle", local_blend="circle", blend_subtract="red", **options, **base))
    assert shaped.edit_spec["local_blend"] == {
        "words": ["circle"],
        "subtract": ["red"],
        "subtract_threshold": 0.6,
        "radius": 2,
        "variant": "prediction",
    }
    # At a high threshold the tiny model's region is partial: the radius and the variant each change the edit.
    tight = {"local_blend": "circle", "blend_threshold": 0.9, **base}
    pooled, unpooled = (engine().run(DemoRequest("a red circle", blend_radius=r, **tight)) for r in (1, 0))
    predicted = engine().run(DemoRequest("a red circle", blend_radius=0, blend_variant="prediction", **tight))
    assert np.abs(pixels(pooled.edit) - pixels(unpooled.edit)).max() > 0
    assert np.abs(pixels(predicted.edit) - pixels(unpooled.edit)).max() > 0
    # Without local-blend words the blend's options shape nothing (the form shows them anyway).
    plain = engine().run(DemoRequest("a red circle", **options, **base))
    assert "local_blend" not in plain.edit_spec
    for name, value in [
        ("cross_steps", 1.5),
        ("self_steps", -0.1),
        ("blend_threshold", 1.0),
        ("blend_threshold", 0),
        ("blend_subtract_threshold", 1.0),
        ("blend_radius", 1.5),
        ("blend_radius", 9),
        ("blend_variant", "mine"),
    ]:
        with pytest.raises(DemoError, match=f"^{name}={value!r} is not allowed"):
            engine().run(DemoRequest("a red circle", **{**base, name: value}))


def test_negative_word_weights_are_refused_by_name():
    for weights in ({"red": -2.0}, {"red": float("nan")}, {"circle": 11.0}):
        (word, value), *_ = weights.items()
        with pytest.raises(DemoError, match=rf"^weight of '{word}'={value!r} is not allowed: must be a number from 0"):
            engine().run(DemoRequest("a red circle", steps=1, edit_mode="reweight", weights=weights))
    # 0 removes a word: allowed
    result = engine().run(DemoRequest("a red circle", steps=1, edit_mode="reweight", weights={"red": 0.0}))
    assert result.edit_spec == {"prompt": "a red circle", "reweight": {"red": 0.0}}


def test_pag_layers_come_from_the_model_and_are_checked():
    from visattn.app.handlers import pag_layer_choices

    choices = pag_layer_choices(tiny_pipeline("unet"))
    assert choices == [("mid (default)", "mid"), ("down blocks", "down"), ("up blocks", "up")]
    result = engine().run(DemoRequest("a red circle", steps=STEPS, pag_scale=2.0, pag_layers=["up", "down"]))
    assert result.effects[0]["layers"] == ["up", "down"]
    assert np.abs(pixels(result.edit) - pixels(result.source)).max() > 0
    default = engine().run(DemoRequest("a red circle", steps=STEPS, pag_scale=2.0, pag_layers=[]))
    assert default.effects[0]["layers"] == ["mid"]
    with pytest.raises(DemoError, match=r"pag_layers=\['attn1'\] is not allowed: choose from .*'mid', 'down', 'up'"):
        engine().run(DemoRequest("a red circle", steps=1, pag_scale=2.0, pag_layers=["attn1"]))
    # A transformer's blocks one by one, anchored (transformer_blocks.1 is not single_transformer_blocks.1).
    flux = pag_layer_choices(tiny_pipeline("flux"))
    assert flux[0][0].endswith("(default)") and ("transformer_blocks.0", r"^transformer_blocks\.0\.") in flux
    assert ("single_transformer_blocks.0", r"^single_transformer_blocks\.0\.") in flux


def test_panels_are_labelled_and_the_sheet_and_pngs_carry_the_run(tmp_path):
    from visattn.images import METADATA_KEY, PARAMETERS_KEY

    local = DemoEngine(pipeline=tiny_pipeline("unet"), output_dir=tmp_path)
    plain_run = local.run(DemoRequest("a red circle", steps=STEPS))
    assert plain_run.labels == ("generated", "")
    effects = local.run(DemoRequest("a red circle", steps=STEPS, pag_scale=2.0))
    assert effects.labels == ("without effects", "with effects")
    edit = local.run(DemoRequest("a red circle", steps=STEPS, edit_mode="replace", target="a blue circle"))
    assert edit.labels == ("source", "edit")
    # One labelled sheet: a row per prompt, the image and each word's map (wider and taller than one image).
    assert isinstance(edit.sheet, Image.Image) and edit.sheet.width > 3 * edit.size[0]
    source_png, edit_png, sheet_png = map(Path, edit.files)
    assert source_png.parent.parent == tmp_path and sheet_png.name == "a-red-circle-maps.png"
    for path, role, prompt in [(source_png, "source", "a red circle"), (edit_png, "edit", "a blue circle")]:
        with Image.open(path) as png:
            metadata = json.loads(png.text[METADATA_KEY])
            assert png.size == edit.size  # the generated pixels, not the enlarged preview
            assert "Seed: 0" in png.text[PARAMETERS_KEY] and png.text[PARAMETERS_KEY].startswith(prompt)
        assert metadata["role"] == role and metadata["prompt"] == prompt and metadata["steps"] == STEPS
        assert metadata["edit"] == edit.edit_spec and json.loads(path.with_suffix(".json").read_text())["role"] == role
    with Image.open(effects.files[1]) as png:
        assert json.loads(json.loads(png.text[METADATA_KEY])["effects"][0])["type"] == "PerturbedAttentionGuidance"
    with Image.open(sheet_png) as png:
        assert json.loads(png.text[METADATA_KEY])["role"] == "per-word maps"


def test_extrapolation_generates_beyond_the_native_size():
    request = DemoRequest("a red circle", steps=STEPS, size_factor=1.5, decay=0.5, entropy_scaling=True)
    result = engine().run(request)
    height, width = native_size(tiny_pipeline("unet"))
    assert result.edit.size == (width * 3 // 2, height * 3 // 2) == result.size
    grid = [height // 2, width // 2]  # the tiny VAE downsamples by 2
    assert result.effects == [
        {"type": "ExtrapolationDecay", "train_size": grid, "factor": 0.5},
        {"type": "EntropyScaling", "train_tokens": grid[0] * grid[1]},
    ]


def test_saved_head_set_restricts_pag(tmp_path):
    heads = HeadSet.from_heads({MID: [1]})
    path = heads.save(tmp_path / "heads.json")
    result = engine().run(DemoRequest("a red circle", steps=STEPS, pag_scale=2.0, head_set=str(path)))
    layers = heads.to_heads()  # {exact-name pattern of MID: [1]}
    assert result.effects == [
        {"type": "PerturbedAttentionGuidance", "scale": 2.0, "strength": 1.0, "layers": list(layers), "heads": layers}
    ]
    HeadSet.from_heads({"no.such.layer": [0]}).save(tmp_path / "other.json")
    with pytest.raises(DemoError, match="head set file cannot be used.*no.such.layer"):
        engine().run(DemoRequest("a red circle", steps=STEPS, pag_scale=2.0, head_set=str(tmp_path / "other.json")))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DemoError, match="not valid JSON"):
        engine().run(DemoRequest("a red circle", steps=STEPS, pag_scale=2.0, head_set=str(tmp_path / "broken.json")))


def test_transformer_and_video_families():
    # SD3 (joint attention): PAG perturbs where diffusers' StableDiffusion3PAGPipeline does by default.
    sd3 = DemoEngine(pipeline=tiny_pipeline("sd3"), native_size=(32, 32))
    result = sd3.run(DemoRequest("a red circle", steps=STEPS, edit_mode="reweight", weights={"red": 2.0}, pag_scale=2))
    assert result.effects[0]["layers"] == ["blocks.1"]
    # A transformer without a declared default (Flux has no diffusers PAG pipeline): its middle joint layer.
    assert default_pag_layers(tiny_pipeline("flux")) == [r"^single_transformer_blocks\.0\.attn$"]
    assert [c for _, c in result.heatmaps] == ["source: red", "source: circle", "edit: red (x2)", "edit: circle"]
    # Wan (video): radial attention is allowed; videos and their maps come back as animated WebPs.
    wan = DemoEngine(pipeline=tiny_pipeline("wan"), native_size=(32, 32), frames=9)
    result = wan.run(DemoRequest("a red circle", steps=STEPS, radial=True, edit_mode="replace", target="a blue circle"))
    assert result.effects == [{"type": "RadialAttention"}]
    for path in (result.source, result.edit, result.heatmaps[0][0]):
        with Image.open(path) as video:
            assert video.format == "WEBP" and video.n_frames > 1 and video.size == (32, 32)


@pytest.mark.skipif(
    not (weights_root() / "video" / "model_index.json").is_file(), reason="the toy video weights are not shipped"
)
def test_toy_video_model_runs_at_its_training_size_and_length():
    # the light-weight table in visattn.defaults agrees with the toy world's own constants
    assert EMBEDDED_CALL_DEFAULTS[TOY_VIDEO_MODEL] == {
        "height": VIDEO_SIZE,
        "width": VIDEO_SIZE,
        "num_frames": VIDEO_FRAMES,
    }
    engine = DemoEngine(TOY_VIDEO_MODEL)
    assert engine.native_size() == (32, 32) and engine.frames == 9 and engine.is_video()
    result = engine.run(DemoRequest("a red circle moving right on a black background", steps=STEPS))
    with Image.open(result.source) as video:
        assert video.n_frames == 9 and video.size == (32, 32)
    # an explicit frame count still wins
    assert DemoEngine(TOY_VIDEO_MODEL, frames=5).frames == 5
    with pytest.raises(DemoError, match="frames=1 is too short for WanPipeline"):
        engine.run(DemoRequest("a red circle moving right on a black background", steps=1, frames=1))


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"steps": 0}, "steps=0 is not allowed"),
        ({"seed": -1}, "seed=-1 is not allowed"),
        ({"edit_mode": "swap"}, "edit_mode='swap' is not allowed: choose from none, replace, refine, reweight"),
        ({"edit_mode": "replace"}, "needs the edited prompt"),
        ({"edit_mode": "replace", "target": "a big blue circle"}, "as many words"),
        ({"edit_mode": "reweight", "weights": {"red": 1.0}}, "away from 1"),
        ({"edit_mode": "reweight", "weights": {"green": 2.0}}, "green"),
        ({"pag_strength": 1.5}, "pag_strength=1.5 is not allowed"),
        ({"size_factor": 0.5}, "size_factor=0.5 is not allowed"),
        ({"radial": True}, "radial attention acts on video models"),
        ({"head_set": "heads.json"}, "PAG scale is 0"),
        ({"kernel_size": 63}, "cannot run these settings: kernel_size 63"),
    ],
)
def test_bad_requests_get_a_message(request_kwargs, message):
    request = DemoRequest(**{"prompt": "a red circle", "steps": 1, **request_kwargs})
    with pytest.raises(DemoError, match=message.replace("(", r"\(")):
        engine().run(request)


def test_engine_keeps_working_after_a_failed_run():
    with pytest.raises(DemoError):
        engine().run(DemoRequest("a red circle", steps=1, kernel_size=63))
    # The failed call detached its effects: the next plain run is the plain generation again.
    np.testing.assert_array_equal(pixels(engine().run(DemoRequest("a red circle", steps=STEPS)).source), plain())


def test_prompt_words_are_distinct_content_words():
    assert prompt_words("a red circle and a red square, on the table") == ["red", "circle", "square", "table"]
    assert prompt_words("a red circle", limit=1) == ["red"]


# --- uploads -----------------------------------------------------------------------------------------------------
def test_upload_is_inverted_then_edited(tmp_path):
    path = tmp_path / "photo.png"
    rgba = np.zeros((40, 56, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[10:30, 20:40, 3] = 0  # a transparent hole, composited over white
    Image.fromarray(rgba, "RGBA").save(path)
    height, width = native_size(tiny_pipeline("unet"))
    preview = engine().check_upload(str(path))
    assert preview.size == (width, height) and preview.mode == "RGB"
    assert DemoRequest("a red circle").inversion == "ddim"  # the default, as visattn edit's
    for method in ("ddim", "negative-prompt", "null-text"):
        request = DemoRequest(
            "a red circle",
            steps=STEPS,
            edit_mode="replace",
            target="a blue circle",
            image=str(path),
            inversion=method,
        )
        result = engine().run(request)
        assert result.source.size == result.edit.size == (width, height)
        assert np.abs(pixels(result.edit) - pixels(result.source)).max() > 0
        assert len(result.heatmaps) == 4


def test_upload_checks(tmp_path, monkeypatch):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(UploadError, match="is not an image"):
        open_upload(tmp_path / "notes.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UploadError, match="is empty"):
        open_upload(tmp_path / "empty.png")
    with pytest.raises(UploadError, match="not a file"):
        open_upload(tmp_path / "missing.png")

    Image.new("RGB", (64, 48), "red").save(tmp_path / "big.png")
    with pytest.raises(UploadError, match=r"64x48 = 3,072 pixels; the limit is 1,000 pixels"):
        open_upload(tmp_path / "big.png", max_pixels=1000)
    with pytest.raises(UploadError, match="the limit is 0.0 MiB"):
        open_upload(tmp_path / "big.png", max_bytes=10)
    assert open_upload(tmp_path / "big.png").size == (64, 48)
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UploadError, match="damaged or truncated"):
        open_upload(tmp_path / "cut.png")

    # A header declaring 30000 x 30000 pixels (over twice Pillow's MAX_IMAGE_PIXELS): DecompressionBombError.
    write_png_header(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(UploadError, match="decompression bomb"):
        open_upload(tmp_path / "bomb.png", max_pixels=10**10)
    # Between MAX_IMAGE_PIXELS and twice it Pillow only warns; the upload is refused all the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    Image.new("L", (50, 50)).save(tmp_path / "warned.png")
    with pytest.raises(UploadError, match="decompression bomb"):
        open_upload(tmp_path / "warned.png")

    with pytest.raises(ValueError, match="max_pixels=0"):
        open_upload(tmp_path / "big.png", max_pixels=0)


def test_fit_to_size_crops_the_centre():
    image = Image.new("RGB", (300, 100), "black")
    image.paste((255, 0, 0), (100, 0, 200, 100))  # the red middle third
    fitted = fit_to_size(image, 32, 32)
    assert fitted.size == (32, 32) and np.asarray(fitted)[..., 0].min() > 200


def test_refused_upload_is_a_demo_error(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(DemoError, match="is not an image"):
        engine().run(DemoRequest("a red circle", steps=1, image=str(tmp_path / "x.png")))


# --- the model and the command line ------------------------------------------------------------------------------
def test_unknown_model_is_a_message(tmp_path):
    lazy = DemoEngine(str(tmp_path))  # a folder without model_index.json
    with pytest.raises(DemoError, match="not a diffusers pipeline"):
        lazy.run(DemoRequest("a red circle"))


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_cli_reports_a_model_that_cannot_be_loaded(tmp_path):
    status, _, err = run_cli("demo", "--model", str(tmp_path / "no such dir"))
    assert status == 2
    assert "visattn demo: error: cannot load model" in err and "Traceback" not in err
    for bad in (["--port", "0"], ["--port", "http"], ["--concurrency", "0"]):
        status, _, err = run_cli("demo", *bad)
        assert status == 2 and "invalid value" in err


def test_cli_serves_on_loopback_without_share_by_default(monkeypatch):
    pytest.importorskip("gradio")
    import visattn.app.ui
    from visattn.commands.demo import SHARE_HINT

    calls = []
    monkeypatch.setattr(visattn.app.ui, "launch", lambda engine, **kwargs: calls.append((engine, kwargs)))
    assert run_cli("demo")[0] == 0
    (engine_used, kwargs), *_ = calls
    hint = {"share_hint": SHARE_HINT}
    assert kwargs == {"host": "127.0.0.1", "port": None, "share": False, "concurrency": 1, "auth": None, **hint}
    assert engine_used.model_name == DEFAULT_MODEL
    assert run_cli("demo", "--host", "0.0.0.0", "--port", "8123", "--share", "--concurrency", "3")[0] == 0
    assert calls[1][1] == {"host": "0.0.0.0", "port": 8123, "share": True, "concurrency": 3, "auth": None, **hint}


def test_cli_warns_when_the_demo_is_exposed_and_takes_a_login(monkeypatch):
    pytest.importorskip("gradio")
    import visattn.app.ui
    import visattn.generate

    calls = []
    monkeypatch.setattr(visattn.app.ui, "launch", lambda engine, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(visattn.generate, "load_pipeline", lambda *args, **kwargs: tiny_pipeline("unet"))
    monkeypatch.delenv("VISATTN_DEMO_AUTH", raising=False)
    status, _, err = run_cli("demo", "--model", "visattn/tiny-sd")
    assert status == 0 and "warning" not in err  # loopback: nothing to say
    status, _, err = run_cli("demo", "--model", "visattn/tiny-sd", "--host", "0.0.0.0")
    assert status == 0 and "visattn demo: warning: --host 0.0.0.0 serves the demo to every machine" in err
    assert "add --auth USER:PASSWORD" in err and calls[-1]["auth"] is None
    status, _, err = run_cli("demo", "--model", "visattn/tiny-sd", "--host", "0.0.0.0", "--auth", "ann:s3:cret")
    assert status == 0 and calls[-1]["auth"] == ("ann", "s3:cret") and "add --auth" not in err
    monkeypatch.setenv("VISATTN_DEMO_AUTH", "bob:pw")
    assert run_cli("demo", "--model", "visattn/tiny-sd", "--share")[0] == 0 and calls[-1]["auth"] == ("bob", "pw")
    for bad in ("nocolon", ":pw", "user:"):
        status, _, err = run_cli("demo", "--auth", bad)
        assert status == 2 and "must be USER:PASSWORD" in err and bad not in err.replace("--auth", "")
    monkeypatch.setenv("VISATTN_DEMO_AUTH", "nocolon")
    status, _, err = run_cli("demo", "--model", "visattn/tiny-sd")
    assert status == 2 and "VISATTN_DEMO_AUTH must be USER:PASSWORD" in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    from visattn.commands.demo import exposure_warnings, is_loopback

    assert is_loopback(host) is loopback
    assert bool(exposure_warnings(host, False, None)) is not loopback
    assert exposure_warnings("127.0.0.1", True, None) == [
        "--share opens a public gradio.live link without a login: add --auth USER:PASSWORD"
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(7, 7), (7.0, 7), ("7", 7), (" 8 ", 8), (0, 0), (2**32 - 1, 2**32 - 1)]
)
def test_integer_inputs_accept_whole_numbers(value, expected):
    from visattn.app.handlers import MAX_SEED, integer_input

    assert integer_input("seed", value, 0, MAX_SEED) == expected


@pytest.mark.parametrize("value", [1.5, "1.5", "abc", "", None, True, float("nan"), float("inf"), -1, 2**32, "9" * 40])
def test_integer_inputs_refuse_the_rest_by_name_and_value(value):
    from visattn.app.handlers import MAX_SEED, integer_input

    with pytest.raises(DemoError, match=r"^seed=.* is not allowed: must be an integer from 0 to 4294967295$"):
        integer_input("seed", value, 0, MAX_SEED)
    with pytest.raises(DemoError, match=r"^steps=.* is not allowed: must be an integer from 1 to 200$"):
        DemoEngine(pipeline=None).run(DemoRequest("a red circle", steps=value))  # refused before any loading
    with pytest.raises(DemoError, match=r"^seed="):
        DemoEngine(pipeline=None).run(DemoRequest("a red circle", seed=value))


def test_the_form_refuses_a_bad_seed_or_step_count_with_a_gradio_error():
    gr = pytest.importorskip("gradio")
    from visattn.app.ui import FORM_FIELDS, MAX_WORD_SLIDERS, build_demo

    demo = build_demo(DemoEngine(pipeline=tiny_pipeline("unet")))
    (on_generate,) = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_generate"]
    words = ["a red circle", "", "none", [], *[1.0] * MAX_WORD_SLIDERS]
    for seed, steps, message in [
        (1.5, 1, "seed=1.5 is not allowed: must be an integer"),
        ("abc", 1, "seed='abc' is not allowed: must be an integer"),
        (0, "many", "steps='many' is not allowed: must be an integer from 1 to 200"),
        (0, 2.5, "steps=2.5 is not allowed"),
    ]:
        values = words + [{**FORM_DEFAULTS, "seed": seed, "steps": steps}[name] for name in FORM_FIELDS]
        with pytest.raises(gr.Error, match=message):
            on_generate(*values, progress=None)


def test_ui_turns_errors_into_messages(monkeypatch):
    pytest.importorskip("gradio")
    from visattn.app.ui import DISPLAY_MIN_SIZE, MAX_WORD_SLIDERS, build_demo, run_request, slider_updates

    # Outside a Gradio event, gr.Warning (the toast) is a Python warning.
    with pytest.warns(UserWarning, match="reweight: move at least one"):
        source, edit, gallery, sheet, files, status = run_request(
            engine(), DemoRequest("a red circle", edit_mode="reweight")
        )
    assert (source["value"], edit["value"], gallery, sheet, files) == (None, None, [], None, None)
    assert status.startswith("error: reweight")

    broken = DemoEngine(pipeline=tiny_pipeline("unet"))
    monkeypatch.setattr(broken, "run", lambda request, progress=None: 1 / 0)
    with pytest.warns(UserWarning, match="internal error: ZeroDivisionError"):
        outputs = run_request(broken, DemoRequest("a red circle"))
    assert outputs[-1].startswith("internal error: ZeroDivisionError")

    source, edit, gallery, sheet, files, status = run_request(engine(), DemoRequest("a red circle", steps=1))
    assert edit["value"] is None and [c for _, c in gallery] == ["red", "circle"]
    assert source["label"] == "generated" and isinstance(sheet, Image.Image) and len(files) == 2  # image, sheet
    source = source["value"]
    # Tiny outputs are enlarged for display by an integer factor, pixels kept (nearest neighbour).
    assert all(image.width >= DISPLAY_MIN_SIZE for image in (source, *(g for g, _ in gallery)))
    plain_source = engine().run(DemoRequest("a red circle", steps=1)).source
    factor = source.width // plain_source.width
    np.testing.assert_array_equal(pixels(source)[::factor, ::factor], pixels(plain_source))
    assert json.loads(status.splitlines()[-1].removeprefix("effects: ")) == []

    words, group, *sliders = slider_updates("a red circle", "", "reweight", ["circle"], 3.0)
    assert words == ["red", "circle"] and group["visible"] and len(sliders) == MAX_WORD_SLIDERS
    assert [(s["label"], s["value"]) for s in sliders[:2]] == [("red", 1.0), ("circle", 3.0)]  # kept its value
    assert not sliders[2]["visible"]
    words, *_ = slider_updates("a red circle", "a blue square", "replace", [], *[1.0] * MAX_WORD_SLIDERS)
    assert words == ["blue", "square"]
    assert slider_updates("a red circle", "", "none", [])[0] == []

    build_demo(DemoEngine(pipeline=tiny_pipeline("unet")))  # the interface builds without launching


def components(demo) -> dict:
    """The demo's components by elem_id."""
    return {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}


def test_the_form_offers_the_controls_for_the_loaded_model():
    pytest.importorskip("gradio")
    from visattn.app.ui import build_demo

    image_form = components(build_demo(DemoEngine(pipeline=tiny_pipeline("unet"))))
    assert not image_form["radial"].visible  # an image model: no "Radial (video models)" box
    assert image_form["inversion"].value == "ddim" and image_form["inversion"].choices[0][1] == "ddim"
    assert [value for _, value in image_form["pag-layers"].choices] == ["mid", "down", "up"]
    assert image_form["pag-layers"].value == ["mid"]
    assert image_form["source"].label == "source / without effects"
    for elem_id in ("cross-steps", "self-steps", "blend-threshold", "maps-sheet", "downloads"):
        assert elem_id in image_form
    assert image_form["weight-0"].minimum == 0  # negative weights are not offered
    video_form = components(build_demo(DemoEngine(pipeline=tiny_pipeline("wan"), native_size=(32, 32), frames=9)))
    assert video_form["radial"].visible


def test_examples_are_captions_the_toy_model_knows():
    pytest.importorskip("gradio")
    from visattn.app.ui import TOY_EXAMPLE_LABELS, TOY_EXAMPLES
    from visattn.toy.analyze import parse_caption
    from visattn.toy.vocab import WORDS

    for prompt, mode, target, blend, _ in TOY_EXAMPLES:
        for caption in filter(None, (prompt, target)):
            assert set(caption.split()) <= set(WORDS), caption
            background, (scene,) = parse_caption(caption)  # one object: what the toy model draws best
            assert background and all(scene.values()), caption
        assert mode in ("none", "replace", "reweight") and set(blend.split()) <= set(WORDS)
    assert len(TOY_EXAMPLE_LABELS) == len(TOY_EXAMPLES)


def test_startup_lines_point_a_cli_user_to_share():
    pytest.importorskip("gradio")
    from visattn.app.ui import PYTHON_SHARE_HINT, startup_lines
    from visattn.commands.demo import SHARE_HINT

    lines = startup_lines("http://127.0.0.1:7860/", None, SHARE_HINT)
    assert lines == ["* Running on local URL:  http://127.0.0.1:7860/", f"* {SHARE_HINT}"]
    assert "--share" in SHARE_HINT and "launch()" not in SHARE_HINT and "share=True" in PYTHON_SHARE_HINT
    shared = startup_lines("http://127.0.0.1:7860/", "https://x.gradio.live", SHARE_HINT)
    assert shared[-1] == "* Running on public URL: https://x.gradio.live"


def test_edit_command_and_demo_share_the_inversion_default():
    import inspect

    from visattn.edit import DEFAULT_INVERSION, edit

    assert inspect.signature(edit).parameters["inversion"].default == DEFAULT_INVERSION == "ddim"
    assert DemoRequest("a red circle").inversion == DEFAULT_INVERSION
    status, out, _ = run_cli("edit", "--help")
    assert status == 0 and "default: ddim" in " ".join(out.split())


def test_a_temporary_output_folder_keeps_only_the_latest_runs(monkeypatch):
    """The downloads of a long-running demo do not fill the disk: in the temporary folder the demo made, runs older
    than the latest KEPT_RUNS are deleted (a folder the user names is kept whole)."""
    from visattn.app import handlers

    monkeypatch.setattr(handlers, "KEPT_RUNS", 2)
    demo = DemoEngine(pipeline=tiny_pipeline("unet"))  # its own folder, not the one the other tests share
    results = [demo.run(DemoRequest("a red circle", seed=seed, steps=2)) for seed in range(4)]
    folder = Path(results[-1].files[0]).parent.parent
    runs = sorted(path.name for path in folder.iterdir() if path.name.startswith("run-"))
    assert len(runs) == 2
    assert all(Path(path).exists() for path in results[-1].files)
    assert not any(Path(path).exists() for path in results[0].files)
