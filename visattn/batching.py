"""Growing a denoiser call's batch with extra branches, and reading its prediction back.

Guidance effects add rows to the batch (a perturbed twin of the conditional rows, as diffusers' PAG pipelines
do) without a pipeline subclass: every input tensor whose leading dimension is the batch is re-indexed, the
denoiser runs once on the larger batch, and the extra rows are folded back into the prediction the pipeline
expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# Inputs that are per-token, not per-sample, even when their length happens to equal the batch size.
NOT_BATCHED = frozenset({"img_ids", "txt_ids", "image_rotary_emb", "rotary_emb", "attention_kwargs"})


def take_rows(value: Any, index: torch.Tensor, batch_size: int) -> Any:
    """``value`` with every batch-leading tensor (recursively in dicts, lists, tuples) indexed by ``index``."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == batch_size:
            return value.index_select(0, index.to(value.device))
        return value
    if isinstance(value, Mapping):
        return type(value)({k: v if k in NOT_BATCHED else take_rows(v, index, batch_size) for k, v in value.items()})
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(take_rows(v, index, batch_size) for v in value)
    return value


def take_input_rows(args: tuple, kwargs: dict, index: torch.Tensor, batch_size: int) -> tuple[tuple, dict]:
    """The denoiser's positional and keyword inputs, re-indexed along the batch."""
    new_args = tuple(take_rows(arg, index, batch_size) for arg in args)
    new_kwargs = {k: v if k in NOT_BATCHED else take_rows(v, index, batch_size) for k, v in kwargs.items()}
    return new_args, new_kwargs


def prediction_of(output: Any) -> torch.Tensor:
    """The predicted tensor of a denoiser output (``return_dict`` on or off)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def with_prediction(output: Any, prediction: torch.Tensor) -> Any:
    """``output`` of the same kind with its predicted tensor replaced."""
    if isinstance(output, torch.Tensor):
        return prediction
    if isinstance(output, tuple):
        return (prediction, *output[1:])
    output.sample = prediction
    return output
