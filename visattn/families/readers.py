"""How to read a denoiser's forward call: the latent grid, and token counts the model derives by rules of its own.

Most denoisers patchify a latent tensor whose axes the family's ``layout`` names; packed-token models (Flux,
Qwen-Image, ...) carry the grid in another argument, read by a named reader below (:data:`READERS`). Counts of
tokens that are neither grid nor text, where the model computes them by a rule of its own, are named counters
(:data:`TOKEN_COUNTERS`).
"""

from __future__ import annotations

import inspect
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
    if layout == "BNCFHW":
        # Items along frames, as :func:`items_along_time` reads them; a 5-D input is one item.
        if sample.ndim == 6:
            sample = sample.transpose(1, 2).flatten(2, 3)
        layout = "BCFHW"
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


# The last position-id tensor read (held, so its identity cannot pass to another tensor), what was asked of it, a
# copy of its values and its grid: pipelines pass the same ids at every step, and the same values again at the next
# generation of the same size; counting distinct positions (torch.unique) costs more than the rest of the denoiser
# hook.
_LAST_IDS: list = [None, None, None, None]


def _position_ids(ids: Any, columns: tuple[int, ...], rows: int | None = None) -> Grid | None:
    """The grid of packed tokens from their position ids (``[N, axes]`` or ``[B, N, axes]``).

    Each axis' size is its number of distinct positions, which holds whatever offset or scale a model gives its
    ids; ``rows`` keeps only the last rows (the image tokens of a sequence whose ids start with the text's).
    """
    if not isinstance(ids, torch.Tensor) or ids.ndim not in (2, 3):
        return None
    asked = (ids._version, columns, rows)
    last, last_asked, values, grid = _LAST_IDS
    if last is ids and last_asked == asked:
        return grid
    if not (
        values is not None
        and last_asked[1:] == asked[1:]
        and values.shape == ids.shape
        and values.dtype == ids.dtype
        and values.device == ids.device
        and torch.equal(values, ids)
    ):
        # The ids' values are new (the first call of a generation of another size): count their positions. Ids of
        # the same values as the last ones (the next generation's, made again by the pipeline) have their grid.
        grid = _count_positions(ids, columns, rows)
        values = ids.detach().clone()
    _LAST_IDS[:] = [ids, asked, values, grid]
    return grid


def _count_positions(ids: torch.Tensor, columns: tuple[int, ...], rows: int | None) -> Grid | None:
    ids = ids[0] if ids.ndim == 3 else ids
    if rows is not None:
        ids = ids[-rows:]
    sizes = [int(torch.unique(ids[:, c]).numel()) for c in columns]
    if math.prod(sizes) != ids.shape[0]:
        return None  # not a full grid (several images, or ids that are not a product of axes)
    return (1, sizes[0], sizes[1]) if len(sizes) == 2 else (sizes[0], sizes[1], sizes[2])


def img_ids(family, model, sample, args, kwargs) -> Grid | None:
    """Flux and its kin: packed latents carry their (row, column) in ``img_ids[..., 1:3]``."""
    return _position_ids(kwargs.get("img_ids"), (1, 2))


def image_position_ids(family, model, sample, args, kwargs) -> Grid | None:
    """Krea 2: ``position_ids`` of ``[text, image]`` rows ``(t, h, w)``; the image rows are the last ``N``."""
    rows = sample.shape[1] if isinstance(sample, torch.Tensor) and sample.ndim == 3 else None
    return _position_ids(kwargs.get("position_ids"), (1, 2), rows=rows)


def img_shapes(family, model, sample, args, kwargs) -> Grid | None:
    """Qwen-Image: ``img_shapes`` lists, per sample, the ``(frames, height, width)`` of each image; the first is
    the generated one."""
    return _first_grid(kwargs.get("img_shapes"), last=False)


def img_shapes_last(family, model, sample, args, kwargs) -> Grid | None:
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


