"""Fused Triton backend: block-sparse flash attention that computes the pattern inside the kernel.

See :mod:`visattn.kernels.triton` for what the kernels do, their tile sizes and autotune configurations, and
what they support. This module adapts them to the backend interface. Importing it does not import Triton;
:func:`availability` does, on first use.

``backend="auto"`` times this backend against the others where it is compiled (CUDA) and never picks it without
measuring, nor under Triton's CPU interpreter (:func:`auto_candidate`). Ask for it with ``backend="triton"``.

The identity blend is left to :func:`visattn.kernels.core.run_request`, which applies it after every backend
(``torch.lerp``); :func:`visattn.kernels.triton.fused_attention` fuses it into the kernel when called directly.
"""

from __future__ import annotations

import importlib

import torch

from ..request import AttentionRequest

NAME = "triton"


def _kernels():
    return importlib.import_module("visattn.kernels.triton")


def availability() -> tuple[bool, str]:
    try:
        kernels = _kernels()
    except ImportError as error:
        return False, f"triton is not importable ({error})"
    if kernels.INTERPRETED:
        return True, "fused Triton kernels under Triton's interpreter (TRITON_INTERPRET=1; CPU, slow, for tests)"
    if torch.cuda.is_available():
        return True, "fused block-sparse Triton kernels, pattern computed in-kernel (CUDA)"
    return False, (
        "no CUDA device; the Triton kernels run on CPU only under Triton's interpreter "
        "(set TRITON_INTERPRET=1 before visattn.kernels.triton is imported)"
    )


def supports(request: AttentionRequest) -> bool:
    """True when the kernels compute ``request`` exactly: no model mask, supported pattern/modifier and inputs."""
    if request.attn_mask is not None:
        return False
    if not availability()[0]:
        return False
    kernels = _kernels()
    try:
        kernels.autograd.check_inputs(request.q, request.k, request.v)
        kernels.describe(request.pattern, request.score_mod)
    except (ValueError, kernels.Unsupported):
        return False
    return True


def run(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    return _kernels().fused_attention(
        request.q,
        request.k,
        request.v,
        pattern=request.pattern,
        score_mod=request.score_mod,
        scale=request.scale,
        return_lse=request.return_lse,
    )


def auto_candidate(request: AttentionRequest) -> bool:
    """Whether ``backend="auto"`` may time this backend: not under Triton's CPU interpreter (minutes per call)."""
    return not _kernels().INTERPRETED
