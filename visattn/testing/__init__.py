"""Tiny, offline, deterministic diffusers models and pipelines for tests.

Every family in :data:`FAMILIES` gets a full pipeline with random weights small enough to run a two-step
call in well under two seconds on a laptop CPU, with CLIP/T5/Llama tokenizers built in code (see
:mod:`visattn.testing.tokenizers`). Nothing here touches the network.

>>> pipe = tiny_pipeline("sd")
>>> out = pipe(**call_kwargs("sd"))
>>> latent_grid("sd", call_kwargs("sd"))
(1, 16, 16)
"""

from visattn.testing.grids import Grid
from visattn.testing.pipelines import (
    FAMILIES,
    call_kwargs,
    denoiser_of,
    family_spec,
    latent_grid,
    tiny_denoiser,
    tiny_pipeline,
)
from visattn.testing.tokenizers import (
    TOKENIZER_KINDS,
    clip_tokenizer,
    llama_tokenizer,
    t5_tokenizer,
    text_tokenizer,
)
from visattn.testing.vocab import VOCABULARY

__all__ = [
    "FAMILIES",
    "TOKENIZER_KINDS",
    "VOCABULARY",
    "Grid",
    "call_kwargs",
    "clip_tokenizer",
    "denoiser_of",
    "family_spec",
    "latent_grid",
    "llama_tokenizer",
    "t5_tokenizer",
    "text_tokenizer",
    "tiny_denoiser",
    "tiny_pipeline",
]
