"""How visattn takes over attention inside diffusers' own processors.

diffusers' stock processor stays in place and computes everything it always does (projections, norms, rotary
embeddings, output path); visattn replaces only the attention computation itself. One diffusers hook per
selected attention module (:class:`AttentionLayerHook`, registered in the module's ``HookRegistry``) runs the
module's forward with its calls of ``torch.nn.functional.scaled_dot_product_attention`` answered by the layer:
old-style processors call it directly, new-style ones through diffusers' dispatcher, whose native backend calls it.
While hooked forwards run, ``torch.nn.functional`` holds a router in its place (:class:`_Swap`) that answers on the
thread whose forward routes it and calls the real function everywhere else; a forward whose processor calls SDPA by
another name, or that runs inside another :class:`torch.overrides.TorchFunctionMode`, is answered by a mode instead
(:class:`_Interceptor`), as diffusers' own model-agnostic layer skipping (``hooks/layer_skip.py``) intercepts
attention. Each intercepted call becomes an
:class:`~visattn.effects.base.AttentionCall` with its :class:`~visattn.context.CallContext` (role, latent
grid, text span, batch layout, step) derived from the call's shapes and the denoiser state; effects contribute
to it and the attention core computes it. A call no effect acts on runs the original function untouched, and a
layer no effect can act on is not intercepted at all, so the identity is exact by construction.

Some processors hand SDPA only part of the sequence their family's layout describes: the image queries of a joint
sequence whose text queries run in a call of their own (Qwen-Image 2.1's block-causal attention, Cosmos 3), or a
joint sequence whose padded text tokens were dropped (Mochi). Effects then see the whole layout: the missing
queries are zero rows whose outputs are dropped again, and missing keys are masked out, so the tokens that are
there compute exactly what they would in the full sequence. Processors that loop over the batch and call SDPA
once per row (Mochi) get the rows of the denoiser's batch in the order they are called. An effect that pairs a
branch's rows as ``[source..., target...]`` inside one call (``pairs_rows``: Prompt-to-Prompt) sees, for each target
row's call, that row together with its source row, whose queries, keys and values the hook keeps from the source
row's own call until then (never longer than the layer call); only the target row's output is used, and the source
row's own call is answered as it would be without the pairing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

from .context import BatchLayout, Branch, CallContext, Span, StepInfo, TokenLayout
from .effects.base import NO_READS, UNCHANGED_QUERY_KEY, AttentionCall, Effect, ProbabilityReader, QueryKeyTransform
from .kernels import backend_names
from .kernels.core import _rows, _stacked_rows, backend_variable, gather_rows, run_request
from .kernels.probabilities import Editor, queries_apart, rows_at, serve_plain_reads
from .kernels.request import AttentionRequest
from .parallel import (
    ParallelView,
    check_supported,
    gather_queries,
    is_query_shard,
    joint_order,
    module_heads,
    own_rows,
    parallel_layer,
    parallel_view,
    remember_for_backward,
    split_by_stream,
    ulysses_heads,
)
from .steps import in_steps
from .warning_site import user_stacklevel

if TYPE_CHECKING:
    from .state import DenoiserState

HOOK_NAME = "visattn.attention"
_SDPA = F.scaled_dot_product_attention
_LINEAR = F.linear

#: stock processors that compute attention without ``scaled_dot_product_attention`` (linear attention, explicit
#: ``baddbmm`` softmax, external kernels): visattn cannot take their attention over.
UNINTERCEPTABLE_PROCESSORS = frozenset(
    {
        "AttnProcessor",
        "SlicedAttnProcessor",
        "XFormersAttnProcessor",
        "AttnProcessorNPU",
        "XLAFlashAttnProcessor2_0",
        "SanaLinearAttnProcessor2_0",
        "PAGCFGSanaLinearAttnProcessor2_0",
        "PAGIdentitySanaLinearAttnProcessor2_0",
        "SanaMultiscaleAttnProcessor2_0",
        "LinearAttnProcessor",
    }
)


#: stock processors whose query and key projections (``attn.to_q``, ``attn.to_k``, ``nn.Linear``) feed their one
#: SDPA call and nothing else, through row-wise steps only (view, transpose, ``norm_q``/``norm_k``): rows whose
#: attention effects answer by their values need neither projection (see :meth:`AttentionLayerHook._plan_rows`).
ROW_PROJECTING_PROCESSORS = frozenset({"AttnProcessor2_0"})


def can_intercept(module: torch.nn.Module) -> bool:
    """Whether a module's processor computes its attention through ``scaled_dot_product_attention``."""
    return type(getattr(module, "processor", None)).__name__ not in UNINTERCEPTABLE_PROCESSORS


_FAST_KEYWORDS = frozenset({"attn_mask", "dropout_p", "is_causal", "scale"})


_QKV = frozenset({"query", "key", "value"})

#: no keyword arguments (shared, never changed)
_NO_KEYWORDS: dict[str, Any] = {}

#: the keywords of an SDPA call made with every argument by keyword (diffusers' native attention backend)
_KEYWORD_CALL = _QKV | _FAST_KEYWORDS | {"enable_gqa"}


def _direct_qkv(args: tuple, kwargs: dict) -> tuple | None:
    """``(q, k, v)`` of an SDPA call made as processors make it (q, k, v by position, the rest by keyword) or as
    diffusers' attention dispatcher does (every argument by keyword); ``None`` for any other form."""
    if args:
        return args if len(args) == 3 and _FAST_KEYWORDS.issuperset(kwargs) else None
    if _QKV.issubset(kwargs) and _KEYWORD_CALL.issuperset(kwargs):
        return kwargs["query"], kwargs["key"], kwargs["value"]
    return None


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    values = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    values.update(zip(names, args))
    values.update(kwargs)
    return values


