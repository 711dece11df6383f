"""Running a model on longer videos or larger images than it was trained on: windowed decay, entropy scaling.

* :class:`ExtrapolationDecay` (UltraViCo, "Breaking Extrapolation Limits in Video Diffusion Transformers", 2025):
  past the training length, keys outside a query's training window take attention away from the keys the model
  learned to use (and, through RoPE's periodicity, cause repetition). By default it computes the authors' public
  rule (thu-ml/DiT-Extrapolation, :class:`visattn.kernels.extrapolation_scores.UltraViCoModifier`): positive logits of
  far pairs times ``alpha``; ``mode="visattn_box"`` keeps visattn's earlier box-window decay by ``factor``.
* :class:`EntropyScaling`: the common training-free baseline for resolution extrapolation; logits are scaled by
  ``log(n) / log(n_train)`` so that the attention entropy over ``n`` keys stays near its training value
  (Jin et al., "Training-free Diffusion Model Adaptation for Variable-Sized Text-to-Image Synthesis", 2023).

Sizes are given in latent tokens of the denoiser's input grid (after patchify), the unit
:attr:`visattn.context.CallContext.grid` uses. On UNets, whose lower levels see downsampled grids, the
training sizes are scaled down with the level (the level's training grid is the input training grid
downsampled the same way).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from ..context import CallContext
from ..kernels.extrapolation_scores import HUNYUAN_BANDS, DecayModifier, EntropyScale, UltraViCoModifier
from ..kernels.neighborhood import NeighborhoodPattern
from ..validation import check_int
from .base import AttentionCall, Effect

# Training sizes above this are no training size (and 10**400 tokens would overflow the float arithmetic).
_MAX_TRAIN_COUNT = 2**31 - 1


def _check_count(name: str, value, minimum: int) -> int:
    return check_int(value, name, minimum=minimum, maximum=_MAX_TRAIN_COUNT)


def _scaled(train: int, layer: int, top: int) -> int:
    """A training size at a level whose axis has ``layer`` tokens where the input grid has ``top`` (rounded up)."""
    return train if layer == top else max(1, -(-train * layer // top))


class _GridSizedEffect(Effect):
    """An effect sized in the denoiser's input grid (:attr:`CallContext.input_grid`): a UNet's lower levels see
    the grid downsampled (:attr:`CallContext.grid`), and training sizes given for the input grid are scaled to
    them.
    """

    roles = ("self", "joint")
    frozen_parameters = True

    def needs(self) -> tuple[str, ...]:
        return ("grid",)

    @staticmethod
    def _grid_tokens(ctx: CallContext) -> bool:
        """Whether the call is self or joint attention over the latent grid (queries and keys alike)."""
        image = ctx.queries.image
        return ctx.grid is not None and image is not None and ctx.keys.image == image


@functools.lru_cache(maxsize=256)
def _decay(grid, window, factor, offset) -> DecayModifier:
    # One object per layout, so FlexAttention sees the same modifier across calls.
    return DecayModifier(grid, window, factor, offset)


@functools.lru_cache(maxsize=256)
def _ultravico(grid, train_frames, alpha, first_frame_mask, bands, band_factor, offset) -> UltraViCoModifier:
    return UltraViCoModifier(grid, train_frames, alpha, first_frame_mask, bands, band_factor, offset)


#: the family whose authors' kernel uses distance bands and no first-frame mask (branch ``ultra-hunyuan``)
_HUNYUAN = "hunyuan_video"
MODES = ("ultravico", "visattn_box")


@functools.lru_cache(maxsize=256)
def _window_pattern(grid, window, offset, extra, prefix) -> NeighborhoodPattern:
    return NeighborhoodPattern(grid, window, offset=offset, extra_keys=extra, prefix_keys=prefix)


class ExtrapolationDecay(_GridSizedEffect):
    """Suppresses attention to far keys when a video runs longer than training (UltraViCo).

    Two rules, chosen by ``mode``:

    * ``"ultravico"`` (the default when neither ``factor`` nor ``train_size`` is given): the authors' public
      rule, thu-ml/DiT-Extrapolation, ``_attn_fwd_inner`` of the attention kernel on branches ``ultra-wan`` and
      ``ultra-hunyuan`` (:class:`~visattn.kernels.extrapolation_scores.UltraViCoModifier`). With ``m``, ``n`` the
      query's and key's positions in the flattened grid and ``T`` the training length in tokens
      (``train_frames`` frames of the layer's grid), positive logits of pairs with ``|m - n| > T / 2`` are
      multiplied by ``alpha`` (0.9, the authors' ``--alpha``); on Wan and every other family, queries of the
      first frame (``m <= frame_tokens``, as the authors compare) do not attend to keys ``n > T``; on
      HunyuanVideo (``ultra-hunyuan``) there is no such mask, and distances within the periodic bands
      (46-54, 96-104, 146-154, 196-204 frames) get ``band_factor`` (0.6, the authors' ``--beta``) instead of
      ``alpha``. The authors' SageAttention subtracts the mean key before the logits (``smooth_k=True``), which
      decides which logits are positive; ``center_keys=True`` does the same (the unmodified softmax does not
      change). Not reproduced: their int8 quantization of q and k. Like the authors' scripts, which only run
      longer videos, the rule acts only on calls whose grid has more than ``train_frames`` frames.
    * ``"visattn_box"`` (visattn's, the default when ``factor`` or ``train_size`` is given): a key outside the
      query's box window (``train_frames`` frames, ``train_size`` tokens, centred on the query and shifted
      inward at the borders, NATTEN's convention) has its attention weight multiplied by ``factor`` (its logit
      gets ``+ log(factor)``). Also acts on images (``train_size``).

    Text tokens are never changed, as queries or as keys.

    Args:
        train_frames: training length in latent frames (after the VAE's temporal compression and the model's
            temporal patchify; e.g. 21 for Wan 2.1 at 81 frames, 33 for HunyuanVideo at 129). ``None``: no
            temporal window (``visattn_box`` only).
        train_size: ``visattn_box`` only: training size ``(height, width)`` (or one int for a square) in latent
            tokens of the input grid after patchify (e.g. ``(30, 52)`` for Wan at 480x832).
        factor: ``visattn_box`` only: weight multiplier in ``[0, 1]`` (default 0.5, visattn's, not the
            paper's). ``1`` is an exact no-op; ``0`` removes out-of-window keys (a neighborhood pattern).
        alpha: ``ultravico``: multiplier of positive far logits, in ``(0, 1]``; ``1`` and no mask is a no-op.
        mode: ``"ultravico"`` or ``"visattn_box"``; ``None`` chooses as above.
        first_frame_mask: ``ultravico``: mask keys beyond the training length for first-frame queries; ``None``:
            the authors' choice per family (on, except HunyuanVideo).
        bands: ``ultravico``: ``(lo, hi)`` frame-distance bands; ``None``: the authors' per family
            (HunyuanVideo's four bands, none elsewhere).
        band_factor: ``ultravico``: multiplier of positive logits in the bands, in ``(0, 1]``.
        center_keys: ``ultravico``: subtract the call's mean key first, as the authors' SageAttention does.
        layers, steps: where and when it acts (see :class:`visattn.effects.Effect`); self and joint attention.
    """

    def __init__(
        self,
        train_frames: int | None = None,
        train_size: int | tuple[int, int] | None = None,
        factor: float | None = None,
        layers: str | Iterable[str] | None = None,
        steps=None,
        *,
        alpha: float = 0.9,
        mode: str | None = None,
        first_frame_mask: bool | None = None,
        bands: tuple[tuple[int, int], ...] | None = None,
        band_factor: float = 0.6,
        center_keys: bool = True,
    ) -> None:
        super().__init__(layers=layers, steps=steps)
        if mode is None:
            mode = "visattn_box" if factor is not None or train_size is not None else "ultravico"
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        self.mode = mode
        if train_frames is None and train_size is None:
            raise ValueError(
                "ExtrapolationDecay needs train_frames (latent frames, for video length) and/or train_size "
                "((height, width) latent tokens, for image size); got neither"
            )
        self.train_frames = None if train_frames is None else _check_count("train_frames", train_frames, 1)
        if mode == "ultravico":
            if train_frames is None:
                raise ValueError("mode='ultravico' needs train_frames (the authors' rule is over video length)")
            if train_size is not None or factor is not None:
                raise ValueError(
                    "train_size and factor belong to mode='visattn_box'; mode='ultravico' takes train_frames, "
                    f"alpha, first_frame_mask, bands and band_factor (got train_size={train_size!r}, "
                    f"factor={factor!r})"
                )
        if train_size is None:
            self.train_size = None
        else:
            square = isinstance(train_size, int) and not isinstance(train_size, bool)
            size = (train_size, train_size) if square else train_size
            if not isinstance(size, (tuple, list)) or len(size) != 2:
                raise ValueError(f"train_size={train_size!r} must be an int or a (height, width) pair of ints")
            self.train_size = tuple(_check_count("train_size", value, 1) for value in size)
        factor = 0.5 if factor is None else factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 <= factor <= 1.0:
            raise ValueError(f"factor={factor!r} must be a number in [0, 1] (0 masks out-of-window keys, 1 is a no-op)")
        self.factor = float(factor)
        for name, value in (("alpha", alpha), ("band_factor", band_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value!r} must be a number in the range (0, 1]")
        self.alpha = float(alpha)
        self.band_factor = float(band_factor)
        self.first_frame_mask = first_frame_mask
        if bands is not None:
            bands = tuple(tuple(band) for band in bands)
            UltraViCoModifier((2, 1, 1), 1, bands=bands)  # validates the bands once, up front
        self.bands = bands
        self.center_keys = bool(center_keys)

    def window(self, grid: tuple[int, int, int], top_grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The training window ``(frames, height, width)`` on a layer ``grid``, clamped to it."""
        frames, height, width = grid
        window = [frames, height, width]
        if self.train_frames is not None:
            window[0] = min(frames, _scaled(self.train_frames, frames, top_grid[0]))
        if self.train_size is not None:
            window[1] = min(height, _scaled(self.train_size[0], height, top_grid[1]))
            window[2] = min(width, _scaled(self.train_size[1], width, top_grid[2]))
        return tuple(window)

    def modifier(self, ctx: CallContext) -> UltraViCoModifier | None:
        """``ultravico``: the modifier for a call over the latent grid, ``None`` where it changes nothing."""
        window = self.window(ctx.grid, ctx.input_grid)
        if window[0] >= ctx.grid[0]:
            return None  # not longer than training here
        hunyuan = ctx.family == _HUNYUAN
        mask = (not hunyuan) if self.first_frame_mask is None else self.first_frame_mask
        bands = (HUNYUAN_BANDS if hunyuan else ()) if self.bands is None else self.bands
        if self.alpha == 1.0 and not mask and (not bands or self.band_factor == 1.0):
            return None
        offset = ctx.queries.image.start
        return _ultravico(tuple(ctx.grid), window[0], self.alpha, mask, bands, self.band_factor, offset)

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if not self._grid_tokens(ctx):
            return
        if self.mode == "ultravico":
            modifier = self.modifier(ctx)
            if modifier is None:
                return
            if self.center_keys:
                # The authors' SageAttention subtracts the mean key over the sequence (smooth_k): a per-query
                # constant for the plain softmax, but it decides which logits are positive.
                call.k = call.k - call.k.mean(dim=-2, keepdim=True)
            call.score_mods.append(modifier)
            return
        if self.factor == 1.0:
            return  # factor 1: add nothing, so the call stays bit-identical to no effect
        window = self.window(ctx.grid, ctx.input_grid)
        if window == ctx.grid:
            return  # every key is inside every window: not extrapolating here
        # Drop a single-frame axis: images get a 2-D window (cheaper masks, same pairs).
        grid, window = (ctx.grid[1:], window[1:]) if ctx.grid[0] == 1 else (ctx.grid, window)
        offset = ctx.queries.image.start
        if self.factor == 0.0:
            extra, prefix = ctx.keys.grid_context()
            call.patterns.append(_window_pattern(grid, window, offset, extra, prefix))
            return
        call.score_mods.append(_decay(grid, window, self.factor, offset))

    def __repr__(self) -> str:
        if self.mode == "ultravico":
            return (
                f"ExtrapolationDecay(mode='ultravico', train_frames={self.train_frames}, alpha={self.alpha}, "
                f"first_frame_mask={self.first_frame_mask}, bands={self.bands}, band_factor={self.band_factor}, "
                f"center_keys={self.center_keys}, layers={self.layers}, steps={self.steps})"
            )
        return (
            f"ExtrapolationDecay(train_frames={self.train_frames}, train_size={self.train_size}, "
            f"factor={self.factor}, layers={self.layers}, steps={self.steps})"
        )


class EntropyScaling(_GridSizedEffect):
    """Scales attention logits by ``log(n) / log(n_train)`` (entropy scaling for resolution extrapolation).

    ``n`` counts the latent (image) tokens among the keys, as the common baseline does; text keys in joint
    attention are not counted (their number does not change with resolution), and a sparse pattern composed
    with this effect does not change ``n`` either. Every logit of the call is scaled, text pairs included,
    since the scale is the softmax temperature of the layer. The scale multiplies the raw scaled logits, so it
    is applied before any other effect's score modifier, whatever the order effects are given in.

    Args:
        train_tokens: latent tokens at the training size, in the input grid after patchify
            (``frames * height * width``; e.g. 4096 for Flux at 1024 px). When ``n`` equals it the call is left
            untouched (an exact no-op). On a UNet's lower levels it is scaled by the level's share of tokens.
        layers, steps: where and when it acts (see :class:`visattn.effects.Effect`); self and joint attention.
    """

    def __init__(self, train_tokens: int, layers: str | Iterable[str] | None = None, steps=None) -> None:
        super().__init__(layers=layers, steps=steps)
        self.train_tokens = _check_count("train_tokens", train_tokens, 2)

    def scale(self, n: int, top_tokens: int) -> float | None:
        """The logit scale for ``n`` latent keys in a layer where the input grid has ``top_tokens``; ``None``: 1."""
        if self.train_tokens == top_tokens:
            return None
        n_train = self.train_tokens * n / top_tokens
        if n < 2 or n_train <= 1.0:
            return None  # log(1) = 0: a level too coarse for the ratio to mean anything
        return math.log(n) / math.log(n_train)

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if not self._grid_tokens(ctx):
            return
        n = ctx.keys.image.length
        top_tokens = math.prod(ctx.input_grid)
        scale = self.scale(n, top_tokens)
        if scale is None or scale == 1.0:
            return
        # First: a temperature of the raw logits, under whatever bias other effects add.
        call.score_mods.insert(0, EntropyScale(scale))

    def __repr__(self) -> str:
        return f"EntropyScaling(train_tokens={self.train_tokens}, layers={self.layers}, steps={self.steps})"
