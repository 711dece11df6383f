"""The ``visattn`` command line: info, generate on the embedded default, saved metadata, and clear errors."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Probe
from PIL import Image

import visattn
from visattn.cli import main
from visattn.defaults import DEFAULT_MODEL, EMBEDDED_MODELS, RANDOM_TINY_MODEL, TOY_VIDEO_MODEL, load_embedded_pipeline
from visattn.generate import ParameterError, generate
from visattn.images import format_parameters, read_metadata, read_sidecar, save_image, slugify
from visattn.kernels import available_backends
from visattn.toy.models import weights_root

REPO = Path(__file__).resolve().parents[2]
# The embedded default is the toy image model: 16x16 latents, VAE factor 4, so its default image is 64x64.
DEFAULT_SIZE = (64, 64)


def run_main(*argv: str) -> tuple[int, str, str]:
    """``visattn.cli.main(argv)`` with stdout/stderr captured (tqdm writes to whatever sys.stderr is then)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def run_subprocess(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visattn.cli", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=300,
    )


def png_text_chunks(path: Path) -> dict[str, tuple[str, str]]:
    """``{keyword: (chunk type, text)}`` of a PNG's tEXt/iTXt chunks, read from the raw bytes (not via Pillow)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8].decode("ascii"), data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(data[pos + 4 : pos + 8 + length])  # a well-formed chunk
        if kind == "tEXt":
            key, text = body.split(b"\0", 1)
            chunks[key.decode("latin-1")] = (kind, text.decode("latin-1"))
        elif kind == "iTXt":
            key, rest = body.split(b"\0", 1)
            text = rest[2:].split(b"\0", 2)[2]  # compression flag+method, language tag, translated keyword
            chunks[key.decode("latin-1")] = (kind, text.decode("utf-8"))
        pos += 12 + length
    return chunks


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


# --- --version and info -------------------------------------------------------------------------------------------
def test_version():
    code, out, _ = run_main("--version")
    assert code == 0
    assert out.strip() == f"visattn {visattn.__version__}"


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("visattn") == "visattn.cli:main"


def test_info_text_lists_versions_devices_and_backends():
    code, out, _ = run_main("info")
    assert code == 0
    import diffusers
    import transformers

    for name, version in [
        ("visattn", visattn.__version__),
        ("torch", torch.__version__),
        ("diffusers", diffusers.__version__),
        ("transformers", transformers.__version__),
    ]:
        assert f"{name:<14}{version}" in out.splitlines()
    assert ".".join(map(str, sys.version_info[:3])) in out
    assert any(line.strip().startswith("cpu") for line in out.splitlines())
    for index in range(torch.cuda.device_count()):
        assert torch.cuda.get_device_name(index) in out
    backend_lines = out.split("attention backends", 1)[1].strip().splitlines()
    backends = available_backends()
    assert len(backend_lines) == len(backends)
    for line, (name, (ok, reason)) in zip(backend_lines, backends.items()):
        assert line.split()[:2] == [name, "available" if ok else "unavailable"]
        assert line.rstrip().endswith(reason)


def test_info_json_matches_the_environment():
    code, out, _ = run_main("info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["visattn"] == visattn.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["packages"]["torch"] == torch.__version__
    assert set(info["packages"]) == {"torch", "diffusers", "transformers", "triton"}
    assert info["devices"][0]["type"] == "cpu"
    assert sum(device["type"] == "cuda" for device in info["devices"]) == torch.cuda.device_count()
    expected = {name: {"available": ok, "reason": reason} for name, (ok, reason) in available_backends().items()}
    assert info["backends"] == expected


@pytest.mark.slow
def test_info_json_as_a_subprocess():
    result = run_subprocess("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)  # stdout is pure JSON: warnings and logs must go to stderr
    assert info["visattn"] == visattn.__version__
    assert set(info["backends"]) == set(available_backends())


# --- generate on the embedded default -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One ``visattn generate "a red circle" --steps 2 --out DIR`` run: (out dir, exit code, stdout, stderr)."""
    out_dir = tmp_path_factory.mktemp("cli") / "tmp"
    code, out, err = run_main("generate", "a red circle", "--steps", "2", "--out", str(out_dir))
    return out_dir, code, out, err


