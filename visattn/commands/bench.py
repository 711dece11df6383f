"""``visattn bench``: time sparse attention against dense SDPA, FlexAttention, xformers and NATTEN; with
``--dispatch``, time what visattn's hooks cost on tiny denoisers instead."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmark sparse attention against dense and FlexAttention",
        description="Times every attention method on real models' layouts (Flux 1024px, SDXL, Wan2.1 480p x 81 "
        "frames, HunyuanVideo 720p) and writes JSON, a markdown table and a PNG chart. Reports ms, effective "
        "TFLOP/s (kept pairs only), speedup over dense, density efficiency and speedup over FlexAttention. "
        "--quick runs CPU-sized layouts (for CI). --dispatch times visattn's own overhead instead: stock vs attached "
        "forwards of tiny denoisers (no effect, a closed schedule, each effect), per forward and per attention call, "
        "and writes dispatch-<date>.json and .md.",
    )
    parser.add_argument("--quick", action="store_true", help="small CPU-sized configurations")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="only these model layouts")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="only these methods")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (median; default 10, 200 with --dispatch)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3, 5 with --dispatch)")
    parser.add_argument("--backward", action="store_true", help="also time each method's backward pass")
    parser.add_argument("--end-to-end", action="store_true", help="also time one Wan2.1-1.3B transformer forward")
    parser.add_argument("--tgate", action="store_true", help="also time SD 1.5 with and without TGATE caching")
    dispatch = parser.add_argument_group("dispatch overhead (--dispatch)")
    dispatch.add_argument(
        "--dispatch", action="store_true", help="time visattn's hooks on tiny denoisers (CPU) instead of attention"
    )
    dispatch.add_argument(
        "--classes", nargs="+", metavar="CLASS", help="tiny denoiser classes (default: a UNet, SD3, Flux, Wan, ...)"
    )
    dispatch.add_argument("--variants", nargs="+", metavar="VARIANT", help="only these variants (stock always runs)")
    dispatch.add_argument("--threads", type=int, default=1, help="torch threads for the run (default 1)")
    dispatch.add_argument("--rounds", type=int, default=5, help="interleaved blocks the timed runs are split into")
    dispatch.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: the timing thread's CPU time, which leaves out waits for a core on "
        "a shared machine",
    )
    parser.add_argument("--out", default="benchmarks/results", metavar="DIR", help="output folder")
    parser.add_argument(
        "--name", default=None, help="file name stem (default: bench, bench-quick, or dispatch-<date> with --dispatch)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


#: options of the attention benchmark that mean nothing to --dispatch, and --dispatch's own options
_KERNEL_OPTIONS = {
    "quick": False,
    "models": None,
    "methods": None,
    "backward": False,
    "end_to_end": False,
    "tgate": False,
}
_DISPATCH_OPTIONS = {"classes": None, "variants": None, "threads": 1, "rounds": 5, "clock": "wall"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run(args: argparse.Namespace) -> int:
    if args.dispatch:
        return run_dispatch(args)
    from .. import bench
    from ..bench.end_to_end import tgate_speedup, wan_forward
    from ..generate import UsageError

    given = [_flag(name) for name, default in _DISPATCH_OPTIONS.items() if getattr(args, name) != default]
    if given:
        raise UsageError(f"{', '.join(given)} only apply with --dispatch")
    args.repeats = 10 if args.repeats is None else args.repeats
    args.warmup = 3 if args.warmup is None else args.warmup
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0; got {args.repeats} and {args.warmup}")
    try:
        configs = bench.configurations(quick=args.quick, models=args.models)
        results = bench.run_benchmark(
            configs,
            methods=args.methods,
            repeats=args.repeats,
            warmup=args.warmup,
            tile=(16, 16) if args.quick else (128, 128),
            progress=not args.quiet,
            backward=args.backward,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    extra = {}
    if args.end_to_end:
        extra["end_to_end"] = wan_forward(quick=args.quick, progress=not args.quiet)
    if args.tgate:
        extra["tgate"] = tgate_speedup(quick=args.quick, progress=not args.quiet)
    command = "visattn bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    name = args.name or ("bench-quick" if args.quick else "bench")
    paths = bench.write_report(results, configs, args.out, command=command.strip(), name=name, extra=extra)
    for path in paths.values():
        print(path)
    return 0


def run_dispatch(args: argparse.Namespace) -> int:
    """``visattn bench --dispatch``: print the dispatch tables, write JSON and markdown, print their paths."""
    from ..bench.dispatch import dispatch_benchmark, header, write_dispatch_report
    from ..generate import UsageError

    given = [_flag(name) for name, default in _KERNEL_OPTIONS.items() if getattr(args, name) != default]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be combined with --dispatch (it times tiny denoisers on CPU)")
    try:
        report = dispatch_benchmark(
            args.classes,
            variants=args.variants,
            repeats=200 if args.repeats is None else args.repeats,
            warmup=5 if args.warmup is None else args.warmup,
            rounds=args.rounds,
            threads=args.threads,
            progress=not args.quiet,
            clock=args.clock,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    command = "visattn bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else ["--dispatch"])
    paths = write_dispatch_report(report, args.out, command=command.strip(), name=args.name)
    print(f"{header(report)}\n\n{report.markdown()}")
    for path in paths.values():
        print(path)
    return 0
