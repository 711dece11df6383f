"""Run a jobs file: resume, shard across processes, generate, write outputs and results.

One process or many, the same code: under ``accelerate launch`` (or ``torchrun``) every process parses the whole
jobs file, and job ``i`` of the jobs still to do goes to process ``i % num_processes`` (accelerate's
:class:`~accelerate.PartialState` tells each process its index and device), so shards are disjoint and balanced.

Context parallelism (``context_parallel=N``, ``visattn batch --context-parallel N``): the ``W`` processes form a
``dp x N`` mesh (``W = dp * N``, dims ``("dp", "ring", "ulysses")`` with ring 1, as diffusers'
``ContextParallelConfig(mesh=...)`` expects). Processes ``g * N ... g * N + N - 1`` are context-parallel group
``g``; job ``i`` goes to group ``i % dp``, and every process of the group runs it with the same seed on a denoiser
split by ``ContextParallelConfig(ulysses_degree=N)`` over the group's processes. Only a group's first process
writes files and records (the others hold the same result).

Files (in ``out_dir``), and who writes them, so that no two processes ever write the same file:

* ``{id}.png`` (``{id}+source.png`` and ``{id}+target.png`` for an edit), or ``{id}.webp`` / ``{id}.mp4`` for
  video, each with a ``.json`` sidecar: the process that ran the job (the first of its group; ids are unique
  within a jobs file, ignoring case, and cannot contain ``+``, so no two jobs name the same file:
  :func:`visattn.batch.jobs.output_stems`);
* ``results.rank{N}.jsonl``: process ``N`` only (a group's first process), one record appended per finished or
  failed job (the log);
* ``results.jsonl``: the main process only, after every process is done: one line per line of the jobs file, in
  file order (``ok``, ``error``, ``invalid`` or ``pending``), merged from the rank logs.

One launch per folder: the main process holds ``.visattn-batch.lock`` (:mod:`visattn.batch.lock`) from before the
start-up clean-up to the end; a second ``visattn batch`` on the same ``--out`` is refused on all its processes.

Resuming: a job is finished when a rank log or ``results.jsonl`` holds an ``ok`` record with its id, the same
parameter hash (:attr:`visattn.batch.jobs.Job.key`), the same model, and every output file still exists with a
sidecar that names the same job id and parameter hash (a file some other job wrote is not this job's). Outputs
are written atomically before the record (:mod:`visattn.batch.outputs`), so a killed run leaves no partial file
and its interrupted job simply runs again. Every process reads the records before a barrier that precedes any
write, so all processes agree on the jobs still to do.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .. import __version__
from ..defaults import DEFAULT_MODEL, embedded_call_defaults
from ..frames import frame_rounding_quieted, latent_frames, makes_video, num_frames_argument
from ..generate import (
    DEVICES,
    LoadOptions,
    ParameterError,
    UsageError,
    call_arguments,
    check_dtype,
    load_pipeline,
    pipeline_name,
    signature_default,
    weights_of,
)
from .jobs import EDIT_ROLES, Job, JobError, check_max_pixels, max_pixels_from_env, output_stems, parse_jobs
from .lock import FolderLocked, OutputLock
from .models import check_kinds, model_kind
from .outputs import (
    VIDEO_FORMATS,
    append_record,
    mp4_encoder,
    read_records,
    remove_partials,
    save_png,
    save_video,
    write_bytes_atomic,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

RESULTS_NAME = "results.jsonl"
RANK_RESULTS = "results.rank{rank}.jsonl"
#: how long a process waits at a barrier for the others (a finished shard waits for the slowest one; video jobs
#: can take hours, far beyond torch.distributed's default 10-30 minute timeouts)
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass
class BatchSummary:
    """What a :func:`run_batch` call did, from this process's point of view (the main process sees everything).

    Attributes:
        jobs: valid jobs in the file.
        invalid: lines that could not be parsed or validated.
        skipped: jobs finished by an earlier run (all processes).
        ran: jobs this process ran successfully.
        failed: jobs this process ran that raised, with their line numbers.
        pending: ids of jobs still to do (after a dry run: what a real run would do).
        results: the merged ``results.jsonl`` (main process, not after a dry run), else ``None``.
        complete: every job of the file has an ``ok`` result (known to the main process; other processes: no
            failure of their own).
        process_index, num_processes: this process's place in the launch.
        context_parallel: processes per job (the context-parallel degree; 1: each process runs its own jobs).
        group_index, num_groups: this process's context-parallel group and the group count (data-parallel index
            and size; ``num_groups * context_parallel == num_processes``).
        writes: this process writes its group's files and records (the group's first process).
    """

    jobs: int = 0
    invalid: list[JobError] = field(default_factory=list)
    skipped: int = 0
    ran: int = 0
    failed: list[JobError] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    results: Path | None = None
    complete: bool = False
    process_index: int = 0
    num_processes: int = 1
    context_parallel: int = 1
    group_index: int = 0
    num_groups: int = 1
    writes: bool = True

    @property
    def exit_status(self) -> int:
        """0 when every job succeeded (now or before) and no line was invalid, else 1."""
        return 0 if self.complete and not self.invalid and not self.failed else 1


# --- processes ----------------------------------------------------------------------------------------------------
def check_context_parallel(degree: Any, world: int) -> int:
    """``degree`` if it is a positive integer that divides ``world`` (the process count), else a ValueError
    (:class:`~visattn.generate.ParameterError`) that names the option, the value and the world size."""
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ParameterError("context_parallel", degree, "must be a positive integer (processes per job)")
    if world % degree:
        raise ParameterError(
            "context_parallel",
            degree,
            f"must divide the world size ({world} process{'es' if world != 1 else ''}): each job runs on a group "
            f"of {degree} processes and the groups share the jobs",
        )
    return degree


class _Processes:
    """This process's index, the process count, its device, a barrier that tolerates long waits, and its place in
    the ``dp x cp`` mesh (its context-parallel group, and whether it writes for that group)."""

    def __init__(self, device: str, context_parallel: int = 1) -> None:
        import torch
        from accelerate import PartialState

        if device not in DEVICES:
            raise ParameterError("device", device, f"choose from {', '.join(DEVICES)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device='cuda' is not available: torch {torch.__version__} sees no CUDA device; use cpu")
        # accelerate's `--cpu` flag reaches scripts as ACCELERATE_USE_CPU; PartialState only uses it when told.
        forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        cpu = device == "cpu" or forced_cpu or not torch.cuda.is_available()
        # cpu=True makes processes started by `accelerate launch --multi_gpu` / torchrun on a machine without a GPU
        # join one gloo group instead of each running alone.
        self.state = PartialState(cpu=cpu)
        self.index = self.state.process_index
        self.count = self.state.num_processes
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.count == 1 and distributed and torch.distributed.get_world_size() > 1:
            # A process group the caller made without a launcher's environment (its own script, the test harness):
            # accelerate sees one process, but the jobs must still be shared with the group's other processes.
            self.index, self.count = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.is_main = self.index == 0
        self.device = torch.device("cpu") if cpu or self.state.device.type == "cpu" else self.state.device
        # Checked on every process before anything collective, so all of them refuse alike and none waits.
        self.context_parallel = check_context_parallel(context_parallel, self.count)
        self.num_groups = self.count // self.context_parallel
        # Consecutive processes form a group (the mesh's last dim varies fastest): on a multi-GPU machine a job's
        # all-to-alls stay within a node whenever the degree fits in it.
        self.group_index, self.group_rank = divmod(self.index, self.context_parallel)
        self.writes = self.group_rank == 0
        self._group = None
        self.mesh = None
        if self.count > 1 and distributed:
            # A CPU (gloo) group with a long timeout just for barriers: the default group's timeout would abort a
            # process whose shard finished long before the slowest one.
            self._group = torch.distributed.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
        if self.context_parallel > 1:
            self.mesh = _context_parallel_mesh(self.device.type, self.num_groups, self.context_parallel)

    def barrier(self) -> None:
        if self._group is not None:
            import torch

            torch.distributed.barrier(group=self._group)

    def from_main(self, value: Any) -> Any:
        """``value`` as the main process has it, on every process (a collective: every process must call it)."""
        if self._group is None:
            return value
        import torch

        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self._group)
        return box[0]


def _context_parallel_mesh(device_type: str, groups: int, degree: int) -> Any:
    """The ``dp x cp`` device mesh, dims ``("dp", "ring", "ulysses")``: diffusers slices ``["ring", "ulysses"]``
    out of a custom mesh, so ring is a dim of size 1 and the context-parallel degree is the Ulysses dim."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (groups, 1, degree), mesh_dim_names=("dp", "ring", "ulysses"))
    # Creating sub-meshes makes process groups, which every process must join in the same order. diffusers
    # flattens ["ring", "ulysses"] in enable_parallelism, which a group without jobs (or a failed load) never
    # reaches; flattening here, on every process, caches the flattened mesh so that later call makes no group.
    mesh["ring", "ulysses"]._flatten()
    return mesh


