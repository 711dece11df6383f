"""Model loading in :mod:`visattn.generate`: safetensors only unless pickles are allowed (issue 27)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from visattn.cli import main
from visattn.generate import ModelLoadError, load_pipeline, pickle_only_components
from visattn.testing import tiny_pipeline


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pickle_dir(tmp_path_factory) -> Path:
    """The tiny SD pipeline saved with pickle (``.bin``) weights for its diffusers models."""
    folder = tmp_path_factory.mktemp("pickled")
    tiny_pipeline("unet").save_pretrained(folder, safe_serialization=False)
    return folder


@pytest.fixture(scope="module")
def safe_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safe")
    tiny_pipeline("unet").save_pretrained(folder)
    return folder


def test_pickle_only_components_are_found(pickle_dir, safe_dir):
    found = pickle_only_components(pickle_dir)
    assert found["unet"] == ["diffusion_pytorch_model.bin"] and "vae" in found
    assert pickle_only_components(safe_dir) == {}


def test_pickle_weights_are_refused_unless_allowed(pickle_dir, safe_dir):
    cpu = torch.device("cpu")
    with pytest.raises(ModelLoadError, match=r"weights in pickle files only \(.*unet/: diffusion_pytorch_model\.bin"):
        load_pipeline(str(pickle_dir), cpu, torch.float32)
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_pipeline(str(pickle_dir), cpu, torch.float32)
    assert type(load_pipeline(str(pickle_dir), cpu, torch.float32, allow_pickle=True)).__name__.endswith("Pipeline")
    assert load_pipeline(str(safe_dir), cpu, torch.float32) is not None


def test_hub_ids_are_loaded_with_use_safetensors(monkeypatch):
    import diffusers

    seen = []

    def fake(source, **kwargs):
        seen.append(kwargs.get("use_safetensors", "unset"))
        raise OSError("no file named diffusion_pytorch_model.safetensors found in the repository")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", fake)
    cpu = torch.device("cpu")
    with pytest.raises(ModelLoadError, match="safetensors weights only; pass --allow-pickle"):
        load_pipeline("someone/pickled-model", cpu, torch.float32)
    with pytest.raises(ModelLoadError) as caught:
        load_pipeline("someone/pickled-model", cpu, torch.float32, allow_pickle=True)
    assert "--allow-pickle" not in str(caught.value)
    assert seen == [True, None]  # None: diffusers' own default, safetensors first with pickles as a fallback


def test_commands_refuse_pickles_and_take_allow_pickle(pickle_dir, tmp_path):
    code, _, err = run_main("generate", "a red circle", "--model", str(pickle_dir), "--out", str(tmp_path))
    assert code == 2 and "weights in pickle files only" in err and "Traceback" not in err
    code, out, _ = run_main(
        "generate", "a red circle", "--model", str(pickle_dir), "--out", str(tmp_path), "--allow-pickle",
        "--steps", "1", "--height", "32", "--width", "32", "--quiet",
    )  # fmt: skip
    assert code == 0 and Path(out.strip()).is_file()

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "prompt": "a red circle", "steps": 1, "height": 32, "width": 32}) + "\n")
    code, _, err = run_main("batch", str(jobs), "--out", str(tmp_path / "b"), "--model", str(pickle_dir), "--quiet")
    assert code == 2 and "weights in pickle files only" in err
    code, _, err = run_main(
        "batch", str(jobs), "--out", str(tmp_path / "b"), "--model", str(pickle_dir), "--quiet", "--allow-pickle"
    )
    assert code == 0 and (tmp_path / "b" / "a.png").is_file()
