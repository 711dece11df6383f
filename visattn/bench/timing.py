"""Time every method on every configuration and derive the figures the kernels issue asks for.

Per (configuration, method): median milliseconds over ``repeats`` runs after ``warmup`` runs (CUDA events on
GPU, ``perf_counter`` on CPU), effective TFLOP/s counting only kept query-key pairs (``4 * B * H * kept * D``:
two matmuls of two FLOPs per multiply-add), speedup over dense SDPA, density efficiency
``t_dense * density / t_sparse`` (1.0 means "time falls exactly with the FLOPs"), speedup over compiled
FlexAttention, and the largest absolute difference from FlexAttention's output (the correctness cross-check).

With ``backward=True`` each method is also timed on the backward pass alone (the gradients of q, k and v for a
fixed output gradient, the forward graph kept between runs), against dense SDPA's backward, with
``10 * B * H * kept * D`` FLOPs (five matmuls: the recomputed scores, dV, dP, dQ and dK); its correctness
cross-check is the largest difference from FlexAttention's dQ.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..kernels import density
from .configs import BenchConfig
from .methods import METHODS, Unavailable

DEFAULT_GPU_METHODS = ("sdpa", "flex", "xformers", "natten", "triton", "auto")
DEFAULT_CPU_METHODS = ("sdpa", "flex", "reference", "auto")


@dataclass
class BenchResult:
    """One method on one configuration; ``ms`` is None when the method was skipped (``note`` says why)."""

    config: str
    model: str
    kind: str
    method: str
    direction: str = "forward"
    ms: float | None = None
    tflops: float | None = None
    density: float | None = None
    tile_fraction: float | None = None
    speedup_vs_dense: float | None = None
    density_efficiency: float | None = None
    speedup_vs_flex: float | None = None
    max_abs_diff_vs_flex: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def time_call(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA-synchronized when CUDA is in use)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop))
        else:
            begin = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


#: FLOPs per kept query-key pair and head dimension: forward two matmuls, backward five (2 FLOPs per multiply-add).
_FLOPS_PER_PAIR = {"forward": 4.0, "backward": 10.0}


def _inputs(config: BenchConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (config.batch, config.heads, config.tokens, config.head_dim)
    return [torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype) for _ in "qkv"]


def _backward_thunk(fn: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[[], tuple]:
    """The backward pass of ``fn()`` alone: one forward now, then gradients of q, k, v on every call."""
    out = fn()
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def run_benchmark(
    configs: Iterable[BenchConfig],
    *,
    methods: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    repeats: int = 10,
    warmup: int = 3,
    tile: tuple[int, int] = (128, 128),
    progress: bool = True,
    backward: bool = False,
) -> list[BenchResult]:
    """Time ``methods`` on ``configs``; dense SDPA on each model's dense configuration is the baseline.

    Args:
        configs: from :func:`visattn.bench.configurations`; each model's dense configuration must come before
            its sparse ones for speedups to be filled in.
        methods: names from :data:`visattn.bench.methods.METHODS`; default: every GPU method on CUDA, else
            ``sdpa``, eager ``flex`` and ``reference``; both end with ``auto`` (what ``backend="auto"`` chose).
        device, dtype: default CUDA + bf16 when available, else CPU + fp32.
        tile: (query, key) tile used for the visited-tile fraction (a block-sparse kernel's block sizes).
        backward: also time each method's backward pass (see the module docstring).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if methods is None:
        methods = DEFAULT_GPU_METHODS if device.type == "cuda" else DEFAULT_CPU_METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods={unknown} not known; available: {', '.join(METHODS)}")
    configs = list(configs)
    directions = ("forward", "backward") if backward else ("forward",)
    dense_ms: dict[tuple[str, str], float] = {}
    results: list[BenchResult] = []
    bar = tqdm(total=len(configs) * len(methods), desc="bench", disable=not progress, unit="run")
    for config in configs:
        q, k, v = _inputs(config, device, dtype)
        pattern = config.pattern()
        dens = density(pattern, config.tokens, tile=tile)

        def timed(fn):
            return time_call(fn, repeats=repeats, warmup=warmup)

        def timed_forward(fn):
            with torch.no_grad():  # forward timings build no autograd graph, as in inference
                return timed(fn)

        rows: dict[str, dict[str, BenchResult]] = {d: {} for d in directions}
        reference: dict[str, torch.Tensor] = {}  # FlexAttention's output and dQ, the cross-check
        for method in methods:
            bar.set_postfix_str(f"{config.name} {method}")
            for direction in directions:
                result = BenchResult(config.name, config.model, config.kind, method, direction)
                result.density, result.tile_fraction = dens.kept_fraction, dens.tile_fraction
                rows[direction][method] = result
            try:
                fn = METHODS[method](config, q, k, v, timed_forward)
                with torch.no_grad():
                    out = fn()
                _measure(rows["forward"][method], fn, out, reference, "forward", timed_forward)
                rows["forward"][method].note = getattr(fn, "label", "")
                del out
                if backward:
                    # prepared again on inputs that need gradients (FlexAttention refuses those on CPU even
                    # without a graph being recorded, so the forward above runs on plain tensors)
                    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
                    fn = METHODS[method](config, *inputs, timed_forward)
                    grads = _backward_thunk(fn, inputs)
                    _measure(rows["backward"][method], grads, grads()[0], reference, "backward", timed)
                    rows["backward"][method].note = getattr(fn, "label", "")
                    del grads
            except Unavailable as exc:
                for direction in directions:
                    rows[direction][method].note = str(exc)
            except (RuntimeError, torch.OutOfMemoryError) as exc:  # report and go on with the next method
                for direction in directions:
                    if rows[direction][method].ms is None:
                        rows[direction][method].note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            bar.update()
        for direction, row in rows.items():
            sdpa = row.get("sdpa")
            if config.kind == "dense" and sdpa is not None and sdpa.ms is not None:
                dense_ms[(config.model, direction)] = sdpa.ms
            _derive(config, row, dense_ms.get((config.model, direction)), dens.kept_pairs, direction)
            results.extend(row.values())
        del q, k, v, reference
    bar.close()
    return results


def _measure(
    result: BenchResult,
    fn: Callable[[], object],
    output: torch.Tensor,
    reference: dict[str, torch.Tensor],
    direction: str,
    timed: Callable[[Callable[[], object]], float],
) -> None:
    """Time ``fn`` into ``result`` and compare ``output`` with FlexAttention's (which runs first and sets it)."""
    result.ms = timed(fn)
    if result.method == "flex":
        reference[direction] = output.detach()
    elif direction in reference:
        result.max_abs_diff_vs_flex = float((output.float() - reference[direction].float()).abs().max())


def _derive(
    config: BenchConfig, row: dict[str, BenchResult], t_dense: float | None, kept_pairs: int, direction: str
) -> None:
    flops = _FLOPS_PER_PAIR[direction] * config.batch * config.heads * kept_pairs * config.head_dim
    t_flex = row["flex"].ms if "flex" in row else None
    for result in row.values():
        if result.ms is None:
            continue
        result.tflops = flops / (result.ms * 1e-3) / 1e12
        if t_dense is not None:
            result.speedup_vs_dense = t_dense / result.ms
            result.density_efficiency = t_dense * result.density / result.ms
        if t_flex is not None and result.method != "flex":
            result.speedup_vs_flex = t_flex / result.ms