@contextlib.contextmanager
def _an_accelerator_count() -> Iterator[None]:
    """Report one accelerator while diffusers sets up a CPU-only context-parallel run.

    diffusers 0.42.1's ``enable_parallelism`` computes ``rank % torch.accelerator.device_count()``, which divides
    by zero on a machine without an accelerator (CPU batches under ``torchrun``); the device it computes is only
    recorded. Restored on exit; a no-op where an accelerator is counted.
    """
    import torch

    original = torch.accelerator.device_count
    if original() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def enable_context_parallel(pipeline: DiffusionPipeline, mesh: Any, degree: int) -> list[str]:
    """Split every denoiser of ``pipeline`` with ``ContextParallelConfig(ulysses_degree=degree, mesh=mesh)``; returns
    the attribute names of the denoisers split. A denoiser already split (by the caller) is left as it is.

    Raises:
        UsageError: the pipeline has no denoiser, or one with no context-parallel plan (neither diffusers'
            ``_cp_plan`` nor one visattn ships for its family).
    """
    from diffusers import ContextParallelConfig

    from ..attachment import DENOISER_ATTRIBUTES
    from ..families import declared_family
    from ..parallel import context_parallel_plan, enable_context_parallelism

    denoisers = [
        (name, getattr(pipeline, name)) for name in DENOISER_ATTRIBUTES if getattr(pipeline, name, None) is not None
    ]
    if not denoisers:
        raise UsageError(f"context_parallel={degree}: {type(pipeline).__name__} has none of {DENOISER_ATTRIBUTES}")
    for name, model in denoisers:
        if context_parallel_plan(model) is None or not hasattr(model, "enable_parallelism"):
            family = declared_family(model)
            raise UsageError(
                f"context_parallel={degree} needs denoisers with a context-parallel plan (diffusers' `_cp_plan`, or "
                f"one visattn ships); {name} is "
                f"{type(model).__name__} (family {family.name if family is not None else 'undeclared'}), which has "
                "none: use context_parallel=1"
            )
    split = []
    for name, model in denoisers:
        if getattr(model, "_parallel_config", None) is not None:
            continue  # enable_parallelism may not run twice; the caller chose the split
        # One config per denoiser (Wan 2.2's two transformers): diffusers records its setup on the config.
        with _an_accelerator_count():
            enable_context_parallelism(model, ContextParallelConfig(ulysses_degree=degree, mesh=mesh))
        split.append(name)
    return split


