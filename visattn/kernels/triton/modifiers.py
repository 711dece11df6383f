"""In-kernel score modifiers: UltraViCo's windowed decay as an additive bias on a tile of logits.

``EntropyScale`` needs no kernel code: a constant logit multiplier is folded into the softmax scale on the host
(:func:`visattn.kernels.triton.patterns.describe`). ``DecayModifier`` adds ``log(factor)`` (here in base 2, like
every logit inside the kernels) to pairs of grid tokens whose key lies outside the query's training window: a
box of ``window`` positions per axis, centred on the query and shifted inward at the borders, exactly as
:func:`visattn.kernels.extrapolation.decay_window_mask` defines it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .masking import axis_keep


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
