"""In-kernel score modifiers: visattn's box decay (an additive bias) and UltraViCo's rule, on a tile of logits.

``EntropyScale`` needs no kernel code: a constant logit multiplier is folded into the softmax scale on the host
(:func:`visattn.kernels.triton.kernel_spec.describe`). ``DecayModifier`` adds ``log(factor)`` (here in base 2, like
every logit inside the kernels) to pairs of grid tokens whose key lies outside the query's training window: a
box of ``window`` positions per axis, centred on the query and shifted inward at the borders, exactly as
:func:`visattn.kernels.extrapolation_scores.decay_window_mask` defines it. ``UltraViCoModifier`` multiplies positive
logits of far pairs (and of the distance bands) and masks first-frame queries from keys beyond the training
length (:func:`ultravico_slope`); it commutes with the host's positive logit scale (base 2, entropy scale), since
it multiplies and compares with zero only.

Which one a kernel compiles is ``HAS_DECAY``: :data:`NO_DECAY`, :data:`BOX_DECAY` or :data:`ULTRAVICO`, with its
parameters in ``DECAY``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .masking import axis_keep

#: values of the ``HAS_DECAY`` constexpr: which modifier ``DECAY`` describes (constexprs, so that kernels may
#: read them; ``.value`` on the host)
NO_DECAY = tl.constexpr(0)
BOX_DECAY = tl.constexpr(1)
ULTRAVICO = tl.constexpr(2)
#: the kernels take at most this many UltraViCo distance bands (HunyuanVideo's four)
MAX_BANDS = 4


@triton.jit
def score_bias(q_tok, kv_tok, bias, DECAY: tl.constexpr):
    """``bias`` where the pair is decayed, else ``0.0``: a ``[BLOCK_M, BLOCK_N]`` tile.

    ``DECAY = (grid, window, offset)`` with ``grid`` and ``window`` three axes each (slowest first; padded axes
    have window == size and are compiled away). ``bias`` is ``log2(factor)`` times the multipliers that follow
    the decay in a ``Chain``; ``-inf`` for ``factor == 0``, which then masks those pairs.
    """
    GRID: tl.constexpr = DECAY[0]
    WINDOW: tl.constexpr = DECAY[1]
    offset: tl.constexpr = DECAY[2]
    n: tl.constexpr = GRID[0] * GRID[1] * GRID[2]
    plane: tl.constexpr = GRID[1] * GRID[2]
    q = q_tok[:, None]
    kv = kv_tok[None, :]
    q_in = (q >= offset) & (q < offset + n)
    kv_in = (kv >= offset) & (kv < offset + n)
    q_local = tl.minimum(tl.maximum(q - offset, 0), n - 1)
    kv_local = tl.minimum(tl.maximum(kv - offset, 0), n - 1)
    inside = q_in == q_in  # all true, [BLOCK_M, 1]
    if WINDOW[2] < GRID[2]:
        inside = inside & axis_keep(q_local % GRID[2], kv_local % GRID[2], GRID[2], WINDOW[2], 1, 1, False)
    if WINDOW[1] < GRID[1]:
        inside = inside & axis_keep(
            (q_local // GRID[2]) % GRID[1], (kv_local // GRID[2]) % GRID[1], GRID[1], WINDOW[1], 1, 1, False
        )
    if WINDOW[0] < GRID[0]:
        inside = inside & axis_keep(q_local // plane, kv_local // plane, GRID[0], WINDOW[0], 1, 1, False)
    outside = q_in & kv_in & (inside == 0)
    return tl.where(outside, bias, 0.0)


@triton.jit
def _in_band(distance, BAND: tl.constexpr):
    """Pairs whose distance lies in ``BAND = (lo, hi)`` tokens, inclusive; ``lo < 0`` marks an unused band."""
    if BAND[0] >= 0:
        hit = (distance >= BAND[0]) & (distance <= BAND[1])
    else:
        hit = distance < 0  # all false
    return hit


@triton.jit
def ultravico_slope(q_tok, kv_tok, DECAY: tl.constexpr):
    """UltraViCo's rule on a ``[BLOCK_M, BLOCK_N]`` tile: ``(slope, cut)``.

    ``slope`` multiplies positive logits (``alpha`` for grid pairs farther apart than half the training length,
    ``band_factor`` in the bands, else 1); ``cut`` marks the pairs whose score becomes ``-inf`` (first-frame
    queries, keys beyond the training length). ``DECAY = (offset, tokens, frame_tokens, train_tokens, alpha,
    band_factor, bands, first_frame_mask)`` with ``bands`` :data:`MAX_BANDS` ``(lo, hi)`` token distances, as
    :class:`visattn.kernels.extrapolation_scores.UltraViCoModifier` defines them.
    """
    offset: tl.constexpr = DECAY[0]
    n: tl.constexpr = DECAY[1]
    frame: tl.constexpr = DECAY[2]
    train: tl.constexpr = DECAY[3]
    alpha: tl.constexpr = DECAY[4]
    band_factor: tl.constexpr = DECAY[5]
    BANDS: tl.constexpr = DECAY[6]
    FIRST: tl.constexpr = DECAY[7]
    q = q_tok[:, None]
    kv = kv_tok[None, :]
    pair = (q >= offset) & (q < offset + n) & (kv >= offset) & (kv < offset + n)
    m = q - offset
    k = kv - offset
    distance = tl.abs(m - k)
    band = _in_band(distance, BANDS[0]) | _in_band(distance, BANDS[1])
    band = band | _in_band(distance, BANDS[2]) | _in_band(distance, BANDS[3])
    # The authors compare |m - n| <= T / 2; 2 |m - n| > T is the same test in integers.
    far = 2 * distance > train
    slope = tl.where(pair & far & (band == 0), alpha, 1.0)
    slope = tl.where(pair & band, band_factor, slope)
    if FIRST:
        cut = pair & (m <= frame) & (k > train)
    else:
        cut = distance < 0  # all false
    return slope, cut
