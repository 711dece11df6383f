"""Batch generation from a JSONL jobs file (``visattn batch``), sharded across processes with ``accelerate``.

* :mod:`visattn.batch.jobs`: the job format, parsing and validation, line by line (errors carry the line number),
  and the output names, which no two jobs share;
* :mod:`visattn.batch.models`: what the model makes (images or videos), read before it loads, so a video job for
  an image model is an invalid line;
* :mod:`visattn.batch.outputs`: atomic writes of PNGs, animated WebPs / MP4s, sidecars and result records;
* :mod:`visattn.batch.lock`: one launch per output folder (a lock file naming its owner);
* :mod:`visattn.batch.execute`: resuming, sharding, running and merging results (:func:`run_batch`).

See ``docs/batch.md``.
"""

from __future__ import annotations

from .execute import BatchSummary, run_batch
from .jobs import Job, JobError, parse_jobs
from .lock import FolderLocked

__all__ = ["BatchSummary", "FolderLocked", "Job", "JobError", "parse_jobs", "run_batch"]
