"""Time every method on every configuration and derive the figures the kernels issue asks for.

Per (configuration, method): median milliseconds over ``repeats`` runs after ``warmup`` runs (CUDA events on
GPU, ``perf_counter`` on CPU), effective TFLOP/s counting only kept query-key pairs (``4 * B * H * kept * D``:
two matmuls of two FLOPs per multiply-add), speedup over dense SDPA, density efficiency
``t_dense * density / t_sparse`` (1.0 means "time falls exactly with the FLOPs"), speedup over compiled
FlexAttention, and the largest absolute difference from FlexAttention's output (the correctness cross-check).
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

DEFAULT_GPU_METHODS = ("sdpa", "flex", "xformers", "natten", "triton")
DEFAULT_CPU_METHODS = ("sdpa", "flex", "reference")


@dataclass
class BenchResult:
    """One method on one configuration; ``ms`` is None when the method was skipped (``note`` says why)."""

    config: str
    model: str
    kind: str
    method: str
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


def _inputs(config: BenchConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (config.batch, config.heads, config.tokens, config.head_dim)
    return [torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype) for _ in "qkv"]


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
) -> list[BenchResult]:
    """Time ``methods`` on ``configs``; dense SDPA on each model's dense configuration is the baseline.

    Args:
        configs: from :func:`visattn.bench.configurations`; each model's dense configuration must come before
            its sparse ones for speedups to be filled in.
        methods: names from :data:`visattn.bench.methods.METHODS`; default: every GPU method on CUDA, else
            ``sdpa``, eager ``flex`` and ``reference``.
        device, dtype: default CUDA + bf16 when available, else CPU + fp32.
        tile: (query, key) tile used for the visited-tile fraction (a block-sparse kernel's block sizes).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if methods is None:
        methods = DEFAULT_GPU_METHODS if device.type == "cuda" else DEFAULT_CPU_METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods={unknown} not known; available: {', '.join(METHODS)}")
    configs = list(configs)
    dense_ms: dict[str, float] = {}
    results: list[BenchResult] = []
    bar = tqdm(total=len(configs) * len(methods), desc="bench", disable=not progress, unit="run")
    for config in configs:
        q, k, v = _inputs(config, device, dtype)
        pattern = config.pattern()
        dens = density(pattern, config.tokens, tile=tile)

        def timed(fn):
            return time_call(fn, repeats=repeats, warmup=warmup)

        row: dict[str, BenchResult] = {}
        flex_out = None
        for method in methods:
            bar.set_postfix_str(f"{config.name} {method}")
            result = BenchResult(config.name, config.model, config.kind, method)
            result.density, result.tile_fraction = dens.kept_fraction, dens.tile_fraction
            try:
                fn = METHODS[method](config, q, k, v, timed)
                out = fn()
                result.ms = timed(fn)
                result.note = getattr(fn, "label", "")
                if method == "flex":
                    flex_out = out
                elif flex_out is not None:
                    result.max_abs_diff_vs_flex = float((out.float() - flex_out.float()).abs().max())
                del out
            except Unavailable as exc:
                result.note = str(exc)
            except (RuntimeError, torch.OutOfMemoryError) as exc:  # report and go on with the next method
                result.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            row[method] = result
            bar.update()
        if config.kind == "dense" and row.get("sdpa") and row["sdpa"].ms is not None:
            dense_ms[config.model] = row["sdpa"].ms
        _derive(config, row, dense_ms.get(config.model), dens.kept_pairs)
        results.extend(row.values())
        del q, k, v
    bar.close()
    return results


def _derive(config: BenchConfig, row: dict[str, BenchResult], t_dense: float | None, kept_pairs: int) -> None:
    flops = 4.0 * config.batch * config.heads * kept_pairs * config.head_dim
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
