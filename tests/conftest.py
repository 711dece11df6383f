"""Shared test configuration: deterministic CPU threads and a marker-driven GPU skip."""

from __future__ import annotations

import os

# On 2 cores, OpenMP threads that spin while waiting starve each other (and any parallel job) and make the
# tiny-model calls 10-60x slower; passive waiting keeps the suite fast. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two torch threads per process; where pytest-xdist runs the suite in several processes (pyproject's addopts),
# the 2 cores are shared among them: more threads than cores would make each wait for the others.
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# Without a GPU the Triton kernels are checked under Triton's interpreter (tiny sizes); it must be switched on
# before triton is first imported. FlexAttention on CPU does not use Triton, so nothing else changes.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