def test_generate_writes_png_and_sidecar(generated):
    out_dir, code, out, err = generated
    assert code == 0, err
    png = out_dir / "a-red-circle-seed0-0.png"
    assert sorted(p.name for p in out_dir.iterdir()) == ["a-red-circle-seed0-0.json", "a-red-circle-seed0-0.png"]
    assert out.splitlines() == [str(png)]  # stdout carries only the written paths
    assert "2/2" in err  # the progress bar went to stderr
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == DEFAULT_SIZE
        image.load()
    assert pixels(png).std() > 0  # an actual decoded image, not a blank


def test_generate_stores_parameters_in_png_text_chunks(generated):
    out_dir, *_ = generated
    png = out_dir / "a-red-circle-seed0-0.png"
    chunks = png_text_chunks(png)
    assert chunks["visattn"][0] == "tEXt"
    metadata = json.loads(chunks["visattn"][1])
    assert metadata == read_metadata(png)
    expected = {
        "prompt": "a red circle",
        "negative_prompt": None,
        "seed": 0,
        "image_seed": 0,
        "image_index": 0,
        "num_images": 1,
        "steps": 2,
        "guidance": 7.5,  # StableDiffusionPipeline's default, recorded because it is what ran
        "width": DEFAULT_SIZE[0],
        "height": DEFAULT_SIZE[1],
        "model": DEFAULT_MODEL,
        "pipeline": "StableDiffusionPipeline",
        "scheduler": "DDIMScheduler",
        "device": "cpu",
        "dtype": "fp32",
        "effects": [],
        "visattn_version": visattn.__version__,
    }
    assert {key: metadata[key] for key in expected} == expected
    kind, parameters = chunks["parameters"]
    assert kind == "tEXt"
    assert parameters == format_parameters(metadata)
    first, second = parameters.splitlines()
    assert first == "a red circle"
    for field in (
        "Steps: 2",
        "Sampler: DDIMScheduler",
        "CFG scale: 7.5",
        "Seed: 0",
        "Size: 64x64",
        f"Model: {DEFAULT_MODEL}",
    ):
        assert field in second


def test_embedded_pipelines_load_by_name_offline(tmp_path):
    # the random tiny pipeline by name: 32x32 images, recorded under its name
    code, out, err = run_main(
        "generate", "a red circle", "--model", RANDOM_TINY_MODEL, "--steps", "1", "--out", str(tmp_path), "--quiet"
    )
    assert code == 0, err
    png = Path(out.strip())
    assert Image.open(png).size == (32, 32) and read_metadata(png)["model"] == RANDOM_TINY_MODEL
    # the default is a stock StableDiffusionPipeline; the toy video model a stock WanPipeline once its weights ship
    assert type(load_embedded_pipeline(DEFAULT_MODEL)).__name__ == "StableDiffusionPipeline"
    if (weights_root() / "video" / "model_index.json").is_file():
        assert type(load_embedded_pipeline(TOY_VIDEO_MODEL)).__name__ == "WanPipeline"
        # generate saves images: a video model is refused before it runs, with where to go instead
        code, out, err = run_main("generate", "a red circle moving right", "--model", TOY_VIDEO_MODEL, "--quiet")
        assert code == 2 and not out and "WanPipeline makes videos" in err and "visattn batch" in err
    else:
        with pytest.raises(FileNotFoundError, match="python -m lab train --which video"):
            load_embedded_pipeline(TOY_VIDEO_MODEL)
    with pytest.raises(ValueError, match="visattn/nope.*" + EMBEDDED_MODELS[0]):
        load_embedded_pipeline("visattn/nope")


def test_generate_sidecar_has_metadata_and_timing(generated):
    out_dir, *_ = generated
    png = out_dir / "a-red-circle-seed0-0.png"
    sidecar = read_sidecar(png)
    metadata = read_metadata(png)
    assert {key: sidecar[key] for key in metadata} == metadata
    assert sidecar["image"] == png.name
    assert sidecar["timing"]["generate_seconds"] > 0
    assert sidecar["timing"]["load_seconds"] > 0


