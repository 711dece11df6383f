"""``visattn batch JOBS.jsonl --out DIR``: generate many images and videos from a jobs file, resumable, sharded
across processes with ``accelerate launch``."""

from __future__ import annotations

import argparse
import sys

from . import MODEL_HELP, checked_type

_DESCRIPTION = """\
Run the jobs of a JSONL file (one JSON object per line) with visattn attached. A job is a prompt or a
Prompt-to-Prompt edit, with seed, size, frames and effects, e.g.
  {"id": "cat-pag", "prompt": "a cat", "seed": 1, "steps": 30, "effects": [{"type": "pag", "scale": 3}]}
  {"edit": {"source": "a cat riding a bike", "target": "a dog riding a bike"}, "seed": 7}
  {"prompt": "a dog running", "frames": 33, "fps": 16}
Fields: id, prompt | edit, negative_prompt, seed, steps, guidance, height, width, frames, fps, effects.
Effects take a class name or an alias (pag, softpag, seg, stg, neighborhood, radial, decay, extrapolation,
entropy, maps, tgate; see docs/batch.md); ExtrapolationDecay's training length may be given in video frames as
"train_video_frames" (converted with the model's VAE). A video job (frames, radial, train_video_frames) for an
image model is an invalid line, reported by --dry-run too.

Writes ID.png (ID+source.png and ID+target.png for an edit) or ID.webp / ID.mp4 for video pipelines, each
with a JSON sidecar, and results.jsonl with every parameter, the output files and timings. Ids are letters,
digits, '.', '_' and '-', unique ignoring case, so no two jobs write the same file. Run it again on the same
--out to resume: finished jobs are skipped (a file counts only if its sidecar names the same job and
parameters), and files are written atomically, so an interrupted run leaves no partial file. One run per
--out: a second `visattn batch` on a folder in use is refused (the folder's .visattn-batch.lock names the
owner; a dead owner's lock is taken over). Bad lines (any problem with one line) and failing jobs are reported
with their line numbers; the others still run; the exit status is 1 when any job failed or any line was
invalid. Images and video frames above --max-pixels (default 4096x4096, or VISATTN_MAX_PIXELS) are invalid.

Scale out: every process of `accelerate launch` runs a disjoint shard on its own device, e.g.
  accelerate launch --num_processes 8 -m visattn.cli batch jobs.jsonl --out out/ --model ID
(on several machines add --num_machines/--machine_rank/--main_process_ip, with --out on a shared file
system). Each process writes results.rank{N}.jsonl; the main process merges them into results.jsonl. CPU-only
machines: `accelerate launch --multi_gpu --num_processes 2 -m visattn.cli batch ... --device cpu` (or torchrun);
accelerate's --cpu flag alone starts a single process.

Context parallelism: --context-parallel N runs each job on a group of N processes (its denoiser split with
diffusers' ContextParallelConfig(ulysses_degree=N), every process of the group with the job's seed) and shares the
jobs across the world_size / N groups; N must divide the process count. The group's first process writes, e.g.
  torchrun --nproc-per-node 8 -m visattn.cli batch jobs.jsonl --out out/ --model ID --context-parallel 4
(2 groups of 4 GPUs; see docs/parallel.md).
"""


def add_parser(commands) -> None:
    from ..batch.jobs import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, check_max_pixels
    from ..generate import ALLOW_PICKLE_HELP, DEVICES, DTYPES, add_load_arguments

    parser = commands.add_parser(
        "batch",
        help="run a JSONL file of generation and edit jobs (resumable, shards with accelerate launch)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("jobs", metavar="JOBS.jsonl", help="jobs file, one JSON object per line")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (reuse it to resume)")
    parser.add_argument("--model", metavar="ID_OR_DIR", help=MODEL_HELP)
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: each process's GPU, else cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights dtype (default: fp32)")
    parser.add_argument(
        "--video-format",
        choices=("webp", "mp4"),
        default="webp",
        help="videos as animated WebP (default, always available) or MP4 (needs PyAV: pip install av)",
    )
    parser.add_argument(
        "--context-parallel",
        type=int,
        default=1,
        metavar="N",
        help="processes per job (Ulysses degree); must divide the process count (default: 1, data parallel only)",
    )
    parser.add_argument(
        "--max-pixels",
        type=checked_type(int, check_max_pixels),
        metavar="N",
        help=f"largest height*width of a job's images or frames (default: ${MAX_PIXELS_ENV}, else "
        f"{DEFAULT_MAX_PIXELS} = 4096x4096); larger jobs are invalid lines",
    )
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    add_load_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="only validate the file and list the jobs to run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import run_batch
    from ..generate import load_options_from

    summary = run_batch(
        args.jobs,
        args.out,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        video_format=args.video_format,
        progress=not args.quiet,
        dry_run=args.dry_run,
        context_parallel=args.context_parallel,
        max_pixels=args.max_pixels,
        allow_pickle=args.allow_pickle,
        options=load_options_from(args),
    )
    if args.dry_run and summary.process_index == 0:
        # stdout: the ids still to run, one per line, for scripts; the counts go to stderr with the errors.
        for job_id in summary.pending:
            print(job_id)
        print(
            f"visattn batch: {summary.jobs} valid jobs, {len(summary.invalid)} invalid lines, "
            f"{summary.skipped} already done, {len(summary.pending)} to run",
            file=sys.stderr,
        )
        return 1 if summary.invalid else 0
    if summary.results is not None:
        print(summary.results)
    return summary.exit_status
