"""Neighborhood attention as a :class:`~visattn.kernels.patterns.Pattern`: sliding windows over a 1-, 2- or 3-D
token grid.

Semantics follow NATTEN (checked against NATTEN's FlexAttention mask; implemented here from the description):

* Neighborhood Attention (NA; Hassani et al., "Neighborhood Attention Transformer", CVPR 2023): each query
  attends to a window of ``kernel_size`` keys per axis around itself. Near the borders the window is shifted
  inward rather than truncated, so every (non-causal) query sees exactly ``prod(kernel_size)`` keys.
* Dilated NA (DiNA; Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022): with dilation ``d`` an
  axis splits into ``d`` interleaved groups (coordinates equal modulo ``d``); attention stays inside a group,
  and the window is taken over group positions ``c // d``.
* Strided NA (Generalized Neighborhood Attention, GNA; Hassani et al., 2025): queries are grouped into blocks
  of ``stride`` consecutive group positions and every query of a block uses the window of the block's leader,
  so neighbouring queries share whole key sets (what lets a block-sparse kernel skip tiles).
* Causal NA (per axis): only keys at or before the query on that axis.

Conventions, per axis, on group positions ``p`` (query) and ``kp`` (key) in a group of length ``L_g``:

* Window (non-causal): ``start = clamp(c - k // 2, 0, L_g - k)``, keys ``start <= kp < start + k``, with ``c``
  the stride leader. For even ``k`` this puts ``k // 2`` keys before the centre and ``k // 2 - 1`` after it
  (NATTEN: ``window_left = k // 2``, ``window_right = k // 2 - 1`` for even ``k``).
* Stride leader (non-causal): ``min(p // s * s + s // 2, L_g - 1)``: the centre query of the block, the
  right-hand one of the two centres when ``s`` is even (NATTEN's choice; ``(s - 1) // 2`` would pick the left
  one and differs from NATTEN for even ``s`` only).
* Causal: leader ``c = min(p // s * s + s - 1, L_g - 1)`` (the last query of the block); keys
  ``max(0, c - k + 1) <= kp <= p``. Without stride that is the ``k`` positions ending at the query, fewer near 0;
  with stride a query never sees keys after itself, even where its leader does.

A pair of grid tokens is kept when it is kept on every axis. Tokens outside the grid (text in joint attention)
are handled by :meth:`NeighborhoodPattern.mask_mod` as documented there.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .patterns import Pattern, grid_sequence_mask

__all__ = [
    "NeighborhoodPattern",
    "check_neighborhood_args",
    "group_length",
    "window_bounds",
]

IntOrTuple = int | Sequence[int]
BoolOrTuple = bool | Sequence[bool]
IntLike = int | torch.Tensor


def _broadcast(name: str, value, n_axes: int, grid: tuple[int, ...], kind: type) -> tuple:
    """``value`` as one entry per axis: a scalar broadcasts, a sequence must have one entry per axis."""
    if isinstance(value, (bool, int)) and not isinstance(value, (list, tuple)):
        values = (value,) * n_axes
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != n_axes:
            raise ValueError(
                f"{name}={tuple(values)} has {len(values)} values but the grid {grid} has {n_axes} axes; "
                f"give one value per axis or a single value for all"
            )
    else:
        raise ValueError(f"{name}={value!r} must be a {kind.__name__} or a sequence of them (grid {grid})")
    for item in values:
        # bool is an int subclass: accept it only where a bool is asked for, and ints only where ints are.
        ok = isinstance(item, bool) if kind is bool else (isinstance(item, int) and not isinstance(item, bool))
        if not ok:
            raise ValueError(f"{name}={values} must hold {kind.__name__} values (grid {grid})")
    return values


def check_neighborhood_args(
    grid: IntOrTuple,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[bool, ...]]:
    """Validate and normalize neighborhood arguments; scalars broadcast to every axis.

    Returns ``(grid, kernel_size, dilation, stride, is_causal)`` as tuples with one entry per axis. Raises
    ValueError, quoting the numbers and the grid, for: a grid of other than 1-3 axes or with a non-positive
    size; a parameter with the wrong number of axes or type; non-positive kernel, dilation or stride; a kernel
    larger than its axis; ``kernel_size * dilation`` larger than its axis (some dilation group would be shorter
    than the kernel); a stride larger than the kernel (queries would get windows no query is centred in).
    """
    grid_t = (grid,) if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)
    if not 1 <= len(grid_t) <= 3:
        raise ValueError(f"grid {grid_t} has {len(grid_t)} axes; neighborhood attention supports 1, 2 or 3")
    if any(not isinstance(size, int) or isinstance(size, bool) or size <= 0 for size in grid_t):
        raise ValueError(f"grid {grid_t} must hold positive integer sizes")
    n = len(grid_t)
    kernel = _broadcast("kernel_size", kernel_size, n, grid_t, int)
    dil = _broadcast("dilation", dilation, n, grid_t, int)
    strd = _broadcast("stride", stride, n, grid_t, int)
    causal = _broadcast("is_causal", is_causal, n, grid_t, bool)
    for name, values in (("kernel_size", kernel), ("dilation", dil), ("stride", strd)):
        for axis, value in enumerate(values):
            if value <= 0:
                raise ValueError(f"{name}={values} must be positive; axis {axis} has {value} (grid {grid_t})")
    for axis, (size, k, d, s) in enumerate(zip(grid_t, kernel, dil, strd)):
        if k > size:
            raise ValueError(
                f"kernel_size {k} on axis {axis} is larger than that grid axis ({size}); grid {grid_t}, "
                f"kernel_size {kernel}"
            )
        if k * d > size:
            raise ValueError(
                f"kernel_size * dilation = {k} * {d} = {k * d} on axis {axis} is larger than that grid axis "
                f"({size}); grid {grid_t}, kernel_size {kernel}, dilation {dil}"
            )
        if s > k:
            raise ValueError(
                f"stride {s} on axis {axis} is larger than kernel_size {k}; grid {grid_t}, kernel_size {kernel}, "
                f"stride {strd}"
            )
    return grid_t, kernel, dil, strd, causal


def _pairwise(a: IntLike, b: IntLike, tensor_op, int_op) -> IntLike:
    # Works for Python ints (tests, planning) and tensors (mask_mod, also under FlexAttention's vmap).
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a = a if isinstance(a, torch.Tensor) else torch.as_tensor(a, device=b.device)
        b = b if isinstance(b, torch.Tensor) else torch.as_tensor(b, device=a.device)
        return tensor_op(a, b)
    return int_op(a, b)


def _minimum(a: IntLike, b: IntLike) -> IntLike:
    return _pairwise(a, b, torch.minimum, min)


def _maximum(a: IntLike, b: IntLike) -> IntLike:
    return _pairwise(a, b, torch.maximum, max)


def group_length(length: int, dilation: int, group: IntLike) -> IntLike:
    """How many coordinates ``0 <= c < length`` have ``c % dilation == group`` (the dilation group's length)."""
    return (length - group + dilation - 1) // dilation


def window_bounds(
    index: IntLike,
    length: int,
    kernel_size: int,
    dilation: int = 1,
    stride: int = 1,
    is_causal: bool = False,
) -> tuple[IntLike, IntLike]:
    """The keys one axis of a query at coordinate ``index`` attends to: ``range(first, stop, dilation)``.

    ``index`` may be a Python int or an integer tensor (elementwise). ``first`` and ``stop`` are coordinates on
    the axis (not group positions): the keys are ``first, first + dilation, ...`` below ``stop``, all in the
    query's dilation group. See the module docstring for the window, stride-leader and causal conventions.
    """
    group = index % dilation
    pos = index // dilation  # position inside the dilation group
    n_group = group_length(length, dilation, group)
    block_start = pos // stride * stride
    if is_causal:
        leader = _minimum(block_start + stride - 1, n_group - 1)
        start = _maximum(leader - kernel_size + 1, 0)
        stop = pos + 1  # never past the query itself, even when the block leader is later
    else:
        leader = _minimum(block_start + stride // 2, n_group - 1)
        # Shift the window inward at the borders so that it always holds kernel_size positions.
        start = _maximum(_minimum(leader - kernel_size // 2, n_group - kernel_size), 0)
        stop = start + kernel_size
    return start * dilation + group, stop * dilation + group - (dilation - 1)


def _coords(local: torch.Tensor, grid: tuple[int, ...]) -> list[torch.Tensor]:
    """Row-major coordinates of flat grid indices (last axis fastest)."""
    coords = []
    for axis, size in enumerate(grid):
        inner = math.prod(grid[axis + 1 :])
        coords.append((local // inner) % size)
    return coords


@dataclass(frozen=True)
class NeighborhoodPattern(Pattern):
    """Neighborhood attention (NA / DiNA / GNA, causal per axis) over a token grid inside a longer sequence.

    The grid's ``prod(grid)`` tokens sit, row-major, at sequence positions ``[offset, offset + prod(grid))`` for
    queries and keys alike. Scalars for ``kernel_size``, ``dilation``, ``stride`` and ``is_causal`` broadcast to
    every axis and are stored as tuples. Validation happens here (:func:`check_neighborhood_args`).

    Tokens outside the grid:

    * Grid queries also attend to the ``extra_keys`` keys right after the grid (NATTEN's ``additional_keys``,
      e.g. text tokens) and, when ``prefix_keys`` is set, to every key before ``offset`` (text placed first, as
      in Flux's joint attention). Other keys past the grid are masked for grid queries.
    * Queries outside the grid (text queries in joint attention) attend to every key when
      ``text_queries="full"`` and only to keys outside the grid when ``text_queries="text"``.

    References: Hassani et al., Neighborhood Attention Transformer (CVPR 2023); Hassani & Shi, Dilated
    Neighborhood Attention Transformer (2022); Hassani et al., Generalized Neighborhood Attention (2025).
    """

    grid: tuple[int, ...]
    kernel_size: IntOrTuple
    dilation: IntOrTuple = 1
    stride: IntOrTuple = 1
    is_causal: BoolOrTuple = False
    offset: int = 0
    extra_keys: int = 0
    prefix_keys: bool = True
    text_queries: Literal["full", "text"] = "full"

    def __post_init__(self) -> None:
        grid, kernel, dil, strd, causal = check_neighborhood_args(
            self.grid, self.kernel_size, self.dilation, self.stride, self.is_causal
        )
        if self.offset < 0 or self.extra_keys < 0:
            raise ValueError(f"offset={self.offset} and extra_keys={self.extra_keys} must be >= 0 (grid {grid})")
        if self.text_queries not in ("full", "text"):
            raise ValueError(f"text_queries={self.text_queries!r} must be 'full' or 'text'")
        # Frozen dataclass: normalize through object.__setattr__ so equal patterns hash and compare equal.
        for name, value in (
            ("grid", grid),
            ("kernel_size", kernel),
            ("dilation", dil),
            ("stride", strd),
            ("is_causal", causal),
        ):
            object.__setattr__(self, name, value)

    @property
    def num_tokens(self) -> int:
        """Tokens in the grid."""
        return math.prod(self.grid)

    def neighborhood_mask(self, q_local: torch.Tensor, kv_local: torch.Tensor) -> torch.Tensor:
        """The NA mask between grid-local flat indices (both in ``[0, prod(grid))``), broadcasting."""
        q_coords = _coords(q_local, self.grid)
        kv_coords = _coords(kv_local, self.grid)
        keep = None
        for axis, size in enumerate(self.grid):
            d = self.dilation[axis]
            qc, kc = q_coords[axis], kv_coords[axis]
            first, stop = window_bounds(qc, size, self.kernel_size[axis], d, self.stride[axis], self.is_causal[axis])
            axis_keep = (kc >= first) & (kc < stop)
            if d > 1:
                axis_keep = axis_keep & (kc % d == qc % d)
            keep = axis_keep if keep is None else keep & axis_keep
        return keep

    def axis_mask(self, axis: int) -> torch.Tensor:
        """``[size, size]`` bool: which key coordinates each query coordinate keeps on one grid axis.

        The neighborhood keeps a pair of grid tokens exactly when every axis keeps the pair of its coordinates, so
        these per-axis masks describe the whole grid mask; block masks classify tiles from them
        (:mod:`visattn.kernels.block_masks`) without evaluating token pairs.
        """
        size, d = self.grid[axis], self.dilation[axis]
        index = torch.arange(size)
        first, stop = window_bounds(index, size, self.kernel_size[axis], d, self.stride[axis], self.is_causal[axis])
        q, k = index.view(-1, 1), index.view(1, -1)
        return (k >= first.view(-1, 1)) & (k < stop.view(-1, 1)) & (k % d == q % d)

    def mask_mod(self, b, h, q_idx, kv_idx):
        return grid_sequence_mask(
            q_idx,
            kv_idx,
            self.neighborhood_mask,
            num_tokens=self.num_tokens,
            offset=self.offset,
            extra_keys=self.extra_keys,
            prefix_keys=self.prefix_keys,
            text_queries=self.text_queries,
        )

    def cache_key(self) -> Hashable:
        return (
            "neighborhood",
            self.grid,
            self.kernel_size,
            self.dilation,
            self.stride,
            self.is_causal,
            self.offset,
            self.extra_keys,
            self.prefix_keys,
            self.text_queries,
        )
