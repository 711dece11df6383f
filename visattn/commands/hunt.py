"""``visattn hunt``: find the attention heads whose perturbation guidance best serves an objective (HeadHunter).

Runs :func:`visattn.guidance.hunt_heads` ("Fine-Grained Perturbation Guidance via Attention Head Selection") and
writes the selected heads as a :class:`visattn.guidance.HeadSet` JSON file (with the search history), which
``HeadSet.load(path).effect(scale)`` or ``HeadPerturbationGuidance(heads=...)`` use. Prints the written path on
stdout; the per-round summary and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..generate import (
    DEVICES,
    DTYPES,
    ParameterError,
    UsageError,
    check_guidance,
    check_positive_int,
    check_seed,
    check_size,
)
from . import MODEL_HELP, checked_type

# The authors' search settings, as in visattn.guidance.head_hunter (not imported here: it pulls in torch, and the
# CLI parses arguments before loading anything heavy; tests/guidance/test_head_hunter.py checks the two agree).
AUTHORS_HEADS_PER_ROUND = 3
AUTHORS_SEARCH_GUIDANCE = 0.0

OBJECTIVE_HELP = (
    "what to maximize: sharpness (mean luminance gradient magnitude: fine detail), contrast (RMS contrast: "
    "standard deviation of luminance), saturation (mean HSV saturation), or your own function as "
    "module:function or path/to/file.py:function taking (images, prompts) and returning a float; images are a "
    "float array [N, H, W, 3] in [0, 1] (default: sharpness)"
)


def _scale(value: Any) -> float:
    if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
        raise ParameterError("scale", value, "must be a finite number > 0 (e.g. 3.0)")
    return value


def _strength(value: Any) -> float:
    if not isinstance(value, float) or not 0.0 < value <= 1.0:
        raise ParameterError("strength", value, "must be in (0, 1]: 1 is PAG's identity map, less is SoftPAG")
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``visattn hunt``."""
    hunt = commands.add_parser(
        "hunt",
        help="search the attention heads whose perturbation guidance maximizes an objective (HeadHunter)",
        description="Greedy HeadHunter search: each round generates the prompts with PAG on the heads chosen so "
        "far plus each remaining candidate head, scores the images with the objective, and keeps the best heads "
        "(3 per round, CFG off, prompt i from seed i: the authors' search settings). "
        "Writes the heads as JSON (HeadSet) and prints its path. With --state, every evaluation is recorded and "
        "an interrupted or extended search resumes without recomputing. Without --model, uses the embedded "
        "default visattn/toy-image.",
    )
    hunt.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="a prompt (repeatable)")
    hunt.add_argument("--objective", default="sharpness", metavar="NAME_OR_FUNCTION", help=OBJECTIVE_HELP)
    hunt.add_argument("--minimize", action="store_true", help="minimize the objective instead of maximizing it")
    rounds = checked_type(int, lambda v: check_positive_int("rounds", v))
    hunt.add_argument("--rounds", type=rounds, default=3, help="search rounds (default: 3; the authors run 5)")
    per_round = checked_type(int, lambda v: check_positive_int("heads-per-round", v))
    hunt.add_argument(
        "--heads-per-round",
        type=per_round,
        default=AUTHORS_HEADS_PER_ROUND,
        help=f"heads added per round, the best-scoring ones (default: {AUTHORS_HEADS_PER_ROUND}, the authors' top_k)",
    )
    hunt.add_argument(
        "--layers",
        nargs="+",
        metavar="ID",
        help="candidate layers: pag_applied_layers identifiers (regex, e.g. mid up_blocks.1) or self/joint "
        "(default: every self and joint attention layer)",
    )
    hunt.add_argument("--state", metavar="FILE", help="JSON file recording the search; resumed if it exists")
    hunt.add_argument(
        "--out", default="heads.json", metavar="FILE", help="where to write the heads (default: heads.json)"
    )
    hunt.add_argument("--model", metavar="ID_OR_DIR", help=MODEL_HELP)
    hunt.add_argument(
        "--seed",
        type=checked_type(int, check_seed),
        action="append",
        help="generation seed for every prompt (repeatable; default: prompt i uses seed i, as the authors)",
    )
    hunt.add_argument("--scale", type=checked_type(float, _scale), default=3.0, help="PAG scale (default: 3.0)")
    hunt.add_argument(
        "--strength", type=checked_type(float, _strength), default=1.0, help="SoftPAG strength (default: 1)"
    )
    steps = checked_type(int, lambda v: check_positive_int("steps", v))
    hunt.add_argument("--steps", type=steps, help="denoising steps (default: the pipeline's own default)")
    hunt.add_argument(
        "--guidance",
        type=checked_type(float, check_guidance),
        default=AUTHORS_SEARCH_GUIDANCE,
        help="CFG scale during the search (default: 0, CFG off, as the authors search)",
    )
    size_help = "pixels, a multiple of 8 (default: the pipeline's own default)"
    hunt.add_argument("--height", type=checked_type(int, lambda v: check_size("height", v)), help=size_help)
    hunt.add_argument("--width", type=checked_type(int, lambda v: check_size("width", v)), help=size_help)
    hunt.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda when available, else cpu")
    hunt.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights dtype (default: fp32)")
    hunt.add_argument("--quiet", action="store_true", help="no progress bar and no round summary")
    hunt.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..defaults import DEFAULT_MODEL
    from ..generate import call_arguments, check_dtype, load_pipeline, resolve_device
    from ..guidance.head_hunter import HuntStateError, hunt_heads, resolve_objective
    from ..guidance.head_sets import HeadSet

    try:
        objective, objective_name = resolve_objective(args.objective, minimize=args.minimize)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    pipe = load_pipeline(args.model, resolve_device(args.device), check_dtype(args.dtype))
    try:
        candidates = HeadSet.all_heads(pipe, args.layers)
    except ValueError as exc:
        raise UsageError(f"--layers: {exc}") from None
    call = call_arguments(
        pipe,
        {
            "num_inference_steps": args.steps,
            "height": args.height,
            "width": args.width,
        },
    )
    try:
        result = hunt_heads(
            pipe,
            args.prompt,
            objective,
            candidates=candidates,
            rounds=args.rounds,
            scale=args.scale,
            strength=args.strength,
            seeds=args.seed,
            heads_per_round=args.heads_per_round,
            guidance_scale=args.guidance,
            state_path=args.state,
            progress=not args.quiet,
            model_name=args.model or DEFAULT_MODEL,
            **call,
        )
    except HuntStateError as exc:
        raise UsageError(str(exc)) from None
    result.heads.metadata["objective"] = objective_name
    path = result.heads.save(args.out)
    if not args.quiet:
        print(f"baseline (no guidance): {objective_name} = {result.baseline_score:.6g}", file=sys.stderr)
        for record in result.history:
            for layer, head in record.heads:
                score = record.scores[(layer, head)]
                print(f"round {record.round}: {layer} head {head}: {objective_name} = {score:.6g}", file=sys.stderr)
    print(path)
    return 0
