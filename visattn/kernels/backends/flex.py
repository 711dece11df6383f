"""FlexAttention backend: the pattern becomes a ``mask_mod`` and a cached ``BlockMask``; modifiers a ``score_mod``.

Block masks are built per tile from the pattern's structure (:mod:`visattn.kernels.block_masks`: never an N x N
evaluation, so a 128 x 128 grid or a long video is masked in bounded memory) and cached per (pattern, batch/heads if
the pattern depends on them, lengths, device), so a layer that runs hundreds of times builds its mask once. On
CUDA the kernel is compiled (``torch.compile``); on CPU FlexAttention runs eagerly unless ``VISATTN_FLEX_COMPILE=1``
is set (compiling costs more than it saves at the tiny sizes used there).

Tile-aligned token order: for a pattern over a 2-D or 3-D token grid (a neighborhood, for example), row-major
order spreads each query block's neighborhood over many key blocks. Before calling FlexAttention the grid tokens
are permuted so that each ``tile_shape`` tile of the grid fills one block (the token permutation of Generalized
Neighborhood Attention, Hassani et al. 2025; :func:`visattn.kernels.block_density.tile_aligned_order`), placed
first so that tiles start on block boundaries, with the other tokens (text) after them in their own order. The
pattern and score modifier are evaluated on the original indices (``mask_mod(b, h, order[i], order[j])``), so
the result is the same attention, un-permuted on the way out; only the block mask gets sparser (which pays off
in the compiled kernel; eager FlexAttention on CPU evaluates every pair anyway and only pays the permutation).
Set ``VISATTN_FLEX_TILE_ORDER=0`` to turn it off.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from ..block_density import tile_aligned_order
from ..block_masks import block_mask_from_pattern
from ..neighborhood import NeighborhoodPattern, window_bounds
from ..patterns import AllOf, Pattern
from ..request import AttentionRequest

NAME = "flex"

_BLOCK_MASKS: OrderedDict[Hashable, object] = OrderedDict()
_BLOCK_MASK_CACHE_SIZE = 64
_TILE_ORDERS: OrderedDict[Hashable, object] = OrderedDict()

#: FlexAttention's sparse block size (queries and keys), passed explicitly; tile shapes hold this many tokens.
BLOCK_SIZE = 128


def availability() -> tuple[bool, str]:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as error:  # pragma: no cover - torch < 2.5
        return False, f"torch {torch.__version__} has no FlexAttention ({error})"
    return True, "torch FlexAttention with cached block masks (compiled on CUDA)"


def supports(request: AttentionRequest) -> bool:
    # Model masks are supported only as key-padding masks ([B or 1, 1 or H, 1, Nk]); a full per-query mask
    # would have to be indexed per element, which the reference backend does better.
    mask = request.attn_mask
    if mask is not None and (mask.dim() != 4 or mask.shape[-2] != 1):
        return False
    # FlexAttention refuses CPU inputs that require grad (it has no CPU backward), even under no_grad.
    q, k, v = request.q, request.k, request.v
    return not (q.device.type == "cpu" and (q.requires_grad or k.requires_grad or v.requires_grad))


def _use_compiled(device: torch.device) -> bool:
    flag = os.environ.get("VISATTN_FLEX_COMPILE")
    if flag is not None:
        return flag not in ("0", "false", "False", "")
    return device.type == "cuda"


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_mask_for(
    pattern: Pattern,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
    order: TileOrder | None = None,
):
    """The (cached) ``BlockMask`` of ``pattern`` at these sizes, over tokens permuted by ``order`` if given.

    ``order`` (from :func:`tile_order_for` with the same lengths and ``device``) makes position ``i`` stand for
    token ``order.q_order[i]`` (queries) and ``order.kv_order[i]`` (keys).
    """
    per_item = pattern.depends_on_batch_or_head
    key = (
        pattern.cache_key(),
        batch if per_item else None,
        heads if per_item else None,
        q_len,
        kv_len,
        str(device),
        None if order is None else order.tile_shape,
    )
    cached = _BLOCK_MASKS.get(key)
    if cached is not None:
        _BLOCK_MASKS.move_to_end(key)
        return cached

    # FlexAttention wants a plain function with the (b, h, q_idx, kv_idx) signature, not a bound method.
    if order is None:

        def mask_mod(b, h, q_idx, kv_idx):
            return pattern.mask_mod(b, h, q_idx, kv_idx)

    else:
        q_order, kv_order = order.q_order, order.kv_order

        def mask_mod(b, h, q_idx, kv_idx):
            # Positions in the permuted sequence -> the tokens' original indices, which the pattern is about.
            return pattern.mask_mod(b, h, q_order[q_idx], kv_order[kv_idx])

    # Built from the pattern's per-tile structure (visattn.kernels.block_masks), the same BlockMask torch's
    # create_block_mask(mask_mod, ...) gives, without evaluating the mask on all N x N pairs.
    block_mask = block_mask_from_pattern(
        pattern,
        batch,
        heads,
        q_len,
        kv_len,
        mask_mod=mask_mod,
        device=device,
        block_size=BLOCK_SIZE,
        q_order=None if order is None else order.q_order,
        kv_order=None if order is None else order.kv_order,
    )
    _remember(_BLOCK_MASKS, key, block_mask)
    return block_mask


def _remember(cache: OrderedDict, key: Hashable, value: object) -> None:
    cache[key] = value
    if len(cache) > _BLOCK_MASK_CACHE_SIZE:
        cache.popitem(last=False)


# --- tile-aligned token order -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TileOrder:
    """A token permutation that puts each ``tile_shape`` tile of a grid in one FlexAttention block.

    Attributes:
        grid, offset: the token grid and where its tokens start in the query and key sequences.
        tile_shape: tile per grid axis; ``prod(tile_shape) == BLOCK_SIZE`` and each entry divides its axis.
        q_order, kv_order: ``order[i]`` = original index of the token placed at position ``i`` (grid tiles first,
            then the remaining tokens in their original order).
        q_inverse: undoes ``q_order`` (``out = out_permuted[..., q_inverse, :]``).
    """

    grid: tuple[int, ...]
    offset: int
    tile_shape: tuple[int, ...]
    q_order: torch.Tensor
    kv_order: torch.Tensor
    q_inverse: torch.Tensor


def _tile_order_enabled() -> bool:
    return os.environ.get("VISATTN_FLEX_TILE_ORDER", "1") not in ("0", "false", "False", "")


def _axis_mask(size: int, kernel: int, dilation: int, stride: int, causal: bool) -> torch.Tensor:
    """``[size, size]``: which key coordinates a query coordinate keeps on one axis of a neighborhood."""
    index = torch.arange(size)
    first, stop = window_bounds(index, size, kernel, dilation, stride, causal)
    q, k = index.view(-1, 1), index.view(1, -1)
    return (k >= first.view(-1, 1)) & (k < stop.view(-1, 1)) & (k % dilation == q % dilation)


def grid_layout(pattern: Pattern) -> tuple[tuple[int, ...], int, list[torch.Tensor] | None] | None:
    """``(grid, offset, per-axis masks or None)`` of the grid a pattern is defined on, if it exposes exactly one.

    A pattern exposes a grid through ``grid`` (a tuple of axis sizes) and ``offset`` (first grid token) attributes,
    as :class:`~visattn.kernels.neighborhood.NeighborhoodPattern` does; in an intersection all members that expose
    one must agree. Neighborhood members also give their per-axis masks (:func:`_axis_mask`, and-ed together),
    which make the tile choice exact: a neighborhood keeps a pair when every axis keeps it.
    """
    parts = pattern.parts if isinstance(pattern, AllOf) else (pattern,)
    layouts = set()
    masks: list[torch.Tensor] | None = None
    for part in parts:
        grid, offset = getattr(part, "grid", None), getattr(part, "offset", None)
        if not isinstance(grid, tuple) or not isinstance(offset, int) or not all(isinstance(g, int) for g in grid):
            continue
        layouts.add((grid, offset))
        if isinstance(part, NeighborhoodPattern):
            settings = zip(grid, part.kernel_size, part.dilation, part.stride, part.is_causal)
            part_masks = [_axis_mask(*axis) for axis in settings]
            masks = part_masks if masks is None else [a & b for a, b in zip(masks, part_masks)]
    if len(layouts) != 1:
        return None
    (grid, offset) = layouts.pop()
    return grid, offset, masks


def visited_blocks(tile: tuple[int, ...], axis_masks: list[torch.Tensor]) -> int:
    """(query tile, key tile) pairs with any kept pair, for box tiles of a grid whose mask is per axis.

    A separable mask (kept when kept on every axis) over box tiles visits a pair of tiles exactly when every axis
    visits the pair of its tile sides, so the count is the product of the per-axis counts.
    """
    count = 1
    for t, mask in zip(tile, axis_masks):
        n = mask.shape[0] // t
        count *= int(mask.view(n, t, n, t).any(dim=3).any(dim=1).sum())
    return count


def row_major_tile(grid: tuple[int, ...], block: int = BLOCK_SIZE) -> tuple[int, ...] | None:
    """The grid box one block of ``block`` row-major tokens covers, when blocks are boxes (``None`` otherwise)."""
    tile, remaining = [1] * len(grid), block
    for axis in reversed(range(len(grid))):
        size = grid[axis]
        if remaining <= size:
            if size % remaining:
                return None
            tile[axis], remaining = remaining, 1
            break
        if remaining % size:
            return None
        tile[axis], remaining = size, remaining // size
    return tuple(tile) if remaining == 1 else None


def choose_tile_shape(
    grid: tuple[int, ...], axis_masks: list[torch.Tensor] | None = None, block: int = BLOCK_SIZE
) -> tuple[int, ...] | None:
    """The tile shape (``block`` tokens, power-of-two sides dividing their axes) that visits the fewest blocks.

    With ``axis_masks`` (a separable pattern's per-axis masks) the visited blocks are counted exactly
    (:func:`visited_blocks`); ties go to the row-major box (no permutation needed), then to the most cube-like
    tile, which is also the choice without masks. ``None`` when no candidate exists (too few powers of two in
    the axis sizes).
    """
    options = []
    for size in grid:
        sides, side = [], 1
        while side <= min(size, block):
            if size % side == 0:
                sides.append(side)
            side *= 2
        options.append(sides)
    row_major = row_major_tile(grid, block)
    best, best_key = None, None
    for tile in itertools.product(*options):
        if math.prod(tile) != block:
            continue
        visited = visited_blocks(tile, axis_masks) if axis_masks is not None else 0
        key = (visited, tile != row_major, max(tile) / min(tile), tile)
        if best_key is None or key < best_key:
            best, best_key = tile, key
    return best


def tile_order_for(
    pattern: Pattern | None, q_len: int, kv_len: int, device: torch.device | str = "cpu"
) -> TileOrder | None:
    """The tile-aligned order the flex backend uses for ``pattern`` at these lengths, or ``None`` (row-major).

    Cached per (pattern, lengths, device), with its index tensors on ``device``. ``None`` when the pattern
    exposes no single 2-D/3-D grid, the grid does not fit in both sequences, it spans at most one block, no
    tile shape divides it, or (for a grid starting on a block boundary) row-major blocks already visit no more
    blocks than the best tiles (:func:`choose_tile_shape`).
    """
    if pattern is None:
        return None
    key = (pattern.cache_key(), q_len, kv_len, str(device))
    if key in _TILE_ORDERS:
        _TILE_ORDERS.move_to_end(key)
        return _TILE_ORDERS[key]
    order = _build_tile_order(pattern, q_len, kv_len, torch.device(device))
    _remember(_TILE_ORDERS, key, order)
    return order


def _build_tile_order(pattern: Pattern, q_len: int, kv_len: int, device: torch.device) -> TileOrder | None:
    layout = grid_layout(pattern)
    if layout is None:
        return None
    grid, offset, axis_masks = layout
    n = math.prod(grid)
    if sum(size > 1 for size in grid) < 2 or n <= BLOCK_SIZE or offset + n > min(q_len, kv_len):
        return None  # 1-D (row-major is already tiled), a single block, or a grid that does not fit
    tile = choose_tile_shape(grid, axis_masks)
    if tile is None:
        return None
    # With the grid on a block boundary, row-major blocks are boxes too: permute only when tiles visit fewer
    # blocks. Off a boundary (text first), moving the grid first so that its blocks align pays by itself.
    row_major = row_major_tile(grid)
    if offset % BLOCK_SIZE == 0 and row_major is not None:
        if axis_masks is None or visited_blocks(tile, axis_masks) >= visited_blocks(row_major, axis_masks):
            return None
    grid_order, _ = tile_aligned_order(grid, tile)

    def full_order(length: int) -> torch.Tensor:
        # Grid tiles first (so they start on block boundaries), then the other tokens in their own order.
        rest = torch.cat([torch.arange(0, offset), torch.arange(offset + n, length)])
        return torch.cat([grid_order + offset, rest])

    q_order = full_order(q_len)
    kv_order = q_order if kv_len == q_len else full_order(kv_len)
    inverse = torch.argsort(q_order)
    return TileOrder(grid, offset, tile, q_order.to(device), kv_order.to(device), inverse.to(device))


def _score_mod(request: AttentionRequest, order: TileOrder | None = None):
    modifier = request.score_mod
    mask = request.attn_mask
    if modifier is None and mask is None:
        return None
    if mask is not None:
        mask = mask.expand(request.q.shape[0], request.q.shape[1], 1, request.k.shape[2])
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
        mask = mask.float()
        if order is not None:
            mask = mask[..., order.kv_order]  # key padding follows the keys' new positions
    q_order = kv_order = None
    if order is not None and modifier is not None:
        q_order, kv_order = order.q_order, order.kv_order

    def score_mod(score, b, h, q_idx, kv_idx):
        if modifier is not None:
            if q_order is not None:
                score = modifier.score_mod(score, b, h, q_order[q_idx], kv_order[kv_idx])
            else:
                score = modifier.score_mod(score, b, h, q_idx, kv_idx)
        if mask is not None:
            score = score + mask[b, h, 0, kv_idx]
        return score

    return score_mod


def run(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = request.q, request.k, request.v
    block_mask = order = None
    if request.pattern is not None:
        if _tile_order_enabled():
            order = tile_order_for(request.pattern, q.shape[2], k.shape[2], q.device)
        block_mask = block_mask_for(
            request.pattern, q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.device, order=order
        )
    if order is not None:
        q, k, v = q.index_select(2, order.q_order), k.index_select(2, order.kv_order), v.index_select(2, order.kv_order)
    compiled = _use_compiled(q.device)
    fn = _compiled_flex() if compiled else flex_attention
    with warnings.catch_warnings():
        # Eager FlexAttention (CPU by default) warns that it is unfused; that is the documented choice here.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        result = fn(
            q,
            k,
            v,
            score_mod=_score_mod(request, order),
            block_mask=block_mask,
            scale=request.effective_scale,
            **_lse_request(request.return_lse),
        )
    out, lse = result if request.return_lse else (result, None)
    if request.return_lse:
        lse = getattr(lse, "lse", lse)
    if order is not None:
        out = out.index_select(2, order.q_inverse)
        lse = None if lse is None else lse.index_select(2, order.q_inverse)
    return out, lse


def _lse_request(return_lse: bool) -> dict:
    """Ask for the log-sum-exp the way this torch version wants (``return_aux`` replaced ``return_lse``)."""
    if not return_lse:
        return {}
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # pragma: no cover - older torch
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}
