"""Tiny, offline, deterministic diffusers models and pipelines: the ``tiny`` model of the CLI and demo, the subjects
of ``visattn bench``, and a way to try any effect on any family without downloading weights.

Every pipeline in :data:`TINY_PIPELINES` (named by its family key, see :mod:`visattn.families`) is a full
pipeline with random weights small enough to run a two-step call in well under two seconds on a laptop CPU,
with CLIP/T5/Llama tokenizers built in code (see :mod:`visattn.tiny.tokenizers`). Nothing here touches the network.
:mod:`visattn.tiny.denoisers` holds a tiny instance of every covered denoiser class, and :mod:`visattn.tiny.probes`
records what visattn sees on a model. (The test scaffolding built on them, the coverage checks and the
multi-process harness, lives in the repository's ``tests/harness`` and is not installed.)

>>> pipe = tiny_pipeline("unet")
>>> out = pipe(**call_kwargs("unet"))
>>> latent_grid("unet", call_kwargs("unet"))
(1, 16, 16)
"""

from visattn.tiny.grids import Grid
from visattn.tiny.pipelines import (
    COVERAGE_PIPELINES,
    TINY_PIPELINES,
    VIDEO_PIPELINES,
    call_kwargs,
    denoiser_of,
    latent_grid,
    pipeline_spec,
    tiny_denoiser,
    tiny_pipeline,
)
from visattn.tiny.tokenizers import (
    TOKENIZER_KINDS,
    clip_tokenizer,
    llama_tokenizer,
    t5_tokenizer,
    text_tokenizer,
)
from visattn.tiny.vocab import VOCABULARY

__all__ = [
    "COVERAGE_PIPELINES",
    "TINY_PIPELINES",
    "VIDEO_PIPELINES",
    "TOKENIZER_KINDS",
    "VOCABULARY",
    "Grid",
    "call_kwargs",
    "clip_tokenizer",
    "denoiser_of",
    "pipeline_spec",
    "latent_grid",
    "llama_tokenizer",
    "t5_tokenizer",
    "text_tokenizer",
    "tiny_denoiser",
    "tiny_pipeline",
]
