"""``visattn batch``: jobs-file validation with line numbers, outputs, resume, atomic writes, failures, videos,
edits, and two processes under ``accelerate launch`` on CPU."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.batch import parse_jobs, run_batch
from visattn.batch.jobs import parse_lines
from visattn.batch.outputs import read_records
from visattn.cli import main
from visattn.defaults import TOY_VIDEO_MODEL
from visattn.images import read_metadata, read_sidecar
from visattn.tiny import tiny_pipeline
from visattn.toy.models import weights_root

REPO = Path(__file__).resolve().parents[2]
# The tiny SD pipeline makes 32x32 images; two steps keep every job well under a second on CPU.
FAST = {"steps": 2, "height": 32, "width": 32}


def write_jobs(path: Path, *jobs: dict | str) -> Path:
    """A JSONL jobs file; strings are written as-is (to make malformed lines)."""
    path.write_text("\n".join(job if isinstance(job, str) else json.dumps(job) for job in jobs) + "\n")
    return path


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def results_by_id(out: Path) -> dict[str, dict]:
    return {record["id"]: record for record in read_records(out / "results.jsonl") if record.get("id")}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_pipeline("unet")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory, sd_pipe) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd")
    sd_pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def counted(sd_pipe, monkeypatch):
    """The tiny SD pipeline with a counter of its calls."""
    calls = []
    original = type(sd_pipe).__call__

    @functools.wraps(original)
    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("prompt"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(sd_pipe), "__call__", counting)
    return sd_pipe, calls


# --- parsing and validation ----------------------------------------------------------------------------------------
def test_errors_are_reported_per_line_and_valid_lines_still_parse(tmp_path):
    path = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "ok-1", "prompt": "a cat", "seed": 3},
        '{"prompt": "a cat", "seed": ',
        "",
        "# a comment line",
        {"prompt": "a cat", "sed": 3},
        {"prompt": "a cat", "effects": [{"type": "pag"}, {"type": "blur"}]},
        {"prompt": "a cat", "seed": -1},
        {"prompt": "a cat", "seed": "7"},
        {"prompt": "a cat", "effects": [{"type": "neighborhood", "kernel_size": 0}]},
        {"id": "ok-1", "prompt": "a dog"},
        {"prompt": "a cat", "edit": {"source": "a", "target": "b"}},
        {"id": "no/slash", "prompt": "a cat"},
        {"edit": {"source": "a cat", "target": "a dog"}, "height": 30},
        [1, 2],
        {"prompt": "a cat", "steps": 0, "fps": 24},
        {"edit": {"source": "a cat", "target": "a dog", "local_blend": "bird"}},
    )
    jobs, errors = parse_jobs(path)
    assert [job.id for job in jobs] == ["ok-1"] and jobs[0].line == 1 and jobs[0].seed == 3
    by_line = {error.line: error.message for error in errors}
    assert sorted(by_line) == [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]  # blank and comment lines skipped
    assert by_line[2].startswith("invalid JSON")
    assert "unknown field 'sed'" in by_line[5] and "allowed fields: id, prompt" in by_line[5]
    assert by_line[6].startswith("effects[1].type: 'blur' is not a known effect")
    assert by_line[7].startswith("seed=-1 is not allowed") and by_line[8].startswith("seed='7' is not allowed")
    assert by_line[9].startswith("effects[0]: NeighborhoodAttention: kernel_size")
    assert by_line[10] == "id 'ok-1' is already used by line 1 (ids name the output files)"
    assert "exactly one of prompt" in by_line[11]
    assert by_line[12].startswith("id='no/slash' is not allowed")
    assert by_line[13].startswith("height=30 is not allowed: must be a positive multiple of 8")
    assert "must be a JSON object" in by_line[14]
    assert by_line[15].startswith("steps=0 is not allowed")
    assert by_line[16].startswith("edit: replace: LocalBlend word 'bird'")
    assert str(errors[0]) == f"line 2: {by_line[2]}"


def test_ids_and_keys_are_stable_and_follow_the_parameters():
    (a, b, c, d), errors = parse_lines(
        [
            json.dumps({"prompt": "A red Circle!", "seed": 1}),
            json.dumps({"prompt": "A red Circle!", "seed": 2}),
            json.dumps({"seed": 1, "prompt": "A red Circle!", "steps": None, "id": "named"}),
            json.dumps({"edit": {"prompt": "a fluffy cat", "reweight": {"fluffy": 2}}}),
        ]
    )
    assert not errors
    assert a.id.startswith("a-red-circle-") and a.id.endswith(a.key[:10])
    assert a.key != b.key  # another seed is another job
    assert c.key == a.key and c.id == "named"  # key order, explicit defaults and the id do not change the key
    assert d.id.startswith("a-fluffy-cat-") and d.is_edit and d.prompt is None
    # Two identical jobs without ids would write the same files.
    _, errors = parse_lines([json.dumps({"prompt": "x"}), json.dumps({"prompt": "x"})])
    assert [error.line for error in errors] == [2] and "is already used by line 1" in errors[0].message


def test_dry_run_lists_the_jobs_to_run_without_loading_a_model(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"id": "a", "prompt": "a cat"}, {"id": "b", "prompt": "a dog"}, "{")
    code, out, err = run_main("batch", str(jobs), "--out", str(tmp_path / "out"), "--dry-run", "--model", "no/such")
    assert code == 1  # the invalid line
    assert out.split() == ["a", "b"]
    assert f"{jobs}:3: invalid job: invalid JSON" in err and "2 valid jobs, 1 invalid lines, 0 already done" in err
    assert not (tmp_path / "out").exists()


def test_missing_jobs_file_and_mp4_without_encoder_are_usage_errors(tmp_path, monkeypatch):
    code, _, err = run_main("batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path))
    assert code == 2 and "cannot read jobs file" in err and "none.jsonl" in err
    monkeypatch.setattr("visattn.batch.execute.mp4_encoder", lambda: None)  # as on a machine without PyAV
    code, _, err = run_main("batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path), "--video-format", "mp4")
    assert code == 2 and "needs PyAV" in err


# --- running -------------------------------------------------------------------------------------------------------
def test_images_with_parameters_results_and_effects_applied(tmp_path, sd_pipe):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "plain", "prompt": "a red circle", "seed": 5, **FAST},
        {"id": "pag", "prompt": "a red circle", "seed": 5, **FAST, "effects": [{"type": "pag", "scale": 3.0}]},
        {"id": "neg", "prompt": "a red circle", "negative_prompt": "blue", "seed": 5, "guidance": 4.0, **FAST},
    )
    summary = run_batch(jobs, tmp_path / "out", pipeline=sd_pipe, progress=False, log=io.StringIO())
    assert summary.exit_status == 0 and summary.ran == 3 and summary.complete
    out = tmp_path / "out"
    # The plain job is exactly a plain pipeline call with the job's seed.
    expected = sd_pipe(
        "a red circle", generator=torch.Generator("cpu").manual_seed(5), num_inference_steps=2, height=32, width=32
    ).images[0]
    np.testing.assert_array_equal(pixels(out / "plain.png"), np.asarray(expected, dtype=np.int16))
    assert np.abs(pixels(out / "pag.png") - pixels(out / "plain.png")).max() > 0  # the PAG job differs
    assert np.abs(pixels(out / "neg.png") - pixels(out / "plain.png")).max() > 0

    meta = read_metadata(out / "pag.png")
    assert meta["prompt"] == "a red circle" and meta["seed"] == 5 and meta["steps"] == 2
    assert meta["effect_specs"] == [{"type": "PerturbedAttentionGuidance", "scale": 3.0}]
    assert meta["effects"][0].startswith("PerturbedAttentionGuidance(scale=3.0")
    assert read_sidecar(out / "pag.png")["image"] == "pag.png"

    results = results_by_id(out)
    assert list(results) == ["plain", "pag", "neg"]
    record = results["neg"]
    assert record["status"] == "ok" and record["line"] == 3 and record["outputs"] == ["neg.png"]
    assert record["parameters"]["negative_prompt"] == "blue" and record["parameters"]["guidance"] == 4.0
    assert record["resolved"] == {"steps": 2, "guidance": 4.0, "width": 32, "height": 32, "frames": None}
    assert results["plain"]["resolved"]["guidance"] == 7.5  # the pipeline default, recorded
    assert record["pipeline"] == "StableDiffusionPipeline" and record["device"] == "cpu"
    assert {"generate_seconds", "write_seconds", "total_seconds"} <= set(record["timing"])
    assert record["timing"]["generate_seconds"] > 0


def test_resume_skips_finished_jobs_and_reruns_changed_or_missing_ones(tmp_path, counted):
    pipe, calls = counted
    out = tmp_path / "out"
    first = [
        {"id": "a", "prompt": "a red circle", "seed": 1, **FAST},
        {"id": "b", "prompt": "a blue circle", "seed": 2, **FAST},
        {"id": "c", "prompt": "a green circle", "seed": 3, **FAST},
    ]
    jobs = write_jobs(tmp_path / "jobs.jsonl", *first)
    assert run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO()).ran == 3
    assert len(calls) == 3

    summary = run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO())
    assert len(calls) == 3 and summary.skipped == 3 and summary.ran == 0 and summary.exit_status == 0

    # Change one job's parameters, delete another's output, reorder: exactly those two run again.
    (out / "c.png").unlink()
    write_jobs(jobs, first[2], {**first[1], "seed": 9}, first[0])
    summary = run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO())
    assert calls[3:] == ["a green circle", "a blue circle"] and summary.skipped == 1 and summary.ran == 2
    results = results_by_id(out)
    assert list(results) == ["c", "b", "a"] and [r["line"] for r in results.values()] == [1, 2, 3]
    assert results["b"]["parameters"]["seed"] == 9 and all(r["status"] == "ok" for r in results.values())
    assert len(read_records(out / "results.rank0.jsonl")) == 5  # the rank log keeps every run


def test_a_crash_mid_write_leaves_no_partial_file_and_the_next_run_completes(tmp_path, sd_pipe, monkeypatch):
    out = tmp_path / "out"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "first", "prompt": "a red circle", **FAST},
        {"id": "second", "prompt": "a blue circle", **FAST},
    )
    original_save = Image.Image.save

    def crash_on_second(self, fp, *args, **kwargs):
        if "second" in str(getattr(fp, "name", "")):
            fp.write(b"\x89PNG\r\n\x1a\n half an image")
            raise KeyboardInterrupt  # the process dies mid-write
        return original_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_batch(jobs, out, pipeline=sd_pipe, progress=False, log=io.StringIO())
    assert sorted(p.name for p in out.iterdir()) == ["first.json", "first.png", "results.rank0.jsonl"]
    assert [r["id"] for r in read_records(out / "results.rank0.jsonl")] == ["first"]

    # A hard kill (no cleanup at all) leaves a hidden temporary file and possibly a truncated log line.
    (out / ".second.png.4242.partial").write_bytes(b"\x89PNG half")
    with open(out / "results.rank0.jsonl", "a") as log:
        log.write('{"id": "second", "status": "o')
    monkeypatch.setattr(Image.Image, "save", original_save)
    summary = run_batch(jobs, out, pipeline=sd_pipe, progress=False, log=io.StringIO())
    assert summary.skipped == 1 and summary.ran == 1 and summary.exit_status == 0
    assert not list(out.glob(".*"))
    assert read_metadata(out / "second.png")["prompt"] == "a blue circle"
    assert [r["id"] for r in read_records(out / "results.rank0.jsonl")] == ["first", "second"]


def test_failing_and_invalid_jobs_are_reported_by_line_and_the_rest_run(tmp_path, sd_dir):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "good", "prompt": "a red circle", **FAST},
        {"id": "no-layer", "prompt": "a red circle", **FAST, "effects": [{"type": "pag", "layers": "nowhere"}]},
        {"id": "video", "prompt": "a red circle", "frames": 5, **FAST},
        {"id": "typo", "prompt": "a red circle", "stesp": 2},
        {"id": "last", "prompt": "a blue circle", **FAST},
    )
    out = tmp_path / "out"
    code, stdout, err = run_main("batch", str(jobs), "--out", str(out), "--model", str(sd_dir), "--quiet")
    assert code == 1
    assert stdout.strip() == str(out / "results.jsonl")
    assert f"{jobs}:2: job 'no-layer' failed: ValueError:" in err and "nowhere" in err
    # A video job for an image model is found from the folder's model_index.json, before anything is loaded.
    assert f"{jobs}:3: invalid job: frames=5 asks for a video, but the model {sd_dir.resolve()} " in err
    assert "(StableDiffusionPipeline) makes images" in err
    assert f"{jobs}:4: invalid job: unknown field 'stesp'" in err
    results = read_records(out / "results.jsonl")
    statuses = [(r["line"], r["status"]) for r in results]
    assert statuses == [(1, "ok"), (2, "error"), (3, "invalid"), (4, "invalid"), (5, "ok")]
    assert "Traceback" in results[1]["traceback"] and results[1]["model"] == str(sd_dir.resolve())
    assert (out / "good.png").is_file() and (out / "last.png").is_file() and not (out / "no-layer.png").exists()
    # Failed jobs are retried by the next run; finished ones are not.
    code, _, err = run_main("batch", str(jobs), "--out", str(out), "--model", str(sd_dir), "--quiet")
    assert code == 1 and "2 already done before this run" in err


def test_video_jobs_for_an_image_model_are_invalid_in_the_dry_run(tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "image", "prompt": "a red circle", **FAST},
        {"id": "clip", "prompt": "a red circle", "frames": 5},
        {"id": "radial", "prompt": "a red circle", "effects": [{"type": "radial"}]},
    )
    out = tmp_path / "out"
    code, stdout, err = run_main("batch", str(jobs), "--out", str(out), "--model", "visattn/tiny-sd", "--dry-run")
    assert code == 1 and stdout.split() == ["image"]
    assert f"{jobs}:2: invalid job: frames=5 asks for a video, but the model visattn/tiny-sd" in err
    assert f"{jobs}:3: invalid job: effects[0] (radial) acts on videos only" in err
    assert "1 valid jobs, 2 invalid lines" in err
    # the same jobs for the toy video model: every one is valid (a job without frames makes a default-length clip)
    code, stdout, err = run_main("batch", str(jobs), "--out", str(out), "--model", TOY_VIDEO_MODEL, "--dry-run")
    assert code == 0 and stdout.split() == ["image", "clip", "radial"], err


def test_train_video_frames_are_converted_with_the_loaded_pipelines_factors(tmp_path):
    pipe = tiny_pipeline("wan")  # VAE temporal factor 4: 9 video frames are 3 latent frames
    spec = {"type": "decay", "train_video_frames": 9, "factor": 0.5}
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", {"id": "clip", "prompt": "a red circle", "frames": 5, "effects": [spec], **FAST}
    )
    summary = run_batch(jobs, tmp_path / "out", pipeline=pipe, progress=False, log=io.StringIO())
    assert summary.exit_status == 0
    record = results_by_id(tmp_path / "out")["clip"]
    assert record["effects"] == [{"type": "ExtrapolationDecay", "train_video_frames": 9, "factor": 0.5}]
    assert "train_frames=3," in read_sidecar(tmp_path / "out" / "clip.webp")["effects"][0]
    # for an image model the same effect is an invalid line (it counts video frames)
    image_job = {"id": "img", "prompt": "a red circle", "effects": [spec], **FAST}
    code, _, err = run_main(
        "batch",
        str(write_jobs(tmp_path / "img.jsonl", image_job)),
        "--out",
        str(tmp_path / "o"),
        "--dry-run",
        "--model",
        "visattn/tiny-sd",
    )
    assert code == 1 and "effects[0].train_video_frames counts video frames" in err


def test_model_kind_is_read_without_loading(sd_dir, tmp_path):
    from visattn.batch.models import model_kind

    assert model_kind(None).video is False and model_kind(TOY_VIDEO_MODEL).video is True
    assert model_kind(str(sd_dir)).pipeline == "StableDiffusionPipeline"
    assert model_kind("nobody/not-in-the-cache") is None  # unknown: checked when the job runs
    (tmp_path / "model_index.json").write_text('{"_class_name": "MyCustomPipeline"}')
    assert model_kind(str(tmp_path)) is None


def test_video_job_writes_an_animated_webp_with_every_frame(tmp_path):
    pipe = tiny_pipeline("wan")
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"id": "clip", "prompt": "a red circle", "frames": 5, "fps": 8, **FAST})
    summary = run_batch(jobs, tmp_path / "out", pipeline=pipe, progress=False, log=io.StringIO())
    assert summary.exit_status == 0
    path = tmp_path / "out" / "clip.webp"
    with Image.open(path) as video:
        assert video.format == "WEBP" and video.is_animated and video.n_frames == 5 and video.size == (32, 32)
        video.seek(4)
        video.load()
        assert video.info["duration"] == 125 and video.info["loop"] == 0  # 8 fps, looping
    record = results_by_id(tmp_path / "out")["clip"]
    assert record["kind"] == "video" and record["outputs"] == ["clip.webp"] and record["resolved"]["frames"] == 5
    assert json.loads((tmp_path / "out" / "clip.json").read_text())["fps"] == 8.0


@pytest.mark.skipif(
    not (weights_root() / "video" / "model_index.json").is_file(), reason="the toy video weights are not shipped"
)
def test_toy_video_model_by_name_makes_clips_of_its_training_size(tmp_path):
    # No size or frames in the job: the toy video model's 32 px and 9 frames, not WanPipeline's 480 x 832 x 81.
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "clip", "prompt": "a red circle moving right on a black background", "steps": 2},
        {"id": "short", "prompt": "a blue square moving down on a white background", "steps": 2, "frames": 4},
    )
    summary = run_batch(jobs, tmp_path / "out", model=TOY_VIDEO_MODEL, progress=False, log=io.StringIO())
    assert summary.exit_status == 0
    for name, frames in (("clip", 9), ("short", 4)):  # exactly the frames asked for (the toy VAE has no time stride)
        with Image.open(tmp_path / "out" / f"{name}.webp") as video:
            assert video.n_frames == frames and video.size == (32, 32)


def test_mp4_when_pyav_is_installed(tmp_path):
    av = pytest.importorskip("av", reason="MP4 needs PyAV (pip install av); animated WebP is the default")
    from visattn.batch.outputs import save_video

    frames = [Image.new("RGB", (33, 30), (40 * i, 0, 0)) for i in range(6)]
    path = save_video(frames, tmp_path / "clip.mp4", 12.0, {"prompt": "x"})
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(video=0)) == 6
        assert (stream.width, stream.height) == (32, 30)  # cropped to even sizes for yuv420p


def test_edit_jobs_write_source_and_target_images(tmp_path, sd_pipe):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "swap", "edit": {"source": "a red circle", "target": "a blue circle"}, "seed": 4, **FAST},
        {"id": "weigh", "edit": {"prompt": "a red circle", "reweight": {"red": 4.0}}, "seed": 4, **FAST},
        {"id": "plain", "prompt": "a red circle", "seed": 4, **FAST},
    )
    summary = run_batch(jobs, tmp_path / "out", pipeline=sd_pipe, progress=False, log=io.StringIO())
    assert summary.exit_status == 0
    out = tmp_path / "out"
    results = results_by_id(out)
    assert results["swap"]["outputs"] == ["swap+source.png", "swap+target.png"]
    assert results["swap"]["edit"] == {"source": "a red circle", "target": "a blue circle", "mode": "replace"}
    source, target = read_metadata(out / "swap+source.png"), read_metadata(out / "swap+target.png")
    assert (source["role"], source["prompt"]) == ("source", "a red circle")
    assert (target["role"], target["prompt"]) == ("target", "a blue circle")
    assert np.abs(pixels(out / "swap+target.png") - pixels(out / "swap+source.png")).max() > 0
    assert np.abs(pixels(out / "weigh+target.png") - pixels(out / "weigh+source.png")).max() > 0
    # The source of an edit is the plain generation of its prompt with the same seed (up to batch rounding).
    assert np.abs(pixels(out / "swap+source.png") - pixels(out / "plain.png")).max() <= 2


# --- two processes ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_run_every_job_exactly_once(tmp_path, sd_dir):
    prompts = ["a red circle", "a blue circle", "a red square", "a blue square", "a green circle"]
    jobs = write_jobs(tmp_path / "jobs.jsonl", *({"prompt": p, "seed": i, **FAST} for i, p in enumerate(prompts)))
    out = tmp_path / "out"
    # `--multi_gpu` is accelerate's multi-process launcher (torchrun); on a machine without a GPU visattn joins the
    # processes in a gloo group (`--cpu` alone would start a single process).
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "visattn.cli", "batch", str(jobs), "--out", str(out), "--model", str(sd_dir), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch [1/2]" in result.stderr and "batch [2/2]" in result.stderr  # a progress bar per process

    ranks = {rank: read_records(out / f"results.rank{rank}.jsonl") for rank in (0, 1)}
    assert {r["rank"] for r in ranks[0]} == {0} and {r["rank"] for r in ranks[1]} == {1}
    assert [len(ranks[0]), len(ranks[1])] == [3, 2]  # interleaved shards: jobs 0, 2, 4 and 1, 3
    ran = [record["id"] for records in ranks.values() for record in records]
    expected, _ = parse_jobs(jobs)
    assert sorted(ran) == sorted(job.id for job in expected)  # every job exactly once
    results = read_records(out / "results.jsonl")
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5] and all(r["status"] == "ok" for r in results)
    assert all(r["num_processes"] == 2 for r in results)
    for record in results:
        assert read_metadata(out / record["outputs"][0])["prompt"] == prompts[record["line"] - 1]
    assert not list(out.glob(".*"))  # no temporary file left behind


# --- hostile jobs files (issue 27) ------------------------------------------------------------------------------------
HOSTILE = (
    ('{"prompt": "a", "effects": [{"type": "pag", "layers": "a{99999999999}"}]}', "effects[0].layers: 'a{9999"),
    ('{"prompt": "a", "guidance": ' + "9" * 400 + "}", "guidance=999"),
    ('{"prompt": "a", "effects": [{"type": "pag", "scale": ' + "9" * 400 + "}]}", "effects[0].scale: 999"),
    ('{"prompt": "a", "seed": ' + "9" * 5000 + "}", "invalid JSON: Exceeds the limit"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
    ('{"prompt": "a", "height": 65536, "width": 65536}', "height=65536, width=65536 is not allowed"),
)


def test_each_hostile_line_is_its_own_error_and_the_others_still_parse():
    lines = [json.dumps({"id": "first", "prompt": "a cat"})]
    for text, _ in HOSTILE:
        lines += [text, json.dumps({"prompt": f"a cat {len(lines)}"})]
    jobs, errors = parse_lines(lines)
    assert [job.line for job in jobs] == [1, *range(3, 2 * len(HOSTILE) + 2, 2)]
    assert [error.line for error in errors] == list(range(2, 2 * len(HOSTILE) + 2, 2))
    for error, (_, expected) in zip(errors, HOSTILE):
        assert error.message.startswith(expected), error.message
        assert len(error.message) <= 400 and ("is not allowed" in error.message or "invalid JSON" in error.message)


def test_an_unexpected_exception_on_one_line_is_that_lines_error(monkeypatch):
    import visattn.batch.jobs as jobs_module

    original = jobs_module.parse_job

    def exploding(data, line, max_pixels=None):
        if data.get("prompt") == "boom":
            raise KeyError("something nobody foresaw")
        return original(data, line, max_pixels)

    monkeypatch.setattr(jobs_module, "parse_job", exploding)
    jobs, errors = parse_lines(['{"prompt": "boom", "id": "b"}', '{"prompt": "fine"}'])
    assert [job.prompt for job in jobs] == ["fine"]
    assert errors == [jobs_module.JobError(1, "cannot check this job: KeyError: 'something nobody foresaw'", "b")]


def test_the_pixel_limit_is_documented_and_can_be_raised(tmp_path, monkeypatch):
    from visattn.batch.jobs import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV

    big = json.dumps({"prompt": "a", "height": 8192, "width": 4096})
    assert DEFAULT_MAX_PIXELS == 4096 * 4096
    (error,) = parse_lines([big])[1]
    assert "33,554,432 pixels is above the limit of 16,777,216" in error.message and "--max-pixels" in error.message
    assert parse_lines([big], max_pixels=8192 * 4096)[0][0].height == 8192
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "a", "height": 64, "width": 64})
    monkeypatch.setenv(MAX_PIXELS_ENV, "1024")
    code, _, err = run_main("batch", str(jobs), "--out", str(tmp_path / "out"), "--dry-run")
    assert code == 1 and "above the limit of 1,024" in err
    code, out, _ = run_main("batch", str(jobs), "--out", str(tmp_path / "out"), "--dry-run", "--max-pixels", "4096")
    assert code == 0 and out.strip()
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    code, _, err = run_main("batch", str(jobs), "--out", str(tmp_path / "out"), "--dry-run")
    assert code == 2 and "VISATTN_MAX_PIXELS='lots' is not allowed" in err
    code, _, err = run_main("batch", str(jobs), "--out", str(tmp_path / "out"), "--max-pixels", "0")
    assert code == 2 and "invalid value 0" in err


def test_a_file_of_bad_lines_runs_the_good_ones_and_exits_non_zero(tmp_path, sd_dir):
    jobs = write_jobs(tmp_path / "jobs.jsonl", HOSTILE[0][0], {"id": "good", "prompt": "a red circle", **FAST})
    out = tmp_path / "out"
    code, _, err = run_main("batch", str(jobs), "--out", str(out), "--model", str(sd_dir), "--quiet")
    assert code == 1 and "Traceback" not in err and f"{jobs}:1: invalid job: effects[0].layers" in err
    assert (out / "good.png").is_file()
    assert [(r["line"], r["status"]) for r in read_records(out / "results.jsonl")] == [(1, "invalid"), (2, "ok")]


@pytest.mark.parametrize(
    "ids",
    [
        ("x", "x-source", "x+source"),  # an edit's role suffix against a generation's id
        ("a", "A"),  # letter case: one file on macOS and Windows
        ("a.png", "a"),  # an id ending like an extension
        ("results", "results.rank0", "x.json"),  # the runner's own file names
    ],
)
def test_no_two_jobs_of_any_kinds_share_an_output_name(ids):
    from visattn.batch.jobs import output_stems

    lines = []
    for job_id in ids:
        lines.append(json.dumps({"id": job_id, "prompt": "a cat"}))
        lines.append(json.dumps({"id": job_id, "edit": {"source": "a cat", "target": "a dog"}}))
    jobs, errors = parse_lines(lines)
    names = [
        f"{stem}{ext}".casefold()
        for job in jobs
        for stem in output_stems(job.id, job.is_edit)
        for ext in (".png", ".json", ".webp", ".mp4")
    ]
    assert len(names) == len(set(names)) and not {"results.jsonl", "results.rank0.jsonl"} & set(names)
    # Every id that cannot be used is refused with its line, never silently dropped.
    assert len(jobs) + len(errors) == len(lines)
    assert all("id" in error.message for error in errors)


def test_an_edit_and_a_generation_named_alike_both_keep_their_images(tmp_path, sd_pipe):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "x", "edit": {"source": "a red circle", "target": "a blue circle"}, "seed": 1, **FAST},
        {"id": "x-source", "prompt": "a green square", "seed": 2, **FAST},
    )
    out = tmp_path / "out"
    assert run_batch(jobs, out, pipeline=sd_pipe, progress=False, log=io.StringIO()).exit_status == 0
    assert read_metadata(out / "x+source.png")["prompt"] == "a red circle"
    assert read_metadata(out / "x-source.png")["prompt"] == "a green square"
    assert read_sidecar(out / "x-source.png")["job_key"] == results_by_id(out)["x-source"]["key"]


def test_resume_checks_that_the_file_found_is_this_jobs(tmp_path, counted):
    pipe, calls = counted
    out = tmp_path / "out"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "a", "prompt": "a red circle", "seed": 1, **FAST},
        {"id": "b", "prompt": "a blue circle", "seed": 2, **FAST},
    )
    assert run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO()).ran == 2
    # Another job's image and sidecar copied over b's (as an older, colliding version of the runner could do):
    # the record still says ok, but the file is not b's, so b runs again; a is untouched.
    for suffix in (".png", ".json"):
        (out / f"b{suffix}").write_bytes((out / f"a{suffix}").read_bytes())
    summary = run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO())
    assert summary.skipped == 1 and summary.ran == 1 and calls[2:] == ["a blue circle"]
    assert read_metadata(out / "b.png")["prompt"] == "a blue circle"
    # A sidecar that is missing or damaged is not proof either.
    (out / "a.json").write_text("{not json")
    assert run_batch(jobs, out, pipeline=pipe, progress=False, log=io.StringIO()).ran == 1


def test_a_line_that_is_not_utf8_is_its_own_error_and_lines_end_at_newlines_only(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n{"prompt": "b\xff"}\n{"prompt": "c\xe2\x80\xa8d"}\n')
    jobs, errors = parse_jobs(path)
    assert [(job.line, job.prompt) for job in jobs] == [(1, "a"), (3, "c\u2028d")]  # U+2028 inside a string
    assert [str(error) for error in errors] == ["line 2: not UTF-8 text: byte 0xff at column 14"]
