"""``fused_attention``: the fused kernels as a differentiable function of ``q``, ``k`` and ``v``.

When no input needs a gradient the forward kernel runs alone, with the identity blend fused into its epilogue.
When one does (LoRA fine-tuning through a visattn processor), :class:`FusedAttention` saves ``q, k, v``, the
output and the log-sum-exp, and its backward recomputes the probabilities tile by tile (FlashAttention-2,
Dao 2023) in :mod:`~visattn.kernels.triton.backward_kv` and :mod:`~visattn.kernels.triton.backward_q`; the
identity blend is then applied with ``torch.lerp`` around it so that its own gradient (to ``v`` and to the
blend weight) comes from autograd. The returned log-sum-exp is differentiable as well.
"""

from __future__ import annotations

import torch

from ..patterns import Pattern, ScoreModifier
from . import launch
from .kernel_spec import KernelSpec, Unsupported, describe

__all__ = ["FusedAttention", "check_inputs", "fused_attention"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


class FusedAttention(torch.autograd.Function):
    """Block-sparse flash attention with a backward; returns ``(out, lse)``."""

    @staticmethod
    def forward(ctx, q, k, v, spec: KernelSpec, scale: float):
        out, lse = launch.forward(q, k, v, spec, scale, None, True)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec, ctx.scale = spec, scale
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = launch.backward(q, k, v, out, lse, grad_out, grad_lse, ctx.spec, ctx.scale)
        return dq, dk, dv, None, None


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError, naming the tensor and the numbers, when the kernels cannot take these inputs."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, tokens, head_dim]; got shape {tuple(tensor.shape)}")
        if tensor.dtype not in DTYPES:
            raise ValueError(f"{name} has dtype {tensor.dtype}; the Triton kernels take float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share batch and heads, and k and v "
            f"their token count"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k head_dim differ: {q.shape[3]} vs {k.shape[3]}")
    if q.shape[3] > MAX_HEAD_DIM or v.shape[3] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[3]} / value dim {v.shape[3]} exceeds {MAX_HEAD_DIM}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"empty sequence: {q.shape[2]} queries, {k.shape[2]} keys")
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        # Token rows are addressed with int32 offsets inside a (batch, head) slice (batch/head offsets are int64).
        if (tensor.shape[2] - 1) * tensor.stride(2) + tensor.shape[3] >= 2**31:
            raise ValueError(
                f"{name} spans {tensor.shape[2]} tokens with token stride {tensor.stride(2)}: over 2**31 elements "
                f"within one (batch, head), beyond the kernels' int32 token offsets"
            )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if launch.INTERPRETED and q.device.type != "cpu":
        raise ValueError(f"the Triton interpreter runs on CPU tensors; got device {q.device}")
    if not launch.INTERPRETED and q.device.type != "cuda":
        raise ValueError(
            f"the compiled Triton kernels need CUDA tensors; got device {q.device} (set TRITON_INTERPRET=1 before "
            f"visattn.kernels.triton is imported to run them on CPU under Triton's interpreter)"
        )


def _blend_rows(blend: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``identity_blend`` as a ``[B, H, Nq]`` fp32 view (broadcast dimensions get stride 0, no copy)."""
    batch, heads, q_len = q.shape[:3]
    try:
        expanded = blend.to(device=q.device, dtype=torch.float32).expand(batch, heads, q_len, 1)
    except RuntimeError as error:
        raise ValueError(
            f"identity_blend shape {tuple(blend.shape)} must broadcast to [B, H, Nq, 1] = "
            f"{[batch, heads, q_len, 1]} ({error})"
        ) from None
    return expanded[..., 0]


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    pattern: Pattern | None = None,
    score_mod: ScoreModifier | None = None,
    scale: float | None = None,
    identity_blend: torch.Tensor | None = None,
    return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse flash attention with the pattern computed in the kernel; returns ``(out, lse or None)``.

    Args:
        q, k, v: ``[B, H, Nq, D]``, ``[B, H, Nk, D]``, ``[B, H, Nk, Dv]``; float16, bfloat16 or float32; any
            strides with a unit stride on the last dimension avoid a copy (diffusers' ``[B, N, H, D]`` transposed).
        pattern, score_mod: see :func:`visattn.kernels.triton.kernel_spec.describe` for what is supported.
        scale: logit scale, default ``1/sqrt(D)``.
        identity_blend: weight ``s`` broadcastable to ``[B, H, Nq, 1]``: ``(1 - s) * attention + s * v``
            (SoftPAG). Needs ``Nq == Nk`` and ``Dv``-sized values at each query's own position.
        return_lse: also return the natural-log log-sum-exp ``[B, H, Nq]`` (fp32).

    Raises:
        ValueError: for inputs the kernels cannot take, naming the argument and the value.
    """
    check_inputs(q, k, v)
    try:
        spec = describe(pattern, score_mod)
    except Unsupported as error:
        raise ValueError(f"pattern={pattern!r} / score_mod={score_mod!r}: {error}") from None
    if identity_blend is not None and q.shape[2] != k.shape[2]:
        raise ValueError(
            f"identity_blend needs as many queries as keys; got {q.shape[2]} queries and {k.shape[2]} keys"
        )
    scale = float(scale) if scale is not None else q.shape[-1] ** -0.5
    q, k, v = (launch.unit_last_stride(t) for t in (q, k, v))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not needs_grad:
        blend = _blend_rows(identity_blend, q) if identity_blend is not None else None
        return launch.forward(q, k, v, spec, scale, blend, return_lse)
    out, lse = FusedAttention.apply(q, k, v, spec, scale)
    if identity_blend is not None:
        weight = identity_blend.to(device=out.device, dtype=out.dtype)
        out = torch.lerp(out, v.to(out.dtype), weight)
    return out, (lse if return_lse else None)