def frames_height_width(family, model, sample, args, kwargs) -> Grid | None:
    """LTX-Video: packed tokens with the latent ``num_frames``, ``height`` and ``width`` given as arguments."""
    sizes = [kwargs.get(name) for name in ("num_frames", "height", "width")]
    if all(isinstance(s, int) for s in sizes):
        pt, ph, pw = _patches(family, model)
        return (sizes[0] // pt, sizes[1] // ph, sizes[2] // pw)
    return None


def token_ids(family, model, sample, args, kwargs) -> Grid | None:
    """aMUSEd (UVit2D): the input is a ``[B, H, W]`` map of VQ token ids, one token per latent pixel."""
    ids = family.sample.read(args, kwargs)
    if isinstance(ids, torch.Tensor) and ids.ndim == 3:
        return (1, int(ids.shape[1]), int(ids.shape[2]))
    return None


def _call_patches(family: Family, model: torch.nn.Module, kwargs: dict) -> tuple[int, int, int]:
    """``(t, h, w)`` patch sizes of a class that takes them as forward arguments (Z-Image's ``patch_size`` and
    ``f_patch_size``): the call's values, else the forward's defaults, else the config's."""
    try:
        parameters = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        parameters = {}

    def given(name: str | None) -> Any:
        if name is None:
            return None
        if name in kwargs:
            return kwargs[name]
        default = parameters[name].default if name in parameters else inspect.Parameter.empty
        return None if default is inspect.Parameter.empty else default

    patch, patch_t = given(family.patch), given(family.patch_t)
    if isinstance(patch, int) and patch > 0:
        return (patch_t if isinstance(patch_t, int) and patch_t > 0 else 1), patch, patch
    return _patches(family, model)


def sample_list(family, model, sample, args, kwargs) -> Grid | None:
    """Z-Image, Wan-Animate 2: the latents are a per-sample list of ``[C, F, H, W]`` tensors (Z-Image's omni mode
    a list of lists per sample, the generated image last)."""
    latents = family.sample.read(args, kwargs)
    if not isinstance(latents, (list, tuple)) or not latents:
        return None
    first = latents[0]
    if isinstance(first, (list, tuple)) and first:
        first = first[-1]
    if not isinstance(first, torch.Tensor) or first.ndim != 4:
        return None
    pt, ph, pw = _call_patches(family, model, kwargs)
    return (-(-first.shape[1] // pt), -(-first.shape[2] // ph), -(-first.shape[3] // pw))


#: Ideogram 4's ``indicator`` value of the output image's tokens (``OUTPUT_IMAGE_INDICATOR`` in diffusers)
IDEOGRAM_IMAGE_INDICATOR = 2


def indicated_image_rows(family, model, sample, args, kwargs) -> Grid | None:
    """Ideogram 4: one packed ``[left padding, text, image]`` sequence; ``indicator`` marks the image rows, which
    come last and carry ``(t, h, w)`` in ``position_ids`` ``[B, N, 3]``."""
    indicator = kwargs.get("indicator")
    if not isinstance(indicator, torch.Tensor) or indicator.ndim != 2:
        return None
    rows = int((indicator[0] == IDEOGRAM_IMAGE_INDICATOR).sum())
    return _position_ids(kwargs.get("position_ids"), (1, 2), rows=rows) if rows else None


def video_indices(family, model, sample, args, kwargs) -> Grid | None:
    """MiniMax-H3: one packed ``[text, audio, video]`` layout shared by the batch; ``position_ids`` ``[S, 3]``
    hold ``(t, h, w)`` per row and ``video_indices`` name the video rows."""
    ids, rows = kwargs.get("position_ids"), kwargs.get("video_indices")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or not isinstance(rows, torch.Tensor):
        return None
    return _position_ids(ids.index_select(0, rows.to(ids.device)), (0, 1, 2))


def vision_token_shapes(family, model, sample, args, kwargs) -> Grid | None:
    """Cosmos 3 Omni: ``vision_token_shapes`` lists the ``(frames, height, width)`` token grid of each vision
    item; the first is the generated video."""
    return _first_grid(kwargs.get("vision_token_shapes"), last=False)


def items_along_time(family, model, sample, args, kwargs) -> Grid | None:
    """JoyImage-Edit: ``[B, items, C, T, H, W]`` latents (references first, the generated image last), which the
    model moves to ``[generated, references...]`` and concatenates along time: the references are frames of the
    grid, as the model's own 3-D RoPE places them. A 5-D input is one item, ``BCFHW``."""
    latents = family.sample.read(args, kwargs)
    if not isinstance(latents, torch.Tensor) or latents.ndim not in (5, 6):
        return None
    if latents.ndim == 6:
        latents = latents.transpose(1, 2).flatten(2, 3)  # [B, C, items, T, H, W] -> [B, C, items * T, H, W]
    pt, ph, pw = _patches(family, model)
    return (-(-latents.shape[2] // pt), -(-latents.shape[3] // ph), -(-latents.shape[4] // pw))


def shape_list(family, model, sample, args, kwargs) -> Grid | None:
    """JoyImage-Edit Plus: ``shape_list`` lists, per sample, the ``(frames, height, width)`` in patches of each item
    of its padded patch sequence, the generated image first, then the references."""
    return _first_grid(kwargs.get("shape_list", args[4] if len(args) > 4 else None), last=False)


READERS: dict[str, Callable[..., Grid | None]] = {
    "img_ids": img_ids,
    "image_position_ids": image_position_ids,
    "img_shapes": img_shapes,
    "img_shapes_last": img_shapes_last,
    "frames_height_width": frames_height_width,
    "token_ids": token_ids,
    "sample_list": sample_list,
    "indicated_image_rows": indicated_image_rows,
    "video_indices": video_indices,
    "vision_token_shapes": vision_token_shapes,
    "items_along_time": items_along_time,
    "shape_list": shape_list,
}


def read_grid(family: Family, model: torch.nn.Module, sample: torch.Tensor, args: tuple, kwargs: dict) -> Grid | None:
    """The latent grid of one forward call, or ``None`` when the family's facts cannot tell it."""
    if family.grid_reader is not None:
        return READERS[family.grid_reader](family, model, sample, args, kwargs)
    return _spatial(family, model, sample)


def bria_fibo2_gists(
    family: Family, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Grid | None
) -> int | None:
    """Bria FIBO 2's gist tokens in one call: diffusers' ``compute_gist_count`` of each row's text length (its valid
    tokens under ``encoder_attention_mask``) with the model's config. ``None`` when rows get different counts: the
    model then pads the gist and moves it after the image, a layout visattn leaves unplaced."""
    try:
        from diffusers.models.transformers.transformer_bria_fibo2 import compute_gist_count
    except ImportError:
        return None
    text = family.text.read(args, kwargs) if family.text is not None else None
    if not isinstance(text, torch.Tensor) or text.ndim < 3:
        return None
    mask = kwargs.get("encoder_attention_mask", args[3] if len(args) > 3 else None)
    lengths = mask.sum(dim=1).tolist() if isinstance(mask, torch.Tensor) else [text.shape[2]] * text.shape[0]
    config = model.config
    counts = compute_gist_count(
        lengths,
        min_gist=config.min_num_gist_tokens,
        max_gist=config.max_num_gist_tokens,
        gist_step=config.gist_step,
        min_text_len=config.gist_min_text_len,
        max_text_len=config.gist_max_text_len,
    )
    return counts[0] if len(set(counts)) == 1 else None


def _is_range(indices: Any, start: int, stop: int) -> bool:
    """Whether ``indices`` (a 1-D tensor) are exactly the rows ``start, ..., stop - 1`` in order."""
    if not isinstance(indices, torch.Tensor) or indices.ndim != 1 or indices.numel() != stop - start:
        return False
    return bool(torch.equal(indices.cpu(), torch.arange(start, stop, dtype=indices.dtype)))


def minimax_h3_rows(family: Family, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Grid | None) -> int | None:
    """MiniMax-H3's rows between the text and the generated video: its forward scatters text, video and audio rows
    to index positions, and every layout its pipelines build is ``[text | conditioning or reference rows | target
    audio | target video]``, so the text is the first rows and the grid the last. Counted only when the indices say
    so (``text_indices`` the first rows, the last grid-many ``video_indices`` the last rows); ``None`` otherwise (the
    call stays unplaced)."""
    ids, text, video = kwargs.get("position_ids"), kwargs.get("text_indices"), kwargs.get("video_indices")
    if grid is None or not isinstance(ids, torch.Tensor) or not isinstance(video, torch.Tensor) or video.ndim != 1:
        return None
    length, tokens = ids.shape[0], math.prod(grid)
    n_text = text.numel() if isinstance(text, torch.Tensor) else -1
    if not _is_range(text, 0, n_text) or not _is_range(video[-tokens:], length - tokens, length):
        return None
    return length - n_text - tokens


def padded_patches_after_grid(
    family: Family, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Grid | None
) -> int | None:
    """JoyImage-Edit Plus: the patches of its ``[B, max_patches, C, pt, ph, pw]`` input after the generated image's
    (the references' patches, then the padding to the longest sample)."""
    latents = family.sample.read(args, kwargs)
    if grid is None or not isinstance(latents, torch.Tensor) or latents.ndim < 3:
        return None
    after = latents.shape[1] - math.prod(grid)
    return after if after >= 0 else None


#: counters of :class:`~visattn.families.base.CountedTokens`, by name
TOKEN_COUNTERS: dict[str, Callable[..., int | None]] = {
    "bria_fibo2_gists": bria_fibo2_gists,
    "minimax_h3_rows": minimax_h3_rows,
    "padded_patches_after_grid": padded_patches_after_grid,
}


# --- token counts a context-parallel plan splits (Family.cp_split_counts) ---------------------------------------


def _pooled_tokens(latents: Any, kernel: tuple[int, int, int]) -> int:
    """Tokens of a ``[B, C, F, H, W]`` latent patchified with ``kernel`` after padding each axis up to it."""
    if not isinstance(latents, torch.Tensor):
        return 0
    return math.prod(-(-size // k) for size, k in zip(latents.shape[2:], kernel, strict=True))


def framepack_tokens(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple[str, int], ...]:
    """The token counts HunyuanVideo Framepack's plan splits: the packed latents (the window, the clean latents at
    the window's patch, the 2x and 4x history at their pooled patches, each axis padded up as its embedder pads)
    and the condition (the image tokens, then the text: with one row the forward keeps only its valid tokens)."""
    parameters = list(inspect.signature(type(model).forward).parameters)[1:]

    def argument(name: str) -> Any:
        index = parameters.index(name)
        return kwargs.get(name, args[index] if len(args) > index else None)

    p, p_t = model.config.patch_size, model.config.patch_size_t
    latents = (
        _pooled_tokens(argument("hidden_states"), (p_t, p, p))
        + _pooled_tokens(argument("latents_clean"), (1, 2, 2))
        + _pooled_tokens(argument("latents_history_2x"), (2, 4, 4))
        + _pooled_tokens(argument("latents_history_4x"), (4, 8, 8))
    )
    text, mask, image = argument("encoder_hidden_states"), argument("encoder_attention_mask"), argument("image_embeds")
    text_tokens = int(mask[0].sum()) if text.shape[0] == 1 and mask is not None else text.shape[1]
    image_tokens = image.shape[1] if isinstance(image, torch.Tensor) else 0
    return (("packed latents", latents), ("condition (image and text)", image_tokens + text_tokens))


#: readers of the token counts a family's context-parallel plan splits, by name (``Family.cp_split_counts``)
SPLIT_COUNTS: dict[str, Callable[[torch.nn.Module, tuple, dict], tuple[tuple[str, int], ...]]] = {
    "framepack_tokens": framepack_tokens,
}
