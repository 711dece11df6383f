"""Latent-grid readers: ``(frames, height, width)`` of the tokens self-attention sees, from a forward call.

Most denoisers patchify a latent tensor whose axes the family's ``layout`` names; packed-token models (Flux,
Qwen-Image, ...) carry the grid in another argument, read by a named reader below.
"""

from __future__ import annotations

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
    return None


def _position_ids(ids: Any, columns: tuple[int, int, int] | tuple[int, int]) -> Grid | None:
    """The grid of packed tokens from their integer position ids (``[N, axes]`` or ``[B, N, axes]``)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim not in (2, 3):
        return None
    ids = ids[0] if ids.ndim == 3 else ids
    sizes = [int(ids[:, c].max() - ids[:, c].min()) + 1 for c in columns]
    return (1, sizes[0], sizes[1]) if len(sizes) == 2 else (sizes[0], sizes[1], sizes[2])


def flux_ids(model, sample, args, kwargs) -> Grid | None:
    """Flux: packed latents carry their (row, column) in ``img_ids[:, 1:]``."""
    return _position_ids(kwargs.get("img_ids"), (1, 2))


def flux2_ids(model, sample, args, kwargs) -> Grid | None:
    """Flux.2: ``img_ids`` are ``(t, h, w, l)`` coordinates; the grid is the (h, w) extent."""
    return _position_ids(kwargs.get("img_ids"), (1, 2))


def img_shapes(model, sample, args, kwargs) -> Grid | None:
    """Qwen-Image: ``img_shapes`` lists ``(frames, height, width)`` per sample (the first is the generated image)."""
    shapes = kwargs.get("img_shapes")
    while isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)):
        shapes = shapes[0]
    if isinstance(shapes, (list, tuple)) and len(shapes) == 3:
        return tuple(int(s) for s in shapes)  # type: ignore[return-value]
    return None


def frames_height_width(model, sample, args, kwargs) -> Grid | None:
    """LTX-Video: packed tokens with the latent ``num_frames``, ``height`` and ``width`` given as arguments."""
    sizes = [kwargs.get(name) for name in ("num_frames", "height", "width")]
    if all(isinstance(s, int) for s in sizes):
        pt, ph, pw = _patches_from(model)
        return (sizes[0] // pt, sizes[1] // ph, sizes[2] // pw)
    return None


def _patches_from(model) -> tuple[int, int, int]:
    config = getattr(model, "config", None)
    p = getattr(config, "patch_size", 1) or 1
    pt = getattr(config, "patch_size_t", 1) or 1
    return int(pt), int(p), int(p)


READERS: dict[str, Callable[..., Grid | None]] = {
    "flux_ids": flux_ids,
    "flux2_ids": flux2_ids,
    "img_shapes": img_shapes,
    "frames_height_width": frames_height_width,
}


def read_grid(family: Family, model: torch.nn.Module, sample: torch.Tensor, args: tuple, kwargs: dict) -> Grid | None:
    """The latent grid of one forward call, or ``None`` when the family's facts cannot tell it."""
    if family.grid_reader is not None:
        return READERS[family.grid_reader](model, sample, args, kwargs)
    return _spatial(family, model, sample)
