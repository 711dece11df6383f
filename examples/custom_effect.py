"""Write a visattn effect in a dozen lines and run it on any pipeline (here the offline tiny SD pipeline).

The effect limits self-attention to a window of latent rows around each query, using the grid visattn derives
for every layer (UNet levels differ). It runs on any backend; the pattern is plain tensor code. Its parameters are
fixed once built (one effect may be attached to several pipelines); what it counts while it runs lives in the
run state each attachment makes for it (``new_run``), read back with ``attachment.run_of(effect)``.

    python examples/custom_effect.py --out outputs/custom_effect   # -> outputs/custom_effect/custom_effect.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import visattn
from visattn.effects import AttentionCall, Effect
from visattn.kernels import Pattern
from visattn.tiny import call_kwargs, tiny_pipeline


@dataclass(frozen=True)
class RowWindow(Pattern):
    """Queries attend to keys at most ``rows`` latent rows away (rows of ``width`` tokens)."""

    width: int
    rows: int

    def mask_mod(self, b, h, q_idx, kv_idx):
        return (q_idx // self.width - kv_idx // self.width).abs() <= self.rows

    def cache_key(self):
        return ("row_window", self.width, self.rows)


@dataclass
class Counts:
    """What one attachment of the effect counted: the attention calls it windowed."""

    calls: int = 0


class RowWindowAttention(Effect):
    """Self-attention restricted to nearby rows of the latent grid."""

    roles = ("self",)
    frozen_parameters = True

    def __init__(self, rows: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if rows < 0:
            raise ValueError(f"rows must be >= 0; got {rows}")
        self.rows = rows

    def new_run(self) -> Counts:
        return Counts()

    def apply(self, call: AttentionCall) -> None:
        _, _, width = call.ctx.grid
        call.patterns.append(RowWindow(width, self.rows))
        self.run_of(call.ctx).calls += 1


def main(out_dir: str | Path = "outputs/custom_effect", rows: int = 1) -> list[Path]:
    """Generate with and without the row window, side by side, into ``out_dir/custom_effect.png``; returns the
    written paths. A path ending in ``.png`` is taken as the file itself (what this script once took)."""
    out_dir = Path(out_dir)
    path = out_dir if out_dir.suffix.lower() == ".png" else out_dir / "custom_effect.png"
    pipe = tiny_pipeline("unet")
    plain = pipe(**call_kwargs("unet"))[0][0]
    effect = RowWindowAttention(rows=rows)
    with visattn.attach(pipe, effect) as attachment:
        windowed = pipe(**call_kwargs("unet"))[0][0]
    calls = attachment.run_of(effect).calls
    side_by_side = np.concatenate([plain, windowed], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((side_by_side * 255).round().astype(np.uint8)).save(path)
    change = float(torch.as_tensor(plain - windowed).abs().max())
    print(f"wrote {path} (left: dense, right: {rows}-row window on {calls} calls; max pixel change {change:.4f})")
    return [path]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/custom_effect"), help="output folder")
    parser.add_argument("--rows", type=int, default=1, help="latent rows each query sees on either side")
    args = parser.parse_args()
    main(out_dir=args.out, rows=args.rows)
