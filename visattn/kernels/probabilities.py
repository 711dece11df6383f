"""The probability stage: the step after the softmax, which FlexAttention's split (``mask_mod``, ``score_mod``)
does not have and visattn's editing and observing effects need.

An :class:`~visattn.kernels.request.AttentionRequest` names it with two lists:

* ``editors``: ``editor(probs, start, stop)`` changes, in place, the fp32 probabilities ``[B, H, stop - start,
  Nk]`` of the queries ``[start, stop)`` before they weight the values (Prompt-to-Prompt injects the source
  prompt's maps into the target's, Hertz et al. 2022). An arbitrary editor needs materialized probabilities, so
  the reference backend runs the call, chunk by chunk.
* ``reads``: a :class:`ProbabilityRead` receives the final probabilities of a block of rows, queries and keys
  (attention maps), or with ``before_edits`` the softmax's own. Reads alone leave the call on whichever backend is
  fastest: the block is recomputed from its own logits and the backend's log-sum-exp (or the log-sum-exp over its
  rows when the backend gives none, as dense SDPA). In a call the reference backend runs anyway, reads are served
  from the chunks it materializes, once for editors and reads together.

"Final" means as the output used them: after the editors, and with an identity blend ``s`` (SoftPAG) as
``(1 - s) * probs + s * identity``.

Editors linear over the keys
----------------------------
An editor that is a :class:`LinearEdit` declares what it does as data: rows ``target`` of the probabilities
become ``P[source] @ mix + P[target] * keep``, a linear map over the key axis (Prompt-to-Prompt's word swap,
refinement and re-weighting of cross-attention are all of this form: the authors' ``mapper`` einsum, the
``alphas`` blend of a refinement, the equalizer). Since ``P' v = P[source] (mix v) + P[target] (keep * v)``, the
edit moves into the values and the call needs no materialized probabilities: the core computes it as plain
attention (``visattn.kernels.core._run_linear_edits``) on any backend, in one call whose batch holds the target
rows with the source rows' queries and keys over mixed values (``keep`` zero), or, when ``keep`` is not zero, the
call with the target rows over ``keep * v`` plus a second call of the source rows over the mixed values, added to
the target rows.
The reference backend still runs the edit materialized (``LinearEdit.__call__``): it is the oracle the fast form is
tested against. The core takes the fast form when every editor is a ``LinearEdit``, no edited row is another
edit's source, and the call has no pattern or score modifier (whose ``mask_mod``/``score_mod`` may read the batch
index a row moved from); otherwise the reference backend runs it as before. Reads of such a call are served by
recomputing their blocks (with the edits applied to the recomputed probabilities for final reads).

Joint attention's edit (Prompt-to-Prompt in SD3 and Flux) is not linear: the text block is edited so, and the other
keys are rescaled to what it leaves of each row. Each part of that ratio is an attention call over values that are
zero outside one block (the text block's and the others' weighted values, and their sums over the blocks'
weights), so a :class:`TextBlockEdit` runs without materialized probabilities too
(``visattn.kernels.core._run_text_block_edits``), on the same conditions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .request import AttentionRequest

#: ``editor(probs, start, stop)``: edit the probabilities ``[B, H, stop - start, Nk]`` of queries ``[start, stop)``
Editor = Callable[[torch.Tensor, int, int], None]

# Queries per chunk when a read recomputes its block: bounds the logits at chunk x keys per row and head.
READ_QUERY_CHUNK = 1024


@dataclass(frozen=True, eq=False)
class ProbabilityRead:
    """A block of a call's final attention probabilities that an effect reads.

    Attributes:
        observe: receives the block, ``[rows, H, queries, keys]`` fp32, once per call.
        rows: the batch rows (a contiguous range); ``None``: every row.
        queries: the query positions (a contiguous range); ``None``: every query.
        keys: the key positions, as an index tensor; ``None``: every key.
        before_edits: the softmax's probabilities as it made them, before the editors and the identity blend (what
            Prompt-to-Prompt's local blend stores, as the authors' ``AttentionStore`` does before the edit).
    """

    observe: Callable[[torch.Tensor], None]
    rows: slice | None = None
    queries: slice | None = None
    keys: torch.Tensor | None = None
    before_edits: bool = False

    def resolved(self, batch: int, n_q: int) -> tuple[slice, slice]:
        """``rows`` and ``queries`` as ``[start, stop)`` ranges."""
        rows = slice(0, batch) if self.rows is None else slice(*self.rows.indices(batch)[:2])
        queries = slice(0, n_q) if self.queries is None else slice(*self.queries.indices(n_q)[:2])
        return rows, queries


def _is_range(value: object) -> bool:
    """Whether ``value`` is a non-empty ``slice(start, stop)`` of non-negative ints (step ``None`` or 1)."""
    return (
        isinstance(value, slice)
        and isinstance(value.start, int)
        and isinstance(value.stop, int)
        and value.step in (None, 1)
        and 0 <= value.start < value.stop
    )


def queries_apart(queries: slice, n_q: int) -> tuple[bool, tuple[slice, ...]]:
    """Which side of a row edited at ``queries`` (of ``n_q``) is computed apart from the call: ``(True,
    (queries,))`` when they are at most half of the queries (SD3's image queries of a small latent beside a long
    text: the row stays itself in the call and the edited queries get a call of their own), else ``(False, the
    other spans)`` (a large latent beside a short text: the row takes the edit's whole-row form in the call and its
    few unedited queries get a call of their own). Either way the smaller side is computed twice."""
    if 2 * (queries.stop - queries.start) <= n_q:
        return True, (queries,)
    others = (slice(0, queries.start), slice(queries.stop, n_q))
    return False, tuple(span for span in others if span.stop > span.start)


@dataclass(frozen=True, eq=False)
class LinearEdit:
    """An editor linear over the keys: rows ``target`` of the probabilities become
    ``P[source] @ mix + P[target] * keep`` (see the module docstring: the core computes such an edit as attention
    with mixed values, without materializing the probabilities).

    Called as any editor (``edit(probs, start, stop)``) it applies itself to materialized probabilities: the
    reference backend's form, the oracle of the fast one.

    Attributes:
        source, target: batch rows, two ``[start, stop)`` ranges of equal length; source row ``source.start + j``
            feeds target row ``target.start + j``.
        mix: ``[Nk, Nk]``: ``mix[s, t]`` is the weight of the source's probability at key ``s`` in the target's at
            key ``t`` (Prompt-to-Prompt's token mapper, with its per-token schedule and equalizer folded in);
            ``None``: the identity (the target takes the source's probabilities as they are), without a matrix.
        keep: ``[Nk]``, the weight of the target's own probability at each key; ``None``: zero everywhere (the
            target's attention is replaced), which the fast form computes without an extra row.
        queries: the query positions the edit applies to (a ``[start, stop)`` range); ``None``: every query. The
            target rows' other queries keep their own attention (Prompt-to-Prompt in joint attention edits the
            image queries' rows, not the text queries'): the fast form computes the edited queries in a call of
            their own (``keep`` must then be ``None``).

    Raises:
        ValueError: rows that are not two ``[start, stop)`` ranges of one length, or a ``mix``/``keep`` whose
            shape is not ``[Nk, Nk]``/``[Nk]``.
    """

    source: slice
    target: slice
    mix: torch.Tensor | None
    keep: torch.Tensor | None = None
    queries: slice | None = None

    def __post_init__(self) -> None:
        for name, rows in (("source", self.source), ("target", self.target)):
            if not _is_range(rows):
                raise ValueError(f"LinearEdit.{name} must be a slice(start, stop) of batch rows; got {rows!r}")
        if self.source.stop - self.source.start != self.target.stop - self.target.start:
            raise ValueError(
                f"LinearEdit.source {self.source!r} and target {self.target!r} must hold as many rows each"
            )
        if self.mix is not None and (self.mix.dim() != 2 or self.mix.shape[0] != self.mix.shape[1]):
            raise ValueError(f"LinearEdit.mix must be a [keys, keys] matrix or None; got shape {tuple(self.mix.shape)}")
        if self.keep is not None and (self.mix is None or tuple(self.keep.shape) != (self.mix.shape[0],)):
            raise ValueError(
                "LinearEdit.keep must be None or a vector of as many keys as mix (which must then be given); got "
                f"shape {tuple(self.keep.shape)} with mix {None if self.mix is None else tuple(self.mix.shape)}"
            )
        queries = self.queries
        if queries is not None and not _is_range(queries):
            raise ValueError(
                f"LinearEdit.queries must be None or a slice(start, stop) of query positions; got {queries!r}"
            )
        if queries is not None and self.keep is not None:
            raise ValueError("LinearEdit.queries needs keep=None: an edit of part of the queries replaces their rows")

    @property
    def keys(self) -> int | None:
        """The key count the edit is made for (``None``: any, an identity ``mix``)."""
        return None if self.mix is None else self.mix.shape[0]

    @functools.cached_property
    def moves_values(self) -> bool:
        """Whether the edit changes the target rows' values: ``False`` for an identity ``mix`` without ``keep`` (a
        word swap of words with as many tokens, a schedule injecting every token), whose target rows attend with
        the source rows' queries and keys over their own values. Read once per edit (one device sync)."""
        if self.keep is not None:
            return True
        if self.mix is None:
            return False
        eye = torch.eye(self.keys, dtype=self.mix.dtype, device=self.mix.device)
        return not torch.equal(self.mix, eye)

    def __call__(self, probs: torch.Tensor, start: int, stop: int) -> None:
        rows = _chunk_queries(self.queries, start, stop)
        if rows is None:
            return  # the chunk holds none of the edited queries
        source = probs[self.source, :, rows]
        edited = source.clone() if self.mix is None else torch.matmul(source, self.mix.to(probs))
        if self.keep is not None:
            edited = edited + probs[self.target, :, rows] * self.keep.to(probs)
        probs[self.target, :, rows] = edited

    def mixed_values(self, v: torch.Tensor) -> torch.Tensor:
        """``mix @ v`` of the target rows (``v``: the call's ``[B, H, Nk, Dv]`` values), in fp32 and back to
        ``v``'s dtype: the values the source rows' attention weights in the fast form."""
        if self.mix is None:
            return v[self.target]
        return torch.matmul(self.mix.to(device=v.device, dtype=torch.float32), v[self.target].float()).to(v.dtype)


