"""The pipeline ``visattn generate`` uses when no ``--model`` is given.

For now this is ``visattn/tiny-sd``: a tiny Stable Diffusion pipeline with **random weights**, built in code by
:func:`visattn.testing.tiny_pipeline` (so it needs no download and runs a call in well under a second on a CPU).
Its images are structured noise, not pictures; it exists so that the CLI, the effects and the tests run
end-to-end anywhere. It will be replaced by a small trained "toy-world" model; everything that needs the
default goes through :func:`load_default_pipeline`, so swapping it is a change to this file only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: The name recorded as ``model`` in image metadata when the embedded default is used.
DEFAULT_MODEL = "visattn/tiny-sd"

#: Weight seed of the embedded default: fixed so that a given generation seed always gives the same image.
_WEIGHT_SEED = 0


def load_default_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """Build the embedded default pipeline (:data:`DEFAULT_MODEL`) on ``device`` in ``dtype``; nothing is downloaded."""
    # Imported here because visattn.testing builds tokenizers and configs, which the rest of the CLI never needs.
    from visattn.testing import tiny_pipeline

    pipe = tiny_pipeline("sd", seed=_WEIGHT_SEED, dtype=dtype)
    return pipe.to(device)
