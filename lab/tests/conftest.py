"""The lab's test configuration: the same deterministic CPU threads as tests/conftest.py."""

from __future__ import annotations

import os

# On 2 cores, OpenMP threads that spin while waiting starve each other and make the tiny-model calls many times
# slower; passive waiting keeps the tests fast. Must be set before torch loads (as in tests/conftest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(2)
