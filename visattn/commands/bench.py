"""``visattn bench``: time sparse attention against dense SDPA, FlexAttention, xformers and NATTEN."""

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
        "--quick runs CPU-sized layouts (for CI).",
    )
    parser.add_argument("--quick", action="store_true", help="small CPU-sized configurations")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="only these model layouts")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="only these methods")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median; default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--backward", action="store_true", help="also time each method's backward pass")
    parser.add_argument("--end-to-end", action="store_true", help="also time one Wan2.1-1.3B transformer forward")
    parser.add_argument("--tgate", action="store_true", help="also time SD 1.5 with and without TGATE caching")
    parser.add_argument("--out", default="benchmarks/results", metavar="DIR", help="output folder")
    parser.add_argument("--name", default=None, help="file name stem (default: bench or bench-quick)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench
    from ..bench.end_to_end import tgate_speedup, wan_forward
    from ..generate import UsageError

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
