"""``visattn bench``: sparse attention timed against dense SDPA, compiled FlexAttention, xformers and NATTEN.

The importable API: :func:`visattn.bench.configs.configurations` (the layouts of real models),
:func:`visattn.bench.runner.run_benchmark` (times every method on every configuration),
:func:`visattn.bench.report.write_report` (JSON, markdown table, PNG chart) and
:func:`visattn.bench.end_to_end.wan_forward` (one Wan2.1-1.3B transformer forward, dense vs sparse).
"""

from .configs import BenchConfig, configurations
from .report import write_report
from .runner import BenchResult, run_benchmark

__all__ = ["BenchConfig", "BenchResult", "configurations", "run_benchmark", "write_report"]
