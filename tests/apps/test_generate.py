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
from visattn.tiny import tiny_pipeline


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


# --- load options: --variant, --scheduler, --lora, --offload (issue 29) ------------------------------------------
@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory) -> Path:
    """A LoRA for the tiny SD UNet, made with peft and saved with diffusers' ``save_lora_weights``; its B matrices
    are random (peft starts them at zero, a LoRA that changes nothing)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    unet = tiny_pipeline("unet").unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return folder


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_parse_lora_splits_a_numeric_scale_only():
    from visattn.generate import LoraWeights, ParameterError, parse_lora

    assert parse_lora("owner/style:0.8") == LoraWeights("owner/style", 0.8)
    assert parse_lora("./my-lora") == LoraWeights("./my-lora", 1.0)
    assert parse_lora(r"C:\loras\x") == LoraWeights(r"C:\loras\x", 1.0)  # a drive letter is not a scale
    with pytest.raises(ParameterError):
        parse_lora("x:inf")


def test_lora_scheduler_and_options_are_applied_and_recorded(tiny_lora, tmp_path):
    from visattn.images import read_metadata

    common = ("generate", "a cat", "--model", "visattn/tiny-sd", "--steps", "2", "--quiet", "--device", "cpu")
    code, plain, err = run_main(*common, "--out", str(tmp_path / "plain"))
    assert code == 0, err
    code, loaded, err = run_main(
        *common, "--out", str(tmp_path / "lora"), "--lora", f"{tiny_lora}:0.7", "--scheduler", "eulerdiscretescheduler"
    )
    assert code == 0, err
    meta = read_metadata(loaded.strip())
    assert meta["loras"] == [{"source": str(tiny_lora), "scale": 0.7}]
    assert meta["scheduler"] == "EulerDiscreteScheduler" and meta["variant"] is None and meta["offload"] is False
    assert read_metadata(plain.strip())["loras"] == []
    assert abs(_pixels(Path(loaded.strip())) - _pixels(Path(plain.strip()))).mean() > 0.5


def test_lora_scale_zero_is_the_model_without_it(tiny_lora):
    from visattn.generate import LoadOptions, LoraWeights

    cpu = torch.device("cpu")
    plain = load_pipeline("visattn/tiny-sd", cpu, torch.float32)
    weighted = load_pipeline(
        "visattn/tiny-sd", cpu, torch.float32, options=LoadOptions(loras=(LoraWeights(str(tiny_lora), 0.0),))
    )
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 77, plain.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = plain.unet(latents, 10, text).sample
        weighted.set_adapters(["lora0"], adapter_weights=[0.0])
        assert torch.allclose(weighted.unet(latents, 10, text).sample, expected, atol=1e-5)
        weighted.set_adapters(["lora0"], adapter_weights=[1.0])
        assert not torch.allclose(weighted.unet(latents, 10, text).sample, expected, atol=1e-3)


def test_bad_load_options_are_one_line_errors(tmp_path):
    common = ("generate", "a cat", "--model", "visattn/tiny-sd", "--steps", "1", "--quiet", "--out", str(tmp_path))
    code, _, err = run_main(*common, "--scheduler", "NoSuchScheduler")
    assert code == 2 and "EulerDiscreteScheduler" in err and "DDIMScheduler" in err and "NoSuchScheduler" in err
    code, _, err = run_main(*common, "--scheduler", "FlowMatchEulerDiscreteScheduler")  # a scheduler, but not one
    assert code == 2 and "choose from" in err  # that takes this model's config
    code, _, err = run_main(*common, "--variant", "fp16")
    assert code == 2 and "--variant" in err
    code, _, err = run_main(*common, "--offload", "--device", "cpu")
    assert code == 2 and "--offload needs a GPU" in err
    code, _, err = run_main(*common, "--lora", str(tmp_path / "missing"))
    assert code == 2 and "cannot load LoRA" in err
    assert not list(tmp_path.glob("*.png"))


def test_variant_reaches_from_pretrained_and_offload_replaces_to(monkeypatch, safe_dir):
    from diffusers import DiffusionPipeline

    from visattn.generate import LoadOptions, place_pipeline

    seen = {}

    def fake(source, **kwargs):
        seen.update(kwargs)
        return tiny_pipeline("unet")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", staticmethod(fake))
    load_pipeline(str(safe_dir), torch.device("cpu"), torch.float32, options=LoadOptions(variant="fp16"))
    assert seen["variant"] == "fp16"

    pipe = tiny_pipeline("unet")
    calls = []
    monkeypatch.setattr(pipe, "enable_model_cpu_offload", lambda device=None: calls.append(device))
    monkeypatch.setattr(pipe, "to", lambda *a, **k: pytest.fail("offload must not move the pipeline"))
    assert place_pipeline(pipe, torch.device("cuda"), offload=True) is pipe
    assert calls == [torch.device("cuda")]


def test_batch_records_load_options_and_reruns_on_another_lora(tiny_lora, tmp_path):
    from visattn.images import read_metadata

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "a cat", "steps": 1}\n')
    out = tmp_path / "out"
    base = ("batch", str(jobs), "--out", str(out), "--model", "visattn/tiny-sd", "--device", "cpu", "--quiet")
    assert run_main(*base)[0] == 0
    code, pending, _ = run_main(*base, "--lora", str(tiny_lora), "--dry-run")
    assert code == 0 and pending.split() == ["a"]  # made without the LoRA: not finished for a run with it
    assert run_main(*base, "--lora", f"{tiny_lora}:0.5")[0] == 0
    sidecar = json.loads((out / "a.json").read_text())
    assert sidecar["loras"] == [{"source": str(tiny_lora), "scale": 0.5}]
    assert read_metadata(out / "a.png")["loras"] == sidecar["loras"]
