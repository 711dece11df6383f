"""Growing a denoiser call's batch with extra branches, and reading its prediction back.

Guidance effects add rows to the batch (a perturbed twin of the conditional rows, as diffusers' PAG pipelines
do) without a pipeline subclass: every input tensor whose leading dimension is the batch is re-indexed, the
denoiser runs once on the larger batch, and the extra rows are folded back into the prediction the pipeline
expects. Inputs that carry the batch otherwise (per-sample lists, text repeated per frame, a batch on a later
axis, per-token indices) are declared per family (:data:`visattn.families.Family.batch_inputs`) and re-indexed
as declared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .families.base import FOLDED, NOT_BATCHED_INPUT, PER_SAMPLE_LIST, BatchInput

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


def take_declared_rows(value: Any, how: int | str, index: torch.Tensor, batch_size: int, name: str) -> Any:
    """``value`` re-indexed along the batch as its family declares it carries the batch (``how``).

    ``how`` is :data:`~visattn.families.base.NOT_BATCHED_INPUT` (shared by every row: unchanged),
    :data:`~visattn.families.base.PER_SAMPLE_LIST` (a list with one item per row),
    :data:`~visattn.families.base.FOLDED` (``m`` consecutive rows per sample along the leading axis, ``(b m)``),
    or the axis of the batch.

    Raises:
        ValueError: the input does not have the batch where its family says (the declaration is wrong for it).
    """
    if how == NOT_BATCHED_INPUT or value is None:
        return value
    if how == PER_SAMPLE_LIST:
        if not isinstance(value, (list, tuple)) or len(value) != batch_size:
            raise ValueError(
                f"input {name!r} should be a list of one item per batch row ({batch_size}); got {value!r:.80}"
            )
        return type(value)(value[i] for i in index.tolist())
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"input {name!r} should be a tensor carrying the batch; got {type(value).__name__}")
    if how == FOLDED:
        if value.dim() == 0 or value.shape[0] % batch_size:
            raise ValueError(
                f"input {name!r} should fold the batch ({batch_size}) into its leading axis; got {tuple(value.shape)}"
            )
        per_sample = value.shape[0] // batch_size
        rows = value.reshape(batch_size, per_sample, *value.shape[1:]).index_select(0, index.to(value.device))
        return rows.reshape(-1, *value.shape[1:])
    if not isinstance(how, int) or value.dim() <= how or value.shape[how] != batch_size:
        raise ValueError(f"input {name!r} should have the batch ({batch_size}) on axis {how}; got {tuple(value.shape)}")
    return value.index_select(how, index.to(value.device))


def take_input_rows(
    args: tuple,
    kwargs: dict,
    index: torch.Tensor,
    batch_size: int,
    declared: Sequence[BatchInput] = (),
) -> tuple[tuple, dict]:
    """The denoiser's positional and keyword inputs, re-indexed along the batch.

    Args:
        declared: the family's inputs that do not lead with the batch, and how each carries it
            (:data:`visattn.families.Family.batch_inputs`); every other batch-leading tensor is re-indexed on its
            leading axis.
    """
    new_args, new_kwargs = list(args), dict(kwargs)
    done_args, done_kwargs = set(), set()
    for argument, how in declared:
        name = next((n for n in argument.names if n in kwargs), None)
        if name is not None:
            new_kwargs[name] = take_declared_rows(kwargs[name], how, index, batch_size, name)
            done_kwargs.add(name)
        elif argument.position is not None and argument.position < len(args):
            position = argument.position
            new_args[position] = take_declared_rows(args[position], how, index, batch_size, argument.names[0])
            done_args.add(position)
    for position, arg in enumerate(args):
        if position not in done_args:
            new_args[position] = take_rows(arg, index, batch_size)
    for key, value in kwargs.items():
        if key not in done_kwargs and key not in NOT_BATCHED:
            new_kwargs[key] = take_rows(value, index, batch_size)
    return tuple(new_args), new_kwargs


def prediction_of(output: Any) -> torch.Tensor | list[torch.Tensor]:
    """The predicted tensor of a denoiser output (``return_dict`` on or off); a list of per-sample tensors for
    denoisers that take and return per-sample lists (Z-Image)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def without_extra_rows(output: Any, widened: int, rows: int) -> Any:
    """``output`` with every other batch-leading tensor than the prediction cut back from ``widened`` to its first
    ``rows`` rows: a denoiser that predicts several streams (LTX-2's video and audio) returns the branch's extra
    rows in each of them, and the pipeline must get back the batch it sent."""

    def cut(value: Any) -> Any:
        return value[:rows] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == widened else value

    if isinstance(output, tuple):
        return (output[0], *(cut(value) for value in output[1:]))
    if isinstance(output, dict):  # diffusers' BaseOutput is an OrderedDict of its fields
        for name in list(output.keys())[1:]:
            output[name] = cut(output[name])
    return output


def with_prediction(output: Any, prediction: torch.Tensor) -> Any:
    """``output`` of the same kind with its predicted tensor replaced."""
    if isinstance(output, torch.Tensor):
        return prediction
    if isinstance(output, tuple):
        return (prediction, *output[1:])
    output.sample = prediction
    return output
