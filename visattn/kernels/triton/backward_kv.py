"""Backward kernel for keys and values: ``dK``, ``dV`` of block-sparse flash attention.

One program owns one key tile of one (batch, head) and visits the query tiles the plan lists for that key tile
(the transpose of the forward lists: partial tiles with the pattern recomputed from token indices, then full
ones). Probabilities are recomputed from the forward's log-sum-exp (FlashAttention-2's backward, Dao 2023):
``P = exp(S - lse)``, ``dV += P^T dO``, ``dS = P * (dO V^T - delta)``, ``dK += dS^T Q * scale`` with
``delta = rowsum(dO * O) - dlse``. Each key tile is written by exactly one program, so no atomics are needed.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .masking import load_tokens, tile_keep
from .modifiers import BOX_DECAY, ULTRAVICO, score_bias, ultravico_slope
from .ops import dot


@triton.jit
def _visit_query_tiles(
    dk,
    dv,
    k,
    v,
    kv_tok,
    kv_valid,
    Q,
    DO,
    LSE,
    DELTA,
    TILE_INDEX,
    count,
    Q_ORDER,
    WINDOWS,
    stride_qn,
    stride_don,
    q_len,
    qk_scale,
    decay_bias,
    MASKED: tl.constexpr,
    PERMUTED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_NA: tl.constexpr,
    NA_GRID: tl.constexpr,
    NA_KERNEL: tl.constexpr,
    NA_DILATION: tl.constexpr,
    NA_STRIDE: tl.constexpr,
    NA_CAUSAL: tl.constexpr,
    NA_TEXT: tl.constexpr,
    HAS_RADIAL: tl.constexpr,
    RD_GRID: tl.constexpr,
    RD_SINK: tl.constexpr,
    RD_TEXT: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    DECAY: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for i in range(0, count):
        tile = tl.load(TILE_INDEX + i)
        q_tok, q_valid = load_tokens(Q_ORDER, tile * BLOCK_M, q_len, BLOCK_M, PERMUTED)
        q = tl.load(
            Q + q_tok[:, None] * stride_qn + offs_d[None, :],
            mask=q_valid[:, None] & (offs_d[None, :] < HEAD_DIM),
            other=0.0,
        )
        do = tl.load(
            DO + q_tok[:, None] * stride_don + offs_dv[None, :],
            mask=q_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
            other=0.0,
        )
        lse = tl.load(LSE + q_tok, mask=q_valid, other=0.0) * 1.4426950408889634  # natural -> base 2
        # Rows with every key masked (lse = -inf) have P = 0; subtracting 0 keeps exp2(-inf - 0) = 0.
        lse = tl.where(lse == float("-inf"), 0.0, lse)
        delta = tl.load(DELTA + q_tok, mask=q_valid, other=0.0)
        s = dot(q, tl.trans(k), PRECISION) * qk_scale
        if HAS_DECAY == BOX_DECAY:
            s += score_bias(q_tok, kv_tok, decay_bias, DECAY)
        if HAS_DECAY == ULTRAVICO:
            slope, cut = ultravico_slope(q_tok, kv_tok, DECAY)
            slope = tl.where(s > 0, slope, 1.0)  # only positive logits are scaled
            s = tl.where(cut, float("-inf"), s * slope)
        p = tl.math.exp2(s - lse[:, None])
        # Padding query rows (only in the last query tile) contribute nothing.
        keep = q_valid[:, None] & kv_valid[None, :]
        if MASKED:
            keep = keep & tile_keep(
                q_tok,
                kv_tok,
                kv_valid,
                WINDOWS,
                HAS_NA,
                NA_GRID,
                NA_KERNEL,
                NA_DILATION,
                NA_STRIDE,
                NA_CAUSAL,
                NA_TEXT,
                HAS_RADIAL,
                RD_GRID,
                RD_SINK,
                RD_TEXT,
            )
        p = tl.where(keep, p, 0.0)
        dv += dot(tl.trans(p.to(do.dtype)), do, PRECISION)
        dp = dot(do, tl.trans(v), PRECISION)
        ds = p * (dp - delta[:, None])
        if HAS_DECAY == ULTRAVICO:
            ds = ds * slope  # d(slope * s)/ds: the rule is linear on each side of zero
        dk += dot(tl.trans(ds.to(q.dtype)), q, PRECISION)
    return dk, dv


@triton.jit
def attention_backward_kv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    Q_ORDER,
    KV_ORDER,
    PARTIAL_INDEX,
    PARTIAL_COUNT,
    FULL_INDEX,
    FULL_COUNT,
    WINDOWS,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_don,
    partial_stride,
    full_stride,
    heads,
    q_len,
    kv_len,
    qk_scale,
    scale,
    decay_bias,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    Q_PERMUTED: tl.constexpr,
    KV_PERMUTED: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_NA: tl.constexpr,
    NA_GRID: tl.constexpr,
    NA_KERNEL: tl.constexpr,
    NA_DILATION: tl.constexpr,
    NA_STRIDE: tl.constexpr,
    NA_CAUSAL: tl.constexpr,
    NA_TEXT: tl.constexpr,
    HAS_RADIAL: tl.constexpr,
    RD_GRID: tl.constexpr,
    RD_SINK: tl.constexpr,
    RD_TEXT: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    DECAY: tl.constexpr,
):
    """Grid ``(key tiles, batch * heads)``; ``DK``/``DV`` are contiguous ``[B, H, Nk, D]`` like ``K``/``V``'s shape."""
    tile_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    LSE += bh.to(tl.int64) * q_len
    DELTA += bh.to(tl.int64) * q_len
    DK += bh.to(tl.int64) * kv_len * HEAD_DIM
    DV += bh.to(tl.int64) * kv_len * HEAD_DIM_V

    kv_tok, kv_valid = load_tokens(KV_ORDER, tile_n * BLOCK_N, kv_len, BLOCK_N, KV_PERMUTED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_mask = kv_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    v_mask = kv_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    k = tl.load(K + kv_tok[:, None] * stride_kn + offs_d[None, :], mask=k_mask, other=0.0)
    v = tl.load(V + kv_tok[:, None] * stride_vn + offs_dv[None, :], mask=v_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    dk, dv = _visit_query_tiles(
        dk,
        dv,
        k,
        v,
        kv_tok,
        kv_valid,
        Q,
        DO,
        LSE,
        DELTA,
        PARTIAL_INDEX + tile_n * partial_stride,
        tl.load(PARTIAL_COUNT + tile_n),
        Q_ORDER,
        WINDOWS,
        stride_qn,
        stride_don,
        q_len,
        qk_scale,
        decay_bias,
        True,
        Q_PERMUTED,
        BLOCK_M,
        BLOCK_D,
        BLOCK_DV,
        HEAD_DIM,
        HEAD_DIM_V,
        PRECISION,
        HAS_NA,
        NA_GRID,
        NA_KERNEL,
        NA_DILATION,
        NA_STRIDE,
        NA_CAUSAL,
        NA_TEXT,
        HAS_RADIAL,
        RD_GRID,
        RD_SINK,
        RD_TEXT,
        HAS_DECAY,
        DECAY,
    )
    dk, dv = _visit_query_tiles(
        dk,
        dv,
        k,
        v,
        kv_tok,
        kv_valid,
        Q,
        DO,
        LSE,
        DELTA,
        FULL_INDEX + tile_n * full_stride,
        tl.load(FULL_COUNT + tile_n),
        Q_ORDER,
        WINDOWS,
        stride_qn,
        stride_don,
        q_len,
        qk_scale,
        decay_bias,
        False,
        Q_PERMUTED,
        BLOCK_M,
        BLOCK_D,
        BLOCK_DV,
        HEAD_DIM,
        HEAD_DIM_V,
        PRECISION,
        HAS_NA,
        NA_GRID,
        NA_KERNEL,
        NA_DILATION,
        NA_STRIDE,
        NA_CAUSAL,
        NA_TEXT,
        HAS_RADIAL,
        RD_GRID,
        RD_SINK,
        RD_TEXT,
        HAS_DECAY,
        DECAY,
    )
    # dS is taken with respect to the scaled logits; the chain rule brings the (natural) scale back.
    tl.store(DK + kv_tok[:, None] * HEAD_DIM + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=k_mask)
    tl.store(DV + kv_tok[:, None] * HEAD_DIM_V + offs_dv[None, :], dv.to(DV.dtype.element_ty), mask=v_mask)
