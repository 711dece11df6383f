"""The ``visattn`` command line: ``visattn info``, ``visattn generate PROMPT``, ``visattn --version``, and the
commands in :mod:`visattn.commands` (one module each: ``edit``, ``hunt``, ``bench``, ...).

This module only parses arguments and dispatches; the work lives in :mod:`visattn.generate` (the generation
job), :mod:`visattn.images` (files and metadata) and the command modules. :func:`main` returns the exit status
instead of exiting, so it can be called from Python and tests: 0 on success, 2 for bad arguments or a model that
cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .commands import MODEL_HELP, checked_type
from .generate import (
    ALLOW_PICKLE_HELP,
    DEVICES,
    DTYPES,
    UsageError,
    add_load_arguments,
    check_guidance,
    check_positive_int,
    check_seed,
    check_size,
)
from .info import collect_info, format_info

EXIT_USAGE = 2  # argparse's own exit status for bad arguments; a model that cannot be loaded is a bad argument too


def _run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


# --- generate -----------------------------------------------------------------------------------------------------
def _run_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    paths = generate(
        args.prompt,
        model=args.model,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        num_images=args.num_images,
        out_dir=args.out,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
        allow_pickle=args.allow_pickle,
        variant=args.variant,
        scheduler=args.scheduler,
        loras=args.lora,
        offload=args.offload,
    )
    # Paths only, one per line, on stdout: scripts can consume them; progress and logs stay on stderr.
    for path in paths:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``visattn`` argument parser with its ``info`` and ``generate`` subcommands."""
    parser = argparse.ArgumentParser(prog="visattn", description="Attention control for diffusers models.")
    parser.add_argument("--version", action="version", version=f"visattn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, devices and attention backends")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(run=_run_info)

    gen = commands.add_parser(
        "generate",
        help="generate images, saved with their parameters",
        description="Generate images with visattn attached. Writes PNGs (parameters in PNG text chunks) and JSON "
        "sidecars, and prints the written paths. Without --model, uses the embedded default visattn/toy-image, a "
        "small model trained on shapes that knows only its caption grammar: one to three objects joined by 'and', "
        "then 'on a BACKGROUND background'; an object is 'a SIZE COLOUR SHAPE PLACE' with SIZE small|large, "
        "COLOUR red|green|blue|yellow|purple|orange, SHAPE circle|square|triangle|star, PLACE 'in the center' or "
        "'at the' top left|top|top right|left|right|bottom left|bottom|bottom right, BACKGROUND "
        "black|white|gray|blue|green. Example: 'a large green triangle in the center on a black background'. "
        "Words outside the grammar are named in a warning.",
    )
    gen.add_argument("prompt", metavar="PROMPT", help="the text prompt")
    gen.add_argument("--model", metavar="ID_OR_DIR", help=MODEL_HELP)
    gen.add_argument("--negative-prompt", metavar="TEXT", help="negative prompt, for pipelines that take one")
    gen.add_argument("--seed", type=checked_type(int, check_seed), default=0, help="base seed; image i uses seed+i")
    steps = checked_type(int, lambda v: check_positive_int("steps", v))
    gen.add_argument("--steps", type=steps, help="denoising steps (default: the pipeline's own default)")
    gen.add_argument(
        "--guidance", type=checked_type(float, check_guidance), help="guidance scale (default: pipeline's)"
    )
    size_help = "pixels, a multiple of 8 (default: the pipeline's own default)"
    gen.add_argument("--height", type=checked_type(int, lambda v: check_size("height", v)), help=size_help)
    gen.add_argument("--width", type=checked_type(int, lambda v: check_size("width", v)), help=size_help)
    count = checked_type(int, lambda v: check_positive_int("num_images", v))
    gen.add_argument("--num-images", type=count, default=1, help="how many images (default: 1)")
    gen.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: outputs/)")
    gen.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda when available, else cpu")
    gen.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights dtype (default: fp32)")
    gen.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    add_load_arguments(gen)
    gen.add_argument("--quiet", action="store_true", help="hide the denoising progress bar")
    gen.set_defaults(run=_run_generate)

    import importlib

    from .commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        # Each module's ``add_parser(commands)`` registers one subcommand and sets ``run`` on its namespace.
        importlib.import_module(f".commands.{name}", __package__).add_parser(commands)
    return parser


class _NoTorchvisionFallbackNotice(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its PIL version without torchvision.

    diffusers' Stable Diffusion pipelines import ``CLIPImageProcessor`` (for the safety checker's feature
    extractor), so without torchvision, which visattn does not need, every command would start with two lines
    about it. The PIL fallback is what the pipelines use anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in str(record.msg)


_NO_TORCHVISION_NOTICE = _NoTorchvisionFallbackNotice()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``visattn`` command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse errors: report the status instead of exiting
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Installed before any command imports diffusers; the logger is transformers' own (it does not propagate).
    logging.getLogger("transformers.utils.import_utils").addFilter(_NO_TORCHVISION_NOTICE)  # once: a set-like add
    try:
        return args.run(args)
    except UsageError as exc:
        # One line, no traceback: these are problems with the request, not bugs.
        print(f"visattn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"visattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