@dataclass(frozen=True, eq=False)
class TextBlockEdit:
    """An edit of one block of keys, the text, after which the other keys share what is left of each row: rows
    ``target`` take ``text' = P[source, text] @ mix + P[target, text] * keep`` over the text keys and, over the
    other keys, ``P[source]``'s (``others_from_source``: Prompt-to-Prompt's self-attention injected) or their own
    probabilities, rescaled so that every row sums to one again (``1 - sum(text')`` of it; a text block summing to
    more than one is itself divided by its sum and the other keys get nothing). A call whose keys are all text has
    no other keys to take the difference: its text block stays as edited (Prompt-to-Prompt's cross-attention edit,
    which the authors do not renormalize). Prompt-to-Prompt's edit of joint
    attention (SD3, Flux: the latent queries' rows over text and latent keys) and of cross-attention over text and
    other conditioning (I2VGenXL's image tokens).

    The renormalization is a ratio of sums, not linear over the keys, yet each of its parts is: ``text' @ v``,
    ``P_other @ v``, ``sum(text')`` and ``sum(P_other)`` are attention calls of the source (or target) rows over
    values that are zero outside their block (the sums over values of the block's weights), so the core computes the
    edit without materializing probabilities (``visattn.kernels.core._run_text_block_edits``) and combines them per
    query. Called as any editor it applies itself to materialized probabilities: the reference backend's form, the
    oracle of the fast one.

    Attributes:
        source, target: batch rows, two ``[start, stop)`` ranges of equal length (row ``source.start + j`` feeds
            row ``target.start + j``).
        text: the text keys, a ``[start, stop)`` range.
        mix: ``[Nt, Nt]`` over the text keys (``Nt`` of them), as :attr:`LinearEdit.mix`; ``None``: the identity.
        keep: ``[Nt]``, the weight of the target's own probability at each text key; ``None``: zero.
        others_from_source: whether the other keys' probabilities are the source rows' (else the target rows').
        queries: the query positions edited (a ``[start, stop)`` range); ``None``: every query.
        renormalize_source: whether the materialized form also renormalizes the source rows' blocks (a no-op up to
            rounding that Prompt-to-Prompt's joint edit makes, so that an identity edit stays bit-exact there); the
            fast form leaves the source rows as the call computed them.

    Raises:
        ValueError: rows or key and query ranges that are not ``[start, stop)`` ranges, a ``mix``/``keep`` whose
            shape does not fit ``text``.
    """

    source: slice
    target: slice
    text: slice
    mix: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    others_from_source: bool = True
    queries: slice | None = None
    renormalize_source: bool = False

    def __post_init__(self) -> None:
        for name in ("source", "target", "text"):
            if not _is_range(getattr(self, name)):
                raise ValueError(f"TextBlockEdit.{name} must be a slice(start, stop); got {getattr(self, name)!r}")
        if self.source.stop - self.source.start != self.target.stop - self.target.start:
            raise ValueError(
                f"TextBlockEdit.source {self.source!r} and target {self.target!r} must hold as many rows each"
            )
        if self.queries is not None and not _is_range(self.queries):
            raise ValueError(
                f"TextBlockEdit.queries must be None or a slice(start, stop) of query positions; got {self.queries!r}"
            )
        length = self.text.stop - self.text.start
        if self.mix is not None and tuple(self.mix.shape) != (length, length):
            raise ValueError(
                f"TextBlockEdit.mix must be a [{length}, {length}] matrix over the text keys or None; got shape "
                f"{tuple(self.mix.shape)}"
            )
        if self.keep is not None and tuple(self.keep.shape) != (length,):
            raise ValueError(
                f"TextBlockEdit.keep must be None or a vector of the {length} text keys; got shape "
                f"{tuple(self.keep.shape)}"
            )

    def __call__(self, probs: torch.Tensor, start: int, stop: int) -> None:
        rows = _chunk_queries(self.queries, start, stop)
        if rows is None:
            return  # the chunk holds none of the edited queries
        text, others = self.text, keys_outside(self.text, probs.shape[-1], probs.device)
        source = probs[self.source, :, rows]
        target = probs[self.target, :, rows]
        new_text = source[..., text] if self.mix is None else torch.matmul(source[..., text], self.mix.to(probs))
        if self.keep is not None:
            new_text = new_text + target[..., text] * self.keep.to(probs)
        if self.text.start == 0 and self.text.stop >= probs.shape[-1]:
            probs[self.target, :, rows] = new_text  # no other keys: nothing renormalizes
            return
        new_others = (source if self.others_from_source else target)[..., others]
        target_text, target_others = renormalized(new_text, new_others)
        if self.renormalize_source:
            source_text, source_others = renormalized(source[..., text], source[..., others])
            probs[self.source, :, rows, text] = source_text
            probs[self.source, :, rows, others] = source_others
        probs[self.target, :, rows, text] = target_text
        probs[self.target, :, rows, others] = target_others


