"""Running a model on longer videos or larger images than it was trained on: windowed decay, entropy scaling.

* :class:`ExtrapolationDecay` (UltraViCo, "Breaking Extrapolation Limits in Video Diffusion Transformers", 2025):
  past the training length, keys outside a query's training window take attention away from the keys the model
  learned to use (and, through RoPE's periodicity, cause repetition). The training-free fix multiplies their
  attention weights by a constant ``factor < 1``.
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
from ..kernels.extrapolation import DecayModifier, EntropyScale
from ..kernels.neighborhood import NeighborhoodPattern
from .effect import AttentionCall, Effect


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def _scaled(train: int, layer: int, top: int) -> int:
    """A training size at a level whose axis has ``layer`` tokens where the input grid has ``top`` (rounded up)."""
    return train if layer == top else max(1, -(-train * layer // top))


class _GridSizedEffect(Effect):
    """An effect sized in the denoiser's input grid (:attr:`CallContext.input_grid`): a UNet's lower levels see
    the grid downsampled (:attr:`CallContext.grid`), and training sizes given for the input grid are scaled to
    them.
    """

    roles = ("self", "joint")

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
def _window_pattern(grid, window, offset, extra, prefix) -> NeighborhoodPattern:
    return NeighborhoodPattern(grid, window, offset=offset, extra_keys=extra, prefix_keys=prefix)


class ExtrapolationDecay(_GridSizedEffect):
    """Decays attention to keys outside each query's training window (UltraViCo).

    A latent key is outside when, on any axis, it lies outside the query's window: ``train_frames`` latent frames
    (video length) and ``train_size = (height, width)`` latent tokens (image size). Each window is centred on the
    query and shifted inward at the borders (NATTEN's neighborhood convention), so every query keeps exactly the
    number of positions it had in training and no kept relative distance exceeds what training saw. Its
    attention weight is multiplied by ``factor`` (its logit gets ``+ log(factor)``) before renormalization.
    Text tokens are never decayed, as queries or as keys.

    Args:
        train_frames: training length in latent frames (after the VAE's temporal compression and the model's
            temporal patchify; e.g. 21 for Wan 2.1 at 81 frames). ``None``: no temporal window.
        train_size: training size ``(height, width)`` (or one int for a square) in latent tokens of the input
            grid after patchify (e.g. ``(30, 52)`` for Wan at 480x832, ``(64, 64)`` for Flux at 1024 px).
            ``None``: no spatial window.
        factor: weight multiplier in ``[0, 1]``. ``1`` is an exact no-op (nothing is added to the call); ``0``
            removes out-of-window keys entirely, which becomes a neighborhood pattern (block-sparse on
            FlexAttention and NATTEN) instead of a score modifier. The default 0.5 is visattn's, a moderate
            starting point to tune per model, not a value taken from the paper.
        layers, steps: where and when it acts (see :class:`visattn.processors.Effect`); self and joint attention.
    """

    def __init__(
        self,
        train_frames: int | None = None,
        train_size: int | tuple[int, int] | None = None,
        factor: float = 0.5,
        layers: str | Iterable[str] | None = None,
        steps=None,
    ) -> None:
        super().__init__(layers=layers, steps=steps)
        if train_frames is None and train_size is None:
            raise ValueError(
                "ExtrapolationDecay needs train_frames (latent frames, for video length) and/or train_size "
                "((height, width) latent tokens, for image size); got neither"
            )
        self.train_frames = None if train_frames is None else _check_count("train_frames", train_frames, 1)
        if train_size is None:
            self.train_size = None
        else:
            square = isinstance(train_size, int) and not isinstance(train_size, bool)
            size = (train_size, train_size) if square else train_size
            if not isinstance(size, (tuple, list)) or len(size) != 2:
                raise ValueError(f"train_size={train_size!r} must be an int or a (height, width) pair of ints")
            self.train_size = tuple(_check_count("train_size", value, 1) for value in size)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 <= factor <= 1.0:
            raise ValueError(f"factor={factor!r} must be a number in [0, 1] (0 masks out-of-window keys, 1 is a no-op)")
        self.factor = float(factor)

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

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if self.factor == 1.0 or not self._grid_tokens(ctx):
            return  # factor 1: add nothing, so the call stays bit-identical to no effect
        window = self.window(ctx.grid, ctx.input_grid)
        if window == ctx.grid:
            return  # every key is inside every window: not extrapolating here
        # Drop a single-frame axis: images get a 2-D window (cheaper masks, same pairs).
        grid, window = (ctx.grid[1:], window[1:]) if ctx.grid[0] == 1 else (ctx.grid, window)
        offset = ctx.queries.image.start
        if self.factor == 0.0:
            text = ctx.queries.text
            text_first = text is not None and text.start == 0
            extra = 0 if text is None or text_first else text.length
            call.patterns.append(_window_pattern(grid, window, offset, extra, text_first))
            return
        call.score_mods.append(_decay(grid, window, self.factor, offset))

    def __repr__(self) -> str:
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
        layers, steps: where and when it acts (see :class:`visattn.processors.Effect`); self and joint attention.
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