def test_same_seed_same_image_and_nothing_overwritten(generated):
    out_dir, *_ = generated
    first = out_dir / "a-red-circle-seed0-0.png"
    before = first.read_bytes()
    code, out, err = run_main("generate", "a red circle", "--steps", "2", "--out", str(out_dir), "--quiet")
    assert code == 0, err
    second = out_dir / "a-red-circle-seed0-0_1.png"
    assert out.splitlines() == [str(second)]
    assert (out_dir / "a-red-circle-seed0-0_1.json").is_file()
    assert first.read_bytes() == before
    assert np.array_equal(pixels(first), pixels(second))


def test_python_api_seeds_sizes_and_effects(tmp_path):
    from visattn.tiny import tiny_pipeline

    pipe = tiny_pipeline("unet")
    stock = {name: type(module.processor) for name, module in visattn.attention_layers(pipe.unet).items()}
    probe = Probe()
    batch = generate(
        "a blue square",
        pipeline=pipe,
        seed=3,
        steps=2,
        num_images=2,
        height=48,
        width=64,
        out_dir=tmp_path,
        effects=[probe],
        progress=False,
    )
    assert [p.name for p in batch] == ["a-blue-square-seed3-0.png", "a-blue-square-seed3-1.png"]
    assert probe.contexts, "the pipeline must run with visattn attached"
    assert {name: type(m.processor) for name, m in visattn.attention_layers(pipe.unet).items()} == stock
    meta = [read_metadata(p) for p in batch]
    assert [(m["image_seed"], m["image_index"], m["effects"]) for m in meta] == [
        (3, 0, [repr(probe)]),
        (4, 1, [repr(probe)]),
    ]
    assert meta[0]["model"] == "StableDiffusionPipeline"  # a pipeline built in code has no id: its class names it
    with Image.open(batch[0]) as image:
        assert image.size == (64, 48)
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))
    # Image i of seed s is reproducible alone with seed s+i (up to float rounding between batch sizes).
    (alone,) = generate(
        "a blue square", pipeline=pipe, seed=4, steps=2, height=48, width=64, out_dir=tmp_path, progress=False
    )
    assert np.abs(pixels(alone) - pixels(batch[1])).max() <= 1


# --- errors -------------------------------------------------------------------------------------------------------
def test_unknown_local_model_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out_dir = tmp_path / "out"
    code, out, err = run_main("generate", "a red circle", "--model", "/nonexistent/model", "--out", str(out_dir))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("visattn generate: error: cannot load model '/nonexistent/model': no such folder")
    assert not out_dir.exists()


def test_folder_that_is_not_a_pipeline_is_one_line_exit_2(tmp_path):
    code, _, err = run_main("generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.strip().splitlines() == [
        f"visattn generate: error: cannot load model {str(tmp_path)!r}: the folder has no model_index.json, "
        "so it is not a diffusers pipeline"
    ]