def _chunk_queries(queries: slice | None, start: int, stop: int) -> slice | None:
    """The rows of a materialized chunk of queries ``[start, stop)`` that an edit of ``queries`` (``None``: every
    query) edits, or ``None`` when it holds none of them."""
    if queries is None:
        return slice(None)
    lo, hi = max(start, queries.start), min(stop, queries.stop)
    return slice(lo - start, hi - start) if lo < hi else None


def keys_outside(text: slice, keys: int, device: torch.device) -> torch.Tensor | slice:
    """The keys outside ``text`` (of ``keys``): a slice where they are on one side of it, else an index on
    ``device``."""
    if text.start == 0:
        return slice(text.stop, keys)
    if text.stop >= keys:
        return slice(0, text.start)
    return torch.cat([torch.arange(0, text.start), torch.arange(text.stop, keys)]).to(device)


def renormalized(text: torch.Tensor, others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of probabilities whose ``text`` block was edited, summing to one again: the ``others`` block takes the
    mass the text block leaves, keeping its shape; a text block over one is divided by its sum (the others get 0)."""
    text_sum = text.sum(-1, keepdim=True)
    others_sum = others.sum(-1, keepdim=True)
    room = (1.0 - text_sum).clamp_min(0.0)
    scale = torch.where(others_sum > 0, room / others_sum.clamp_min(torch.finfo(others.dtype).tiny), 0.0)
    text = torch.where(text_sum > 1.0, text / text_sum.clamp_min(1.0), text)
    return text, others * scale


def linear_edits(request: AttentionRequest) -> tuple[LinearEdit, ...] | None:
    """The request's editors when the core can compute them as attention with mixed values (every editor a
    :class:`LinearEdit` of the call's key count, no edited row read or edited by another edit, no pattern or score
    modifier); ``None`` otherwise (the reference backend materializes the call)."""
    editors = request.editors
    if not editors or request.pattern is not None or request.score_mod is not None:
        return None
    if not all(isinstance(editor, LinearEdit) for editor in editors):
        return None
    n_k = request.k.shape[2]
    if any(editor.keys not in (None, n_k) for editor in editors) or not _rows_apart(request, editors):
        return None
    return tuple(editors)


def _rows_apart(request: AttentionRequest, editors) -> bool:
    """Whether ``editors`` (with ``source``, ``target`` and ``queries``) fit the call's rows and queries, and no edited
    row is edited twice (the edits compose in order, which a sum of attentions does not) or is another edit's source;
    a mismatch is left for the materialized form to report."""
    batch, n_q = request.q.shape[0], request.q.shape[2]
    targets: set[int] = set()
    sources: set[int] = set()
    for editor in editors:
        if editor.source.stop > batch or editor.target.stop > batch:
            return False
        if editor.queries is not None and editor.queries.stop > n_q:
            return False
        rows = set(range(editor.target.start, editor.target.stop))
        if rows & targets:
            return False
        targets |= rows
        sources |= set(range(editor.source.start, editor.source.stop))
    return not targets & sources


def text_block_edits(request: AttentionRequest) -> tuple[TextBlockEdit, ...] | None:
    """The request's editors when the core can compute them without materializing probabilities (every editor a
    :class:`TextBlockEdit` whose keys and queries fit the call, no edited row read or edited by another edit, no
    pattern or score modifier, a value size of at least 2 for the blocks' sums); ``None`` otherwise (the reference
    backend materializes the call)."""
    editors = request.editors
    if not editors or request.pattern is not None or request.score_mod is not None or request.v.shape[-1] < 2:
        return None
    if not all(isinstance(editor, TextBlockEdit) for editor in editors):
        return None
    n_k = request.k.shape[2]
    if any(editor.text.stop > n_k for editor in editors) or not _rows_apart(request, editors):
        return None
    return tuple(editors)


def chunk_block(request: AttentionRequest, read: ProbabilityRead, probs: torch.Tensor, start: int, stop: int):
    """The part of ``read``'s block in a materialized chunk ``probs`` (queries ``[start, stop)``), with the
    identity blend applied (unless the read is ``before_edits``); ``None`` when the chunk holds none of its
    queries."""
    rows, queries = read.resolved(request.q.shape[0], request.q.shape[2])
    lo, hi = max(start, queries.start), min(stop, queries.stop)
    if lo >= hi:
        return None
    block = probs[rows, :, lo - start : hi - start]
    if read.keys is not None:
        block = block.index_select(-1, read.keys.to(block.device))
    return block if read.before_edits else _blended(request, block, rows, lo, hi, read.keys)


def serve_reads(request: AttentionRequest, reads, lse: torch.Tensor | None) -> None:
    """Give each read its block of a call computed elsewhere: from the block's logits and ``lse`` (the call's
    log-sum-exp before any edit, ``[B, H, Nq]``), or the log-sum-exp over the block's rows when ``lse`` is
    ``None``. Final reads of an edited call (its editors linear, so no backend materialized its probabilities)
    are served from the recomputed probabilities of every row, edited."""
    from .backends.reference import masked_logits

    batch, n_q = request.q.shape[0], request.q.shape[2]
    if request.editors and any(not read.before_edits for read in reads):
        _serve_edited(request, [read for read in reads if not read.before_edits])
        reads = [read for read in reads if read.before_edits]
    # Without a mask, pattern or modifier no logit is -inf: the block's rows are one fused softmax over every key.
    unmasked = request.attn_mask is None and request.pattern is None and request.score_mod is None
    if lse is None and unmasked and request.identity_blend is None:
        serve_plain_reads(request.q, request.k, request.scale, reads)
        return
    for read in reads:
        rows, queries = read.resolved(batch, n_q)
        parts = []
        for start in range(queries.start, queries.stop, READ_QUERY_CHUNK):
            stop = min(queries.stop, start + READ_QUERY_CHUNK)
            if lse is None and unmasked:
                probs = torch.softmax(masked_logits(request, start, stop, rows=rows), dim=-1)
                if read.keys is not None:
                    probs = probs.index_select(-1, read.keys.to(probs.device))
                parts.append(probs if read.before_edits else _blended(request, probs, rows, start, stop, read.keys))
                continue
            if lse is None:
                logits = masked_logits(request, start, stop, rows=rows)
                block_lse = torch.logsumexp(logits, dim=-1)
                if read.keys is not None:
                    logits = logits.index_select(-1, read.keys.to(logits.device))
            else:
                logits = masked_logits(request, start, stop, rows=rows, keys=read.keys)
                block_lse = lse[rows, :, start:stop].float().to(logits.device)
            # A query with every key masked has lse = -inf: its probabilities are zero, as the backends return.
            probs = torch.exp(logits - block_lse.masked_fill(torch.isinf(block_lse), 0.0).unsqueeze(-1))
            parts.append(probs if read.before_edits else _blended(request, probs, rows, start, stop, read.keys))
        if parts:
            read.observe(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))


def rows_at(x: torch.Tensor, rows: slice, queries: slice, plain: bool) -> torch.Tensor:
    """``x[rows, :, queries]`` of a ``[B, H, N, D]`` tensor (``rows`` and ``queries`` slices of step 1 within it),
    made with one op where ``x`` is a plain tensor (slicing twice takes two, and on small calls each op costs about
    as much as a few thousand multiply-adds of the attention itself)."""
    if not plain:
        return x[rows, :, queries]
    size, stride = x.shape, x.stride()
    return x.as_strided(
        (rows.stop - rows.start, size[1], queries.stop - queries.start, size[3]),
        stride,
        x.storage_offset() + rows.start * stride[0] + queries.start * stride[2],
    )


def serve_plain_reads(q: torch.Tensor, k: torch.Tensor, scale: float | None, reads) -> None:
    """Give each read its block of a call of plain attention (no mask, pattern, score modifier, editor or identity
    blend) computed elsewhere without its log-sum-exp: the softmax over every key of the block's rows and queries
    (fp32, chunk by chunk), then the read's keys. Both the attention core and a layer's planned stock answer serve
    such reads here, so a block is the same bit for bit whichever path serves it.

    Where the block's rows and heads can be read as one batch axis (one row, or rows laid out head after head) of
    fp32 plain tensors, the logits are one ``bmm`` of strided views; otherwise ``matmul`` over the sliced rows, as
    :func:`~visattn.kernels.backends.reference.masked_logits` forms them. On small calls the op count sets the
    cost (each op costs about as much as a few thousand multiply-adds of the attention itself)."""
    batch, heads, n_q = q.shape[0], q.shape[1], q.shape[2]
    if scale is None:
        scale = q.shape[-1] ** -0.5
    plain = type(q) is torch.Tensor and type(k) is torch.Tensor
    for read in reads:
        rows, queries = read.resolved(batch, n_q)
        picked = None if read.keys is None else read.keys.to(q.device)
        merged = _merged_rows(q, k, rows, plain)
        parts = []
        if merged is not None:
            keys_t, query_view = merged
            for start in range(queries.start, queries.stop, READ_QUERY_CHUNK):
                stop = min(queries.stop, start + READ_QUERY_CHUNK)
                logits = torch.bmm(query_view(start, stop), keys_t).mul_(scale)
                probs = torch.softmax(logits, dim=-1)
                probs = probs if picked is None else probs.index_select(-1, picked)
                parts.append(probs.view(rows.stop - rows.start, heads, stop - start, probs.shape[-1]))
        else:
            keys_t = k[rows]
            keys_t = (keys_t if keys_t.dtype == torch.float32 else keys_t.float()).transpose(-1, -2)
            for start in range(queries.start, queries.stop, READ_QUERY_CHUNK):
                stop = min(queries.stop, start + READ_QUERY_CHUNK)
                block = rows_at(q, rows, slice(start, stop), plain)
                block = block if block.dtype == torch.float32 else block.float()
                probs = torch.softmax(torch.matmul(block, keys_t) * scale, dim=-1)
                parts.append(probs if picked is None else probs.index_select(-1, picked))
        if parts:
            read.observe(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))


def _merged_rows(
    q: torch.Tensor, k: torch.Tensor, rows: slice, plain: bool
) -> tuple[torch.Tensor, Callable[[int, int], torch.Tensor]] | None:
    """For :func:`serve_plain_reads`: ``k[rows]`` transposed as ``[rows * H, D, Nk]`` and a function making
    ``q[rows, :, start:stop]`` as ``[rows * H, stop - start, D]``, both strided views (no copy), where the rows and
    heads of both read as one axis; ``None`` otherwise (a tensor subclass, another dtype, rows not head after head)."""
    if not plain or q.dtype != torch.float32 or k.dtype != torch.float32 or k.shape[:2] != q.shape[:2]:
        return None
    count, heads = rows.stop - rows.start, q.shape[1]
    qs, ks = q.stride(), k.stride()
    if count != 1 and (qs[0] != heads * qs[1] or ks[0] != heads * ks[1]):
        return None
    keys_t = k.as_strided(
        (count * heads, k.shape[3], k.shape[2]), (ks[1], ks[3], ks[2]), k.storage_offset() + rows.start * ks[0]
    )
    q_offset, d = q.storage_offset() + rows.start * qs[0], q.shape[3]

    def query_view(start: int, stop: int) -> torch.Tensor:
        return q.as_strided((count * heads, stop - start, d), (qs[1], qs[2], qs[3]), q_offset + start * qs[2])

    return keys_t, query_view


def _serve_edited(request: AttentionRequest, reads) -> None:
    """Final reads of an edited call: the probabilities of every row over the reads' queries, recomputed chunk by
    chunk as the reference backend makes them, edited, and cut into each read's block."""
    from .backends.reference import softmax_chunk

    batch, n_q = request.q.shape[0], request.q.shape[2]
    spans = [read.resolved(batch, n_q)[1] for read in reads]
    lo, hi = min(span.start for span in spans), max(span.stop for span in spans)
    blocks: list[list[torch.Tensor]] = [[] for _ in reads]
    for start in range(lo, hi, READ_QUERY_CHUNK):
        stop = min(hi, start + READ_QUERY_CHUNK)
        probs, _ = softmax_chunk(request, start, stop)
        for editor in request.editors:
            editor(probs, start, stop)
        for read, parts in zip(reads, blocks, strict=True):
            block = chunk_block(request, read, probs, start, stop)
            if block is not None:
                parts.append(block)
    for read, parts in zip(reads, blocks, strict=True):
        if parts:
            read.observe(torch.cat(parts, dim=2))


def _blended(
    request: AttentionRequest, block: torch.Tensor, rows: slice, start: int, stop: int, keys: torch.Tensor | None
) -> torch.Tensor:
    """``block`` as the output used it: an identity blend ``s`` makes it ``(1 - s) * probs + s * identity``."""
    blend = request.identity_blend
    if blend is None:
        return block
    blend = blend.float().to(block.device)
    while blend.dim() < 4:
        blend = blend.unsqueeze(0)
    blend = blend.expand(*request.q.shape[:3], 1)[rows, :, start:stop]
    columns = torch.arange(request.k.shape[2], device=block.device) if keys is None else keys.to(block.device)
    # The identity's own column is the query's index: zero on every other key.
    diagonal = (torch.arange(start, stop, device=block.device).view(-1, 1) == columns.view(1, -1)).float()
    return block * (1.0 - blend) + blend * diagonal
