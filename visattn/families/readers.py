"""Latent-grid readers: ``(frames, height, width)`` of the tokens self-attention sees, from a forward call.

Most denoisers patchify a latent tensor whose axes the family's ``layout`` names; packed-token models (Flux,
Qwen-Image, ...) carry the grid in another argument, read by a named reader below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .base import Family

Grid = tuple[int, int, int]


def _config(model: torch.nn.Module, attribute: str | None) -> Any:
    if attribute is None:
        return None
    return getattr(getattr(model, "config", None), attribute, None)


def _patches(family: Family, model: torch.nn.Module) -> tuple[int, int, int]:
    """``(t, h, w)`` patch sizes from the model's config (1 where the config has none)."""
    patch = _config(model, family.patch)
    patch_t = _config(model, family.patch_t)
    if isinstance(patch, (tuple, list)):
        sizes = [int(p) for p in patch]
        if len(sizes) == 3:
            return sizes[0], sizes[1], sizes[2]
        if len(sizes) == 2:
            return int(patch_t or 1), sizes[0], sizes[1]
        patch = sizes[0]
    p = int(patch) if isinstance(patch, int) and patch > 0 else 1
    pt = int(patch_t) if isinstance(patch_t, int) and patch_t > 0 else 1
    return pt, p, p


def _spatial(family: Family, model: torch.nn.Module, sample: torch.Tensor) -> Grid | None:
    layout = family.layout
    if layout == "auto":
        layout = {4: "BCHW", 5: "BCFHW"}.get(sample.ndim)
    pt, ph, pw = _patches(family, model)
    if layout == "BCHW" and sample.ndim == 4:
        return (1, -(-sample.shape[2] // ph), -(-sample.shape[3] // pw))
    if layout == "BCFHW" and sample.ndim == 5:
        return (-(-sample.shape[2] // pt), -(-sample.shape[3] // ph), -(-sample.shape[4] // pw))
    if layout == "BFCHW" and sample.ndim == 5:
        return (-(-sample.shape[1] // pt), -(-sample.shape[3] // ph), -(-sample.shape[4] // pw))
    if layout == "BFHWC" and sample.ndim == 5:
        return (-(-sample.shape[1] // pt), -(-sample.shape[2] // ph), -(-sample.shape[3] // pw))
    return None


def _position_ids(ids: Any, columns: tuple[int, ...], rows: int | None = None) -> Grid | None:
    """The grid of packed tokens from their position ids (``[N, axes]`` or ``[B, N, axes]``).

    Each axis' size is its number of distinct positions, which holds whatever offset or scale a model gives its
    ids; ``rows`` keeps only the last rows (the image tokens of a sequence whose ids start with the text's).
    """
    if not isinstance(ids, torch.Tensor) or ids.ndim not in (2, 3):
        return None
    ids = ids[0] if ids.ndim == 3 else ids
    if rows is not None:
        ids = ids[-rows:]
    sizes = [int(torch.unique(ids[:, c]).numel()) for c in columns]
    if math.prod(sizes) != ids.shape[0]:
        return None  # not a full grid (several images, or ids that are not a product of axes)
    return (1, sizes[0], sizes[1]) if len(sizes) == 2 else (sizes[0], sizes[1], sizes[2])


def img_ids(family, model, sample, kwargs) -> Grid | None:
    """Flux and its kin: packed latents carry their (row, column) in ``img_ids[..., 1:3]``."""
    return _position_ids(kwargs.get("img_ids"), (1, 2))


def image_position_ids(family, model, sample, kwargs) -> Grid | None:
    """Krea 2: ``position_ids`` of ``[text, image]`` rows ``(t, h, w)``; the image rows are the last ``N``."""
    rows = sample.shape[1] if isinstance(sample, torch.Tensor) and sample.ndim == 3 else None
    return _position_ids(kwargs.get("position_ids"), (1, 2), rows=rows)


def img_shapes(family, model, sample, kwargs) -> Grid | None:
    """Qwen-Image: ``img_shapes`` lists, per sample, the ``(frames, height, width)`` of each image; the first is
    the generated one."""
    return _first_grid(kwargs.get("img_shapes"), last=False)


def img_shapes_last(family, model, sample, kwargs) -> Grid | None:
    """Qwen-Image 2.1: per sample, condition images come first and the generated image last."""
    return _first_grid(kwargs.get("img_shapes"), last=True)


def _first_grid(shapes: Any, last: bool) -> Grid | None:
    """The ``(frames, height, width)`` triple of the first sample, first or last image."""
    if isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)):
        first = shapes[0]
        if first and isinstance(first[0], (list, tuple)):  # one list of images per sample
            first = first[-1] if last else first[0]
        if len(first) == 3 and all(isinstance(x, int) for x in first):
            return (int(first[0]), int(first[1]), int(first[2]))
    return None


def frames_height_width(family, model, sample, kwargs) -> Grid | None:
    """LTX-Video: packed tokens with the latent ``num_frames``, ``height`` and ``width`` given as arguments."""
    sizes = [kwargs.get(name) for name in ("num_frames", "height", "width")]
    if all(isinstance(s, int) for s in sizes):
        pt, ph, pw = _patches(family, model)
        return (sizes[0] // pt, sizes[1] // ph, sizes[2] // pw)
    return None


READERS: dict[str, Callable[..., Grid | None]] = {
    "img_ids": img_ids,
    "image_position_ids": image_position_ids,
    "img_shapes": img_shapes,
    "img_shapes_last": img_shapes_last,
    "frames_height_width": frames_height_width,
}


def read_grid(family: Family, model: torch.nn.Module, sample: torch.Tensor, args: tuple, kwargs: dict) -> Grid | None:
    """The latent grid of one forward call, or ``None`` when the family's facts cannot tell it."""
    if family.grid_reader is not None:
        return READERS[family.grid_reader](family, model, sample, kwargs)
    return _spatial(family, model, sample)
