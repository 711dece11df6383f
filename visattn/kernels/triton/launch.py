"""Host side of the fused kernels: tile configurations, autotuning, plans, and the launches themselves.

Tile sizes are chosen on the host, not by the autotuner, because the block metadata (which key tiles each query
tile visits, and the tile-aligned token order) depends on them; the autotuner on CUDA picks ``num_warps`` (4, 8)
and ``num_stages`` (2, 3) per (head dim, tile sizes, lengths). Tiles (queries x keys):

==================================  ==========  ============  ===========
case                                forward     backward dKV  backward dQ
==================================  ==========  ============  ===========
CUDA, fp16/bf16, head_dim <= 64      128 x 64    64 x 64       64 x 64
CUDA, fp16/bf16, head_dim <= 128     64 x 64     32 x 64       64 x 32
CUDA, fp32 or head_dim > 128         64 x 32     32 x 32       32 x 32
Triton interpreter (CPU)             16 x 16     16 x 16       16 x 16
==================================  ==========  ============  ===========

How they were chosen, without a GPU: the kernels were compiled for sm_90 (bf16, a 3-D neighborhood with text)
and ``ptxas -v`` read. The in-kernel pattern arithmetic costs registers, so the tutorial's 128 x 64 forward tile
spills at head_dim 128 (1.6 KB with 4 warps, 40 B with 8) while 64 x 64 with 8 warps does not; the backward tiles
above are the largest that compiled without spills at 8 warps. Nothing here was timed: no GPU performance figure
is claimed. The head dimension is padded to a power of two >= 16 inside the kernels (``tl.dot`` needs it);
fp32 inputs use IEEE fp32 products (``input_precision="ieee"``), fp16/bf16 the tensor cores with fp32
accumulation. Under the interpreter there is no autotuning: one fixed configuration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from .backward_kv import attention_backward_kv_kernel
from .backward_q import attention_backward_q_kernel
from .forward import attention_forward_kernel
from .kernel_spec import KernelSpec
from .plan import Plan, get_plan

__all__ = ["INTERPRETED", "TileConfig", "backward", "forward", "tile_config"]

# Whether the kernels were decorated under TRITON_INTERPRET=1 (decided when this package was first imported).
INTERPRETED: bool = type(attention_forward_kernel).__name__ == "InterpretedFunction"

_AUTOTUNE_KEY = ["HEAD_DIM", "HEAD_DIM_V", "BLOCK_M", "BLOCK_N", "q_len", "kv_len"]


@dataclass(frozen=True)
class TileConfig:
    """``(queries, keys)`` per tile for each kernel."""

    forward: tuple[int, int]
    backward_kv: tuple[int, int]
    backward_q: tuple[int, int]


def tile_config(head_dim: int, dtype: torch.dtype) -> TileConfig:
    """Query x key tile sizes for the forward and the backward kernels (see the module table)."""
    if INTERPRETED:
        return TileConfig((16, 16), (16, 16), (16, 16))
    if dtype in (torch.float16, torch.bfloat16) and head_dim <= 64:
        return TileConfig((128, 64), (64, 64), (64, 64))
    if dtype in (torch.float16, torch.bfloat16) and head_dim <= 128:
        return TileConfig((64, 64), (32, 64), (64, 32))
    return TileConfig((64, 32), (32, 32), (32, 32))


def _autotune_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=warps, num_stages=stages) for warps in (4, 8) for stages in (2, 3)]


@functools.cache
def _tuned(kernel):
    """``kernel`` wrapped in ``triton.autotune`` (CUDA) or as is (interpreter)."""
    if INTERPRETED:
        return kernel
    return triton.autotune(configs=_autotune_configs(), key=_AUTOTUNE_KEY)(kernel)


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "ieee"  # not TF32: fp32 inputs get fp32 products, as the reference computes them
    if dtype == torch.bfloat16 and INTERPRETED:
        return "upcast"  # see visattn.kernels.triton.ops
    return "tf32"  # ignored for fp16/bf16 operands: tensor cores with fp32 accumulation


_WINDOWS: dict[tuple, torch.Tensor] = {}


def _windows(spec: KernelSpec, device: torch.device) -> torch.Tensor:
    """Radial Attention's per-distance window table on ``device`` (a dummy entry when there is none)."""
    values = spec.radial_windows or (0,)
    key = (values, str(device))
    table = _WINDOWS.get(key)
    if table is None:
        table = torch.tensor(values, dtype=torch.int32, device=device)
        _WINDOWS[key] = table
    return table