# --- resuming -----------------------------------------------------------------------------------------------------
def _model_name(model: str | None, pipeline: Any) -> str:
    if model is None:
        return pipeline_name(pipeline) if pipeline is not None else DEFAULT_MODEL
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def _records(out_dir: Path) -> list[dict[str, Any]]:
    """Every record in the rank logs and the merged results (any number of processes, any earlier run)."""
    records = []
    for path in sorted(out_dir.glob(RANK_RESULTS.format(rank="*"))) + [out_dir / RESULTS_NAME]:
        records.extend(record for record in read_records(path) if isinstance(record.get("id"), str))
    return records


def _written_by(job: Job, path: Path) -> bool:
    """Whether ``path`` exists and its sidecar says this job (id and parameter hash) wrote it."""
    if not path.is_file():
        return False
    try:
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(sidecar, dict) and sidecar.get("job_id") == job.id and sidecar.get("job_key") == job.key


def _setup(options: LoadOptions) -> dict[str, Any]:
    """What of the load options changes the outputs, so a result made with another LoRA, scheduler or variant is
    not taken as finished (offload only changes where weights wait)."""
    return {"variant": options.variant, "scheduler": options.scheduler, "loras": options.record()["loras"]}


def _finished(job: Job, record: dict[str, Any], model: str, out_dir: Path, setup: dict[str, Any]) -> bool:
    outputs = record.get("outputs")
    return (
        record.get("status") == "ok"
        and record.get("key") == job.key
        and record.get("model") == model
        # Records from before the load options had none: the defaults.
        and record.get("setup", _setup(LoadOptions())) == setup
        and isinstance(outputs, list)
        and bool(outputs)
        and all(isinstance(name, str) and _written_by(job, out_dir / name) for name in outputs)
    )


