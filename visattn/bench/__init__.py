"""``visattn bench``: sparse attention timed against dense SDPA, compiled FlexAttention, xformers and NATTEN.

The importable API: :func:`visattn.bench.configs.configurations` (the layouts of real models),
:func:`visattn.bench.timing.run_benchmark` (times every method on every configuration),
:func:`visattn.bench.report.write_report` (JSON, markdown table, PNG chart),
:func:`visattn.bench.end_to_end.wan_forward` (one Wan2.1-1.3B transformer forward, dense vs sparse) and
:func:`visattn.bench.dispatch.dispatch_benchmark` (what visattn's hooks cost on tiny denoisers, ``--dispatch``).
"""

from .configs import BenchConfig, configurations
from .dispatch import DispatchReport, dispatch_benchmark
from .report import write_report
from .timing import BenchResult, run_benchmark

__all__ = [
    "BenchConfig",
    "BenchResult",
    "DispatchReport",
    "configurations",
    "dispatch_benchmark",
    "run_benchmark",
    "write_report",
]
