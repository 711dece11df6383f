"""Sparse attention and length extrapolation on the toy video model: neighborhood, radial, decay.

Runs offline on a CPU in seconds, on the trained toy-world video model that ships with visattn
(``visattn/toy-video``: a diffusers ``WanPipeline``, the same class as Wan2.1-T2V-1.3B, trained on 9-frame clips
of 32 x 32 px moving shapes; see ``wan_radial_extrapolation.py`` for the real model). The clip is generated at
twice the length the model was trained on (18 frames instead of 9), once densely and once with each effect:

* :class:`~visattn.effects.NeighborhoodAttention`: each latent token attends to a 3-D window (frames x rows x
  columns) around itself (Hassani et al. 2023);
* :class:`~visattn.effects.RadialAttention`: attention density halves with every doubling of the frame
  distance (Li et al. 2025), with the first steps and the first layer dense;
* :class:`~visattn.effects.ExtrapolationDecay`: keys outside each query's training-length window get half
  their weight (UltraViCo).

For the two sparse patterns it prints the exact fraction of query-key pairs kept and of 16 x 16 tiles a
block-sparse kernel would still visit (:func:`visattn.kernels.density`) on this clip's latent grid, and for every
effect how far the clip moved from the dense one. Clips are written as animated WebP, plus one PNG sheet.

    python examples/toy_sparse_attention.py --out outputs/toy_sparse --steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import visattn
from visattn.charts import image_grid
from visattn.defaults import TOY_VIDEO_MODEL, load_embedded_pipeline
from visattn.effects import ExtrapolationDecay, NeighborhoodAttention, RadialAttention
from visattn.frames import frame_rounding_quieted, num_frames_argument
from visattn.kernels import NeighborhoodPattern, RadialPattern, density
from visattn.toy.analyze import motion_continuity, track
from visattn.toy.models import VIDEO_FRAMES, VIDEO_SIZE

PROMPT = "a red circle moving right on a black background"
FRAMES = 2 * VIDEO_FRAMES  # twice the training length
KERNEL = (3, 3, 3)  # neighborhood window: latent frames x rows x columns
TILE = (16, 16)  # query x key tile of a block-sparse kernel, for the density printout (the grid is tiny)
VIEW_SIZE = 96


def latent_grid(pipe, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The transformer's token grid ``(frames, height, width)`` for a Wan clip of ``frames`` frames: the VAE
    compresses time and space, then the transformer patchifies."""
    patch_t, patch_h, patch_w = pipe.transformer.config.patch_size
    spatial = pipe.vae_scale_factor_spatial
    latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    return latent_frames // patch_t, height // spatial // patch_h, width // spatial // patch_w


def to_pil(frames: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in frames]


def main(out_dir: str | Path = "outputs/toy_sparse", steps: int = 20, seed: int = 0) -> list[Path]:
    """Generate the dense and the three modified videos into ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_embedded_pipeline(TOY_VIDEO_MODEL)
    pipe.set_progress_bar_config(disable=True)
    grid = latent_grid(pipe, FRAMES, VIDEO_SIZE, VIDEO_SIZE)
    train_frames = latent_grid(pipe, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE)[0]
    print(f"latent grid at {FRAMES} frames: {grid} (frames, rows, columns); trained for {train_frames} latent frames")

    # How sparse each pattern is on this grid. The patterns are the ones the effects build for Wan's
    # self-attention (latent tokens only; Wan's text sits in separate cross-attention layers).
    for name, pattern in (
        ("neighborhood", NeighborhoodPattern(grid, kernel_size=KERNEL)),
        ("radial", RadialPattern(grid)),
    ):
        stats = density(pattern, grid, tile=TILE)
        print(f"{name:12s} keeps {stats.kept_fraction:.1%} of query-key pairs, {stats.tile_fraction:.1%} of tiles")

    variants = {
        "dense": [],
        "neighborhood": [NeighborhoodAttention(kernel_size=KERNEL, layers="self")],
        # Dense for the first 24% of the steps and in the first attention layer, as the authors run Wan.
        "radial": [RadialAttention(dense_steps=0.24, dense_layers=1)],
        "decay": [ExtrapolationDecay(train_frames=train_frames, factor=0.5)],
    }
    videos: dict[str, np.ndarray] = {}
    written: list[Path] = []
    for name, effects in variants.items():
        # The toy VAE does not compress time, and WanPipeline then adds a frame to any count it is given:
        # num_frames_argument asks for the one that yields FRAMES.
        with visattn.attach(pipe, *effects), frame_rounding_quieted(pipe):
            videos[name] = pipe(
                PROMPT,
                num_frames=num_frames_argument(pipe, FRAMES),
                height=VIDEO_SIZE,
                width=VIDEO_SIZE,
                num_inference_steps=steps,
                max_sequence_length=32,
                output_type="np",
                generator=torch.Generator().manual_seed(seed),
            ).frames[0]
        path = out_dir / f"{name}.webp"
        frames = to_pil(videos[name])
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // 8, loop=0, lossless=True)
        written.append(path)
        # The toy world knows the right answer: the red circle should move right in every frame pair.
        continuity = motion_continuity(track(frames, "red"), "right", VIDEO_SIZE)
        change = float(np.abs(videos[name] - videos["dense"]).mean())
        print(
            f"wrote {path}; motion continuity {continuity:.2f}"
            + ("" if name == "dense" else f"; mean change from the dense video {change:.2e}")
        )

    # One sheet: a labelled row per variant, every 2nd frame.
    sheet = image_grid(
        [to_pil(video[::2]) for video in videos.values()],
        row_labels=list(videos),
        title=f"{PROMPT} (every 2nd frame)",
        cell=VIEW_SIZE,
        pad=2,
    )
    path = out_dir / "sheet.png"
    sheet.save(path)
    written.append(path)
    print(f"wrote {path} (rows: {', '.join(videos)}; every 2nd frame)")
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_sparse"), help="output folder")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(out_dir=args.out, steps=args.steps, seed=args.seed)
