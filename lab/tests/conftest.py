"""The lab's test configuration: the same deterministic CPU threads as tests/conftest.py."""

from __future__ import annotations

import os

# On 2 cores, OpenMP threads that spin while waiting starve each other and make the tiny-model calls many times
# slower; passive waiting keeps the tests fast. Must be set before torch loads (as in tests/conftest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# Two torch threads per process; where pytest-xdist runs the suite in several processes (pyproject's addopts),
# the 2 cores are shared among them: more threads than cores would make each wait for the others.
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
