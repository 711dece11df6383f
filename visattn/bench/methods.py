"""The attention implementations ``visattn bench`` times, each prepared once per configuration.

A method turns ``(config, q, k, v)`` into a zero-argument callable (so timing measures only the attention
call, not mask construction), or raises :class:`Unavailable` with the reason it cannot run here. Baselines are
written the way a user would write them: torch SDPA with its fastest backend, ``torch.compile(flex_attention)``
with a ``BlockMask`` from the same ``mask_mod`` in the natural (row-major) token order, xformers'
``memory_efficient_attention``; NATTEN and the visattn backends go through :func:`visattn.kernels.attention`, and
``auto`` is what visattn chooses by itself (``backend="auto"``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from ..kernels import attention, available_backends
from ..kernels.request import AttentionRequest
from .configs import BenchConfig

Thunk = Callable[[], torch.Tensor]


class Unavailable(Exception):
    """A method that cannot run this configuration here, with the reason."""


def _sdpa(config: BenchConfig, q, k, v, time_fn) -> Thunk:
    if config.kind != "dense":
        raise Unavailable("dense only (it is the baseline every sparse configuration is compared with)")
    import torch.nn.functional as F

    if q.device.type != "cuda":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # "Its best backend": time each fused backend that accepts these inputs and keep the fastest.
    best: tuple[float, SDPBackend] | None = None
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):

        def call(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        try:
            ms = time_fn(call)
        except RuntimeError:  # backend not supported for this dtype / head_dim / device
            continue
        if best is None or ms < best[0]:
            best = (ms, backend)
    if best is None:
        return lambda: F.scaled_dot_product_attention(q, k, v)
    chosen = best[1]

    def fastest():
        with sdpa_kernel(chosen):
            return F.scaled_dot_product_attention(q, k, v)

    fastest.label = chosen.name  # type: ignore[attr-defined]
    return fastest


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(config: BenchConfig, q, k, v, time_fn) -> Thunk:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    pattern = config.pattern()
    block_mask = None
    if pattern is not None:

        def mask_mod(b, h, q_idx, kv_idx):
            return pattern.mask_mod(b, h, q_idx, kv_idx)

        n = q.shape[2]
        block_mask = create_block_mask(mask_mod, None, None, n, n, device=q.device, _compile=q.device.type == "cuda")
    if q.device.type == "cuda":
        return lambda: _compiled_flex()(q, k, v, block_mask=block_mask)

    # Compiling for CPU takes minutes and is not what the benchmark is about: eager flex is the CPU stand-in.
    def eager():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=block_mask)

    return eager


def _xformers(config: BenchConfig, q, k, v, time_fn) -> Thunk:
    if config.kind != "dense":
        raise Unavailable("xformers has no neighborhood or radial pattern; dense only")
    try:
        import xformers.ops as xops
    except ImportError as exc:
        raise Unavailable("xformers is not installed (pip install visattn[xformers])") from exc
    if q.device.type != "cuda":
        raise Unavailable("xformers needs CUDA")
    # xformers wants [B, N, H, D]
    qx, kx, vx = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return lambda: xops.memory_efficient_attention(qx, kx, vx)


def _visattn_backend(name: str):
    def prepare(config: BenchConfig, q, k, v, time_fn) -> Thunk:
        ok, reason = available_backends().get(name, (False, f"backend {name!r} is not registered"))
        if not ok:
            raise Unavailable(reason)
        if name == "triton" and q.device.type != "cuda":
            raise Unavailable("Triton kernels are timed on CUDA only (the CPU interpreter is for correctness)")
        pattern = config.pattern()
        from ..kernels.core import _BACKENDS

        if not _BACKENDS[name].supports(AttentionRequest(q, k, v, pattern=pattern)):
            raise Unavailable(f"backend {name!r} does not support the {config.kind} pattern of {config.name}")
        return lambda: attention(q, k, v, pattern=pattern, backend=name)

    return prepare


def _auto(config: BenchConfig, q, k, v, time_fn) -> Thunk:
    """visattn's ``backend="auto"``: its first call decides (measuring when the call qualifies), untimed.

    The result's note names the backend it chose and why; the full record (each candidate's time) goes into the
    report's ``autotune`` section.
    """
    from ..kernels.core import auto_decision

    pattern = config.pattern()
    request = AttentionRequest(q, k, v, pattern=pattern)

    def call():
        out = attention(q, k, v, pattern=pattern)
        decision = auto_decision(request) if pattern is not None else None
        label = f"-> {decision.backend}, {decision.reason}" if decision else "-> sdpa, plain call"
        call.label = label  # type: ignore[attr-defined]
        return out

    return call


#: method name -> preparer; the order is the report's column order
METHODS: dict[str, Callable[..., Thunk]] = {
    "sdpa": _sdpa,
    "flex": _flex,
    "xformers": _xformers,
    "natten": _visattn_backend("natten"),
    "triton": _visattn_backend("triton"),
    "reference": _visattn_backend("reference"),
    "auto": _auto,
}
