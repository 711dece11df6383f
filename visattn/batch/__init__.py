"""Batch generation from a JSONL jobs file (``visattn batch``), sharded across processes with ``accelerate``.

* :mod:`visattn.batch.jobs`: the job format, parsing and validation (errors carry the line number);
* :mod:`visattn.batch.outputs`: atomic writes of PNGs, animated WebPs / MP4s, sidecars and result records;
* :mod:`visattn.batch.runner`: resuming, sharding, running and merging results (:func:`run_batch`).
"""

from __future__ import annotations

from .jobs import Job, JobError, parse_jobs
from .runner import BatchSummary, run_batch

__all__ = ["BatchSummary", "Job", "JobError", "parse_jobs", "run_batch"]
