"""``visattn batch`` over a ``dp x cp`` mesh: gloo processes on CPU (``harness.parallel.run_on_ranks``).

One 2-process spawn runs the same tiny-Wan jobs file three times: with a degree that does not divide the world
(refused on every process before any job runs), as 2 groups of 1 (data parallel) and as 1 group of 2 (context
parallel); one 4-process spawn runs it as 2 groups of 2. Every job runs on exactly the processes of one group,
only the group's first process writes it, and the videos equal a single-process run of the same jobs. A job that
fails (an unknown layer) is reported and the others still run. A folder another run holds is refused on every rank
of the launch (only the main process takes the lock; the others learn its answer), and no rank waits.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from harness.parallel import run_on_ranks
from PIL import Image, ImageSequence

from visattn.batch import parse_jobs, run_batch
from visattn.batch.execute import enable_context_parallel
from visattn.batch.lock import OutputLock
from visattn.batch.outputs import read_records
from visattn.generate import UsageError
from visattn.tiny import tiny_pipeline

pytestmark = pytest.mark.slow

# Tiny Wan: 2 heads, 5 frames of 32 x 32 -> 8 latent tokens, so a Ulysses degree of 2 divides both.
FAST = {"frames": 5, "steps": 2, "height": 32, "width": 32}
JOBS = (
    {"id": "red", "prompt": "a red circle", "seed": 1, **FAST},
    {"id": "blue", "prompt": "a blue square", "seed": 2, **FAST},
    {"id": "bad", "prompt": "a red circle", "seed": 3, **FAST, "effects": [{"type": "pag", "layers": "nowhere"}]},
    {"id": "green", "prompt": "a green dot", "seed": 4, **FAST, "effects": [{"type": "pag", "scale": 2.0}]},
    {"id": "swap", "edit": {"source": "a red circle", "target": "a blue circle"}, "seed": 5, **FAST},
)
GOOD = ("red", "blue", "green", "swap")


def _batch(out_dir: Path, jobs_file: Path, context_parallel: int) -> dict:
    """One run_batch on this process (a fresh tiny Wan pipeline): which jobs it ran, and what it says."""
    import visattn.batch.execute as runner

    ran: list[str] = []
    original = runner._JobRunner.run

    def counting(self, job):
        ran.append(job.id)
        return original(self, job)

    runner._JobRunner.run = counting  # this spawned process only
    pipe = tiny_pipeline("wan")
    try:
        log = io.StringIO()
        summary = run_batch(
            jobs_file,
            out_dir,
            pipeline=pipe,
            device="cpu",
            progress=False,
            log=log,
            context_parallel=context_parallel,
        )
    except ValueError as error:
        return {"error": str(error), "ran": ran}
    finally:
        runner._JobRunner.run = original
    return {
        "ran": ran,
        "group": summary.group_index,
        "groups": summary.num_groups,
        "writes": summary.writes,
        "failed": [error.id for error in summary.failed],
        "split": getattr(pipe.transformer, "_parallel_config", None) is not None,
        "log": log.getvalue(),
    }


def batch_ranks(rank: int, world: int, root: str, degrees: tuple[int, ...], locked: str | None = None) -> dict:
    """Each degree's run_batch on this rank, into ``root/cp{degree}-w{world}`` (a :func:`run_on_ranks` function);
    with ``locked``, first a run_batch into that folder, which another process holds (key ``"locked"``)."""
    jobs_file = Path(root) / "jobs.jsonl"
    results: dict = {} if locked is None else {"locked": _batch(Path(locked), jobs_file, 1)}
    return results | {degree: _batch(Path(root) / f"cp{degree}-w{world}", jobs_file, degree) for degree in degrees}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch-parallel")
    (folder / "jobs.jsonl").write_text("".join(json.dumps(job) + "\n" for job in JOBS))
    return folder


@pytest.fixture(scope="module")
def two(root) -> list[dict[int, dict]]:
    # Another run (this test process) owns the folder "locked": the launch's ranks must all refuse it, none wait.
    with OutputLock(root / "locked"):
        return run_on_ranks(batch_ranks, str(root), (3, 1, 2), str(root / "locked"), world=2)


@pytest.fixture(scope="module")
def four(root) -> list[dict[int, dict]]:
    return run_on_ranks(batch_ranks, str(root), (2,), world=4)


@pytest.fixture(scope="module")
def single(root) -> Path:
    out = root / "single"
    summary = run_batch(root / "jobs.jsonl", out, pipeline=tiny_pipeline("wan"), progress=False, log=io.StringIO())
    assert summary.failed and [error.id for error in summary.failed] == ["bad"]
    return out


def _frames(path: Path) -> np.ndarray:
    with Image.open(path) as video:
        return np.stack([np.asarray(frame.convert("RGB"), dtype=np.int16) for frame in ImageSequence.Iterator(video)])


def _check_once(root: Path, out: Path, ranks: list[dict], dp: int, cp: int) -> None:
    """Jobs split across groups exactly once; every process of a group ran its jobs; only the first one wrote."""
    jobs, _ = parse_jobs(root / "jobs.jsonl")
    places = [(r["group"], r["groups"], r["writes"]) for r in ranks]
    assert places == [(i // cp, dp, i % cp == 0) for i in range(dp * cp)]  # consecutive ranks form a group
    for group in range(dp):
        members = [r["ran"] for r in ranks if r["group"] == group]
        assert all(ran == members[0] for ran in members)  # the same jobs, in the same order, on the whole group
        assert members[0] == [job.id for job in jobs[group::dp]]
    ran = [job_id for r in ranks[::cp] for job_id in r["ran"]]
    assert sorted(ran) == sorted(job.id for job in jobs)  # each job on exactly one group

    writers = range(0, dp * cp, cp)
    assert sorted(p.name for p in out.glob("results.rank*.jsonl")) == [f"results.rank{w}.jsonl" for w in writers]
    logged = [record["id"] for w in writers for record in read_records(out / f"results.rank{w}.jsonl")]
    assert sorted(logged) == sorted(ran)  # each job written once, by its group's first process
    assert sum("job 'bad' failed" in r["log"] for r in ranks) == 1  # reported once, by the group that ran it
    results = {record["id"]: record for record in read_records(out / "results.jsonl")}
    assert {job_id: record["status"] for job_id, record in results.items()} == {
        **{job_id: "ok" for job_id in GOOD},
        "bad": "error",
    }
    assert all(record["context_parallel"] == cp and record["num_processes"] == dp * cp for record in results.values())
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_a_degree_that_does_not_divide_the_world_is_refused_before_any_job(root, two):
    for rank in two:
        error = rank[3]["error"]
        assert "context_parallel=3" in error and "world size (2 processes)" in error
        assert rank[3]["ran"] == []
    assert not (root / "cp3-w2").exists()


def test_a_folder_another_run_owns_is_refused_on_every_rank_of_a_launch(root, two):
    for rank in two:
        assert f"is in use by another visattn batch run (pid {os.getpid()}" in rank["locked"]["error"]
        assert rank["locked"]["ran"] == []
    assert sorted(p.name for p in (root / "locked").iterdir()) == []  # nothing written; the owner's lock released


@pytest.mark.parametrize(("dp", "cp"), [(2, 1), (1, 2), (2, 2)], ids=lambda n: str(n))
def test_jobs_split_across_groups_run_once_and_are_written_once(root, two, four, dp, cp):
    ranks = [rank[cp] for rank in (two if dp * cp == 2 else four)]
    assert all(rank["split"] == (cp > 1) for rank in ranks)  # the denoiser was split only for cp > 1
    _check_once(root, root / f"cp{cp}-w{dp * cp}", ranks, dp, cp)


@pytest.mark.parametrize(("dp", "cp"), [(1, 2), (2, 2)], ids=lambda n: str(n))
def test_context_parallel_outputs_equal_a_single_process_run(root, two, four, single, dp, cp):
    out = root / f"cp{cp}-w{dp * cp}"
    results = {record["id"]: record for record in read_records(out / "results.jsonl")}
    expected = {record["id"]: record for record in read_records(single / "results.jsonl")}
    for job_id in GOOD:
        assert results[job_id]["outputs"] == expected[job_id]["outputs"]
        for name in results[job_id]["outputs"]:
            split, whole = _frames(out / name), _frames(single / name)
            # Ulysses on Wan reproduces one process exactly (docs/parallel.md), so the encoded frames are equal.
            assert np.array_equal(split, whole), (job_id, name, np.abs(split - whole).max())


def test_a_denoiser_diffusers_cannot_split_is_named():
    # Checked before enable_parallelism runs, so no process group is needed.
    with pytest.raises(UsageError, match=r"unet is UNet2DConditionModel \(family unet\), which has none"):
        enable_context_parallel(tiny_pipeline("unet"), None, 2)
