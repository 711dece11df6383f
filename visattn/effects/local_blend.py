"""LocalBlend: keep a Prompt-to-Prompt edit's target equal to its source outside the region of chosen words.

Hertz et al., 2022, local blending. The authors' code (google/prompt-to-prompt, ``prompt-to-prompt_stable.ipynb``
and ``null_text_w_ptp.ipynb``, class ``LocalBlend``, ``__call__`` and ``get_mask``; called from
``AttentionControlEdit.step_callback`` right after ``scheduler.step`` in ``ptp_utils.diffusion_step``) does, at
every step:

1. take the attention store summed over the steps so far, and from it the cross-attention maps of the down- and
   up-block layers at 16x16 tokens (``attention_store["down_cross"][2:4] + attention_store["up_cross"][:3]``: at
   512 px these are exactly SD 1.x's 16x16 cross-attention layers; the mid block's 8x8 ones are left out);
2. sum each map over the words' tokens (a source word in the source row, a target word in the target row) and
   average over heads and layers;
3. max-pool with ``k = 1`` (a 3x3 window) at that 16x16 resolution, upsample (nearest) to the latent size and
   normalize by the per-sample maximum;
4. threshold (``mask > th``, ``th = 0.3``) and take the union of the source's and the target's masks
   (``mask[:1] + mask``); in the later notebook (``null_text_w_ptp.ipynb``), where ``substruct_words`` are given,
   remove from it the region of those words: their maps the same way but not pooled, thresholded at ``th[1]``,
   united over source and target (``mask * ~get_mask(maps, substruct_layers, False)``); here ``subtract`` and
   ``subtract_threshold``;
5. from the step after ``int(start_blend * steps)`` on (``start_blend = 0.2`` in the later notebooks; the first
   version blended from the first step), blend the *latents* after the scheduler step:
   ``x_t = x_t[:1] + mask * (x_t - x_t[:1])``. The mask is recomputed at every step, not accumulated.

That is the default here (``variant="authors"``), on every family:

* UNet families (where the authors' notions exist): the down/up cross-attention layers at 16x16 tokens per frame
  where the UNet has that level; at other sizes, where it has none, the level closest to 16x16 tokens (in log
  scale, the finer on a tie): visattn's generalization, the authors' code reads only 16x16 maps at 512 px.
* Transformer families (DiT, MM-DiT, video DiTs; no UNet levels): every cross- or joint-attention layer the edit
  controls, at the latent grid, pooled there (visattn's generalization).
* Only layers Prompt-to-Prompt controls contribute (``layers=`` of :class:`PromptToPrompt`).
* The latents are blended right after each call of the pipeline's ``scheduler.step``, as the authors' step
  callback does: :meth:`PromptToPrompt.prepare_pipeline` wraps the attached pipeline's scheduler's ``step``
  until detach. Attached to a bare denoiser (no pipeline, no scheduler), the mask is still built every call
  (:attr:`LocalBlend.mask`) but nothing can be blended; a warning says so once per attachment.
* The blend writes ``torch.where(mask, target, source)``, which equals the authors' float expression up to one
  rounding of ``x_src + (x_tgt - x_src)``.

``variant="prediction"`` is visattn's earlier blend, kept under its own name: the maps of *every* controlled
cross/joint layer are resized (trilinearly) to the latent grid and averaged, summed over the steps so far,
max-pooled over ``(2 * radius + 1)^2`` latent cells (about 4x less dilation than the authors' at 512 px: its
``radius=1`` is one latent cell, theirs one 16x16 cell, four latent cells), normalized and thresholded; the mask
grows as the union of every step's mask, and the denoiser's *prediction* is blended from the first step (the
target's prediction outside the mask is the source's). Its guarantee: at every latent position outside
:attr:`LocalBlend.mask` the target's latents equal the source's bit for bit after every step, provided both
started from the same noise and the scheduler update and the guidance combination act elementwise and
identically on all rows (diffusers' deterministic schedulers, plain classifier-free guidance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .. import validation
from ..context import StepInfo
from ..families import Family
from ..validation import check_int
from ..warning_site import user_stacklevel
from ..words import split_words

#: the blends :class:`LocalBlend` offers: the authors' (default) and visattn's prediction blend
VARIANTS = ("authors", "prediction")
#: the tokens per frame of the authors' maps (``reshape(..., 16, 16, 77)``)
AUTHORS_TOKENS = 16 * 16
#: the authors' ``start_blend``
AUTHORS_START = 0.2


def _mask_for_prediction(mask: torch.Tensor, row_shape: torch.Size, family: Family) -> torch.Tensor:
    """A ``[frames, height, width]`` token-grid mask expanded to broadcast against one prediction row (or one row
    of latents: the same layout), whose axes follow the family's latent layout
    (:meth:`visattn.families.Family.prediction_axes`)."""
    if family.grid_items(len(row_shape)):
        # Items along a leading axis of the row, held by the grid along its frames with the last item first
        # (JoyImage-Edit): each item takes its frames of the mask, back in the prediction's item order.
        items = row_shape[0]
        if mask.shape[0] % items:
            raise ValueError(f"LocalBlend: the grid's {mask.shape[0]} frames do not split into {items} items")
        per_item = mask.reshape(items, -1, *mask.shape[1:])
        per_item = torch.cat([per_item[1:], per_item[:1]])
        return torch.stack([_mask_for_prediction(m, row_shape[1:], family) for m in per_item])
    frames, height, width = mask.shape
    axes = family.prediction_axes(len(row_shape))
    if axes is None:
        # Packed latents: one token per grid cell, in grid order.
        flat, extra = mask.reshape(-1), row_shape[0] - frames * height * width
        if extra > 0 and family.text_position is not None:
            # The prediction also holds the joint sequence's text rows (Qwen-Image 2.1, Ideogram 4): the target
            # keeps its own there (the pipeline drops them).
            kept = torch.ones(extra, dtype=flat.dtype, device=flat.device)
            flat = torch.cat([kept, flat] if family.text_position == "first" else [flat, kept])
        if flat.numel() != row_shape[0]:
            raise ValueError(
                f"LocalBlend: the {family.name} prediction has {row_shape[0]} tokens, the grid {tuple(mask.shape)}"
            )
        return flat.reshape(-1, *([1] * (len(row_shape) - 1)))
    shape = [1] * len(row_shape)
    for axis, size, dim in zip(axes, (frames, height, width), (0, 1, 2)):
        if axis is None:
            if size != 1:
                raise ValueError(f"LocalBlend: the {family.name} prediction has no frame axis but the grid has {size}")
            continue
        target = row_shape[axis]
        if target % size:
            raise ValueError(
                f"LocalBlend: prediction axis {axis} of size {target} is not a multiple of the grid's {size}"
            )
        mask = mask.repeat_interleave(target // size, dim=dim)
        shape[axis] = target
    return mask.reshape(shape)


def blend_active(start: float, step: StepInfo) -> bool:
    """Whether the authors' blend acts at ``step``: their ``counter > int(start_blend * steps)`` with ``counter =
    i + 1`` at step ``i``; every step where the schedule is unknown (a denoiser driven by hand)."""
    if step.index is None or not step.total:
        return True
    return step.index + 1 > int(start * step.total)


def authors_grid(grids: set[tuple[int, int]], unet: bool) -> tuple[int, int]:
    """The per-frame grid whose layers the authors' blend reads: on a UNet the level with 16x16 tokens, else the
    level closest to it (log scale, the finer on a tie); elsewhere the finest grid (the latent grid)."""
    if not unet:
        return max(grids, key=lambda grid: (grid[0] * grid[1], grid))
    return min(grids, key=lambda grid: (abs(math.log(grid[0] * grid[1] / AUTHORS_TOKENS)), -grid[0] * grid[1], grid))


def _blend_words(words: Any, name: str) -> tuple[str, ...]:
    if isinstance(words, str):
        words = (words,)
    else:
        try:
            words = tuple(words)
        except TypeError:
            raise ValueError(f"{name} must be one or more words of the prompts; got {words!r}") from None
    if not words or any(not isinstance(word, str) or not split_words(word) for word in words):
        raise ValueError(f"{name} must be one or more words of the prompts; got {words!r}")
    return words


def _threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
    return float(value)


class _Latest:
    """Which run of a :class:`LocalBlend` finished a mask last (what :attr:`LocalBlend.mask` reads)."""

    __slots__ = ("run",)

    def __init__(self) -> None:
        self.run: BlendRun | None = None


class LocalBlend:
    """Keep the target equal to the source outside the region of chosen words (Hertz et al., 2022, local
    blending; per frame for video, as Video-P2P). See the module docstring for the authors' algorithm, which is
    the default, and visattn's ``variant="prediction"``.

    A configuration: its parameters are fixed once built (assigning one raises AttributeError; build another
    with :meth:`copy_with`), and what one generation learns (maps, masks) lives in the run state of each
    attachment of the :class:`~visattn.effects.PromptToPrompt` that holds it, so one blend can serve several
    attachments.

    Args:
        words: a word or words (several words in a row, ``"red circle"``, count as one) whose region may change;
            looked up in both prompts (a source word's map from the source rows, a target word's from the target
            rows; the authors' union ``mask[:1] + mask``).
        threshold: in ``(0, 1)``; cells whose normalized map exceeds it belong to the region (the authors' 0.3,
            their ``th[0]``).
        radius: the max-pooling radius ``k`` (a ``2k + 1`` window): in cells of the layers read (the authors'
            ``k = 1`` at 16x16), or latent-grid cells for ``variant="prediction"``.
        start: the fraction of the schedule before which nothing is blended: steps ``i`` with
            ``i + 1 > int(start * N)`` blend (the authors' ``start_blend``, 0.2 by default). ``variant="prediction"``
            blends from the first step (its guarantee needs it) and takes only ``0``.
        variant: ``"authors"`` (the default: their layers, resolution, pooling, per-step mask and latent blend)
            or ``"prediction"`` (visattn's earlier blend; see the module docstring).
        subtract: a word or words whose region is taken out of the blend region (the authors' ``substruct_words``
            of ``null_text_w_ptp.ipynb``): looked up in both prompts as ``words`` are, their maps read from the same
            layers, *not* max-pooled, normalized and thresholded at ``subtract_threshold``, united over source and
            target; the blend region keeps only cells outside it. ``None`` (the default, as theirs): nothing taken
            out. With ``variant="prediction"`` each step's region loses it before the union over steps.
        subtract_threshold: in ``(0, 1)``; the threshold of the ``subtract`` words' maps (the authors' ``th[1]``,
            0.3 by default as theirs).

    Attributes:
        mask: the blend region of the most recent generation of any attachment, ``[pairs, frames, height,
            width]`` booleans on the denoiser's latent-token grid, one per source/target image pair: for the
            authors' variant the mask of the last step blended (``None`` before the first); a specific
            attachment's: ``attachment.run_of(p2p).mask``.
    """

    def __init__(
        self,
        words: str | Sequence[str],
        threshold: float = 0.3,
        radius: int = 1,
        *,
        start: float | None = None,
        variant: str = "authors",
        subtract: str | Sequence[str] | None = None,
        subtract_threshold: float = 0.3,
    ) -> None:
        words = _blend_words(words, "words")
        subtract = () if subtract is None else _blend_words(subtract, "subtract")
        threshold = _threshold(threshold, "threshold")
        subtract_threshold = _threshold(subtract_threshold, "subtract_threshold")
        # Bounded: the max-pooling window is 2 * radius + 1 cells, and torch fails on windows of 10**12.
        radius = check_int(radius, "radius", minimum=0, maximum=validation.MAX_BLEND_RADIUS)
        variant = validation.check_choice(variant, "variant", VARIANTS)
        if start is None:
            start = AUTHORS_START if variant == "authors" else 0.0
        start = validation.check_fraction(start, "start")
        if variant == "prediction" and start != 0.0:
            raise ValueError(
                f"start must be 0 for variant='prediction' (its guarantee needs blending from the first step); got "
                f"{start!r}"
            )
        for name, value in (
            ("words", words),
            ("threshold", threshold),
            ("radius", radius),
            ("start", float(start)),
            ("variant", variant),
            ("subtract", subtract),
            ("subtract_threshold", subtract_threshold),
            ("_latest", _Latest()),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"LocalBlend.{name} cannot change: a blend's parameters are fixed once it is built; build another "
            f"with blend.copy_with({name}=...)"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def copy_with(self, **changes: Any) -> LocalBlend:
        """A new blend with the same parameters except ``changes`` (checked as usual); TypeError naming a
        parameter it does not take. A copy that changes ``variant`` only gets the new variant's default
        ``start`` unless ``start`` is given too."""
        parameters = {
            "words": self.words,
            "threshold": self.threshold,
            "radius": self.radius,
            "start": self.start,
            "variant": self.variant,
            "subtract": self.subtract or None,
            "subtract_threshold": self.subtract_threshold,
        }
        unknown = sorted(set(changes) - set(parameters))
        if unknown:
            raise TypeError(
                f"LocalBlend.copy_with: no parameter {', '.join(map(repr, unknown))}; it takes {', '.join(parameters)}"
            )
        if "variant" in changes and "start" not in changes:
            parameters.pop("start")
        return LocalBlend(**{**parameters, **changes})

    @property
    def blends_latents(self) -> bool:
        """Whether the blend acts on the latents after each scheduler step (the authors') rather than on the
        denoiser's prediction."""
        return self.variant == "authors"

    @property
    def mask(self) -> torch.Tensor | None:
        run = self._latest.run
        return None if run is None else run.mask

    def new_run(self) -> BlendRun:
        """A fresh run state (maps, mask) for one attachment of the edit holding this blend."""
        return BlendRun(self)

    def reset(self) -> None:
        """Forget the most recent run's maps and mask (done automatically when a new generation starts)."""
        if self._latest.run is not None:
            self._latest.run.reset()

    @property
    def sides(self) -> int:
        """How many maps each layer hands the blend per image pair: the words' (source, target), then the
        ``subtract`` words' (source, target) where there are any."""
        return 4 if self.subtract else 2

    def __repr__(self) -> str:
        subtract = f", subtract={self.subtract}, subtract_threshold={self.subtract_threshold}" if self.subtract else ""
        return (
            f"LocalBlend(words={self.words}, threshold={self.threshold}, radius={self.radius}, start={self.start}, "
            f"variant={self.variant!r}{subtract})"
        )


class BlendRun:
    """What one attachment's :class:`LocalBlend` learns while generating: this denoiser call's maps per layer, the
    maps summed over the steps so far, and the mask."""

    def __init__(self, blend: LocalBlend) -> None:
        self.blend = blend
        self.warned = False
        self.reset()

    def reset(self) -> None:
        self.mask: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._layers: list[tuple[str, tuple[int, int, int], tuple[int, int, int], torch.Tensor]] = []

    def begin_call(self) -> None:
        self._layers = []

    def add_layer(
        self, maps: torch.Tensor, grid: tuple[int, int, int], top: tuple[int, int, int], layer_name: str
    ) -> None:
        """Add one layer's ``[sides, pairs, grid tokens]`` maps (source words, target words, then the ``subtract``
        words' source and target maps where the blend has any: :attr:`LocalBlend.sides`)."""
        frames, sides = top[0], maps.shape[0]
        if grid[0] == 1 and frames > 1 and maps.shape[1] % frames == 0:
            # A video UNet folds frames into the batch, sample-major ``(b f)``: its spatial layers see one frame
            # per row, so each pair's frames are consecutive rows. Fold them back into the frames axis.
            maps = maps.reshape(sides, maps.shape[1] // frames, frames * maps.shape[2])
            grid = (frames, *grid[1:])
        self._layers.append((layer_name, tuple(grid), tuple(top), maps.reshape(sides, -1, *grid)))

    def end_call(self, step: StepInfo, unet: bool) -> bool:
        """Fold this denoiser call's maps into the sum over steps and make the step's mask; whether a mask was
        made at this step."""
        if not self._layers:
            return False
        self.blend._latest.run = self
        if self.blend.variant == "prediction":
            self._grow_prediction_mask()
            return True
        return self._authors_mask(step, unet)

    # --- the authors' blend ------------------------------------------------------------------------------------
    def _authors_mask(self, step: StepInfo, unet: bool) -> bool:
        layers = self._layers
        if unet:
            # The authors read the down and up blocks' maps, not the mid block's.
            layers = [layer for layer in layers if not layer[0].startswith("mid_block")] or layers
        chosen = authors_grid({layer[1][-2:] for layer in layers}, unet)
        maps = [layer[3] for layer in layers if layer[1][-2:] == chosen]
        top = layers[0][2]
        # The mean over the layers (each already averaged over its heads), added to the sum over steps.
        step_maps = torch.stack(maps).mean(0)
        self._sum = step_maps if self._sum is None or self._sum.shape != step_maps.shape else self._sum + step_maps
        if not blend_active(self.blend.start, step):
            self.mask = None
            return False
        blend = self.blend
        self.mask = authors_mask(self._sum[:2], top, blend.threshold, blend.radius)
        if blend.subtract:
            # The authors' ``mask * ~get_mask(maps, substruct_layers, False)``: not pooled, their ``th[1]``.
            self.mask &= ~authors_mask(self._sum[2:], top, blend.subtract_threshold, 0)
        return True

    # --- visattn's prediction blend ------------------------------------------------------------------------------
    def _grow_prediction_mask(self) -> None:
        top = self._layers[0][2]
        resized = []
        for _, grid, _, maps in self._layers:
            sides = maps.shape[0]
            maps = maps.reshape(sides * maps.shape[1], 1, *grid)
            if tuple(grid) != tuple(top):
                maps = F.interpolate(maps, size=tuple(top), mode="trilinear", align_corners=False)
            resized.append(maps.reshape(sides, -1, *top))
        step = sum(resized[1:], resized[0]) / len(resized)
        self._sum = step if self._sum is None or self._sum.shape != step.shape else self._sum + step
        blend = self.blend
        mask = _prediction_region(self._sum[:2], blend.threshold, blend.radius)
        if blend.subtract:
            mask &= ~_prediction_region(self._sum[2:], blend.subtract_threshold, 0)
        self.mask = mask if self.mask is None or self.mask.shape != mask.shape else self.mask | mask

    def blend_prediction(self, prediction: Any, pairs: Sequence[Any], family: Family) -> Any:
        """``variant="prediction"``: each branch's target prediction outside the mask is its source's."""
        if self.mask is None:
            return prediction
        # A per-sample list (Z-Image) blends item by item: every item is one row.
        blended = list(prediction) if isinstance(prediction, list) else prediction.clone()
        for pair in pairs:
            if pair.count != self.mask.shape[0]:
                raise ValueError(
                    f"LocalBlend: branch {pair.name!r} holds {pair.count} image pairs but the mask was built for "
                    f"{self.mask.shape[0]}"
                )
            for j in range(pair.count):
                src, tgt = pair.source.start + j, pair.target.start + j
                row = prediction[tgt]
                keep = _mask_for_prediction(self.mask[j], row.shape, family).to(row.device)
                blended[tgt] = torch.where(keep, row, prediction[src])
        return blended

    def warn_unblended(self) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(
                "LocalBlend blends the latents after each scheduler step, but this attachment has no pipeline "
                "scheduler to follow (a bare denoiser): the mask is built, nothing is blended. Blend the latents "
                "yourself (x = x_source + mask * (x - x_source)) or use LocalBlend(..., variant='prediction')",
                stacklevel=user_stacklevel(),
            )


def _above(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Cells of each map (over its last two axes) above ``threshold`` once divided by the map's maximum; an all-zero
    map (a word absent from that prompt) has none (the authors' ``0 / 0`` compares false too)."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0) > threshold


def _prediction_region(maps: torch.Tensor, threshold: float, radius: int) -> torch.Tensor:
    """``variant="prediction"``'s region of ``[2 (source, target), pairs, frames, h, w]`` maps on the latent grid:
    max-pooled over ``2 * radius + 1`` cells, normalized by each map's maximum, thresholded, source | target."""
    height, width = maps.shape[-2:]
    if radius:
        flat = maps.reshape(-1, 1, height, width)
        maps = F.max_pool2d(flat, 2 * radius + 1, stride=1, padding=radius).reshape(maps.shape)
    return _above(maps, threshold).any(dim=0)


def authors_mask(maps: torch.Tensor, top: tuple[int, int, int], threshold: float, radius: int) -> torch.Tensor:
    """The authors' ``get_mask`` on ``[2 (source, target), pairs, frames, h, w]`` maps summed over steps:
    max-pool (``2 * radius + 1`` window) at the maps' resolution, upsample (nearest) to the latent grid ``top``,
    normalize by each map's maximum (per frame), threshold, and unite the source's and the target's masks."""
    sides, pairs, frames, height, width = maps.shape
    flat = maps.reshape(-1, 1, height, width)
    if radius:
        flat = F.max_pool2d(flat, 2 * radius + 1, stride=1, padding=radius)
    if frames == top[0]:
        flat = F.interpolate(flat, size=tuple(top[1:]), mode="nearest")
    else:
        flat = F.interpolate(flat.reshape(-1, 1, frames, height, width).float(), size=tuple(top), mode="nearest")
    flat = flat.reshape(sides * pairs * top[0], 1, *top[1:])
    return _above(flat, threshold).reshape(sides, pairs, *top).any(dim=0)


def blend_latents(latents: Any, mask: torch.Tensor, family: Family) -> Any:
    """The authors' ``x_t = x_t[:1] + mask * (x_t - x_t[:1])`` on the latents after a scheduler step, whose rows
    are the source images, then as many target images: target ``j`` keeps its latents inside ``mask[j]`` and
    takes source ``j``'s elsewhere."""
    pairs = mask.shape[0]
    rows = len(latents) if isinstance(latents, (list, tuple)) else latents.shape[0]
    if rows != 2 * pairs:
        raise ValueError(
            f"LocalBlend: the scheduler step returned {rows} rows of latents, but the edit has {pairs} source/target "
            "image pairs (the latents should hold the source images, then the target images)"
        )
    blended = list(latents) if isinstance(latents, (list, tuple)) else latents.clone()
    for j in range(pairs):
        row = latents[pairs + j]
        keep = _mask_for_prediction(mask[j], row.shape, family).to(row.device)
        blended[pairs + j] = torch.where(keep, row, latents[j])
    return type(latents)(blended) if isinstance(latents, tuple) else blended