def _latest(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest record per job id (ISO UTC timestamps sort as text)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: str(r.get("finished_at", ""))):
        latest[record["id"]] = record
    return latest


# --- one job ------------------------------------------------------------------------------------------------------
def _frames_of(video: Any) -> list:
    """PIL frames of one video from a pipeline's ``frames`` output (PIL list, or a float array in [0, 1])."""
    from PIL import Image

    frames = list(video)
    if frames and not isinstance(frames[0], Image.Image):
        import numpy as np

        arrays = [(np.clip(np.asarray(f, dtype=np.float32), 0, 1) * 255).round().astype("uint8") for f in frames]
        return [Image.fromarray(array) for array in arrays]
    return frames


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


class _JobRunner:
    """Runs jobs on one loaded pipeline and writes their outputs; shared data computed once.

    ``writes=False`` (a context-parallel group's other processes): the job runs, its share of every collective
    included, but no file is written.
    """

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        out_dir: Path,
        model: str,
        video_format: str,
        run: dict[str, Any],
        writes: bool = True,
        options: LoadOptions | None = None,
    ) -> None:
        import diffusers
        import torch

        self.pipe, self.out_dir, self.model, self.video_format = pipeline, out_dir, model, video_format
        self.run_info, self.writes = run, writes
        self.options = options or LoadOptions()
        device, dtype = weights_of(pipeline)
        scheduler = getattr(pipeline, "scheduler", None)
        self.base = {
            "model": model,
            "pipeline": type(pipeline).__name__,
            "scheduler": type(scheduler).__name__ if scheduler is not None else None,
            **self.options.record(),
            "device": device,
            "dtype": dtype,
            "visattn_version": __version__,
            "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__,
        }

    def run(self, job: Job) -> dict[str, Any]:
        """Generate ``job``, write its files, and return its ``ok`` record (raises on any failure)."""
        import torch

        from ..attachment import attach
        from ..effect_specs import describe, describe_edit

        started = time.perf_counter()
        if job.frames is not None and not makes_video(self.pipe):
            raise UsageError(f"frames={job.frames} needs a video pipeline; {type(self.pipe).__name__} makes images")
        # A spec's train_video_frames becomes latent frames with this pipeline's VAE and patch factors.
        # On an embedded model, PAG/SoftPAG/SEG without layers act where they were measured to show.
        effects = job.build_effects(functools.partial(latent_frames, self.pipe), model=self.model)
        edit = job.build_edit()
        negative = job.negative_prompt
        if negative is not None and edit is not None:
            negative = [negative, negative]  # one per prompt: the edit calls the pipeline with [source, target]
        # Unset sizes: the pipeline's defaults, except for an embedded model trained smaller than its class's
        trained = embedded_call_defaults(self.model)
        frames = job.frames if job.frames is not None else trained.get("num_frames")
        call = call_arguments(
            self.pipe,
            {
                "negative_prompt": negative,
                "num_inference_steps": job.steps,
                "guidance_scale": job.guidance,
                "height": job.height if job.height is not None else trained.get("height"),
                "width": job.width if job.width is not None else trained.get("width"),
                "num_frames": None if frames is None else num_frames_argument(self.pipe, frames),
            },
        )
        if edit is not None:
            # Source and target from the same noise: PromptToPrompt's generators repeat the seed per row.
            prompt, generator, roles = edit.prompts, edit.generator(job.seed), EDIT_ROLES
        else:
            prompt, generator, roles = job.prompt, [torch.Generator("cpu").manual_seed(job.seed)], ("",)
        with attach(self.pipe, *([edit] if edit is not None else []), *effects), frame_rounding_quieted(self.pipe):
            result = self.pipe(prompt=prompt, generator=generator, output_type="pil", **call)
        generated = time.perf_counter()

        videos = getattr(result, "frames", None)
        images = getattr(result, "images", None) if videos is None else None
        if videos is None and images is None:
            raise UsageError(f"{type(self.pipe).__name__} returned neither images nor frames")
        outputs = list(images) if images is not None else [_frames_of(video) for video in videos]
        if len(outputs) != len(roles):
            raise RuntimeError(f"expected {len(roles)} outputs from the pipeline, got {len(outputs)}")

        first = outputs[0] if images is not None else outputs[0][0]
        resolved = {
            "steps": job.steps if job.steps is not None else signature_default(self.pipe, "num_inference_steps"),
            "guidance": job.guidance if job.guidance is not None else signature_default(self.pipe, "guidance_scale"),
            "width": first.width,
            "height": first.height,
            "frames": None if images is not None else len(outputs[0]),
        }
        effect_specs = describe(effects)
        edit_spec = describe_edit(edit) if edit is not None else None
        names = []
        for role, output, stem in zip(roles, outputs, output_stems(job.id, edit is not None)):
            if not self.writes:
                continue
            role_prompt = job.prompt if edit is None else edit.prompts[roles.index(role)]
            metadata = {
                **self.base,
                "job_id": job.id,
                "job_key": job.key,  # resuming checks it: a file is only this job's if its sidecar says so
                "role": role or None,
                "prompt": role_prompt,
                "negative_prompt": job.negative_prompt,
                "seed": job.seed,
                "image_seed": job.seed,
                **resolved,
                "effects": [repr(effect) for effect in effects],  # strings, as visattn.images expects
                "effect_specs": effect_specs,
                "edit": edit_spec,
            }
            if images is not None:
                path = save_png(output, self.out_dir / f"{stem}.png", metadata)
            else:
                metadata["fps"] = job.fps
                path = save_video(output, self.out_dir / f"{stem}.{self.video_format}", job.fps, metadata)
            names.append(path.name)
        written = time.perf_counter()
        return {
            **self._record(job, "ok"),
            "kind": "image" if images is not None else "video",
            "resolved": resolved,
            **self.base,
            "effects": effect_specs,
            "edit": edit_spec,
            "outputs": names,
            "timing": {
                "load_seconds": self.run_info.get("load_seconds"),
                "generate_seconds": generated - started,
                "write_seconds": written - generated,
                "total_seconds": written - started,
            },
        }

    def _record(self, job: Job, status: str) -> dict[str, Any]:
        return {
            "id": job.id,
            "line": job.line,
            "key": job.key,
            "status": status,
            "parameters": job.parameters(),
            "model": self.model,
            "setup": _setup(self.options),
            "rank": self.run_info["rank"],
            "num_processes": self.run_info["num_processes"],
            "context_parallel": self.run_info.get("context_parallel", 1),
            "host": self.run_info["host"],
            "finished_at": _now(),
        }

    def failure(self, job: Job, exc: BaseException, seconds: float) -> dict[str, Any]:
        return {
            **self._record(job, "error"),
            "error": _one_line(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "timing": {"total_seconds": seconds},
        }


def _one_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the batch ----------------------------------------------------------------------------------------------------
def _merge(jobs: Sequence[Job], invalid: Sequence[JobError], out_dir: Path) -> tuple[Path, bool]:
    """Write ``results.jsonl``: one line per line of the jobs file; returns its path and whether all are ok."""
    latest = _latest(_records(out_dir))
    lines: list[tuple[int, dict[str, Any]]] = []
    complete = not invalid
    for job in jobs:
        record = latest.get(job.id)
        if record is None or record.get("key") != job.key:
            record = {"id": job.id, "line": job.line, "key": job.key, "status": "pending"}
            record["parameters"] = job.parameters()
        else:
            record = {**record, "line": job.line}  # the job may have moved within the file since it ran
        complete = complete and record["status"] == "ok"
        lines.append((job.line, record))
    for error in invalid:
        lines.append((error.line, {"id": error.id, "line": error.line, "status": "invalid", "error": error.message}))
    lines.sort(key=lambda item: item[0])

    text = "".join(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for _, record in lines)
    path = write_bytes_atomic(out_dir / RESULTS_NAME, text.encode("utf-8"))
    return path, complete


def run_batch(
    jobs_file: str | Path,
    out_dir: str | Path,
    *,
    model: str | None = None,
    pipeline: DiffusionPipeline | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    video_format: str = "webp",
    progress: bool = True,
    dry_run: bool = False,
    log: IO[str] | None = None,
    context_parallel: int = 1,
    max_pixels: int | None = None,
    allow_pickle: bool = False,
    options: LoadOptions | None = None,
) -> BatchSummary:
    """Run every job of ``jobs_file`` not finished yet, writing images, videos and results into ``out_dir``.

    Call it in every process of an ``accelerate launch`` (``visattn batch`` does): each process runs its own
    shard on its own device. See the module docstring for the files and the resume rule.

    Args:
        jobs_file: JSONL jobs (see :mod:`visattn.batch.jobs`).
        out_dir: output folder, created if missing; reuse it to resume.
        model: diffusers model id or local pipeline folder (default: the embedded tiny default model).
        pipeline: a ready pipeline to use instead of loading ``model`` (single process; ``device``/``dtype`` are
            not applied to it).
        device: ``"auto"`` (each process's accelerator, else CPU), ``"cpu"`` or ``"cuda"``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``, for a pipeline this function loads.
        video_format: ``"webp"`` (animated WebP, always available) or ``"mp4"`` (needs PyAV).
        progress: a progress bar per process (on stderr; the pipeline's own step bar is hidden).
        dry_run: only parse, validate and find what is left to do (no model is loaded, nothing is written).
        log: where line-numbered errors and the summary go (default: stderr).
        context_parallel: processes per job: each job runs on a group of that many processes, its denoiser(s)
            split with ``ContextParallelConfig(ulysses_degree=context_parallel)`` over the group, and the groups
            share the jobs (see the module docstring). Must divide the process count.
        max_pixels: the largest ``height * width`` a job may ask for (default: the ``VISATTN_MAX_PIXELS``
            environment variable, else :data:`visattn.batch.jobs.DEFAULT_MAX_PIXELS`); larger jobs are invalid
            lines.
        allow_pickle: also load pickle weights of a ``model`` without safetensors (see
            :func:`visattn.generate.load_pipeline`; default: safetensors only).
        options: variant, scheduler, LoRAs and CPU offload of a pipeline this function loads
            (:class:`~visattn.generate.LoadOptions`); recorded with every output. A finished job made with another
            variant, scheduler or LoRA runs again.

    Raises:
        ValueError: ``context_parallel`` does not divide the process count (a
            :class:`~visattn.generate.ParameterError`, raised on every process before any job runs).
        UsageError: the jobs file cannot be read, a bad device/dtype/video format, no MP4 encoder, another
            ``visattn batch`` run owns ``out_dir`` (:class:`~visattn.batch.lock.FolderLocked`, on every process of
            this launch), or the model cannot be loaded (raised after the other processes were released).
    """
    log = log if log is not None else sys.stderr
    if video_format not in VIDEO_FORMATS:
        raise ParameterError("video_format", video_format, f"choose from {', '.join(VIDEO_FORMATS)}")
    if video_format == "mp4" and mp4_encoder() is None:
        raise UsageError("video_format='mp4' needs PyAV (pip install av); use webp (always available)")
    torch_dtype = check_dtype(dtype)
    if pipeline is not None and options is not None and options != LoadOptions():
        raise UsageError("variant, scheduler, LoRAs and offload apply to a pipeline batch loads; set them on yours")
    max_pixels = max_pixels_from_env() if max_pixels is None else check_max_pixels(max_pixels)
    jobs_file, out_dir = Path(jobs_file), Path(out_dir)
    try:
        jobs, invalid = parse_jobs(jobs_file, max_pixels)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read jobs file {str(jobs_file)!r}: {_one_line(exc)}") from None
    model_name = _model_name(model, pipeline)
    # A video job for an image model is an invalid line now, in --dry-run too, not a failure after loading.
    jobs, mismatched = check_kinds(jobs, model_kind(model, pipeline), model_name)
    invalid = sorted([*invalid, *mismatched], key=lambda error: error.line)

    processes = _Processes(device, context_parallel)
    summary = BatchSummary(
        jobs=len(jobs),
        invalid=list(invalid),
        process_index=processes.index,
        num_processes=processes.count,
        context_parallel=processes.context_parallel,
        group_index=processes.group_index,
        num_groups=processes.num_groups,
        writes=processes.writes,
    )
    lock: OutputLock | None = None
    refusal: tuple[bool, str] | None = None  # (the folder is locked, message)
    if processes.is_main:
        for error in invalid:
            print(f"{jobs_file}:{error.line}: invalid job: {error.message}", file=log)
        if not dry_run:
            # Only the main process locks: the other ranks of this launch are the same run, not a second one.
            try:
                lock = OutputLock(out_dir).acquire()
                remove_partials(out_dir)  # leftovers of killed runs; nobody writes before the barrier below
            except FolderLocked as exc:
                refusal = (True, str(exc))
            except OSError as exc:  # no permission, not a folder, ...: reported, not left to hang the other ranks
                refusal = (False, f"cannot use output folder {str(out_dir)!r}: {_one_line(exc)}")
                if lock is not None:
                    lock.release()
    if not dry_run:
        refusal = processes.from_main(refusal)  # every rank of this launch refuses alike, none waits for the others
        if refusal is not None:
            locked, message = refusal
            raise FolderLocked(message) if locked else UsageError(message)
    try:
        return _run_locked(
            jobs, invalid, processes, summary, out_dir, jobs_file, model, model_name, pipeline, torch_dtype,
            video_format, progress, dry_run, log, allow_pickle, options or LoadOptions(),
        )  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _run_locked(
    jobs: list[Job],
    invalid: list[JobError],
    processes: _Processes,
    summary: BatchSummary,
    out_dir: Path,
    jobs_file: Path,
    model: str | None,
    model_name: str,
    pipeline: DiffusionPipeline | None,
    torch_dtype: Any,
    video_format: str,
    progress: bool,
    dry_run: bool,
    log: IO[str],
    allow_pickle: bool,
    options: LoadOptions,
) -> BatchSummary:
    """The part of :func:`run_batch` that runs while the main process holds the folder's lock."""
    latest = _latest(_records(out_dir)) if out_dir.is_dir() else {}
    setup = _setup(options)
    pending = [
        job for job in jobs if not (job.id in latest and _finished(job, latest[job.id], model_name, out_dir, setup))
    ]
    summary.skipped = len(jobs) - len(pending)
    summary.pending = [job.id for job in pending]
    if dry_run:
        summary.complete = not pending
        return summary
    processes.barrier()  # every process has read the old records before anyone appends new ones

    # Each job goes to exactly one group; every process of that group runs it.
    mine = pending[processes.group_index :: processes.num_groups]
    load_error: UsageError | None = None
    run_info = {
        "rank": processes.index,
        "num_processes": processes.count,
        "context_parallel": processes.context_parallel,
        "group": processes.group_index,
        "num_groups": processes.num_groups,
        "host": socket.gethostname(),
    }
    try:
        if mine and pipeline is None:
            started = time.perf_counter()
            try:
                pipeline = load_pipeline(
                    model, processes.device, torch_dtype, allow_pickle=allow_pickle, options=options
                )
            except UsageError as exc:
                load_error = exc
            run_info["load_seconds"] = time.perf_counter() - started
        if mine and load_error is None and processes.mesh is not None:
            try:
                enable_context_parallel(pipeline, processes.mesh, processes.context_parallel)
            except UsageError as exc:
                load_error = exc  # the same on every process of every group: reported like a failed load
        if mine and load_error is None:
            _run_shard(
                mine,
                pipeline,
                out_dir,
                model_name,
                video_format,
                run_info,
                summary,
                jobs_file,
                progress and processes.writes,  # one bar per group
                log,
                processes.writes,
                options,
            )
    finally:
        processes.barrier()  # the merge below must see every process's records
    if processes.is_main:
        summary.results, summary.complete = _merge(jobs, invalid, out_dir)
        _print_summary(summary, out_dir, log)
    else:
        summary.complete = not summary.failed and load_error is None
    if load_error is not None:
        raise load_error
    return summary


def _run_shard(
    mine: Sequence[Job],
    pipeline: DiffusionPipeline,
    out_dir: Path,
    model_name: str,
    video_format: str,
    run_info: dict[str, Any],
    summary: BatchSummary,
    jobs_file: Path,
    progress: bool,
    log: IO[str],
    writes: bool = True,
    options: LoadOptions | None = None,
) -> None:
    from tqdm.auto import tqdm

    runner = _JobRunner(pipeline, out_dir, model_name, video_format, run_info, writes, options)
    rank_log = out_dir / RANK_RESULTS.format(rank=run_info["rank"])
    count, groups = run_info["num_processes"], run_info.get("num_groups", run_info["num_processes"])
    if groups == count:
        label = f"batch [{run_info['rank'] + 1}/{count}]" if count > 1 else "batch"
    else:
        label = f"batch [group {run_info['group'] + 1}/{groups}, {run_info['context_parallel']} processes]"
    previous = dict(getattr(pipeline, "_progress_bar_config", None) or {})
    pipeline.set_progress_bar_config(**{**previous, "disable": True})  # one bar per process: jobs, not steps
    position = run_info.get("group", run_info["rank"])
    bar = tqdm(mine, desc=label, unit="job", position=position, file=sys.stderr, disable=not progress)
    try:
        for job in bar:
            started = time.perf_counter()
            try:
                record = runner.run(job)
            except Exception as exc:  # one failing job must not stop the others; it is reported with its line
                record = runner.failure(job, exc, time.perf_counter() - started)
                summary.failed.append(JobError(job.line, record["error"], job.id))
                message = f"{jobs_file}:{job.line}: job {job.id!r} failed: {record['error']}"
                if writes:  # the group's other processes fail alike; one line per job
                    bar.write(message, file=log) if progress else print(message, file=log)
            else:
                summary.ran += 1
            if writes:
                append_record(rank_log, record)
            bar.set_postfix(failed=len(summary.failed), refresh=False)
    finally:
        bar.close()
        pipeline.set_progress_bar_config(**previous)


def _print_summary(summary: BatchSummary, out_dir: Path, log: IO[str]) -> None:
    statuses: dict[str, int] = {}
    for record in read_records(out_dir / RESULTS_NAME):
        statuses[record.get("status", "?")] = statuses.get(record.get("status", "?"), 0) + 1
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    print(
        f"visattn batch: {summary.jobs} jobs, {summary.skipped} already done before this run; results: {counts} "
        f"({out_dir / RESULTS_NAME})",
        file=log,
    )
