"""NATTEN-compatible neighborhood attention: ``na1d``, ``na2d``, ``na3d`` on top of :func:`visattn.kernels.attention`.

Same positional order and layout as NATTEN's functional API (``natten/functional.py`` in SHI-Labs/NATTEN:
``na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
additional_values=None, ...)`` on ``[batch, *grid, heads, head_dim]``), so code written against NATTEN runs
here on any backend visattn has (the materialized reference on CPU, FlexAttention with a cached block mask on
GPU). ``backend`` is keyword-only: NATTEN's next positional parameter is ``attention_kwargs``.
The mask is a :class:`~visattn.kernels.neighborhood.NeighborhoodPattern`; see its module for the window,
stride-leader and causal conventions (NATTEN's).

References: Hassani et al., Neighborhood Attention Transformer (CVPR 2023); Hassani & Shi, Dilated
Neighborhood Attention Transformer (2022); Hassani et al., Generalized Neighborhood Attention (2025).
"""

from __future__ import annotations

import torch

from ..validation import check_number, check_same_device, check_tensor
from .core import attention
from .neighborhood import BoolOrTuple, IntOrTuple, NeighborhoodPattern

__all__ = ["na1d", "na2d", "na3d", "neighborhood_attention"]


def _check_tensors(
    na_dim: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> None:
    name = f"na{na_dim}d"
    for label, tensor in (("query", query), ("key", key), ("value", value)):
        # Type, floating dtype and no empty axis first (numpy arrays, None, int/bool/complex tensors, zero tokens).
        check_tensor(tensor, f"{name}: {label}")
        if tensor.dim() != na_dim + 3:
            raise ValueError(
                f"{name} expects {label} shaped [batch, {na_dim} grid axes, heads, head_dim] "
                f"({na_dim + 3} dims); got {tuple(tensor.shape)}"
            )
    if query.shape != key.shape:
        raise ValueError(f"{name}: query and key shapes differ: {tuple(query.shape)} vs {tuple(key.shape)}")
    if value.shape[:-1] != key.shape[:-1]:
        raise ValueError(f"{name}: value must match key except in head_dim: {tuple(value.shape)} vs {tuple(key.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise ValueError(f"{name}: dtypes differ: query {query.dtype}, key {key.dtype}, value {value.dtype}")
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{name}: give both additional_keys and additional_values, or neither")
    check_same_device(
        {
            "query": query,
            "key": key,
            "value": value,
            "additional_keys": additional_keys,
            "additional_values": additional_values,
        }
    )
    if additional_keys is None or additional_values is None:
        return
    check_tensor(additional_keys, f"{name}: additional_keys")
    check_tensor(additional_values, f"{name}: additional_values")
    batch, heads, head_dim = query.shape[0], query.shape[-2], query.shape[-1]
    if additional_keys.dim() != 4 or additional_values.dim() != 4:
        raise ValueError(
            f"{name}: additional_keys/values must be [batch, n_extra, heads, head_dim]; got "
            f"{tuple(additional_keys.shape)} and {tuple(additional_values.shape)}"
        )
    expected_k = (batch, additional_keys.shape[1], heads, head_dim)
    expected_v = (batch, additional_keys.shape[1], heads, value.shape[-1])
    if tuple(additional_keys.shape) != expected_k or tuple(additional_values.shape) != expected_v:
        raise ValueError(
            f"{name}: additional_keys {tuple(additional_keys.shape)} / additional_values "
            f"{tuple(additional_values.shape)} must be {expected_k} / {expected_v}"
        )
    if additional_keys.dtype != query.dtype or additional_values.dtype != query.dtype:
        raise ValueError(
            f"{name}: additional_keys/values dtypes ({additional_keys.dtype}, {additional_values.dtype}) must "
            f"match query ({query.dtype})"
        )


def _to_bhnd(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, *grid or N, H, D]`` -> ``[B, H, N, D]`` (``reshape`` copies only where the input's strides need it)."""
    batch, heads, dim = tensor.shape[0], tensor.shape[-2], tensor.shape[-1]
    return tensor.reshape(batch, -1, heads, dim).transpose(1, 2)


def neighborhood_attention(
    na_dim: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """The shared body of ``na1d/na2d/na3d``: ``na_dim`` grid axes taken from ``query.shape[1:1 + na_dim]``."""
    _check_tensors(na_dim, query, key, value, additional_keys, additional_values)
    if scale is not None:
        check_number(scale, f"na{na_dim}d: scale")
    grid = tuple(query.shape[1 : 1 + na_dim])
    pattern = NeighborhoodPattern(
        grid=grid,
        kernel_size=kernel_size,
        dilation=dilation,
        stride=stride,
        is_causal=is_causal,
        extra_keys=0 if additional_keys is None else additional_keys.shape[1],
    )
    q, k, v = _to_bhnd(query), _to_bhnd(key), _to_bhnd(value)
    if additional_keys is not None and additional_values is not None:
        # Extra keys go after the grid keys, so grid indices stay 0..N-1 for the pattern; one softmax spans
        # both sets, which is what NATTEN computes (it merges the two partial attentions by their LSE).
        k = torch.cat([k, _to_bhnd(additional_keys)], dim=2)
        v = torch.cat([v, _to_bhnd(additional_values)], dim=2)
    out = attention(q, k, v, pattern=pattern, scale=scale, backend=backend)
    batch, heads = query.shape[0], query.shape[-2]
    return out.transpose(1, 2).reshape(batch, *grid, heads, out.shape[-1])


def na1d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """1-D neighborhood attention on ``[batch, length, heads, head_dim]``; NATTEN's ``na1d``.

    Args:
        query, key, value: ``[B, L, H, D]`` (value may have its own head_dim); fp32, fp16 or bf16.
        kernel_size, stride, dilation, is_causal: NATTEN's window parameters, in NATTEN's positional order
            (``na1d(q, k, v, 3, 2, 1)`` is kernel 3, stride 2, dilation 1, as in ``natten.functional.na1d``;
            see :mod:`visattn.kernels.neighborhood`); validated by :func:`check_neighborhood_args`.
        scale: logit scale, default ``head_dim ** -0.5``.
        additional_keys, additional_values: ``[B, n_extra, H, D]`` tokens every query also attends to.
        backend: a :func:`visattn.kernels.attention` backend name or ``"auto"``; keyword-only, because NATTEN's
            next positional parameter is ``attention_kwargs``, which visattn does not take.

    Returns:
        ``[B, L, H, Dv]`` in the query's dtype.
    """
    return neighborhood_attention(
        1,
        query,
        key,
        value,
        kernel_size,
        stride,
        dilation,
        is_causal,
        scale,
        additional_keys,
        additional_values,
        backend=backend,
    )


def na2d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """2-D neighborhood attention on ``[batch, height, width, heads, head_dim]``; NATTEN's ``na2d``.

    Arguments as in :func:`na1d`, with per-axis parameters given as a scalar or a pair.
    """
    return neighborhood_attention(
        2,
        query,
        key,
        value,
        kernel_size,
        stride,
        dilation,
        is_causal,
        scale,
        additional_keys,
        additional_values,
        backend=backend,
    )


def na3d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """3-D neighborhood attention on ``[batch, depth, height, width, heads, head_dim]``; NATTEN's ``na3d``.

    Arguments as in :func:`na1d`, with per-axis parameters given as a scalar or a triple.
    """
    return neighborhood_attention(
        3,
        query,
        key,
        value,
        kernel_size,
        stride,
        dilation,
        is_causal,
        scale,
        additional_keys,
        additional_values,
        backend=backend,
    )
