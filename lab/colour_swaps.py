"""Side-by-side Prompt-to-Prompt colour swaps of two toy image models, with each edit's foreground IoU.

    python -m lab colour-swaps BEFORE_DIR AFTER_DIR OUT.png [--labels "before" "after"]

Each row is one held-out colour swap of ``visattn eval`` (same prompts and seeds as its word-swap study); each
model gets two columns, the source and the P2P edit (the authors' injection windows, 0.8 / 0.4).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw

from visattn.effects import PromptToPrompt
from visattn.eval.generation import ImageModel
from visattn.eval.metrics import foreground_iou
from visattn.eval.prompts import word_swaps

SIDE, PAD, HEAD, LINE = 128, 6, 34, 22


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the comparison sheet and print its path; ``argv`` defaults to the command line."""
    parser = argparse.ArgumentParser(prog="python -m lab colour-swaps", description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("out")
    parser.add_argument("--labels", nargs=2, default=("before", "after"))
    parser.add_argument("--swaps", type=int, nargs="+", default=[0, 7, 8, 10, 11, 13, 19, 21], help="swap indices")
    args = parser.parse_args(argv)
    swaps = word_swaps("color", max(args.swaps) + 1)
    width = 4 * SIDE + 7 * PAD
    canvas = Image.new("RGB", (width, HEAD + len(args.swaps) * (SIDE + LINE + PAD)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, (label, path) in enumerate(zip(args.labels, (args.before, args.after))):
        left = PAD + column * (2 * SIDE + 3 * PAD)
        draw.text((left, 6), label, fill=(0, 0, 0))
        draw.text((left, 18), "source | P2P colour swap (foreground IoU)", fill=(90, 90, 90))
        pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        model = ImageModel(pipe, steps=25)
        for row, index in enumerate(args.swaps):
            swap = swaps[index]
            source, edit = model.edit(PromptToPrompt.replace(swap.source, swap.target), index)
            top = HEAD + row * (SIDE + LINE + PAD)
            canvas.paste(Image.fromarray(source).resize((SIDE, SIDE), Image.NEAREST), (left, top))
            canvas.paste(Image.fromarray(edit).resize((SIDE, SIDE), Image.NEAREST), (left + SIDE + PAD, top))
            iou = foreground_iou(source, edit)
            draw.text((left + SIDE + PAD, top + SIDE + 2), f"-> {swap.after}  IoU {iou:.2f}", fill=(0, 0, 0))
            if column == 0:
                words = swap.source.split()
                draw.text((left, top + SIDE + 2), f"{' '.join(words[1:4])} on {words[-2]}", fill=(0, 0, 0))
    canvas.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
