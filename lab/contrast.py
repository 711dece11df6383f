"""Shape-word contrast for the toy image model: the denoiser must predict worse under the wrong shape word.

A diffusion model is a classifier of its captions: the caption whose denoising error is lowest is the one it
believes (Li et al., 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier"). Read that way, the toy UNet
trained on the denoising loss alone tells a triangle from a star but not a square from a circle: its error is the
same under either word, and it draws one rounded "squircle" for both. A word swap ("square" -> "circle") in
Prompt-to-Prompt (Hertz et al., 2022) then has nothing to change.

This objective makes the word count. Each captioned training sample is denoised twice under the same noise: with
its caption, and with one shape word replaced by another shape (:class:`ShapeWordSwap`). :func:`contrast_loss`
is a logistic loss on the gap between the two errors, relative to the true caption's error, so that it asks the
same of a low-noise sample (small errors) as of a noisy one. The replacement shape is drawn in proportion to how
much its silhouette overlaps the true one (:func:`silhouette_overlap`), so most pairs are the confusable ones
(square and circle) rather than those the model already separates. This objective is this project's; the paper
above supplies the reading of errors as class evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from visattn.toy.data import SHAPES, ShapeSpec, draw_shape


def silhouette_overlap(shapes: Sequence[str] = SHAPES, side: int = 256) -> torch.Tensor:
    """``[S, S]`` intersection over union of the shapes' silhouettes drawn at the same centre and radius."""
    masks = []
    for shape in shapes:
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        draw_shape(ImageDraw.Draw(canvas), ShapeSpec(shape, "red", "large", "center", (side / 2, side / 2), side / 3))
        masks.append(np.asarray(canvas).any(-1))
    overlap = [[(a & b).sum() / (a | b).sum() for b in masks] for a in masks]
    return torch.tensor(np.array(overlap), dtype=torch.float32)


class ShapeWordSwap:
    """Replaces one shape word per caption (token ids of a word-level tokenizer) by another shape's word.

    Args:
        tokenizer: the pipeline's tokenizer; every shape must be a single token of it.
        shapes: the shape words.
    """

    def __init__(self, tokenizer: Any, shapes: Sequence[str] = SHAPES):
        ids = []
        for shape in shapes:
            tokens = tokenizer(shape, add_special_tokens=False).input_ids
            if len(tokens) != 1:
                raise ValueError(f"shape word {shape!r} must be one token of the tokenizer; got {tokens}")
            ids.append(tokens[0])
        self.token_ids = torch.tensor(ids)
        # a shape is never its own replacement; the others weigh by how alike they look
        self.replacement_weights = silhouette_overlap(shapes).fill_diagonal_(0.0)

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(swapped, has_shape)``: ``ids`` (``[N, L]``) with one shape token per row replaced, chosen uniformly
        among the row's shape tokens, and ``[N]`` booleans marking the rows that had one (others are unchanged)."""
        is_shape = (ids[..., None] == self.token_ids).any(-1)
        has_shape = is_shape.any(-1)
        # a uniform choice among a row's shape positions: the largest of random keys on those positions
        keys = torch.rand(ids.shape, generator=generator).masked_fill(~is_shape, -1.0)
        position = keys.argmax(-1)
        current = ids.gather(1, position[:, None])[:, 0]
        shape_index = (current[:, None] == self.token_ids).float().argmax(-1)
        weights = self.replacement_weights[shape_index]
        weights[~has_shape] = 1.0  # rows without a shape word draw something and keep their ids
        replacement = self.token_ids[torch.multinomial(weights, 1, generator=generator)[:, 0]]
        swapped = ids.clone()
        rows = torch.arange(len(ids))[has_shape]
        swapped[rows, position[has_shape]] = replacement[has_shape]
        return swapped, has_shape


def contrast_loss(true_error: torch.Tensor, swapped_error: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean logistic loss ``softplus((e_true - e_swapped) / (temperature * e_true))`` over samples (``[N]`` errors
    each), the denominator not differentiated: 0.69 where the word makes no difference, falling as the swapped
    word's error rises above the true one's by more than ``temperature`` times it."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    gap = (true_error - swapped_error) / (temperature * true_error.detach().clamp(min=1e-8))
    return F.softplus(gap).mean()