def _order_arg(order: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    # The kernels never read the order when it is the identity (constexpr flag), but need a pointer.
    return order if order is not None else torch.zeros(1, dtype=torch.int32, device=device)


def _strides(tensor: torch.Tensor) -> tuple[int, int, int]:
    return tensor.stride(0), tensor.stride(1), tensor.stride(2)


def unit_last_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels index the head dimension with stride 1; everything else may be strided (no copy then)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _plan(spec: KernelSpec, q: torch.Tensor, k: torch.Tensor, blocks: tuple[int, int]) -> Plan:
    return get_plan(spec, q.shape[2], k.shape[2], blocks[0], blocks[1], q.device)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: KernelSpec,
    scale: float,
    blend: torch.Tensor | None,
    return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the forward kernel; ``blend`` is ``[B, H, Nq]`` fp32 (any strides) or ``None``."""
    batch, heads, q_len, head_dim = q.shape
    kv_len, head_dim_v = k.shape[2], v.shape[3]
    config = tile_config(head_dim, q.dtype)
    block_m, block_n = config.forward
    plan = _plan(spec, q, k, config.forward)
    out = torch.empty(batch, heads, q_len, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device) if return_lse else out
    blend_arg = blend if blend is not None else out
    blend_strides = (blend.stride(0), blend.stride(1), blend.stride(2)) if blend is not None else (0, 0, 0)
    lists = plan.by_query
    grid = (triton.cdiv(q_len, block_m), batch * heads)
    _tuned(attention_forward_kernel)[grid](
        q,
        k,
        v,
        out,
        lse,
        blend_arg,
        _order_arg(plan.q_order, q.device),
        _order_arg(plan.kv_order, q.device),
        lists.partial_index,
        lists.partial_count,
        lists.full_index,
        lists.full_count,
        _windows(spec, q.device),
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(out),
        *blend_strides,
        lists.partial_index.stride(0),
        lists.full_index.stride(0),
        heads,
        q_len,
        kv_len,
        scale * spec.logit_multiplier * 1.4426950408889634,  # log2(e): the kernels work in base 2
        spec.decay_bias,
        HEAD_DIM=head_dim,
        HEAD_DIM_V=head_dim_v,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=_block_d(head_dim),
        BLOCK_DV=_block_d(head_dim_v),
        Q_PERMUTED=plan.q_order is not None,
        KV_PERMUTED=plan.kv_order is not None,
        PRECISION=_precision(q.dtype),
        RETURN_LSE=return_lse,
        HAS_BLEND=blend is not None,
        **spec.constexprs,
    )
    return out, (lse if return_lse else None)


def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    spec: KernelSpec,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` from the forward's output and log-sum-exp (and the gradient of the lse, if any)."""
    batch, heads, q_len, head_dim = q.shape
    kv_len, head_dim_v = k.shape[2], v.shape[3]
    config = tile_config(head_dim, q.dtype)
    grad_out = unit_last_stride(grad_out)
    # delta_i = sum_j P_ij dP_ij = rowsum(dO * O); a gradient on the lse enters as -dlse (d lse / d S = P).
    delta = (grad_out.float() * out.float()).sum(dim=-1)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    delta = delta.contiguous()
    lse = lse.contiguous()
    dq = torch.empty(batch, heads, q_len, head_dim, dtype=q.dtype, device=q.device)
    dk = torch.empty(batch, heads, kv_len, head_dim, dtype=k.dtype, device=k.device)
    dv = torch.empty(batch, heads, kv_len, head_dim_v, dtype=v.dtype, device=v.device)
    windows = _windows(spec, q.device)

    def constexprs(plan: Plan) -> dict:
        return dict(
            HEAD_DIM=head_dim,
            HEAD_DIM_V=head_dim_v,
            BLOCK_M=plan.block_m,
            BLOCK_N=plan.block_n,
            BLOCK_D=_block_d(head_dim),
            BLOCK_DV=_block_d(head_dim_v),
            Q_PERMUTED=plan.q_order is not None,
            KV_PERMUTED=plan.kv_order is not None,
            PRECISION=_precision(q.dtype),
            **spec.constexprs,
        )

    qk_scale = scale * spec.logit_multiplier * 1.4426950408889634
    natural_scale = scale * spec.logit_multiplier
    # Each kernel has its own tile sizes, hence its own plan (both cached).
    plan = _plan(spec, q, k, config.backward_kv)
    by_key = plan.by_key
    _tuned(attention_backward_kv_kernel)[(triton.cdiv(kv_len, plan.block_n), batch * heads)](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        dk,
        dv,
        _order_arg(plan.q_order, q.device),
        _order_arg(plan.kv_order, q.device),
        by_key.partial_index,
        by_key.partial_count,
        by_key.full_index,
        by_key.full_count,
        windows,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(grad_out),
        by_key.partial_index.stride(0),
        by_key.full_index.stride(0),
        heads,
        q_len,
        kv_len,
        qk_scale,
        natural_scale,
        spec.decay_bias,
        **constexprs(plan),
    )
    plan = _plan(spec, q, k, config.backward_q)
    by_query = plan.by_query
    _tuned(attention_backward_q_kernel)[(triton.cdiv(q_len, plan.block_m), batch * heads)](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        dq,
        _order_arg(plan.q_order, q.device),
        _order_arg(plan.kv_order, q.device),
        by_query.partial_index,
        by_query.partial_count,
        by_query.full_index,
        by_query.full_count,
        windows,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(grad_out),
        by_query.partial_index.stride(0),
        by_query.full_index.stride(0),
        heads,
        q_len,
        kv_len,
        qk_scale,
        natural_scale,
        spec.decay_bias,
        **constexprs(plan),
    )
    return dq, dk, dv