class _Interceptor(torch.overrides.TorchFunctionMode):
    """Answers ``scaled_dot_product_attention`` calls with the layer's effects (and, with a ``projection`` plan, the
    query and key projections of its planned call, see :func:`_project_part`); passes everything else through.

    The routing of :class:`_Swap` is cheaper; this mode serves the forwards it cannot: a processor that calls SDPA
    by another name, a forward that runs inside another :class:`~torch.overrides.TorchFunctionMode` (diffusers'
    layer-skip hook compares the functions it sees with ``torch.nn.functional``'s, which routing replaces), a
    forward ``torch.compile`` traces, and the backward recomputation of a context-parallel call."""

    def __init__(self, layer: AttentionLayerHook, projection: _Projection | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.projection = projection

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Every torch call of the stock processor passes here: the fewest lookups that tell SDPA from the rest.
        if func is _SDPA:
            return self.layer.attend(func, args, kwargs or {})
        if func is _LINEAR and self.projection is not None:
            return _project_part(self.layer, self.projection, args, kwargs or {})
        return func(*args, **kwargs) if kwargs else func(*args)


@dataclass(frozen=True)
class _Projection:
    """How a forward projects its queries and keys (see :meth:`AttentionLayerHook._plan_rows`): the first
    ``computed`` of its ``batch`` rows are projected; each later row is a copy of the projection of row
    ``copies[row]``, or zeros where that is ``None`` (a row whose queries and keys nothing reads)."""

    weights: tuple[torch.Tensor, ...]
    batch: int
    computed: int
    copies: dict[int, int | None]


@dataclass(frozen=True)
class _RowPlan:
    """What a layer does with the rows that need no queries and keys of their own in calls of one shape (see
    :meth:`AttentionLayerHook._plan_rows`).

    Attributes:
        layout: the call's batch layout.
        context_shape: ``(heads, head_dim, queries, keys)`` of the planned SDPA call, for its context.
        shape: ``(batch, heads, queries, head_dim, keys)`` of the planned SDPA call, as it reaches :meth:`attend`.
        copies: each such row mapped to the row whose queries and keys it takes, or ``None`` (a row answered by
            its values).
        projection: how the processor projects part of the rows (``None``: every row is projected).
        copy_runs: without a projection plan, the shared rows copied in place in the SDPA call, as
            ``(first target row, first source row, rows)`` runs.
    """

    layout: BatchLayout
    context_shape: tuple[int, int, int, int]
    shape: tuple[int, ...]
    copies: dict[int, int | None]
    projection: _Projection | None
    copy_runs: tuple[tuple[int, int, int, int, int], ...]

    #: whether every planned row takes another row's queries and keys (none is answered by its values) and no
    #: backend is forced for effects: once they hold them, the stock computation is the effects' answer
    only_shared: bool = False

    @functools.cached_property
    def copied_call(self) -> _CopiedRowsCall:
        """The planned call's answer as a :class:`_FastForward` keeps it (rows copied in place, then the stock call)."""
        return _CopiedRowsCall(self.copy_runs)


def _copy_runs(copies: dict[int, int | None]) -> tuple[tuple[int, int, int, int, int], ...]:
    """``{target row: source row}`` as runs of consecutive targets copied from consecutive sources, each ``(first
    target, first source, rows, repeats, spacing)``: the run is repeated ``repeats`` times, every ``spacing`` rows
    on both sides (Prompt-to-Prompt's target rows, one per branch: rows 1 and 3 from rows 0 and 2 is one run of one
    row repeated twice, two rows apart), so that each is one strided copy."""
    runs: list[list[int]] = []
    for target in sorted(copies):
        source = copies[target]
        last = runs[-1] if runs else None
        if last is not None and target == last[0] + last[2] and source == last[1] + last[2]:
            last[2] += 1
        else:
            runs.append([target, source, 1])
    if set(copies) & set(copies.values()):
        # A target that is another run's source: copied one run after the other, in order.
        return tuple((target, source, count, 1, 0) for target, source, count in runs)
    groups: list[list[int]] = []
    for target, source, count in runs:
        last = groups[-1] if groups else None
        if last is not None and count == last[2]:
            spacing = target - last[0] - (last[3] - 1) * last[4]
            if (last[3] == 1 or spacing == last[4]) and source - last[1] == (last[3]) * spacing and spacing >= count:
                last[3] += 1
                last[4] = spacing
                continue
        groups.append([target, source, count, 1, 0])
    return tuple(tuple(group) for group in groups)


@functools.lru_cache(maxsize=64)
def _copy_indices(
    runs: tuple[tuple[int, int, int, int, int], ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The target and source rows of ``runs`` (see :func:`_copy_runs`) as index tensors on ``device``, made once per
    runs and device; ``None`` where a target is also a source (the runs are then copied one after the other)."""
    targets, sources = [], []
    for target, source, count, repeats, spacing in runs:
        for repeat in range(repeats):
            targets.extend(range(target + repeat * spacing, target + repeat * spacing + count))
            sources.extend(range(source + repeat * spacing, source + repeat * spacing + count))
    if set(targets) & set(sources):
        return None
    return torch.tensor(targets, device=device), torch.tensor(sources, device=device)


def _share_rows(q: torch.Tensor, k: torch.Tensor, runs: tuple[tuple[int, int, int, int, int], ...]) -> None:
    """Copy, in place, each run's source rows of ``q`` and ``k`` (``[B, ...]``) onto its target rows (see
    :func:`_copy_runs`)."""
    if len(runs) > 1 and type(q) is torch.Tensor and type(k) is torch.Tensor:
        indices = _copy_indices(runs, q.device)
        if indices is not None:
            # Two ops per tensor whatever the runs (a view each side and a copy take three per run; on small calls
            # each op costs about as much as a few thousand multiply-adds of the attention itself). One run stays
            # one strided copy (below): index_select and index_copy_ over rows of the [B, N, H, D] layout the
            # processors hand over as [B, H, N, D] take 3.5x its time on a 16 x 16 UNet layer (CPU).
            targets, sources = indices
            for x in (q, k):
                x.index_copy_(0, targets, x.index_select(0, sources))
            return
    for target, source, count, repeats, spacing in runs:
        for x in (q, k):
            if repeats == 1:
                x[target : target + count].copy_(x[source : source + count])
            elif type(x) is torch.Tensor:
                # One strided view of each side (a view per run would take an op each).
                stride, offset = x.stride(), x.storage_offset()
                shape, strides = (repeats, count, *x.shape[1:]), (spacing * stride[0], *stride)
                x.as_strided(shape, strides, offset + target * stride[0]).copy_(
                    x.as_strided(shape, strides, offset + source * stride[0])
                )
            else:
                for index in range(repeats):
                    at, start = target + index * spacing, source + index * spacing
                    x[at : at + count].copy_(x[start : start + count])


@dataclass(frozen=True)
class _SharedCall:
    """How :meth:`AttentionLayerHook.attend` answers an SDPA call whose acting effects only make rows attend with
    other rows' queries and keys, at all of their queries or part of them (Prompt-to-Prompt's self-attention
    injection; in a joint call, the target rows' image queries), without their machinery: the stock call, on rows
    gathered where whole rows are shared, then the queries computed apart written into its output.

    Attributes:
        rows: the row whose queries and keys each row of the stock call takes, as an index tensor (gathered in
            the layout the processor handed over); ``None``: every row its own; an ``int``: every row that one
            row's (a batch of one source and its targets, as Flux's guidance-distilled pair), taken as an expanded
            view rather than gathered copies (on the CPU).
        apart: ``(rows, query and key rows, queries)`` of the computations apart, each written over the stock
            call's output of ``rows`` at ``queries``: those rows' values attended by the queries there and the keys
            of ``query and key rows`` (their source rows', or their own where the source's took the stock call);
            ``rows`` and ``query and key rows`` ``None``: every row of the call, each with its own queries, keys and
            values (see :func:`_shared_call`).
    """

    rows: torch.Tensor | int | None
    apart: tuple[tuple[slice, slice, slice], ...]

    def run(self, func, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The call's answer; ``func`` is the SDPA function the processor called, ``kwargs`` its keywords."""
        rows = self.rows
        # Views made with one op each where the tensors are plain (slicing then expanding takes two, and on small
        # calls each op costs about as much as a few thousand multiply-adds of the attention itself).
        plain = type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
        if rows is None:
            out = func(q, k, v, **kwargs)
        elif isinstance(rows, int):
            # Every row attends with one row's queries and keys: a zero-stride view of it (SDPA reads each batch
            # row through its stride; the same answer bit for bit as a gathered copy, without the two copies).
            out = func(_row_expanded(q, rows, plain), _row_expanded(k, rows, plain), v, **kwargs)
        else:
            out = func(gather_rows(q, rows), gather_rows(k, rows), v, **kwargs)
        for target, source, queries in self.apart:
            if target is None:
                # Every row at these queries with its own keys and values: the tensors as they are (no row views).
                part = func(q[:, :, queries], k, v, **kwargs)
                out[:, :, queries].copy_(part)
                continue
            part = func(rows_at(q, source, queries, plain), k[source], v[target], **kwargs)
            rows_at(out, target, queries, type(out) is torch.Tensor).copy_(part)
        return out


def _row_expanded(x: torch.Tensor, row: int, plain: bool) -> torch.Tensor:
    """``x[row : row + 1].expand(x.shape)``: row ``row`` of ``x`` read as every row (a zero batch stride)."""
    if not plain:
        return x[row : row + 1].expand(x.shape)
    stride = x.stride()
    return x.as_strided(x.shape, (0, *stride[1:]), x.storage_offset() + row * stride[0])


def _shared_call(
    copies: dict[int, int], spans: dict[int, slice], batch: int, n_q: int, device: torch.device
) -> _SharedCall:
    """:class:`_SharedCall` of rows that take another row's queries and keys (``copies``: ``{row: source}``) at the
    queries ``spans`` gives (every query where it names none).

    A row sharing part of its queries takes the cheaper side apart: few shared queries (SD3's image queries of a
    small latent beside a long text) are computed apart with the source's queries and keys and the row stays
    itself in the stock call; most of them (a large latent beside a short text) make the row take the source's
    queries and keys in the stock call and its own other queries are computed apart.
    """
    order = list(range(batch))
    apart: list[tuple[int, int, slice]] = []
    for row, source in sorted(copies.items()):
        queries = spans.get(row)
        if queries is None or (queries.start == 0 and queries.stop == n_q):
            order[row] = source
            continue
        shared, computed = queries_apart(queries, n_q)
        if not shared:
            order[row] = source
        apart.extend((row, source if shared else row, span) for span in computed)
    # Consecutive rows computed apart over the same queries from consecutive rows: one call.
    runs: list[list] = []
    for row, source, queries in apart:
        last = runs[-1] if runs else None
        if last is not None and last[2] == queries and row == last[0] + last[3] and source == last[1] + last[3]:
            last[3] += 1
        else:
            runs.append([row, source, queries, 1])
    calls_apart = tuple(
        (slice(row, row + count), slice(source, source + count), queries) for row, source, queries, count in runs
    )
    if (
        device.type == "cpu"
        and apart
        and all(source == row and queries == apart[0][2] for row, source, queries in apart)
    ):
        # Every row computed apart takes its own queries and keys there (the source's whole rows fill the rest of
        # it in the stock call): where every other row is itself in the stock call, its queries there come out the
        # same in a call of their own (each query's answer depends on that query, the keys and the values alone: bit
        # for bit on SDPA's CPU kernel), so one call over every row takes the keys and values as they are (two ops
        # fewer than views of some rows). Only on the CPU: a GPU kernel may pick other tiles or another backend for
        # a call with fewer queries, and the source rows must stay the stock call's, bit for bit (a plain
        # generation's image); there the rows apart are viewed and the other rows are never recomputed.
        apart_rows = {row for row, _, _ in apart}
        if all(row in apart_rows or order[row] == row for row in range(batch)):
            calls_apart = ((None, None, apart[0][2]),)
    rows: torch.Tensor | int | None = None
    if order != list(range(batch)):
        first = order[0]
        if order == [first] * batch and device.type == "cpu":
            # A zero-stride view on the CPU, whose SDPA reads rows through their strides. Elsewhere the rows are
            # gathered until a GPU shows that the fused CUDA kernels take a zero batch stride rather than SDPA
            # falling back to its math path (tests/kernels/test_sdpa_views.py, run by benchmarks/gpu_session.sh); a
            # gather costs little beside real-sized attention.
            rows = first
        else:
            rows = torch.tensor(order, device=device)
    return _SharedCall(rows, calls_apart)


@dataclass(frozen=True)
class _CopiedRowsCall:
    """How a forward planned before its processor ran (:meth:`AttentionLayerHook._plan_rows`, without a projection
    plan) answers its SDPA call when every acting effect only shares rows: the target rows' queries and keys copied
    in place from their source rows (``copy_runs``, see :func:`_copy_runs`), then the stock call. Kept as a
    :class:`_FastForward`'s answer, so the layer's next forwards skip the plan's lookups; the copy writes into the
    processor's own query and key tensors, which feed this call alone (the ticket holds the processor, one of
    :data:`ROW_PROJECTING_PROCESSORS`, and refuses calls autograd records)."""

    copy_runs: tuple[tuple[int, int, int, int, int], ...]

    def run(self, func, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The call's answer; ``func`` is the SDPA function the processor called, ``kwargs`` its keywords."""
        _share_rows(q, k, self.copy_runs)
        return func(q, k, v, **kwargs)


@dataclass(frozen=True)
class _IdentityCall:
    """How :meth:`AttentionLayerHook.attend` answers an SDPA call whose acting effects only answer rows by their
    values (:meth:`~visattn.effects.Effect.identity_only_rows`: PAG's perturbed rows, on every head), without their
    machinery: the stock call over the other rows (``computed``: a slice, an index tensor, or ``None`` when every row
    is answered so), the values in the rest, stacked in the memory layout the stock call returns. What the attention
    core computes for such a call (:func:`visattn.kernels.core.run_request`), bit for bit."""

    computed: slice | torch.Tensor | None

    def run(self, func, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The call's answer; ``func`` is the SDPA function the processor called, ``kwargs`` its keywords."""
        computed, batch = self.computed, q.shape[0]
        if computed is None:
            return v.to(q.dtype, copy=True)
        part = func(_rows(q, computed, batch), _rows(k, computed, batch), _rows(v, computed, batch), **kwargs)
        if isinstance(computed, slice):
            return _stacked_rows([v[: computed.start], part, v[computed.stop :]], part, q.dtype)
        out = v.to(q.dtype, copy=True)
        out[computed] = part
        return out


def _identity_call(rows: Sequence[int], batch: int, device: torch.device) -> _IdentityCall:
    """:class:`_IdentityCall` of a call of ``batch`` rows whose ``rows`` are answered by their values."""
    answered = set(rows)
    computed = [row for row in range(batch) if row not in answered]
    if not computed:
        return _IdentityCall(None)
    if computed == list(range(computed[0], computed[-1] + 1)):
        return _IdentityCall(slice(computed[0], computed[-1] + 1))
    return _IdentityCall(torch.tensor(computed, device=device))


@dataclass(frozen=True)
class _TransformedCall:
    """How :meth:`AttentionLayerHook.attend` answers an SDPA call whose acting effects only replace its queries and
    keys by functions of them (:meth:`~visattn.effects.Effect.query_key_transform`: SEG's blurred rows), only read
    its final probabilities (:meth:`~visattn.effects.Effect.probability_reads`: attention maps) or only edit them
    (:meth:`~visattn.effects.Effect.probability_editors`: Prompt-to-Prompt's cross-attention edits): without
    editors, the stock call over the transformed queries and keys, then the reads served from them, as the
    attention core computes and serves such a call (the same SDPA call;
    :func:`~visattn.kernels.probabilities.serve_plain_reads`); with editors, the core's request of the call
    (:func:`~visattn.kernels.core.run_request`), as the effects' full path sends it. Either way without building
    the call's context each time."""

    transforms: tuple[QueryKeyTransform, ...]
    readers: tuple[ProbabilityReader, ...] = ()
    editors: tuple[Editor, ...] = ()

    def run(self, func, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """The call's answer, or ``None`` (nothing done) when a reader cannot say its reads without its effect's
        full path; ``func`` is the SDPA function the processor called, ``kwargs`` its keywords."""
        reads: list = []
        for reader in self.readers:
            read = reader()
            if read is None:
                return None
            reads.extend(read)
        for transform in self.transforms:
            q, k = transform(q, k)
        if self.editors:
            request = AttentionRequest(q, k, v, scale=kwargs.get("scale"), editors=self.editors, reads=tuple(reads))
            out = run_request(request)[0]
            return out if out.dtype == q.dtype else out.to(q.dtype)
        out = func(q, k, v, **kwargs)
        if reads:
            # The stock call answered; the reads get their blocks from its queries and keys, as AttentionCall.run
            # serves them when only reads acted.
            serve_plain_reads(q, k, kwargs.get("scale"), reads)
        return out


@dataclass(frozen=True)
class _FastForward:
    """A layer's forward that asks nothing new: in the denoiser calls of plan epoch ``epoch``, the processor (the same
    object, on the native attention backend, not parallelized) makes one SDPA call of these shapes, answered by
    ``call`` (:class:`_SharedCall`, :class:`_IdentityCall`, :class:`_TransformedCall` or :class:`_CopiedRowsCall`).
    Made after a forward that went so (:meth:`AttentionLayerHook._intercepted_forward`); the next forwards that find
    the same facts run the processor with that answer ready, without re-deriving what the full path derives (and
    checks) per forward. A call that is not the expected one drops it."""

    epoch: int
    processor: Any
    #: the processor's ``_attention_backend``, diffusers' backend registry and its active backend (the backends
    #: both the same objects: still native)
    backend: Any
    registry: Any
    active_backend: Any
    q_shape: torch.Size
    k_shape: torch.Size
    v_shape: torch.Size
    device: torch.device
    call: _SharedCall | _IdentityCall | _TransformedCall | _CopiedRowsCall

    def answer(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The expected SDPA call's output, or ``None`` when this call is another one."""
        qkv = _direct_qkv(args, kwargs)
        if qkv is None:
            return None
        q, k, v = qkv
        get = kwargs.get
        if (
            get("attn_mask") is not None
            or get("is_causal")
            or get("dropout_p")
            or get("enable_gqa")
            or q.shape != self.q_shape
            or k.shape != self.k_shape
            or v.shape != self.v_shape
            or q.device != self.device
            or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        ):
            return None
        # Every other argument at its default: only a scale is passed on (keywords cost the call their parsing).
        scale = get("scale")
        return self.call.run(_SDPA, q, k, v, _NO_KEYWORDS if scale is None else {"scale": scale})


def _project_part(layer: AttentionLayerHook, projection: _Projection, args: tuple, kwargs: dict) -> torch.Tensor:
    """An ``F.linear`` call of a forward that projects part of its rows: the query and key projections of the
    planned call (``nn.Linear`` passes its weight as the second argument) for the first ``computed`` rows only, as
    diffusers' PAG processors project them; each other row holds its source row's projection (Prompt-to-Prompt's
    target rows attend with their source rows' queries and keys) or zeros that nothing reads (PAG's rows answered by
    their values); :meth:`AttentionLayerHook._plan_rows` makes sure of it. Other calls run as they are."""
    weights = projection.weights
    if len(args) > 1 and (args[1] is weights[0] or args[1] is weights[1]):
        x = args[0]
        batch, computed = projection.batch, projection.computed
        if x.ndim == 3 and x.shape[0] == batch:
            layer._projected += 1
            out = _project_into(x, computed, batch, *args[1:], **kwargs)
            for row, source in projection.copies.items():
                if source is None:
                    out[row].zero_()
                else:
                    out[row].copy_(out[source])
            return out
    return _LINEAR(*args, **kwargs)


def _project_into(x: torch.Tensor, computed: int, batch: int, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """A ``[batch, tokens, out]`` tensor whose first ``computed`` rows are ``F.linear(x[:computed], weight, bias)``,
    bit for bit, and whose other rows are left for the caller. The projection is written in place with the op
    ``F.linear`` runs (``matmul`` without a bias, ``addmm`` on the flattened rows with one), so the rows need no
    copy; under autocast or autograd it is computed apart and copied in."""
    part = x[:computed]
    plain = (
        part.is_contiguous()
        and not torch.is_autocast_enabled(x.device.type)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )
    if not plain:
        projected = _LINEAR(part, weight, bias)
        out = projected.new_empty((batch, *projected.shape[1:]))
        out[:computed].copy_(projected)
        return out
    out = x.new_empty((batch, x.shape[1], weight.shape[0]))
    if bias is None:
        torch.matmul(part, weight.t(), out=out[:computed])
    else:
        torch.addmm(bias, part.view(-1, x.shape[2]), weight.t(), out=out[:computed].view(-1, weight.shape[0]))
    return out


class _Route(threading.local):
    """What the hooked forward running on this thread routes (see :class:`_Swap`): ``layer`` answers its
    ``F.scaled_dot_product_attention`` calls, ``projection`` (see :meth:`AttentionLayerHook._plan_rows`) its query
    and key projections. ``layer`` is ``None`` outside hooked
    forwards and while a layer answers a call, so that the attention core's own SDPA calls run the real function."""

    layer: AttentionLayerHook | None = None
    projection: _Projection | None = None
    #: whether the forward runs under :class:`_ProbingInterceptor` (a mode of visattn's own)
    probing: bool = False
    #: the running forward's expected SDPA call and its answer (:class:`_FastForward`), or ``None``
    fast: _FastForward | None = None


_ROUTE = _Route()


def _routed_sdpa(*args, **kwargs):
    """``F.scaled_dot_product_attention`` while a hooked forward routes it: the running layer's answer on the
    thread that runs it, the real function everywhere else."""
    route = _ROUTE
    layer = route.layer
    if layer is None:
        return _SDPA(*args, **kwargs)
    if torch._C._len_torch_function_stack() > route.probing:
        # A TorchFunctionMode entered inside the hooked forward (a hook registered before visattn's on the same
        # module): it may compare functions with torch.nn.functional's, so the layer's later forwards take the mode
        # (_Interceptor) rather than the routing.
        layer._routing = "mode"
        route.fast = layer._fast = None
    route.layer = None
    try:
        fast = route.fast
        if fast is not None:
            out = fast.answer(args, kwargs)
            if out is not None:
                layer._intercepted += 1
                return out
            # Not the call the forward was expected to make: the layer plans its forwards again from the next one.
            route.fast = layer._fast = None
        return layer.attend(_SDPA, args, kwargs)
    finally:
        route.layer = layer


def _routed_linear(*args, **kwargs):
    """``F.linear`` while a hooked forward projects part of its rows (see :func:`_project_part`): the running
    layer's planned projections on the thread that runs it, the real function everywhere else."""
    route = _ROUTE
    if route.projection is None:
        return _LINEAR(*args, **kwargs)
    return _project_part(route.layer, route.projection, args, kwargs)


class _Swap:
    """One function of ``torch.nn.functional`` replaced while hooked forwards that need it run, on any thread.

    Hooked forwards count in and out (under a lock), so the replacement stays while one is running anywhere and
    the real function is back when none is. The replacement answers only on the thread whose forward routes it
    (:class:`_Route`); elsewhere it calls the real function. Cheaper than a :class:`torch.overrides.TorchFunctionMode`,
    which sees every torch call of the processor (about 20 per call, 2 us each on a CPU) where only one matters.
    """

    def __init__(self, name: str, replacement) -> None:
        self.name = name
        self.real = getattr(F, name)
        self.replacement = replacement
        self.users = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            if self.users == 0:
                setattr(F, self.name, self.replacement)
            self.users += 1

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                setattr(F, self.name, self.real)


#: ``F.scaled_dot_product_attention`` routed (:func:`_routed_sdpa`) while entered: by each hooked forward, or by the
#: denoiser's forward for all of them (:attr:`visattn.state.DenoiserState.holds_route`)
SDPA_ROUTE = _Swap("scaled_dot_product_attention", _routed_sdpa)
_LINEAR_SWAP = _Swap("linear", _routed_linear)


class _ProbingInterceptor(torch.overrides.TorchFunctionMode):
    """Answers the SDPA calls of a hooked forward that routing ``F.scaled_dot_product_attention`` (:func:`_routed_sdpa`)
    did not reach: a processor that holds the function under another name. Every layer's first forward runs under it,
    so that the layer knows whether routing alone reaches its calls; a layer where it does not keeps it."""

    def __init__(self, layer: AttentionLayerHook) -> None:
        super().__init__()
        self.layer = layer
        self.missed = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA and _ROUTE.layer is self.layer:
            # Not inside _routed_sdpa's answer (which clears the route): a call the attribute did not reach.
            self.missed += 1
            _ROUTE.layer = None
            try:
                return self.layer.attend(func, args, kwargs)
            finally:
                _ROUTE.layer = self.layer
        return func(*args, **kwargs)


def _unchanged(call: AttentionCall, q, k, v, attn_mask, scale) -> bool:
    """Whether the effects left a call exactly as the stock processor made it (they may still observe it)."""
    return (
        not call.patterns
        and not call.score_mods
        and call.identity_blend is None
        and call.q is q
        and call.k is k
        and call.v is v
        and call.attn_mask is attn_mask
        and call.scale == scale
        and not call.editors
    )


@dataclass(frozen=True)
class _StashedRow:
    """One denoiser row of a per-row call as the effects saw it (the whole layout, after widening), kept in the
    layer call until the call of its target row (see :meth:`AttentionLayerHook._pair_rows`)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


def _row_mask(mask: torch.Tensor | None, row: int) -> torch.Tensor | None:
    """Row ``row`` of a mask broadcastable to ``[B, H, Nq, Nk]``, as ``[1, H or 1, Nq or 1, Nk]``."""
    if mask is None:
        return None
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask if mask.shape[0] == 1 else mask[row : row + 1]


def _stack_masks(masks: list[torch.Tensor | None], n_k: int) -> torch.Tensor | None:
    """One mask for rows whose masks (``[1, ., ., Nk]`` or ``None``) may differ: a boolean or additive mask of
    ``[rows, H, Nq, Nk]`` (broadcast axes kept at 1 where every row has them so)."""
    present = [mask for mask in masks if mask is not None]
    if not present:
        return None
    additive = any(mask.dtype != torch.bool for mask in present)
    dtype = next(mask.dtype for mask in present if mask.dtype != torch.bool) if additive else torch.bool
    device = present[0].device
    rows = []
    for mask in masks:
        if mask is None:
            mask = torch.ones(1, 1, 1, n_k, dtype=torch.bool, device=device)
        if additive and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, float("-inf"))
        rows.append(mask.to(dtype))
    heads = max(mask.shape[1] for mask in rows)
    queries = max(mask.shape[2] for mask in rows)
    return torch.cat([mask.expand(1, heads, queries, n_k) for mask in rows])


@dataclass(frozen=True)
class _Partial:
    """Where the tokens of a call that holds part of its family's layout sit in the whole sequence.

    Attributes:
        length: tokens of the whole sequence (the layout effects see, for queries and keys alike).
        queries: the positions of the call's queries in it.
        keys: the positions of the call's keys (and values) in it.
    """

    length: int
    queries: slice
    keys: slice


def _called_part(layout: TokenLayout, partial: _Partial, n: int) -> TokenLayout | None:
    """The layout of the ``n`` tokens a call holds when it is the start of ``layout`` with the end of the text
    dropped (the queries and keys alike): its streams as the call concatenates them. ``None`` for other partial
    calls."""
    whole = slice(0, n)
    text = layout.text
    if partial.queries != whole or partial.keys != whole or text is None or text.stop != layout.length:
        return None
    if not text.start < n < layout.length:
        return None
    return dataclasses.replace(layout, length=n, text=Span(text.start, n))


def _widen(x: torch.Tensor, length: int, span: slice) -> torch.Tensor:
    """``x`` (``[B, H, N, D]``) placed at ``span`` of a zero sequence of ``length`` tokens."""
    out = x.new_zeros(x.shape[0], x.shape[1], length, x.shape[3])
    out[:, :, span] = x
    return out


def _widen_mask(mask: torch.Tensor | None, partial: _Partial, n_k: int, device: torch.device) -> torch.Tensor | None:
    """The model's mask (broadcastable to ``[B, H, Nq, Nk]``) for the whole sequence: added keys are masked out,
    and added queries attend to every real key (their outputs are dropped; no row may be fully masked)."""
    keys_added = n_k != partial.length
    if mask is None and not keys_added:
        return None
    if mask is None:
        mask = torch.ones(1, 1, 1, n_k, dtype=torch.bool, device=device)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    per_query = mask.shape[2] > 1
    if not keys_added and not per_query:
        return mask
    real, masked = (True, False) if mask.dtype == torch.bool else (0.0, float("-inf"))
    shape = (*mask.shape[:2], partial.length if per_query else 1, partial.length)
    widened = torch.full(shape, masked, dtype=mask.dtype, device=mask.device)
    widened[:, :, :, partial.keys] = real
    widened[:, :, partial.queries if per_query else slice(None), partial.keys] = mask
    return widened


#: (family, effect) pairs already warned that a grid effect found no grid in some layer
_WARNED_UNPLACED: set[tuple[str, str]] = set()


def _rows_within(layout: BatchLayout, start: int, stop: int) -> BatchLayout:
    """The branches of ``layout`` that rows ``[start, stop)`` hold, renumbered from 0."""
    branches = tuple(
        Branch(b.name, max(b.start, start) - start, min(b.stop, stop) - start)
        for b in layout.branches
        if b.start < stop and b.stop > start
    )
    return BatchLayout(branches)


def _rows_of(layout: BatchLayout | None, batch_size: int) -> BatchLayout | None:
    """The denoiser's batch layout for a call of ``batch_size`` rows.

    Video UNets fold frames (or, in temporal layers, pixels) into the batch, sample-major as ``(b f)``: a call
    with ``m`` times the denoiser's rows holds ``m`` consecutive rows per sample, so each branch widens by ``m``.
    """
    if layout is None or layout.batch_size == 0:
        return None
    if layout.batch_size == batch_size:
        return layout
    if batch_size % layout.batch_size:
        return None
    m = batch_size // layout.batch_size
    return BatchLayout(tuple(Branch(b.name, b.start * m, b.stop * m) for b in layout.branches))


class AttentionLayerHook(ModelHook):
    """The visattn hook of one attention module: runs its forward with attention routed through the effects.

    Args:
        effects: the effects that act on this layer, in composition order.
        state: the denoiser's call state (grid, step, batch layout), kept by the denoiser hook.
        layer_name, layer_index: the module's name and position among the denoiser's attention modules.
        static_role: the module's role known before any call (``"text"`` marks text-only refiners).
        steps: fraction range of the schedule in which effects run at all (``attach(..., steps=...)``).
        backend: attention-core backend for calls that effects change.
    """

    def __init__(
        self,
        effects: Sequence[Effect],
        state: DenoiserState,
        *,
        layer_name: str,
        layer_index: int,
        static_role: str,
        steps=None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend not in backend_names():
            raise ValueError(f"backend={backend!r} is not one of {', '.join(backend_names())}")
        #: the effects that act on this layer (the attachment resolved each one's ``layers``); change them through
        #: :meth:`add_effect` and :meth:`remove_effect`, which keep what the hook derives from them
        self.effects = list(effects)
        self.state = state
        self.layer_name = layer_name
        self.layer_index = layer_index
        self.static_role = static_role
        self.steps = steps
        self.backend = backend
        self._intercepted = 0
        self._warned = False
        self._parallel: ParallelView | None = None
        self._layer_heads: int | None = None
        # The context of a forward call whose backward is being recomputed (see visattn.parallel).
        self._replay: CallContext | None = None
        # The next denoiser row of a processor that calls SDPA once per row (Mochi loops over the batch), the rows
        # ``[start, stop)`` of the denoiser's batch the current call holds (``None``: the whole batch), and the
        # source rows kept for their targets' calls (emptied when the layer call ends).
        self._row_cursor = 0
        self._call_rows: tuple[int, int] | None = None
        self._row_stash: dict[int, _StashedRow] = {}
        # Whether every effect of the layer can say, before the processor runs, which rows need no queries and keys of
        # their own (Effect.identity_only_rows, Effect.shared_query_key_rows); the plans made for its calls, per call
        # shape and what the effects' answers depend on (see _plan_rows); and, while a layer call runs, its plan, the
        # context its SDPA call must have, and how many projections were answered for part of the rows.
        self._row_plans: dict[tuple, _RowPlan | None] = {}
        # The SDPA calls no row plan covers whose effects only share rows, answered without them (_shared_call).
        self._shared_calls: dict[tuple, _SharedCall | _IdentityCall | _TransformedCall | None] = {}
        self._row_plan: _RowPlan | None = None
        self._planned: CallContext | None = None
        self._projected = 0
        # Whether the running forward's effects were asked (or their answer looked up) before the processor ran.
        self._row_planned = False
        # ((processor, to_q, to_k), their projections and head count or None) of the last forward planned for
        self._projection_facts: tuple[tuple, tuple | None] | None = None
        # The last processor seen that projects for more than its SDPA call (ROW_PROJECTING_PROCESSORS): none of
        # its forwards is planned before it runs, whatever its modules.
        self._unplanned_processor: Any = None
        # The forward that asks nothing new (_FastForward), and, while a full forward runs, the shared calls its SDPA
        # calls took (shared call, shapes, device).
        self._fast: _FastForward | None = None
        self._shared_answers: list[tuple] = []
        # How the layer's SDPA calls reach attend: None until a forward has made one (probed then, see _run_routed),
        # "attribute" (routing F.scaled_dot_product_attention reaches them all) or "mode" (the processor calls it by
        # another name: every forward runs under _Interceptor).
        self._routing: str | None = None
        # Per call shape and denoiser input: the fields of the call context that do not change between denoiser
        # calls, and where a partial call's tokens sit (see _context_of).
        self._templates: dict[tuple, tuple[dict, _Partial | None]] = {}
        self._derive_from_effects()

    def _derive_from_effects(self) -> None:
        """What the hook keeps about its effects (read at every call), worked out again whenever they change; the
        plans made for the effects before are forgotten."""
        effects = self.effects
        self.wrappers = [effect for effect in effects if effect.wraps_attention]
        self._plans_rows = bool(effects) and all(effect.plans_rows for effect in effects)
        self._shares_rows = any(
            type(effect).shared_query_key_rows is not Effect.shared_query_key_rows for effect in effects
        )
        # Whether some effect may say which rows it answers by their values (planned at the SDPA call where no plan
        # covers the call, see _shared_call; shared rows are, where none was asked for before the processor ran).
        self._answers_by_values = any(
            type(effect).identity_only_rows is not Effect.identity_only_rows for effect in effects
        )
        # Whether some effect may say its whole change to a call is a function of the queries and keys (planned at
        # the SDPA call too, see _make_shared_call).
        self._transforms = any(type(effect).query_key_transform is not Effect.query_key_transform for effect in effects)
        # Whether some effect may say its whole part in a call is reading or editing its probabilities (planned there
        # too).
        self._probability_stage = any(
            type(effect).probability_reads is not Effect.probability_reads
            or type(effect).probability_editors is not Effect.probability_editors
            for effect in effects
        )
        # Whether every effect acts at every step (none has steps=...): no step check per call.
        self._stepless = all(effect.steps is None for effect in effects)
        self._row_plans.clear()
        self._shared_calls.clear()
        self._projection_facts = None
        self._fast = None

    def add_effect(self, effect: Effect) -> None:
        """Let ``effect`` act on this layer too, after the others (visattn's guider adds its perturbation to a layer
        an attachment hooked already)."""
        self.effects.append(effect)
        self._derive_from_effects()

    def remove_effect(self, effect: Effect) -> None:
        """Undo :meth:`add_effect`."""
        self.effects.remove(effect)
        self._derive_from_effects()

    # --- the module's forward ------------------------------------------------------------------------------
    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        state = self.state
        fast = self._fast
        # A planned forward first (checked inline: this runs once per layer call). Tickets are made only for layers
        # with effects and no step window of their own, and dropped when the effects change.
        if fast is not None and fast.epoch == state.plan_epoch and not state.auxiliary:
            processor = getattr(module, "processor", None)
            if (
                processor is fast.processor
                and getattr(processor, "_attention_backend", _UNCHANGED) is fast.backend
                and fast.registry._active_backend is fast.active_backend
                and getattr(processor, "_parallel_config", None) is None
                and not torch._C._len_torch_function_stack()
                and not torch.compiler.is_compiling()
            ):
                return self._fast_forward(fast, args, kwargs)
        original = self.fn_ref.original_forward
        if not self.effects or state.auxiliary or (self.steps is not None and not self._in_steps()):
            return original(*args, **kwargs)
        if not self.wrappers:
            return self._intercepted_forward(module, original, args, kwargs)
        # Effects that may answer for a whole layer call (CrossAttentionCache reuses a finished output) wrap it before
        # anything is projected, so that a reused call skips the stock processor's projections too.
        call = functools.partial(self._intercepted_forward, module, original, args, kwargs)
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        for effect in reversed(self.wrappers):
            call = functools.partial(effect.wrap_attention, call, hidden_states, self.layer_name, self.state)
        return call()

    def _intercepted_forward(self, module, original, args, kwargs) -> Any:
        if not self._stepless:
            step = self.state.step
            fraction = step.fraction if step is not None else None
            if not any(in_steps(effect.steps, fraction) for effect in self.effects):
                # No effect acts at this step (a P2P self-attention window that has closed): skip the interception.
                return original(*args, **kwargs)
        processor = getattr(module, "processor", None)
        # Context parallelism (diffusers' enable_parallelism): where this rank's part of each call sits.
        if getattr(processor, "_parallel_config", None) is None:
            self._parallel = self._layer_heads = None  # not split (the common case, checked first)
        else:
            self._parallel = parallel_view(processor)
            # The layer's head count tells a parallelized call's query shard (is_query_shard).
            self._layer_heads = module_heads(module) if self._parallel is not None else None
        restore = _force_native_dispatch(processor)
        before = self._intercepted
        self._row_cursor = 0
        if self._row_stash:
            self._row_stash.clear()
        if self._plans_rows and processor is not self._unplanned_processor:
            plan = self._row_plan = self._plan_rows(module, processor, args, kwargs)
        else:
            plan = None
        answers = self._shared_answers
        answers.clear()
        try:
            out = self._run_routed(original, args, kwargs, plan.projection if plan is not None else None)
        finally:
            self._end_layer_call()
            if restore is not _UNCHANGED:
                processor._attention_backend = restore
        self._fast = None
        if (
            len(answers) == 1
            and self._intercepted == before + 1
            and (plan is None or plan.projection is None)
            and restore is _UNCHANGED
            and self._parallel is None
            and self._routing == "attribute"
            and self._stepless
            and self.steps is None
            and not self.wrappers
            and self.state.plan_epoch is not None
        ):
            # Its one SDPA call took a shared call planned for the epoch: the next forwards with the same facts take
            # it directly (see _FastForward).
            call, shapes, device = answers[0]
            self._fast = _FastForward(
                self.state.plan_epoch,
                processor,
                getattr(processor, "_attention_backend", _UNCHANGED),
                _dispatch_names()[1],
                _active_backend(),
                *shapes,
                device,
                call,
            )
        answers.clear()
        if self._intercepted == before and not self._warned:
            self._warned = True
            warnings.warn(
                f"visattn: attention layer {self.layer_name!r} ({type(processor).__name__}) computed its attention "
                "without scaled_dot_product_attention, so visattn's effects did nothing there",
                stacklevel=user_stacklevel(),
            )
        return out

    def _fast_forward(self, fast: _FastForward, args: tuple, kwargs: dict) -> Any:
        """The forward with its SDPA call answered by ``fast`` (see :class:`_FastForward`); a call that is not the
        expected one is answered by :meth:`attend`, as in a full forward."""
        route = _ROUTE
        outer = route.layer, route.projection, route.probing, route.fast
        route.layer, route.projection, route.probing, route.fast = self, None, False, fast
        self._row_cursor = 0
        swap = not self.state.holds_route
        if swap:
            SDPA_ROUTE.__enter__()
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            route.layer, route.projection, route.probing, route.fast = outer
            if swap:
                SDPA_ROUTE.__exit__()
            if self._fast is not fast:
                # A call went the full way (attend): release what it kept, as a full forward does.
                self._end_layer_call()
                self._shared_answers.clear()

    def _end_layer_call(self) -> None:
        """Forget what one layer call kept: its source rows (they serve that call only), its row plan and context."""
        self._row_stash.clear()
        self._call_rows = None
        self._planned, self._row_plan, self._projected, self._row_planned = None, None, 0, False

    def _run(self, original, args: tuple, kwargs: dict) -> Any:
        if self._parallel is None:
            return original(*args, **kwargs)
        with parallel_layer(self, self._parallel):
            return original(*args, **kwargs)

    def _run_routed(self, original, args: tuple, kwargs: dict, projection: _Projection | None) -> Any:
        """Run the forward with ``F.scaled_dot_product_attention`` routed to :meth:`attend` on this thread, and with
        ``F.linear`` routed too when part of the rows need no query and key projections (``projection``, see
        :meth:`_plan_rows`).

        Routing reaches the calls that look the function up in ``torch.nn.functional`` when they make them, as every
        diffusers processor and its attention dispatcher's native backend do. The first forward of the layer checks
        that (:class:`_ProbingInterceptor`, a mode that answers the calls routing missed); a layer whose processor
        calls SDPA by another name, a forward that runs inside another TorchFunctionMode, and one torch.compile
        traces, take the mode (:class:`_Interceptor`) instead.
        """
        if self._routing == "mode" or torch._C._len_torch_function_stack() or torch.compiler.is_compiling():
            # Routing swaps a module attribute, which torch.compile's tracing would bake into the graph; a mode it
            # traces as it runs.
            with _Interceptor(self, projection):
                return self._run(original, args, kwargs)
        route = _ROUTE
        outer = route.layer, route.projection, route.probing, route.fast
        route.layer, route.projection, route.fast = self, projection, None
        # Routed already where the denoiser's forward holds it for every layer.
        swap = not self.state.holds_route
        if swap:
            SDPA_ROUTE.__enter__()
        if projection is not None:
            _LINEAR_SWAP.__enter__()
        try:
            if self._routing == "attribute":
                if self._parallel is None:
                    return original(*args, **kwargs)
                return self._run(original, args, kwargs)
            before = self._intercepted
            route.probing = True
            probe = _ProbingInterceptor(self)
            with probe:
                out = self._run(original, args, kwargs)
            if probe.missed:
                self._routing = "mode"
            elif self._routing is None and self._intercepted > before:
                self._routing = "attribute"
            return out
        finally:
            route.layer, route.projection, route.probing, route.fast = outer
            if swap:
                SDPA_ROUTE.__exit__()
            if projection is not None:
                _LINEAR_SWAP.__exit__()

    def _plan_rows(self, module, processor, args: tuple, kwargs: dict) -> _RowPlan | None:
        """What the layer does, in this forward, with rows that need no queries and keys of their own, or ``None``
        (nothing: every row is projected and the effects see the call as it is).

        Such rows exist when every effect acting on the call, asked before the processor runs, says which rows it
        needs no queries and keys of: rows it answers by their values (:meth:`~visattn.effects.Effect.
        identity_only_rows`: PAG's perturbed rows, whose projections diffusers' PAG processors skip too) or rows that
        attend with another row's (:meth:`~visattn.effects.Effect.shared_query_key_rows`: Prompt-to-Prompt's target
        rows), and that is all it does in the call. The processor must be one whose query and key projections feed its
        one SDPA call and nothing else (:data:`ROW_PROJECTING_PROCESSORS`), called on the denoiser's whole batch
        without a mask. Where that saves enough work (:data:`_MIN_SKIPPED_WORK`) the processor projects the other
        rows only (the interception answers its ``to_q``/``to_k`` calls, :func:`_project_part`); on smaller layers
        a call whose only change is shared rows gets them copied in place in the SDPA call (:meth:`attend`), which
        costs less than the edit gathering every row. Either way the SDPA call is checked against the plan.

        Plans are kept per call shape, batch layout, denoiser inputs and the effects' :meth:`~visattn.effects.Effect.
        row_plan_key` (read once per denoiser call): the effects are asked once per step pattern, not per call.
        """
        if self._parallel is not None:
            return None
        if type(processor).__name__ not in ROW_PROJECTING_PROCESSORS:
            self._unplanned_processor = processor
            return None
        # Known per processor and projection modules (LoRA wraps to_q in a module of its own: planned again).
        modules = module._modules
        key = (processor, modules.get("to_q"), modules.get("to_k"))
        facts = self._projection_facts
        if facts is None or facts[0][0] is not key[0] or facts[0][1] is not key[1] or facts[0][2] is not key[2]:
            facts = self._projection_facts = (key, _projection_facts(module, processor))
            self._row_plans.clear()
        if facts[1] is None:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        encoder = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        mask = args[2] if len(args) > 2 else kwargs.get("attention_mask")
        if (
            mask is not None
            or not isinstance(hidden, torch.Tensor)
            or hidden.ndim not in (3, 4)
            or (encoder is not None and (not isinstance(encoder, torch.Tensor) or encoder.ndim != 3))
        ):
            return None
        state = self.state
        if state.batch is None:
            return None  # not inside a denoiser call
        plan_key = (hidden.shape, None if encoder is None else encoder.shape, self._plan_facts())
        self._row_planned = True
        plans = self._row_plans
        plan = plans.get(plan_key, _MISSING)
        if plan is _MISSING:
            plan = self._make_row_plan(facts[1], hidden, encoder)
            if len(plans) >= _LAYOUTS_KEPT:
                plans.clear()
            plans[plan_key] = plan
        if plan is None:
            return None
        projection = plan.projection
        if projection is not None and (
            projection.weights[0] is not facts[1][0].weight or projection.weights[1] is not facts[1][1].weight
        ):
            # The modules' weights were replaced since (a LoRA fused, a state dict assigned): plan with the new ones.
            plan = plans[plan_key] = self._make_row_plan(facts[1], hidden, encoder)
            if plan is None:
                return None
        return plan

    def backend_forced(self) -> bool:
        """Whether a backend is forced for this layer's effects (``attach(backend=...)`` or ``VISATTN_BACKEND``).
        Then every call an effect changes is computed by the attention core on that backend, none answered by the
        stock SDPA call (the shared rows of Prompt-to-Prompt, the rows PAG answers by their values): forcing the
        reference backend makes a whole generation the oracle. Read when plans are made; the denoiser hook's plan
        epoch counts ``VISATTN_BACKEND`` among its facts, so a change of it plans again."""
        return self.backend != "auto" or backend_variable() not in (None, "", "auto")

    def _plan_facts(self) -> Hashable:
        """What this layer's row plans depend on in the running denoiser call beside the call's shapes: the denoiser
        hook's plan epoch, or, for a state it did not fill (a layer hooked on its own), the facts themselves (batch
        layout, this layer's effects' :meth:`~visattn.effects.Effect.row_plan_key`, the inputs' grid, text length
        and other tokens)."""
        state = self.state
        if state.plan_epoch is not None:
            return state.plan_epoch
        inputs = state.inputs
        step_key = state.row_plan_key
        if step_key is None:
            step_key = tuple(effect.row_plan_key(state.step) for effect in self.effects)
        return (
            state.batch.key,
            step_key,
            None if inputs is None else (inputs.grid, inputs.text_length, inputs.other),
            backend_variable(),
        )

    def _make_row_plan(
        self, facts: tuple[torch.nn.Linear, torch.nn.Linear, int], hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> _RowPlan | None:
        """:meth:`_plan_rows`'s plan for a forward of these inputs, asking the effects."""
        to_q, to_k, heads = facts
        batch = hidden.shape[0]
        tokens = hidden.shape[1] if hidden.ndim == 3 else hidden.shape[2] * hidden.shape[3]
        keys = tokens if encoder is None else encoder.shape[1]
        if encoder is not None and (encoder.shape[0] != batch or not self._shares_rows):
            return None  # identity rows need self-attention
        layout = _rows_of(self.state.batch, batch)
        if layout is None:
            return None
        head_dim = to_k.out_features // heads
        ctx, partial = self._context_of(layout, heads, head_dim, tokens, keys)
        if partial is not None:
            return None
        copies = self._row_sources(ctx, batch)
        if not copies:
            return None
        shape = (batch, heads, tokens, head_dim, keys)
        row_work = (tokens * to_q.weight.numel() + keys * to_k.weight.numel()) // 2
        computed = batch - len(copies)
        projected = (
            len(copies) * row_work >= _MIN_SKIPPED_WORK
            and set(copies) == set(range(computed, batch))
            and all(source is None or source < computed for source in copies.values())
            and (encoder is None or all(source is not None for source in copies.values()))
        )
        # Where a backend is forced for effects, the call still goes to it (the rows shared all the same).
        only_shared = all(source is not None for source in copies.values()) and not self.backend_forced()
        if projected:
            projection = _Projection((to_q.weight, to_k.weight), batch, computed, copies)
            return _RowPlan(layout, (heads, head_dim, tokens, keys), shape, copies, projection, (), only_shared)
        if any(source is None or source in copies for source in copies.values()):
            return None  # rows answered by their values, or a row copied from a copy: every row projected
        return _RowPlan(layout, (heads, head_dim, tokens, keys), shape, copies, None, _copy_runs(copies), only_shared)

    def _row_sources(
        self, ctx: CallContext, batch: int, spans: dict[int, slice] | None = None
    ) -> dict[int, int | None] | None:
        """The rows the effects acting on ``ctx`` need no queries and keys of, each mapped to the row whose queries
        and keys it attends with (``None``: none, the row is answered by its values), or ``None`` when one of them
        may do more (see :meth:`~visattn.effects.Effect.identity_only_rows` and
        :meth:`~visattn.effects.Effect.shared_query_key_rows`) or two of them claim the same row.

        Rows shared at part of their queries (:meth:`~visattn.effects.Effect.shared_query_span`) are put in
        ``spans`` (``{row: queries}``) when it is given; without it such rows make the answer ``None`` (a plan made
        before the processor runs shares whole rows only)."""
        sources: dict[int, int | None] = {}
        for effect in self.effects:
            if not effect.acts_on(ctx):
                continue
            answered = effect.identity_only_rows(ctx)
            shared = effect.shared_query_key_rows(ctx) if answered is None else {}
            if answered is None and shared is None:
                return None
            claimed = dict(shared) if answered is None else dict.fromkeys(range(answered.start, answered.stop))
            if claimed.keys() & sources.keys() or any(not 0 <= row < batch for row in claimed):
                return None
            if shared:
                queries = effect.shared_query_span(ctx)
                if queries is not None:
                    if spans is None or not 0 <= queries.start < queries.stop <= ctx.queries.length:
                        return None
                    spans.update(dict.fromkeys(shared, queries))
            sources.update(claimed)
        return sources

    def _check_plan(self, ctx: CallContext, call: AttentionCall, q: torch.Tensor, k: torch.Tensor) -> None:
        """An SDPA call whose queries and keys were projected for part of the rows must be the planned one, and the
        effects must have done what they said (rows answered by their values, rows attending with their source
        rows' queries and keys, nothing else); otherwise rows without projections of their own could reach the
        output, so this refuses rather than compute a wrong one."""
        problem = None
        identity = any(source is None for source in self._row_plan.copies.values())
        if ctx is not self._planned:
            problem = f"its context ({ctx.role}, {ctx.heads} heads, {ctx.queries.length} tokens) is not the planned one"
        elif (call.identity_blend is None) == identity or (
            call.output is not None
            or call.q is not q
            or call.k is not k
            or call.patterns
            or call.score_mods
            or call.editors
            or call.reads
            or call.observers
        ):
            problem = "an effect did other than it said before the call (rows answered by their values or shared)"
        if problem is not None:
            raise RuntimeError(
                f"visattn: layer {self.layer_name!r} projected queries and keys for part of its rows only, but "
                f"{problem}; please report this"
            )

    def _share_planned_rows(self, plan: _RowPlan, q: torch.Tensor, k: torch.Tensor) -> bool:
        """Whether the planned call's rows that take another row's queries and keys hold them: projected so (both
        projections answered, :func:`_project_part`), or copied in place here. The copy writes into the
        processor's own query and key tensors, which feed this call alone (:data:`ROW_PROJECTING_PROCESSORS`); it
        is not made where autograd records them (the rows are then shared by the effects in the call)."""
        if plan.projection is not None:
            return self._projected == 2
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            return False
        _share_rows(q, k, plan.copy_runs)
        return True

    def _shared_call(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> _SharedCall | _IdentityCall | _TransformedCall | None:
        """How to answer this SDPA call when every effect acting on it only makes rows attend with other rows'
        queries and keys (:meth:`~visattn.effects.Effect.shared_query_key_rows`, at the queries
        :meth:`~visattn.effects.Effect.shared_query_span` names), only answers rows by their values
        (:meth:`~visattn.effects.Effect.identity_only_rows`), or only replaces the queries and keys by a function of
        them (:meth:`~visattn.effects.Effect.query_key_transform`); ``None``: the effects run the call.

        This serves the calls no plan made before the processor ran covers (:meth:`_plan_rows`: other processors,
        joint calls, transformed queries): nothing is written into the processor's tensors, the rows are gathered or
        computed apart (:class:`_SharedCall`), answered by their values (:class:`_IdentityCall`) or transformed
        (:class:`_TransformedCall`). Kept per call shape, batch layout, denoiser inputs and the effects'
        :meth:`~visattn.effects.Effect.row_plan_key`, as row plans are; not made where the call holds part of the
        batch, runs split across ranks, is a backward recomputation, or autograd records its inputs.
        """
        state = self.state
        layout = state.batch
        if (
            not self._plans_rows
            or layout is None
            or self._parallel is not None
            or self._replay is not None
            or k.shape[1] != q.shape[1]
            or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        ):
            return None
        key = (q.shape, k.shape, v.shape, q.device, self._plan_facts())
        plans = self._shared_calls
        plan = plans.get(key, _MISSING)
        if plan is _MISSING:
            batch = _rows_of(layout, q.shape[0])
            # None where the call holds part of the batch (a processor that calls SDPA per row).
            plan = None if batch is None else self._make_shared_call(batch, q, k)
            if len(plans) >= _LAYOUTS_KEPT:
                plans.clear()
            plans[key] = plan
        return plan

    def _make_shared_call(
        self, batch: BatchLayout, q: torch.Tensor, k: torch.Tensor
    ) -> _SharedCall | _IdentityCall | _TransformedCall | None:
        """:meth:`_shared_call`'s plan for calls of these shapes, asking the effects."""
        if self.backend_forced():
            return None  # the stock SDPA answers nothing a forced backend is asked to compute
        ctx, partial = self._context_of(batch, q.shape[1], q.shape[3], q.shape[2], k.shape[2])
        if partial is not None or not any(effect.acts_on(ctx) for effect in self.effects):
            return None
        if self._transforms or self._probability_stage:
            stock = self._stock_answer(ctx, q.device)
            if stock is not None:
                return stock
        spans: dict[int, slice] = {}
        copies = self._row_sources(ctx, q.shape[0], spans)
        if not copies:
            return None
        if all(source is None for source in copies.values()):
            # Rows answered by their values only (each query's own value: as many queries as keys).
            if q.shape[2] != k.shape[2]:
                return None
            return _identity_call(sorted(copies), q.shape[0], q.device)
        if any(source is None for source in copies.values()):
            return None
        return _shared_call(copies, spans, q.shape[0], q.shape[2], q.device)

    def _stock_answer(self, ctx: CallContext, device: torch.device) -> _TransformedCall | None:
        """:class:`_TransformedCall` of a call in which every acting effect's part is a function of the queries and
        keys (composed in attachment order, as their apply calls are), reading the final probabilities (served
        after every change, as the core serves reads) or editing them (in attachment order, as the core runs
        editors); ``None`` where one may do anything else."""
        transforms: list[QueryKeyTransform] = []
        readers: list[ProbabilityReader] = []
        editors: list[Editor] = []
        for effect in self.effects:
            if not effect.acts_on(ctx):
                continue
            transform = effect.query_key_transform(ctx)
            if transform is not None:
                if transform is not UNCHANGED_QUERY_KEY:
                    transforms.append(transform)
                continue
            reader = effect.probability_reads(ctx, device)
            if reader is not None:
                if reader is not NO_READS:
                    readers.append(reader)
                continue
            edits = effect.probability_editors(ctx, device)
            if edits is None:
                return None
            editors.extend(edits)
        return _TransformedCall(tuple(transforms), tuple(readers), tuple(editors))

    @contextlib.contextmanager
    def replaying(self, ctx: CallContext):
        """Answer SDPA calls as this layer answered the forward call whose context is ``ctx`` (the backward of a
        Ulysses call recomputes its attention outside the layer's forward)."""
        self._replay = ctx
        try:
            with _Interceptor(self):
                yield
        finally:
            self._replay = None

    def _in_steps(self) -> bool:
        if self.steps is None:
            return True
        step = self.state.step
        return in_steps(self.steps, step.fraction if step is not None else None)

    # --- one attention computation -------------------------------------------------------------------------
    def attend(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        """Answer one ``scaled_dot_product_attention`` call of this layer."""
        self._intercepted += 1
        qkv = _direct_qkv(args, kwargs)
        if qkv is not None:
            # How processors and diffusers' dispatcher call it: the keywords are the call's other arguments.
            q, k, v = qkv
            sdpa = kwargs
            mask, scale = kwargs.get("attn_mask"), kwargs.get("scale")
        else:
            sdpa = _sdpa_arguments(args, kwargs)
            q, k, v = sdpa["query"], sdpa["key"], sdpa["value"]
            mask, scale = sdpa["attn_mask"], sdpa["scale"]
        if q.ndim != 4 or sdpa.get("is_causal") or sdpa.get("dropout_p"):
            return func(*args, **kwargs)
        plan = self._row_plan
        shared = False
        if plan is not None and mask is None and self._replay is None and (*q.shape, k.shape[2]) == plan.shape:
            # The call the plan was made for (_plan_rows): the planned context, and its shared rows copied in place
            # unless the processor projected them so.
            shared = self._share_planned_rows(plan, q, k)
            if shared and plan.only_shared:
                # Every acting effect said the shared rows are all it changes in this call: the stock computation
                # over these queries and keys is the effects' answer.
                if plan.projection is None and plan.copy_runs and not sdpa.get("enable_gqa"):
                    copied = plan.copied_call
                    self._shared_answers.append((copied, (q.shape, k.shape, v.shape), q.device))
                return func(*args, **kwargs)
        elif (
            mask is None
            and plan is None
            and (
                (self._shares_rows and not self._row_planned)
                or self._answers_by_values
                or self._transforms
                or self._probability_stage
            )
        ):
            # No plan covers the call (other processors, joint calls, rows answered by their values where projecting
            # only the others saves too little): plan at the SDPA call.
            shared_call = self._shared_call(q, k, v)
            if shared_call is not None:
                rest = kwargs if sdpa is kwargs and args else {n: x for n, x in sdpa.items() if n not in _QKV}
                answer = shared_call.run(func, q, k, v, rest)
                if answer is not None:
                    if not sdpa.get("enable_gqa"):
                        self._shared_answers.append((shared_call, (q.shape, k.shape, v.shape), q.device))
                    return answer
        view = self._parallel
        heads = ulysses_heads(view, q.shape[1])
        n_local = q.shape[2]
        shard = heads is None and is_query_shard(view, self._layer_heads, q.shape[1])
        if self._replay is not None:
            # The backward of a Ulysses call recomputes it: answer it with the context of its forward.
            ctx, partial, shard = self._replay, None, False
        elif shard:
            # This rank's query shard (a call without Ulysses' all-to-all): placed as part of the whole sequence.
            ctx, partial = self._context(q, k, n_q=n_local * view.world)
            shard = ctx.grid is not None and partial is None
        if self._replay is None and not shard:
            if plan is not None and heads is None and (*q.shape, k.shape[2]) == plan.shape:
                # The call the plan was made for (_plan_rows): the planned context, made for this call (its step and
                # denoiser call are this call's).
                ctx, partial = self._context_of(plan.layout, *plan.context_shape)[0], None
                self._planned = ctx
            else:
                ctx, partial = self._context(q, k, heads=heads)
        acting = [effect for effect in self.effects if effect.acts_on(ctx)]
        if not acting:
            return func(*args, **kwargs)
        check_supported(view, self.layer_name, shard)
        self._warn_unplaced(ctx, q.shape[2], acting)
        if heads is not None and self._replay is None:
            remember_for_backward(self, ctx, q)
        if k.shape[1] != q.shape[1]:
            # Grouped-query attention: give every query head its own key/value head, as SDPA's enable_gqa does.
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        order = None
        if shard:
            # Every rank runs the whole call on the gathered queries, so observers and editors see the full grid.
            q = gather_queries(q, view)
            if mask is not None and mask.ndim == 4 and mask.shape[-2] == n_local > 1:
                mask = gather_queries(mask, view)
        elif heads is not None and ctx.role == "joint" and split_by_stream(ctx):
            # Ulysses gathered every rank's [text_r, image_r]: reorder to the layout effects expect. A call that
            # dropped its text padding (one row of Framepack) interleaves the streams it holds, not the padded ones.
            called = ctx.queries if partial is None else _called_part(ctx.queries, partial, q.shape[2])
            order = None if called is None else joint_order(called, view.ulysses)
            if order is not None:
                order = order.to(q.device)
                q, k, v = q[:, :, order], k[:, :, order], v[:, :, order]
                if mask is not None:
                    mask = mask[..., order] if mask.shape[-2] == 1 else mask[..., order, :][..., order]
        n_q = q.shape[2]
        if partial is not None:
            # Effects see the whole sequence (see the module docstring); the added tokens change no real token.
            mask = _widen_mask(mask, partial, k.shape[2], q.device)
            q = _widen(q, partial.length, partial.queries)
            if partial.keys != slice(0, partial.length):
                k, v = _widen(k, partial.length, partial.keys), _widen(v, partial.length, partial.keys)
        rows = q.shape[0]
        paired = False
        if self._call_rows is not None and self._replay is None and not shard and order is None:
            if any(getattr(effect, "pairs_rows", False) for effect in acting):
                pair = self._pair_rows(ctx, q, k, v, mask)
                if pair is not None:
                    ctx, q, k, v, mask = pair
                    paired = True
        call = AttentionCall(
            ctx, q, k, v, attn_mask=mask, scale=scale, backend=self.backend, replay=self._replay is not None
        )
        if shared and ctx is self._planned:
            call.shared_rows = {row: source for row, source in plan.copies.items() if source is not None}
        for effect in acting:
            effect.apply(call)
        if self._projected:
            self._check_plan(ctx, call, q, k)
        # Rows shared in place under a forced backend (the plan's only_shared is off): the call is the edit, and the
        # forced backend computes it (AttentionCall.run), not the stock function.
        stock_answers = not shared or plan.only_shared
        if call.output is None and stock_answers and _unchanged(call, q, k, v, mask, scale):
            if paired and not call.observers and not call.reads:
                # Nothing edits the target row at this step: its stock call answers, bit for bit.
                return func(*args, **kwargs)
            # Only observers and reads acted: the stock computation answers, so observing never changes a bit (on the
            # gathered or reordered sequence under context parallelism, whose rows are the stock rows).
            if shard or order is not None or paired:
                call.output = func(q, k, v, attn_mask=mask, scale=scale)
            else:
                call.output = func(*args, **kwargs)
        out = call.run()
        if paired:
            out = out[-rows:]  # the target rows; their source rows were answered by their own call
        if out.shape[2] != n_q:
            out = out[:, :, partial.queries]
        if order is not None:
            gathered = torch.empty_like(out)
            gathered[:, :, order] = out
            out = gathered
        if shard:
            out = own_rows(out, view, n_local)
        return out if out.dtype == q.dtype else out.to(q.dtype)

    def context(self, q: torch.Tensor, k: torch.Tensor) -> CallContext:
        """The :class:`CallContext` of one call, from its shapes, the layer and the denoiser state."""
        return self._context(q, k)[0]

    def _context(
        self, q: torch.Tensor, k: torch.Tensor, *, n_q: int | None = None, heads: tuple[int, int] | None = None
    ) -> tuple[CallContext, _Partial | None]:
        """The call's context, and where its tokens sit when it holds part of the layout the context describes.

        ``n_q`` overrides the query count (a context-parallel query shard placed in the whole sequence); ``heads``
        is ``(head_offset, total_heads)`` of a call that holds a slice of the layer's heads (Ulysses).
        """
        batch = self._batch_rows(q.shape[0])
        return self._context_of(batch, q.shape[1], q.shape[3], n_q or q.shape[2], k.shape[2], heads)

    def _context_of(
        self,
        batch: BatchLayout,
        call_heads: int,
        head_dim: int,
        n_q: int,
        n_k: int,
        heads: tuple[int, int] | None = None,
    ) -> tuple[CallContext, _Partial | None]:
        """:meth:`_context` from the call's batch layout and shapes."""
        state = self.state
        inputs = state.inputs
        key = (
            n_q,
            n_k,
            call_heads,
            head_dim,
            heads,
            state.family.name,
            None if inputs is None else inputs.grid,
            None if inputs is None else inputs.text_length,
            None if inputs is None else inputs.other,
        )
        entry = self._templates.get(key)
        if entry is None:
            role, queries, keys, grid, partial = self._derive_layout(n_q, n_k)
            fields = {
                "role": role,
                "layer_name": self.layer_name,
                "layer_index": self.layer_index,
                "family": state.family.name,
                "heads": call_heads,
                "head_dim": head_dim,
                "queries": queries,
                "keys": keys,
                "grid": grid,
                "token_order": "fhw",
                "head_offset": heads[0] if heads else 0,
                "total_heads": heads[1] if heads else None,
                "head_group": self._parallel.ulysses_group if heads else None,
            }
            if len(self._templates) >= _LAYOUTS_KEPT:
                self._templates.clear()
            entry = self._templates[key] = (fields, partial)
        fields, partial = entry
        step = state.step
        # Made without the frozen dataclass's __init__ (one object.__setattr__ per field): one context is made per
        # attention call. tests/core/test_interception.py checks that these are the dataclass's fields.
        ctx = object.__new__(CallContext)
        ctx.__dict__.update(
            fields,
            batch=batch,
            step=step if step is not None else StepInfo(),
            denoiser=state.call,
            runs=state.runs,
        )
        return ctx, partial

    def _batch_rows(self, batch_size: int) -> BatchLayout:
        """The batch layout of a call of ``batch_size`` rows.

        A call with fewer rows than the denoiser's batch comes from a processor that loops over the batch (Mochi):
        its calls take the denoiser's rows in order, so the cursor says which rows this one holds.
        """
        self._call_rows = None
        layout = self.state.batch
        batch = _rows_of(layout, batch_size)
        if batch is not None:
            return batch
        if layout is not None and 0 < batch_size < layout.batch_size and layout.batch_size % batch_size == 0:
            start = self._row_cursor
            self._row_cursor = (start + batch_size) % layout.batch_size
            self._call_rows = (start, start + batch_size)
            return _rows_within(layout, start, start + batch_size)
        return BatchLayout((Branch("cond", 0, batch_size),))

    def _pair_rows(
        self, ctx: CallContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[CallContext, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """A per-row call made whole for an effect that pairs rows (``pairs_rows``), or ``None``.

        The call holds rows ``[start, stop)`` of one branch of the denoiser's batch, whose first half are source
        rows and second half their targets (row ``j`` of the halves pairs with row ``j``). Source rows are kept
        and answered alone (their own call stays a plain one); a target call becomes ``[sources, targets]`` with
        a branch of its own, as the batched call of a processor that does not loop over the batch would hold it.
        ``q``, ``k``, ``v`` and ``mask`` are the call's as effects see it (the whole layout, after widening), so
        rows whose processor dropped different padding still line up.
        """
        start, stop = self._call_rows
        branch = next((b for b in self.state.batch.branches if b.start <= start < b.stop), None)
        if branch is None or stop > branch.stop or branch.size % 2:
            return None
        middle = branch.start + branch.size // 2
        if stop <= middle:
            for i in range(stop - start):
                self._row_stash[start + i] = _StashedRow(q[i : i + 1], k[i : i + 1], v[i : i + 1], _row_mask(mask, i))
            return None
        if start < middle:
            return None  # a call across both halves pairs within itself (no per-row processor makes one)
        half = branch.size // 2
        sources = [self._row_stash.pop(row - half, None) for row in range(start, stop)]
        if any(
            source is None or source.q.shape[1:] != q.shape[1:] or source.k.shape[1:] != k.shape[1:]
            for source in sources
        ):
            return None  # a source row that went unseen, or whose call had another layout: no pairing
        masks = [source.mask for source in sources] + [_row_mask(mask, i) for i in range(stop - start)]
        paired = dataclasses.replace(ctx, batch=BatchLayout((Branch(branch.name, 0, 2 * (stop - start)),)))
        return (
            paired,
            torch.cat([*(source.q for source in sources), q]),
            torch.cat([*(source.k for source in sources), k]),
            torch.cat([*(source.v for source in sources), v]),
            _stack_masks(masks, k.shape[2]),
        )

    def _warn_unplaced(self, ctx: CallContext, n_q: int, acting: list[Effect]) -> None:
        """Warn once per family and effect when an effect that needs the grid meets a self or joint call that holds
        more tokens than the grid but where visattn cannot place it (history, reference or audio tokens)."""
        inputs = self.state.inputs
        if ctx.grid is not None or ctx.role not in ("self", "joint") or inputs is None or inputs.grid is None:
            return
        grid_tokens = math.prod(inputs.grid)
        if n_q <= grid_tokens:
            return  # a call over fewer tokens than the grid (text refiners, temporal layers) has none to place
        for effect in acting:
            key = (self.state.family.name, type(effect).__name__)
            if "grid" not in effect.needs() or key in _WARNED_UNPLACED:
                continue
            _WARNED_UNPLACED.add(key)
            warnings.warn(
                f"visattn: {type(effect).__name__} needs the latent grid, but layer {self.layer_name!r} (family "
                f"{self.state.family.name!r}) attends over {n_q} tokens that hold the {inputs.grid} grid "
                f"({grid_tokens} tokens) together with tokens visattn cannot place (history, reference or audio "
                "tokens, or text it cannot locate): it leaves such layers unchanged",
                stacklevel=user_stacklevel(),
            )

    def _derive_layout(self, n_q: int, n_k: int):
        """Role, query and key layouts, latent grid, and the placement of a partial call (see :class:`_Partial`)
        of a call with ``n_q`` queries and ``n_k`` keys. It depends on nothing but the shapes, the denoiser input's
        grid, text length and other tokens, and the family: :meth:`_context_of` keeps it per those."""
        family, inputs = self.state.family, self.state.inputs
        if self.static_role == "stream":
            # The video over another generated stream (audio) or back: keys that are never text, whatever their
            # count, and no grid an effect could act on.
            return "stream", TokenLayout(n_q), TokenLayout(n_k), None, None
        # Another stream's tokens (audio) are never the grid, even where they are as many.
        other_stream = family.other_stream_layers and family.is_other_stream(self.layer_name)
        grids = () if other_stream else family.level_grids(inputs.grid if inputs is not None else None)
        text_length = inputs.text_length if inputs is not None else None

        def grid_of(n: int):
            return next((g for g in grids if math.prod(g) == n), None)

        def fits_text(n: int) -> bool:
            return 0 < n and (text_length is None or n <= text_length)

        if self.static_role == "text":
            text = TokenLayout(n_q, text=Span(0, n_q))
            return "text", text, (text if n_k == n_q else TokenLayout(n_k, text=Span(0, n_k))), None, None
        # The family's other tokens (padding, gist tokens, history) before and after the grid, if it has any.
        other = inputs.other if inputs is not None and family.other_tokens else (0, 0)
        grid = grid_of(n_q)
        if grids and other is not None and any(other):
            placed = self._place_other(n_q, n_k, grids[0], other, text_length)
            if placed is not None:
                return placed
        # A declared cross-attention stays one when its queries are as many as the text (audio queries over the text).
        if n_q != n_k or self.static_role == "cross":
            keys_are_text = text_length is not None and n_k == text_length
            if grid is not None and family.text_position is not None and not keys_are_text and fits_text(n_k - n_q):
                # Image queries over [text, image] keys: a joint sequence whose text queries run in a call of their
                # own (block-causal attention).
                layout = _joint_layout(n_k, math.prod(grid), family.text_position)
                queries = layout.image.as_slice()
                return "joint", layout, layout, grid, _Partial(n_k, queries, slice(0, n_k))
            queries = TokenLayout(n_q, image=Span(0, n_q)) if grid else TokenLayout(n_q)
            if text_length is None or n_k == text_length:
                keys = TokenLayout(n_k, text=Span(0, n_k))
            elif family.cross_keys_lead_with_text and n_k > text_length:
                keys = TokenLayout(n_k, text=Span(0, text_length))
            else:
                keys = TokenLayout(n_k)
            return "cross", queries, keys, grid, None
        if grid is not None:
            layout = TokenLayout(n_q, image=Span(0, n_q))
            return "self", layout, layout, grid, None
        if grids and family.context_before_grid and n_q > math.prod(grids[0]):
            # Context latents (history) before the grid, however many the call holds: other tokens, so that grid
            # patterns keep them visible to every grid query and SEG leaves them unblurred, and no text effect takes
            # them for text.
            image_tokens = math.prod(grids[0])
            layout = _layout_with_other(n_q, n_q - image_tokens, image_tokens, 0)
            return "self", layout, layout, grids[0], None
        if grids and family.text_position is not None and fits_text(n_q - math.prod(grids[0])):
            image_tokens = math.prod(grids[0])
            n_text = n_q - image_tokens
            if family.text_position == "last" and text_length is not None and n_text < text_length:
                # The processor dropped the padding at the end of the text (Mochi keeps each row's valid tokens):
                # effects see the whole text, the dropped positions masked out, so that a text position means the
                # same in every call.
                layout = _joint_layout(image_tokens + text_length, image_tokens, "last")
                return "joint", layout, layout, grids[0], _Partial(layout.length, slice(0, n_q), slice(0, n_q))
            layout = _joint_layout(n_q, image_tokens, family.text_position)
            return "joint", layout, layout, grids[0], None
        # Tokens visattn cannot place (a grid it cannot read, extra tokens): effects see no grid and no text.
        layout = TokenLayout(n_q)
        return ("joint" if self.static_role == "joint" else "self"), layout, layout, None, None

    def _place_other(self, n_q: int, n_k: int, grid: tuple[int, int, int], other: tuple[int, int], text_length):
        """The layout of a call whose sequences hold the family's other tokens (``other``: how many before and
        after the grid), or ``None`` when its token counts do not fit them (the call is placed as any other).

        Self or joint calls hold ``[before, grid, after]`` with the text first or last (where the family says);
        cross calls hold them as queries over text keys (Bria FIBO 2's injection layers).
        """
        family = self.state.family
        before, after = other
        image_tokens = math.prod(grid)
        own = before + image_tokens + after
        role = "joint" if self.static_role == "joint" else "self"
        if n_q != n_k:
            if n_q != own or text_length is None or n_k != text_length:
                return None
            queries = _layout_with_other(n_q, before, image_tokens, after)
            return "cross", queries, TokenLayout(n_k, text=Span(0, n_k)), grid, None
        n_text = n_q - own
        if n_text == 0:
            layout = _layout_with_other(n_q, before, image_tokens, after)
            return role, layout, layout, grid, None
        if family.text_position is None or n_text < 0 or (text_length is not None and n_text > text_length):
            return None
        if family.text_position == "last" and text_length is not None and n_text < text_length:
            # The processor dropped the padding at the end of the text (Framepack's batch of one keeps the valid
            # tokens): effects see the whole text, the dropped positions masked out, as for Mochi (_derive_layout).
            layout = _layout_with_other(own + text_length, before, image_tokens, after, "last", text_length)
            return "joint", layout, layout, grid, _Partial(layout.length, slice(0, n_q), slice(0, n_q))
        layout = _layout_with_other(n_q, before, image_tokens, after, family.text_position, n_text)
        return "joint", layout, layout, grid, None


def _layout_with_other(
    length: int, before: int, image_tokens: int, after: int, text_position: str | None = None, n_text: int = 0
) -> TokenLayout:
    """``[before, grid, after]`` other tokens around ``image_tokens`` grid tokens, with ``n_text`` text tokens first
    or last (``text_position``; ``None``: no text)."""
    start = n_text if text_position == "first" else 0
    image = Span(start + before, start + before + image_tokens)
    other = tuple(span for span in (Span(start, image.start), Span(image.stop, image.stop + after)) if span.length)
    text = None
    if text_position == "first":
        text = Span(0, n_text)
    elif text_position == "last":
        text = Span(length - n_text, length)
    return TokenLayout(length, image=image, text=text, other=other)


def _joint_layout(length: int, image_tokens: int, text_position: str) -> TokenLayout:
    """A joint sequence of ``length`` tokens: ``image_tokens`` grid tokens, the text first or last."""
    n_text = length - image_tokens
    if text_position == "first":
        return TokenLayout(length, image=Span(n_text, length), text=Span(0, n_text))
    return TokenLayout(length, image=Span(0, image_tokens), text=Span(image_tokens, length))


_UNCHANGED = object()
_MISSING = object()

#: multiply-adds of the query and key projections a projection plan must save (rows x tokens x weight size, the mean
#: of the two projections) to be made: answering the projections for part of the rows costs more Python per call
#: (about 40 us inside a tiny generation on a CPU), so on tiny layers (the test UNet's 256 tokens x 32 channels:
#: 0.26 M per row) computing every row, and copying shared rows in place in the SDPA call, is cheaper, while SD 1.5's
#: layers save 6.5 M to 105 M per row and projection
_MIN_SKIPPED_WORK = 1 << 22

#: call shapes whose layout one layer hook keeps (a pipeline sees a handful; more means resolutions keep changing)
_LAYOUTS_KEPT = 64


def _active_backend() -> Any:
    """diffusers' active attention backend (what a processor whose ``_attention_backend`` is ``None`` uses)."""
    return _dispatch_names()[1]._active_backend


@functools.cache
def _dispatch_names() -> tuple[Any, Any]:
    """diffusers' ``AttentionBackendName`` and ``_AttentionBackendRegistry``, imported once (not at every call)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    return AttentionBackendName, _AttentionBackendRegistry


def _force_native_dispatch(processor: Any) -> Any:
    """Route a dispatcher processor through the native backend (which calls SDPA) for this call.

    Returns the backend to restore, or ``_UNCHANGED``. Effects need the call to reach
    ``scaled_dot_product_attention``; a processor set to another diffusers backend (flash, sage, ...) would
    call its kernel directly and escape interception.
    """
    backend = getattr(processor, "_attention_backend", _UNCHANGED)
    if backend is _UNCHANGED:
        return _UNCHANGED
    AttentionBackendName, _AttentionBackendRegistry = _dispatch_names()  # noqa: N806 (diffusers' class names)
    chosen = backend if backend is not None else _AttentionBackendRegistry._active_backend
    if getattr(chosen, "value", chosen) == "native":
        return _UNCHANGED
    processor._attention_backend = AttentionBackendName.NATIVE
    return backend


def _projection_facts(module: torch.nn.Module, processor: Any) -> tuple[torch.nn.Linear, torch.nn.Linear, int] | None:
    """``(to_q, to_k, heads)`` of a module whose processor projects queries and keys for its SDPA call alone
    (:data:`ROW_PROJECTING_PROCESSORS`) with plain ``nn.Linear`` layers, or ``None``."""
    if type(processor).__name__ not in ROW_PROJECTING_PROCESSORS:
        return None
    to_q, to_k = getattr(module, "to_q", None), getattr(module, "to_k", None)
    heads = getattr(module, "heads", None)
    if (
        type(to_q) is not torch.nn.Linear
        or type(to_k) is not torch.nn.Linear
        or not isinstance(heads, int)
        or heads <= 0
        or to_k.out_features % heads
    ):
        return None
    return to_q, to_k, heads


def register_layer_hook(module: torch.nn.Module, hook: AttentionLayerHook) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, HOOK_NAME)


def remove_layer_hook(module: torch.nn.Module) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)


def layer_hook(module: torch.nn.Module) -> AttentionLayerHook | None:
    """The visattn hook of an attention module, if one is registered."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
