"""``visattn edit``: Prompt-to-Prompt edits of generated or real images, with per-word heatmaps."""

from __future__ import annotations

import argparse

from ..edit import DEFAULT_INVERSION, INVERSIONS
from . import MODEL_HELP


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "edit",
        help="edit an image with Prompt-to-Prompt (word swap, refine, reweight), with heatmaps",
        description="A prompt edit (--source/--target, or --reweight WORD=SCALE) generates the source and the edit "
        "from the same noise; an image edit (--image) inverts the image first and also writes its "
        "reconstruction. Writes PNGs with their parameters and per-word heatmaps, and prints the paths.",
    )
    parser.add_argument("--source", required=True, metavar="PROMPT", help="the source prompt")
    parser.add_argument("--target", metavar="PROMPT", help="the edited prompt (omit for a pure reweight)")
    parser.add_argument("--reweight", nargs="+", default=[], metavar="WORD=SCALE", help="scale words' attention")
    parser.add_argument("--mode", choices=("auto", "replace", "refine"), default="auto", help="edit kind")
    parser.add_argument("--image", metavar="PNG", help="a real image to invert and edit (SD-family pipelines)")
    parser.add_argument(
        "--inversion",
        choices=INVERSIONS,
        default=DEFAULT_INVERSION,
        help=f"for --image (default: {DEFAULT_INVERSION}, as the demo; it keeps the background best)",
    )
    parser.add_argument("--local-blend", nargs="+", metavar="WORD", help="only the region of these words changes")
    parser.add_argument(
        "--blend-threshold",
        type=float,
        default=0.3,
        help="with --local-blend: the words' normalized maps above it may change (default 0.3, the authors'; lower: "
        "a larger region)",
    )
    parser.add_argument(
        "--blend-subtract",
        nargs="+",
        metavar="WORD",
        help="with --local-blend: these words' region keeps the source (the authors' substruct_words)",
    )
    parser.add_argument(
        "--blend-subtract-threshold",
        type=float,
        default=0.3,
        metavar="X",
        help="with --blend-subtract: their normalized maps above it keep the source (default 0.3, the authors')",
    )
    parser.add_argument(
        "--blend-radius",
        type=int,
        default=1,
        metavar="N",
        help="with --local-blend: the words' maps are max-pooled over (2N+1) x (2N+1) cells, of the authors' 16 x 16 "
        "maps ('prediction': latent cells; default 1, the authors'; larger: a region with wider margins)",
    )
    parser.add_argument(
        "--blend-variant",
        choices=("authors", "prediction"),
        default="authors",
        help="with --local-blend: 'authors' blends the latents after each step (their notebooks); 'prediction' "
        "blends the model's prediction from the first step, so nothing outside the region changes at all",
    )
    parser.add_argument(
        "--blend-start",
        type=float,
        metavar="F",
        help="with --local-blend: the fraction of the schedule before the blend acts (default: 0.2 for 'authors', as "
        "theirs; 'prediction' needs 0)",
    )
    parser.add_argument("--cross-steps", type=float, default=0.8, help="fraction with cross-attention injection")
    parser.add_argument("--self-steps", type=float, default=0.4, help="fraction with self-attention injection")
    parser.add_argument("--model", metavar="ID_OR_DIR", help=MODEL_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared initial noise")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    parser.add_argument("--height", type=int, help="pixels, a multiple of 8")
    parser.add_argument("--width", type=int, help="pixels, a multiple of 8")
    parser.add_argument("--no-heatmaps", action="store_true", help="skip the per-word heatmaps")
    parser.add_argument("--out", default="edits", metavar="DIR", help="output folder (default: edits/)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..edit import edit, parse_weights

    written = edit(
        args.source,
        args.target,
        reweight=parse_weights(args.reweight),
        mode=args.mode,
        image=args.image,
        inversion=args.inversion,
        local_blend=args.local_blend,
        blend_threshold=args.blend_threshold,
        blend_subtract=args.blend_subtract,
        blend_subtract_threshold=args.blend_subtract_threshold,
        blend_radius=args.blend_radius,
        blend_start=args.blend_start,
        blend_variant=args.blend_variant,
        cross_steps=args.cross_steps,
        self_steps=args.self_steps,
        model=args.model,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        out_dir=args.out,
        heatmaps=not args.no_heatmaps,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
    )
    for key in ("source", "edit", "reconstruction", "maps"):
        if key in written:
            print(written[key])
    return 0