@pytest.mark.slow
def test_unknown_hub_model_offline_as_subprocess(tmp_path):
    # An empty HF_HOME and offline mode: diffusers looks only in a cache that has nothing, and nothing leaves the box.
    args = ["generate", "x", "--model", "visattn-tests/no-such-model", "--out", str(tmp_path / "out")]
    result = run_subprocess(*args, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("visattn generate: error: cannot load model 'visattn-tests/no-such-model': ")
    assert "HF_HUB_OFFLINE" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_generate_as_a_subprocess_keeps_stderr_quiet(tmp_path):
    # --quiet: no progress bar, and no library notices either (transformers' torchvision fallback is filtered)
    result = run_subprocess("generate", "a red circle", "--steps", "1", "--quiet", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert Path(result.stdout.strip()).is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--steps", "0"], "argument --steps: invalid value 0: must be a positive integer"),
        (["--steps", "-5"], "argument --steps: invalid value -5: must be a positive integer"),
        (["--steps", "many"], "argument --steps: invalid value 'many': must be a positive integer"),
        (["--height", "500"], "argument --height: invalid value 500: must be a positive multiple of 8"),
        (["--width", "0"], "argument --width: invalid value 0: must be a positive multiple of 8"),
        (["--num-images", "0"], "argument --num-images: invalid value 0: must be a positive integer"),
        (["--guidance", "-1"], "argument --guidance: invalid value -1.0: must be a finite number >= 0"),
        (["--seed", "-1"], "argument --seed: invalid value -1: must be an integer from 0"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8' (choose from"),
    ],
)
def test_bad_parameters_name_parameter_value_and_rule(args, expected, tmp_path):
    code, out, err = run_main("generate", "x", "--out", str(tmp_path / "out"), *args)
    assert code == 2
    assert out == ""
    assert f"visattn generate: error: {expected}" in err
    if args[0] == "--dtype":
        assert all(name in err for name in ("fp32", "fp16", "bf16"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps=0 is not allowed: must be a positive integer"),
        ({"height": 20}, "height=20 is not allowed: must be a positive multiple of 8"),
        ({"dtype": "fp64"}, "dtype='fp64' is not allowed: choose from fp32, fp16, bf16"),
        ({"device": "tpu"}, "device='tpu' is not allowed: choose from auto, cpu, cuda"),
        ({"seed": 2**64 - 1, "num_images": 2}, f"seed={2**64 - 1} is not allowed: must leave room for 2"),
    ],
)
def test_python_api_rejects_bad_parameters_before_loading(kwargs, message, tmp_path):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(")):
        generate("x", out_dir=tmp_path, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_is_one_line_exit_2(tmp_path):
    code, _, err = run_main("generate", "x", "--device", "cuda", "--out", str(tmp_path))
    assert code == 2
    assert err.strip().splitlines() == [
        f"visattn generate: error: device='cuda' is not available: torch {torch.__version__} sees no CUDA device; "
        "use cpu"
    ]


def test_missing_command_is_a_usage_error():
    code, _, err = run_main()
    assert code == 2
    assert "COMMAND" in err


# --- file naming --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("a red circle", "a-red-circle"),
        ("  Café, déjà vu!  ", "cafe-deja-vu"),
        ("", "image"),
        ("日本", "image"),
        ("word " * 30, "word-" * 8 + "word"),  # cut at a word boundary within 48 characters
    ],
)
def test_slugify(prompt, slug):
    assert slugify(prompt) == slug


def test_save_image_never_overwrites_a_png_or_a_stray_sidecar(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    (tmp_path / "x.json").write_text("{}")  # a sidecar whose PNG is gone still reserves the name
    first = save_image(image, tmp_path, "x", {"prompt": "naïve ☃"})
    second = save_image(image, tmp_path, "x", {"prompt": "naïve ☃"})
    assert (first.name, second.name) == ("x_1.png", "x_2.png")
    assert (tmp_path / "x.json").read_text() == "{}"
    chunks = png_text_chunks(first)
    assert chunks["visattn"][0] == "tEXt"  # JSON is ASCII-escaped, so it is always a plain tEXt chunk
    assert read_metadata(first)["prompt"] == "naïve ☃"
    assert chunks["parameters"] == ("iTXt", format_parameters({"prompt": "naïve ☃"}))  # not latin-1: Pillow uses iTXt


def test_unequal_words_with_mode_replace_are_told_in_cli_terms(tmp_path, capsys):
    argv = ["edit", "--source", "a cat", "--target", "a fluffy cat", "--mode", "replace", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the source has 2" in err and "use --mode refine (mode='refine')" in err
    assert "PromptToPrompt.refine(" not in err


def test_the_parameters_text_names_loras_and_the_variant_and_no_unknown_size():
    text = format_parameters(
        {"prompt": "p", "steps": 2, "variant": "fp16", "loras": [{"source": "owner/style", "scale": 0.8}]}
    )
    assert text.splitlines()[1] == 'Steps: 2, Variant: fp16, LoRAs: "owner/style:0.8", Effects: none'
    assert "Size: 64x32" in format_parameters({"prompt": "p", "width": 64, "height": 32})
