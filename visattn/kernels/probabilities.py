"""The probability stage: the step after the softmax, which FlexAttention's split (``mask_mod``, ``score_mod``)
does not have and visattn's editing and observing effects need.

An :class:`~visattn.kernels.request.AttentionRequest` names it with two lists:

* ``editors``: ``editor(probs, start, stop)`` changes, in place, the fp32 probabilities ``[B, H, stop - start,
  Nk]`` of the queries ``[start, stop)`` before they weight the values (Prompt-to-Prompt injects the source
  prompt's maps into the target's, Hertz et al. 2022). Only materialized probabilities can be edited, so the
  reference backend runs edited calls, chunk by chunk.
* ``reads``: a :class:`ProbabilityRead` receives the final probabilities of a block of rows, queries and keys
  (attention maps). Reads alone leave the call on whichever backend is fastest: the block is recomputed from its
  own logits and the backend's log-sum-exp (or the log-sum-exp over its rows when the backend gives none, as
  dense SDPA). In a call the reference backend runs anyway, reads are served from the chunks it materializes, once
  for editors and reads together.

"Final" means as the output used them: after the editors, and with an identity blend ``s`` (SoftPAG) as
``(1 - s) * probs + s * identity``.
"""

from __future__ import annotations

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
    """

    observe: Callable[[torch.Tensor], None]
    rows: slice | None = None
    queries: slice | None = None
    keys: torch.Tensor | None = None

    def resolved(self, batch: int, n_q: int) -> tuple[slice, slice]:
        """``rows`` and ``queries`` as ``[start, stop)`` ranges."""
        rows = slice(0, batch) if self.rows is None else slice(*self.rows.indices(batch)[:2])
        queries = slice(0, n_q) if self.queries is None else slice(*self.queries.indices(n_q)[:2])
        return rows, queries


def chunk_block(request: AttentionRequest, read: ProbabilityRead, probs: torch.Tensor, start: int, stop: int):
    """The part of ``read``'s block in a materialized chunk ``probs`` (queries ``[start, stop)``), with the
    identity blend applied; ``None`` when the chunk holds none of its queries."""
    rows, queries = read.resolved(request.q.shape[0], request.q.shape[2])
    lo, hi = max(start, queries.start), min(stop, queries.stop)
    if lo >= hi:
        return None
    block = probs[rows, :, lo - start : hi - start]
    if read.keys is not None:
        block = block.index_select(-1, read.keys.to(block.device))
    return _blended(request, block, rows, lo, hi, read.keys)


def serve_reads(request: AttentionRequest, reads, lse: torch.Tensor | None) -> None:
    """Give each read its block of a call computed elsewhere: from the block's logits and ``lse`` (the call's
    log-sum-exp, ``[B, H, Nq]``), or the log-sum-exp over the block's rows when ``lse`` is ``None``."""
    from .backends.reference import masked_logits

    batch, n_q = request.q.shape[0], request.q.shape[2]
    # Without a mask, pattern or modifier no logit is -inf: the block's rows are one fused softmax over every key.
    unmasked = request.attn_mask is None and request.pattern is None and request.score_mod is None
    for read in reads:
        rows, queries = read.resolved(batch, n_q)
        parts = []
        for start in range(queries.start, queries.stop, READ_QUERY_CHUNK):
            stop = min(queries.stop, start + READ_QUERY_CHUNK)
            if lse is None and unmasked:
                probs = torch.softmax(masked_logits(request, start, stop, rows=rows), dim=-1)
                if read.keys is not None:
                    probs = probs.index_select(-1, read.keys.to(probs.device))
                parts.append(_blended(request, probs, rows, start, stop, read.keys))
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
            parts.append(_blended(request, probs, rows, start, stop, read.keys))
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
