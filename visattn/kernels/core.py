"""The one attention core every visattn effect routes through.

``attention(q, k, v, pattern=..., score_mod=..., identity_blend=...)`` describes a call completely; a backend
(one file each in :mod:`visattn.kernels.backends`) computes it. ``backend="auto"`` picks, per call shape, the
fastest backend that computes the request exactly:

1. *Candidates* are the available backends whose ``supports()`` covers the call (pattern, modifier, head size,
   dtype, device); the reference backend supports everything, so there is always one.
2. Cheap rules decide where measuring cannot change the answer: a plain call runs dense SDPA; a single candidate
   runs without timing; calls below :data:`visattn.kernels.autotune.MIN_MEASURED_WORK`, calls made while
   ``torch.compile`` traces or a CUDA graph is captured, and ``VISATTN_AUTOTUNE=0`` use the preference order
   (NATTEN, FlexAttention on CUDA, the reference).
3. Otherwise the first call with a new key (:func:`visattn.kernels.autotune.request_key`: pattern and modifier
   parameters, shapes, dtypes, device) times every candidate (the reference too on CPU; on CUDA it is left
   out when a fused candidate exists) and plain dense SDPA on the same shapes, under ``no_grad``; the fastest
   candidate is cached (in memory; on disk with ``VISATTN_AUTOTUNE_CACHE``) and its output is the call's
   output. A sparse winner slower than dense attention is reported once (a warning with both times and the
   density).
4. A backend that raises one of its capability errors (``CAPABILITY_ERRORS``; NATTEN's "no suitable backend")
   at run time is dropped for that key with a one-time warning and the next candidate runs; other errors
   propagate.

``backend="<name>"`` forces a backend (ValueError when it cannot compute the call); so does the environment
variable ``VISATTN_BACKEND`` for calls made with ``backend="auto"``, where a backend that cannot compute the
call falls back to auto's choice with a one-time warning.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Hashable, Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from ..validation import check_attention_inputs
from . import autotune
from .autotune import Decision
from .backends import flex, natten, reference, sdpa, triton
from .patterns import Chain, Pattern, ScoreModifier
from .probabilities import (
    Editor,
    LinearEdit,
    ProbabilityRead,
    TextBlockEdit,
    keys_outside,
    linear_edits,
    queries_apart,
    serve_reads,
    text_block_edits,
)
from .request import AttentionRequest, UnsupportedCall

#: the real SDPA, whatever ``torch.nn.functional`` holds while visattn routes a hooked forward
_SDPA = torch._C._nn.scaled_dot_product_attention

_BACKENDS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        sdpa,
        reference,
        flex,
        natten,
        triton,
    )
}


def register_backend(module: ModuleType) -> None:
    """Add a backend module (``NAME``, ``availability``, ``supports``, ``run``); later issues add Triton here."""
    _BACKENDS[module.NAME] = module


def available_backends() -> dict[str, tuple[bool, str]]:
    """Each backend name mapped to ``(available, reason)``: what it is, or why it cannot be used here."""
    return {name: module.availability() for name, module in _BACKENDS.items()}


def backend_names() -> tuple[str, ...]:
    return ("auto",) + tuple(_BACKENDS)


#: the environment variable that forces a backend for every auto call
BACKEND_VARIABLE = "VISATTN_BACKEND"

try:
    # os.environ's own mapping, read with one dict lookup: os.environ.get encodes the name and raises and catches a
    # KeyError when it is unset, about 2 us a call, and the denoiser hook reads the variable at every denoiser call.
    # Setting os.environ (monkeypatch.setenv too) updates this mapping; os.putenv never updated os.environ.
    _ENVIRON_DATA: dict | None = os.environ._data  # type: ignore[attr-defined]
    _BACKEND_KEY = os.environ.encodekey(BACKEND_VARIABLE)  # type: ignore[attr-defined]
    _decode_value = os.environ.decodevalue  # type: ignore[attr-defined]
except AttributeError:  # another Python's os.environ
    _ENVIRON_DATA = None


def backend_variable() -> str | None:
    """``VISATTN_BACKEND`` as it is set now, ``None`` when unset (the value ``os.environ.get`` gives, cheaper)."""
    if _ENVIRON_DATA is None:
        return os.environ.get(BACKEND_VARIABLE)
    value = _ENVIRON_DATA.get(_BACKEND_KEY)
    return None if value is None else _decode_value(value)


#: the order the cheap rules prefer, for backends that do not get measured (others follow in registration order)
_PREFERENCE = ("sdpa", "natten", "flex", "triton")
_ERROR_TEXT = 200  # characters of an error message kept in a decision record


def _module(name: str, source: str = "backend") -> ModuleType:
    module = _BACKENDS.get(name)
    if module is None:
        raise ValueError(f"{source}={name!r} is not one of {', '.join(backend_names())}")
    return module


def _check_forced(request: AttentionRequest, name: str, source: str) -> str | None:
    """Why the named backend cannot run ``request`` (``None``: it can)."""
    module = _module(name, source)
    ok, reason = module.availability()
    if not ok:
        return f"{source}={name!r} is not available: {reason}"
    if not module.supports(request):
        return (
            f"{source}={name!r} cannot compute this call (pattern={request.pattern!r}, "
            f"score_mod={request.score_mod!r}, return_lse={request.return_lse}); use backend='auto'"
        )
    return None


def _env_backend(request: AttentionRequest) -> str | None:
    """The backend ``VISATTN_BACKEND`` forces for this auto call, or ``None`` (unset, or cannot run it)."""
    name = backend_variable()
    if not name or name == "auto":
        return None
    problem = _check_forced(request, name, BACKEND_VARIABLE)
    if problem is None:
        return name
    autotune.warn_once(("env", name, problem), f"visattn: {problem}; backend='auto' chooses for such calls instead")
    return None


def candidates(request: AttentionRequest) -> tuple[list[str], dict[str, str]]:
    """The backends that can compute ``request`` here, in preference order, and why each other one cannot.

    A backend is a candidate when it is available, its ``supports()`` covers the call and (if it has one) its
    ``auto_candidate()`` agrees (the Triton backend declines under Triton's CPU interpreter). The reference
    backend, which supports everything, is always last.
    """
    order = [name for name in _PREFERENCE if name in _BACKENDS]
    order += [name for name in _BACKENDS if name not in order and name != reference.NAME]
    names, rejected = [], {}
    for name in order:
        module = _BACKENDS[name]
        # supports() first: it is cheap, and availability() may try an import (NATTEN, Triton).
        if not module.supports(request):
            rejected[name] = "does not support this call"
            continue
        ok, reason = module.availability()
        if not ok:
            rejected[name] = reason
            continue
        auto_candidate = getattr(module, "auto_candidate", None)
        if auto_candidate is not None and not auto_candidate(request):
            rejected[name] = "not chosen automatically here (force it with backend=)"
            continue
        names.append(name)
    names.append(reference.NAME)
    return names, rejected


def _preferred(names: list[str], device: torch.device) -> str:
    """The cheap rules' pick: the first candidate, except FlexAttention off CUDA and Triton unmeasured.

    Eager FlexAttention (CPU) materializes scores like the reference does, with more overhead; the Triton kernels
    have not been ranked against FlexAttention without a measurement.
    """
    for name in names:
        if (name == "flex" and device.type != "cuda") or name == "triton":
            continue
        return name
    return names[-1]


def _measured(names: list[str], device: torch.device) -> list[str]:
    """The candidates worth timing: on CUDA the materializing reference only when nothing fused can run."""
    if device.type == "cuda" and len(names) > 1:
        return [name for name in names if name != reference.NAME]
    return names


def _capability_errors(module: ModuleType) -> tuple[type[BaseException], ...]:
    return (UnsupportedCall, *getattr(module, "CAPABILITY_ERRORS", ()))


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:_ERROR_TEXT]


def _measure(
    request: AttentionRequest, names: list[str], decision: Decision
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Time ``names`` on ``request``, fill ``decision`` in; the winner's output when it can be reused.

    Runs under ``no_grad``: the trial runs build no autograd graph, so when the call needs one the winner runs
    again afterwards (the output is the winner's either way).
    """
    device = request.q.device
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    with torch.no_grad():
        for name in names:
            module = _BACKENDS[name]
            captured: list = []

            def call(module=module, captured=captured):
                result = module.run(request)
                captured[:] = [result]
                return result

            best = min((t.per_call_s for t in decision.timings.values()), default=None)
            try:
                decision.timings[name] = autotune.time_candidate(name, call, device, best)
            except Exception as error:  # a candidate that fails is dropped, loudly; the others still compete
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                decision.rejected[name] = _short(error)
                autotune.warn_once(
                    ("measure", name, type(error).__name__),
                    f"visattn: backend {name!r} failed while backend='auto' measured it ({_short(error)}); "
                    "it is not used for such calls",
                )
                continue
            if captured:
                outputs[name] = captured[0]
        if not decision.timings:
            return None
        decision.backend = min(decision.timings, key=lambda name: decision.timings[name].per_call_s)
        if request.pattern is not None:
            q, k, v = request.q, request.k, request.v
            # Dense attention on the same shapes is the cost a sparse pattern has to beat.
            dense = autotune.time_candidate("dense", lambda: F.scaled_dot_product_attention(q, k, v), device)
            decision.timings["dense"] = dense
            _check_against_dense(request, decision)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (request.q, request.k, request.v))
    return None if needs_grad else outputs.get(decision.backend)


def _check_against_dense(request: AttentionRequest, decision: Decision) -> None:
    chosen, dense = decision.timings[decision.backend], decision.timings["dense"]
    if chosen.per_call_s <= dense.per_call_s:
        return
    decision.kept_fraction = autotune.kept_fraction(request)
    kept = "unknown" if decision.kept_fraction is None else f"{decision.kept_fraction:.1%}"
    autotune.warn_once(
        ("slower-than-dense", decision.describe),
        f"visattn: the fastest backend for this sparse call, {decision.backend!r} "
        f"({autotune.format_ms(chosen.per_call_s)}), is slower than dense attention on the same shapes "
        f"({autotune.format_ms(dense.per_call_s)}) at {kept} density [{decision.describe}]",
    )


def _decide(
    request: AttentionRequest, key: Hashable | None
) -> tuple[Decision, tuple[torch.Tensor, torch.Tensor | None] | None]:
    """A new decision for ``request`` (cached under ``key`` when it is not transient), and an output if one ran."""
    names, rejected = candidates(request)
    # Why the other backends are not candidates (sdpa's "dense only" goes without saying).
    decision = Decision(names[0], "", tuple(names), rejected={n: r for n, r in rejected.items() if n != sdpa.NAME})
    if key is not None:
        decision.describe = autotune.describe_key(key)
    blocker = None if len(names) > 1 else "only candidate"
    blocker = blocker or ("no cache key" if key is None else autotune.measurement_blocker(request))
    output = None
    if blocker is None:
        output = _measure(request, _measured(names, request.q.device), decision)
        if decision.timings:
            decision.reason = "measured"
        else:
            blocker = "every measured candidate failed"
    if blocker is not None:
        decision.backend = _preferred([n for n in names if n not in decision.rejected] or names, request.q.device)
        decision.reason = blocker
    transient = blocker in ("torch.compile is tracing", "CUDA graph capture", "no cache key")
    if key is not None and not transient:
        autotune.remember(key, decision)
    return decision, output


def _cached_decision(request: AttentionRequest, key: Hashable | None) -> Decision | None:
    """The cached decision for ``key``; one read from the cache file is used only if its backend can run here."""
    decision = autotune.decision_for(key) if key is not None else None
    if decision is not None and not decision.checked:
        module = _BACKENDS.get(decision.backend)
        if module is None or not module.supports(request) or not module.availability()[0]:
            return None  # made where another backend set was installed: decide again (and overwrite it)
        decision.checked = True
    return decision


def _run_auto(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    key = autotune.request_key(request)
    decision = _cached_decision(request, key)
    if decision is None:
        decision, output = _decide(request, key)
        if output is not None:
            return output
    while True:
        module = _BACKENDS[decision.backend]
        try:
            return module.run(request)
        except _capability_errors(module) as error:
            # The backend cannot compute this call after all (its supports() was too generous): drop it for
            # this key, say so once, and run the next candidate.
            failed = decision.backend
            decision.rejected[failed] = _short(error)
            remaining = [name for name in decision.candidates if name not in decision.rejected]
            if not remaining:
                raise
            decision.backend = _preferred(remaining, request.q.device)
            decision.reason = f"{failed} raised a capability error"
            autotune.warn_once(
                ("capability", failed, decision.describe),
                f"visattn: backend {failed!r} cannot compute this call ({_short(error)}); "
                f"using {decision.backend!r} instead",
            )


def choose_backend(request: AttentionRequest, backend: str = "auto") -> str:
    """The backend that will run ``request``; raises ValueError when a named backend cannot.

    For ``"auto"`` this makes (and caches) the decision, measuring the candidates if the call qualifies.
    """
    request = _with_multipliers_in_scale(request)
    if backend != "auto":
        problem = _check_forced(request, backend, "backend")
        if problem is not None:
            raise ValueError(problem)
        return backend
    forced = _env_backend(request)
    if forced is not None:
        return forced
    if request.is_plain:
        return sdpa.NAME
    key = autotune.request_key(request)
    decision = _cached_decision(request, key)
    if decision is None:
        decision, _ = _decide(request, key)
    return decision.backend


def auto_decision(request: AttentionRequest) -> Decision | None:
    """The cached decision ``backend="auto"`` made for calls like ``request`` (``None``: none made yet)."""
    key = autotune.request_key(_with_multipliers_in_scale(request))
    return None if key is None else autotune.decision_for(key)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    backend: str = "auto",
    use_dispatcher: bool = False,
    dispatcher_backend: Any = None,
) -> torch.Tensor:
    """Plain attention (the model's mask, nothing else) as :func:`run_request` computes it for ``backend``, with the
    fewest steps when ``auto`` takes the dense path (the attention call of an effect that only changes q, k or v,
    and the calls of the edits computed over mixed values)."""
    if backend == "auto" and not backend_variable():
        if use_dispatcher:
            return sdpa.run(
                AttentionRequest(
                    q,
                    k,
                    v,
                    attn_mask=attn_mask,
                    scale=scale,
                    use_dispatcher=True,
                    dispatcher_backend=dispatcher_backend,
                )
            )[0]
        return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=0.0, scale=scale)
    request = AttentionRequest(
        q, k, v, attn_mask=attn_mask, scale=scale, use_dispatcher=use_dispatcher, dispatcher_backend=dispatcher_backend
    )
    return run_request(request, backend)[0]


def run_request(request: AttentionRequest, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute a prepared :class:`AttentionRequest`; returns ``(out, lse or None)``."""
    request = _with_multipliers_in_scale(request)
    if request.editors or request.reads:
        return _run_probability_stage(request, backend)
    name = backend
    if backend == "auto":
        name = _env_backend(request) or ("auto" if not request.is_plain else sdpa.NAME)
    elif (problem := _check_forced(request, backend, "backend")) is not None:
        raise ValueError(problem)
    identity = _identity_rows(request)
    if identity is not None:
        return _run_without_identity_rows(request, identity, backend), None
    out, lse = _run_auto(request) if name == "auto" else _BACKENDS[name].run(request)
    if request.return_lse and lse is None:
        # Only reachable for a backend that cannot return it; the reference recomputes it exactly.
        _, lse = reference.run(request)
    return _with_identity_blend(request, out), lse


def _with_multipliers_in_scale(request: AttentionRequest) -> AttentionRequest:
    """``request`` with the constant logit multipliers that lead its score modifier
    (:attr:`~visattn.kernels.patterns.ScoreModifier.logit_multiplier`: entropy scaling's temperature) folded into
    its softmax scale: ``(q k^T s) m`` is ``q k^T (s m)``, and a call whose only modifier was a temperature is then
    plain attention that dense SDPA and every other backend run (the Triton kernels fold it so too). Only leading
    ones: a multiplier after another modifier scales what that one added."""
    modifier = request.score_mod
    if modifier is None:
        return request
    parts = modifier.parts if isinstance(modifier, Chain) else (modifier,)
    multiplier, folded = 1.0, 0
    for part in parts:
        factor = part.logit_multiplier
        if factor is None:
            break
        multiplier *= factor
        folded += 1
    if not folded:
        return request
    rest = parts[folded:]
    score_mod = None if not rest else rest[0] if len(rest) == 1 else Chain(rest)
    return dataclasses.replace(request, score_mod=score_mod, scale=request.effective_scale * multiplier)


def _run_probability_stage(request: AttentionRequest, backend: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A call with a probability stage (:mod:`visattn.kernels.probabilities`).

    Editors linear over the keys (:class:`~visattn.kernels.probabilities.LinearEdit`) move into the values: any
    backend computes the call as plain attention (:func:`_run_linear_edits`), unless the reference backend is
    asked for (the materialized oracle). Other editors need materialized probabilities: the reference backend runs
    the call, editors and reads on the same chunks. Reads alone leave the call to any backend (the probability
    stage does not change the output) and are served once afterwards from its log-sum-exp; measuring backends never
    runs them twice.
    """
    if request.editors:
        linear = blocks = None
        if backend != reference.NAME:
            linear = linear_edits(request)
            blocks = text_block_edits(request) if linear is None else None
        if linear is not None or blocks is not None:
            if linear is not None:
                out = _run_linear_edits(request, linear, backend)
            else:
                out = _run_text_block_edits(request, blocks, backend)
            if request.reads:
                serve_reads(request, request.reads, None)
            # Edited rows have no logits of their own: an edited call returns no log-sum-exp (as the reference).
            return out, None
        if backend not in ("auto", reference.NAME):
            raise ValueError(
                f"backend={backend!r} cannot edit attention probabilities (only the reference backend materializes "
                "them; editors that are LinearEdits without a pattern or score modifier run anywhere); use "
                "backend='auto' or 'reference'"
            )
        out, lse = reference.run(request)
        return _with_identity_blend(request, out), lse
    call = dataclasses.replace(request, reads=())
    if not call.is_plain:
        # The backend computes the log-sum-exp anyway; asking a plain call for it would leave the dense SDPA path.
        call = dataclasses.replace(call, return_lse=True)
    out, lse = run_request(call, backend)
    serve_reads(request, request.reads, lse)
    return out, lse


def _run_linear_edits(request: AttentionRequest, edits: tuple[LinearEdit, ...], backend: str) -> torch.Tensor:
    """A call whose editors are linear over the keys, as plain attention over mixed values.

    An edit makes the target rows' probabilities ``P_s @ mix + P_t * keep``, so their output is
    ``attention(q_s, k_s, mix @ v_t) + attention(q_t, k_t, keep * v_t)``. With ``keep`` zero (a word swap, a
    re-weighting) the target rows take the source rows' queries and keys in the call itself, whose batch keeps its
    size. Otherwise (a refinement's added words) the target rows keep their own queries and keys over re-weighted
    values, and a second call of the source rows over the mixed values is added to them: two calls rather than one
    with appended rows, so the queries, the largest tensor of a cross-attention call, are never copied. An edit of
    part of the queries (``queries``: the image queries of a joint call) computes the smaller side apart: the edited
    queries in a call of the source rows' queries there and keys over the target's (mixed) values, the target rows
    staying in the call as they are; or, when most queries are edited, the target rows take the source rows'
    queries and keys in the call (as a whole-row edit) and their unedited queries get a call of their own. The
    calls run on ``backend``'s choice for plain attention; the output's identity blend follows, as for any call.
    """
    q, k, v, mask = request.q, request.k, request.v, request.attn_mask
    batch = q.shape[0]
    order = list(range(batch))  # the row whose queries and keys each row of the call attends with
    values = None  # the call's values once an edit changes them
    sources: list[int] = []  # the rows attending over mixed values apart, and the rows their output is added to
    mixed_values, targets = [], []
    n_q = q.shape[2]
    # Edits of part of the queries, as (edit, whether the edited side is the one computed apart, its spans): the
    # smaller side is computed apart (queries_apart); the edited queries computed apart take the source rows'
    # queries and keys over the target's values, the unedited ones the target rows' own.
    partial: list[tuple[LinearEdit, bool, tuple[slice, ...]]] = []
    for edit in edits:
        if edit.queries is not None:
            edited, spans = queries_apart(edit.queries, n_q)
            partial.append((edit, edited, spans))
            if edited:
                continue  # computed apart, below
        if edit.keep is None:
            order[edit.target] = range(edit.source.start, edit.source.stop)
            if edit.moves_values:
                values = v.clone() if values is None else values
                values[edit.target] = edit.mixed_values(v)
        else:
            values = v.clone() if values is None else values
            values[edit.target] = v[edit.target] * edit.keep.to(device=v.device, dtype=v.dtype).view(-1, 1)
            sources += range(edit.source.start, edit.source.stop)
            mixed_values.append(edit.mixed_values(v))
            targets += range(edit.target.start, edit.target.stop)
    rows = _row_index(order, q.device)
    dispatch = (request.use_dispatcher, request.dispatcher_backend)
    out = dense_attention(
        _rows(q, rows, batch),
        _rows(k, rows, batch),
        v if values is None else values,
        _rows(mask, rows, batch),
        request.scale,
        backend,
        *dispatch,
    )
    if sources:
        rows = _row_index(sources, q.device)
        added = dense_attention(
            _rows(q, rows, batch),
            _rows(k, rows, batch),
            torch.cat(mixed_values),
            _rows(mask, rows, batch),
            request.scale,
            backend,
            *dispatch,
        )
        index = _row_tensor(targets, out.device)
        # In place only without autograd: a backend may keep its output for the backward pass.
        out = out.index_add(0, index, added) if out.requires_grad else out.index_add_(0, index, added)
    if partial:
        out = out.clone() if out.requires_grad else out
        for edit, edited, spans in partial:
            # The edited queries (the source rows' queries and keys over the target's mixed values), or the unedited
            # ones (the target rows' own).
            rows = edit.source if edited else edit.target
            span_values = edit.mixed_values(v) if edited else v[edit.target]
            row_mask = _rows(mask, rows, batch)
            for span in spans:
                span_mask = row_mask
                if span_mask is not None and span_mask.dim() == 4 and span_mask.shape[2] == n_q > 1:
                    span_mask = span_mask[:, :, span]
                out[edit.target, :, span] = dense_attention(
                    q[rows, :, span], k[rows], span_values, span_mask, request.scale, backend, *dispatch
                ).to(out.dtype)
    return _with_identity_blend(request, out)


def _run_text_block_edits(request: AttentionRequest, edits: tuple[TextBlockEdit, ...], backend: str) -> torch.Tensor:
    """A call whose editors edit a text block of keys and renormalize the others
    (:class:`~visattn.kernels.probabilities.TextBlockEdit`: Prompt-to-Prompt's joint-attention edit), without
    materializing probabilities.

    The stock call answers every row but the targets, which it answers only at the queries no edit touches; each
    edit's queries of its target rows are answered from four parts, each plain attention over values that are zero
    outside one block of keys: ``text' @ v`` (the source rows' queries and keys over ``mix @ v_t`` in the text, plus
    the target rows' own over ``keep * v_t``), the other keys' ``P @ v_t`` (the source's or the target's queries and
    keys), and the sums ``sum(text')`` and ``sum(P_others)`` (their weights as values). Per query they combine as the
    renormalization does: the text part divided by its sum where that exceeds one, the others' part scaled to
    ``1 - sum(text')`` of the row. The parts of one side's queries and keys run as one call over stacked rows; the
    sums run in fp32 (half precision would round the mass the others take by up to 0.4 %).
    """
    q, k, v, mask = request.q, request.k, request.v, request.attn_mask
    batch, n_q = q.shape[0], q.shape[2]
    dispatch = (request.use_dispatcher, request.dispatcher_backend)
    targets = {row for edit in edits for row in range(edit.target.start, edit.target.stop)}
    rest = [row for row in range(batch) if row not in targets]
    rows = _row_index(rest, q.device)
    stock = dense_attention(
        _rows(q, rows, batch),
        _rows(k, rows, batch),
        _rows(v, rows, batch),
        _rows(mask, rows, batch),
        request.scale,
        backend,
        *dispatch,
    )
    heads, dim = q.shape[1], v.shape[-1]
    if stock.stride(1) < stock.stride(2):
        # [B, N, H, D] in memory (SDPA's output on the CPU and of the fused CUDA kernels): the processor's
        # transpose(1, 2).reshape of the assembled output then copies nothing, as for the stock call.
        out = stock.new_empty((batch, n_q, heads, dim)).transpose(1, 2)
    else:
        out = stock.new_empty((batch, heads, n_q, dim))
    out[rows] = stock
    for edit in edits:
        queries = edit.queries if edit.queries is not None else slice(0, n_q)
        row_mask = _rows(mask, edit.target, batch)
        for span in (slice(0, queries.start), slice(queries.stop, n_q)):
            if span.stop > span.start:
                # The target rows' queries no edit touches: their own attention, apart.
                span_mask = row_mask
                if span_mask is not None and span_mask.dim() == 4 and span_mask.shape[2] == n_q > 1:
                    span_mask = span_mask[:, :, span]
                out[edit.target, :, span] = dense_attention(
                    q[edit.target, :, span],
                    k[edit.target],
                    v[edit.target],
                    span_mask,
                    request.scale,
                    backend,
                    *dispatch,
                )
        out[edit.target, :, queries] = _text_block_answer(request, edit, queries, backend).to(out.dtype)
    return _with_identity_blend(request, out)


def _text_block_answer(request: AttentionRequest, edit: TextBlockEdit, queries: slice, backend: str) -> torch.Tensor:
    """The edited probabilities of ``edit``'s target rows at ``queries`` times the values, in fp32 (see
    :func:`_run_text_block_edits`)."""
    q, k, v, mask = request.q, request.k, request.v, request.attn_mask
    batch, n_q = q.shape[0], q.shape[2]
    dispatch = (request.use_dispatcher, request.dispatcher_backend)
    values = v[edit.target]  # [n, H, Nk, D]
    text, others = edit.text, keys_outside(edit.text, v.shape[2], v.device)
    text_values = values[:, :, text]
    if edit.mix is not None:
        text_values = torch.matmul(edit.mix.to(device=v.device, dtype=torch.float32), text_values.float()).to(v.dtype)

    def block(part: torch.Tensor, keys: slice | torch.Tensor) -> torch.Tensor:
        placed = torch.zeros_like(values)
        placed[:, :, keys] = part
        return placed

    def weights(text_weight: torch.Tensor | None, on_others: bool) -> torch.Tensor:
        # The sums' values: channel 0 the text block's weights (its sum), channel 1 ones on the other keys.
        sums = torch.zeros(values.shape, dtype=torch.float32, device=v.device)
        if text_weight is not None:
            sums[:, :, text, 0] = text_weight
        if on_others:
            sums[:, :, others, 1] = 1.0
        return sums

    def side_mask(rows: slice) -> torch.Tensor | None:
        # The model's mask of one side's rows at the edited queries.
        row_mask = _rows(mask, rows, batch)
        if row_mask is not None and row_mask.dim() == 4 and row_mask.shape[2] == n_q > 1:
            row_mask = row_mask[:, :, queries]
        return row_mask

    def attend(rows: slice, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        # The parts over one side's queries and keys: one call of stacked rows (the queries and keys repeated).
        count = len(parts)
        row_mask = side_mask(rows)
        if row_mask is not None and row_mask.dim() == 4 and row_mask.shape[0] == rows.stop - rows.start:
            row_mask = row_mask.repeat(count, 1, 1, 1)
        side_q, side_k = q[rows, :, queries], k[rows]
        if count > 1:
            side_q, side_k = side_q.repeat(count, 1, 1, 1), side_k.repeat(count, 1, 1, 1)
        stacked = dense_attention(
            side_q,
            side_k,
            torch.cat(parts),
            row_mask,
            request.scale,
            backend,
            *dispatch,
        )
        return list(stacked.float().chunk(count))

    def summed(rows: slice, sums: torch.Tensor) -> torch.Tensor:
        row_mask = side_mask(rows)
        row_mask = row_mask if row_mask is None or row_mask.dtype == torch.bool else row_mask.float()
        side_q, side_k = q[rows, :, queries].float(), k[rows].float()
        return dense_attention(side_q, side_k, sums, row_mask, request.scale, backend, *dispatch)[..., :2]

    # Every key text: nothing takes the difference (the block stays as edited), no other block, no sums.
    all_text = text.start == 0 and text.stop >= v.shape[2]
    from_source = edit.others_from_source and not all_text
    own_others = not edit.others_from_source and not all_text
    source_parts = [block(text_values, text)] + ([block(values[:, :, others], others)] if from_source else [])
    text_part, *others_part = attend(edit.source, source_parts)
    keep = None if edit.keep is None else edit.keep.to(device=v.device, dtype=torch.float32)
    if keep is not None or own_others:
        target_parts = []
        if keep is not None:
            target_parts.append(block(values[:, :, text] * keep.to(v.dtype).view(-1, 1), text))
        if own_others:
            target_parts.append(block(values[:, :, others], others))
        answered = attend(edit.target, target_parts)
        if keep is not None:
            text_part = text_part + answered.pop(0)
        if own_others:
            others_part = answered
    if all_text:
        return text_part
    rowsum = None if edit.mix is None else edit.mix.to(device=v.device, dtype=torch.float32).sum(-1)
    text_weight = torch.ones(text.stop - text.start, device=v.device) if rowsum is None else rowsum
    sums = summed(edit.source, weights(text_weight, from_source))
    if keep is not None or own_others:
        sums = sums + summed(edit.target, weights(keep, own_others))
    text_sum, others_sum = sums[..., :1], sums[..., 1:2]
    room = (1.0 - text_sum).clamp_min(0.0)
    scale = torch.where(others_sum > 0, room / others_sum.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    text_factor = torch.where(text_sum > 1.0, 1.0 / text_sum.clamp_min(1.0), 1.0)
    return text_part * text_factor + others_part[0] * scale


#: row indices made into tensors, by rows and device (a pipeline's calls use a handful of row orders)
_ROW_INDEX: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
_ROW_INDEX_KEPT = 256


def _row_index(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    """Batch rows ``rows`` as a slice when they are consecutive (a view, no copy), else as an index tensor on
    ``device`` (made once per rows and device)."""
    first = rows[0]
    if rows == list(range(first, first + len(rows))):
        return slice(first, first + len(rows))
    return _row_tensor(rows, device)


def _row_tensor(rows: list[int], device: torch.device) -> torch.Tensor:
    """Batch rows ``rows`` as an index tensor on ``device``, made once per rows and device."""
    key = (tuple(rows), device)
    index = _ROW_INDEX.get(key)
    if index is None:
        if len(_ROW_INDEX) >= _ROW_INDEX_KEPT:
            _ROW_INDEX.clear()
        index = _ROW_INDEX[key] = torch.tensor(rows, device=device)
    return index


#: blends up to this many weights are checked in Python (per-head blends); larger ones (per token) with tensor ops
_LISTED_BLEND = 1024
#: what :func:`_blend_rows` read from recent blends, by ``id``: a weak reference to the blend (its entry leaves with
#: it, so a blend is never kept alive here and its id cannot be reused while the entry lives), its version counter
#: (an in-place change makes the entry stale) and the answer
_READ_BLENDS: dict[int, tuple[weakref.ref, int, tuple[tuple[bool, ...], tuple[bool, ...]]]] = {}
_READ_BLENDS_KEPT = 64


def _blend_rows(blend: torch.Tensor) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """Per batch row of a CPU blend ``[B, ...]``: whether its weight is exactly 1 everywhere, and whether it is
    nonzero anywhere.

    PAG hands the same blend tensor to every call of a layout (:func:`visattn.effects.perturbation_guidance.
    identity_rows` keeps it), so the answer is remembered per tensor and version instead of read again per call.
    """
    key = id(blend)
    seen = _READ_BLENDS.get(key)
    if seen is not None and seen[0]() is blend and seen[1] == blend._version:
        return seen[2]
    rows = blend.reshape(blend.shape[0], -1)
    if rows.numel() <= _LISTED_BLEND:
        # A per-head blend (PAG: [B, H, 1, 1]): one read into Python beats tensor ops on a few numbers.
        listed = rows.tolist()
        answer = (
            tuple(all(weight == 1.0 for weight in row) for row in listed),
            tuple(any(weight != 0.0 for weight in row) for row in listed),
        )
    else:
        answer = (tuple(rows.eq(1).all(dim=1).tolist()), tuple(rows.ne(0).any(dim=1).tolist()))
    if len(_READ_BLENDS) >= _READ_BLENDS_KEPT:
        _READ_BLENDS.clear()
    _READ_BLENDS[key] = (weakref.ref(blend, lambda _, key=key: _READ_BLENDS.pop(key, None)), blend._version, answer)
    return answer


def _identity_rows(request: AttentionRequest) -> tuple[tuple[bool, ...], tuple[bool, ...]] | None:
    """Which batch rows an identity blend answers alone (weight exactly 1 on every head and query: PAG's perturbed
    rows), with which rows it blends at all (see :func:`_blend_rows`), or ``None`` when no row is answered alone
    or the call cannot be split by rows.

    Those rows' output is their values, bit for bit (``lerp`` at weight 1), so computing their attention would be
    thrown away. Only a blend on the CPU is read (no device sync), and only for calls whose rows are independent
    of their batch index: no pattern or score modifier (whose ``mask_mod`` may read it), no log-sum-exp asked.
    """
    blend = request.identity_blend
    if (
        blend is None
        or blend.device.type != "cpu"
        or blend.dim() != 4
        or request.return_lse
        or request.pattern is not None
        or request.score_mod is not None
        or request.q.shape[0] < 2
        or blend.shape[0] != request.q.shape[0]
        or request.q.shape[2] != request.k.shape[2]
    ):
        return None
    rows = _blend_rows(blend)
    return rows if any(rows[0]) else None


def _rows(x: torch.Tensor | None, rows: slice | torch.Tensor | list[int], batch: int) -> torch.Tensor | None:
    """Rows ``rows`` of ``x`` along the batch axis, where ``x`` has one (a mask may broadcast over it); a list of
    consecutive rows gives a view, no copy."""
    if x is None or x.dim() < 4 or x.shape[0] != batch:
        return x
    if isinstance(rows, list):
        rows = _row_index(rows, x.device)
    if isinstance(rows, slice):
        return x if rows.start == 0 and rows.stop == batch else x[rows]
    return gather_rows(x, rows if rows.device == x.device else rows.to(x.device))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(0, index)`` of a ``[B, H, N, D]`` tensor, laid out in memory as ``x`` is when that is
    ``[B, N, H, D]`` (the heads view of a projection, as processors hand SDPA): the attention output then keeps the
    layout the processor's ``transpose(1, 2).reshape`` reads without a copy, as for the stock call."""
    if x.dim() == 4 and x.stride(1) < x.stride(2):
        return x.transpose(1, 2).index_select(0, index).transpose(1, 2)
    return x.index_select(0, index)


def _stacked_rows(parts: list[torch.Tensor], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``parts`` (``[b_i, H, N, D]``) stacked along the batch axis, laid out in memory as ``like`` is: CPU SDPA returns
    its output as a transposed ``[B, N, H, D]``, and a processor's ``transpose(1, 2).reshape`` of such an output
    copies nothing, so the stacked output keeps that layout (one copy here, none in the processor)."""
    parts = [part if part.dtype == dtype else part.to(dtype) for part in parts if part.shape[0]]
    batch, heads, tokens, _ = like.stride()
    if batch >= tokens > heads:
        # [B, N, H, D] in memory (CPU SDPA's output): stack the transposed parts, hand back the transposed stack.
        return torch.cat([part.transpose(1, 2) for part in parts]).transpose(1, 2)
    return torch.cat(parts)


def _run_without_identity_rows(
    request: AttentionRequest, rows: tuple[tuple[bool, ...], tuple[bool, ...]], backend: str
) -> torch.Tensor:
    """The call with the rows answered alone (``rows[0]``) answered by their values and only the others computed."""
    whole, blended = rows
    q, v = request.q, request.v
    batch = q.shape[0]
    computed = [row for row, identity in enumerate(whole) if not identity]
    out_dtype = q.dtype
    if not computed:
        return v.to(out_dtype, copy=True)
    if computed == list(range(computed[0], computed[-1] + 1)):
        index: slice | torch.Tensor = slice(computed[0], computed[-1] + 1)
    else:
        index = torch.tensor(computed, device=q.device)
    part = AttentionRequest(
        q=_rows(q, index, batch),
        k=_rows(request.k, index, batch),
        v=_rows(v, index, batch),
        pattern=request.pattern,
        score_mod=request.score_mod,
        attn_mask=_rows(request.attn_mask, index, batch),
        scale=request.scale,
        identity_blend=_rows(request.identity_blend, index, batch) if any(blended[i] for i in computed) else None,
        return_lse=request.return_lse,
        use_dispatcher=request.use_dispatcher,
        dispatcher_backend=request.dispatcher_backend,
        editors=request.editors,
        reads=request.reads,
    )
    computed_out, _ = run_request(part, backend)
    if isinstance(index, slice):
        return _stacked_rows([v[: index.start], computed_out, v[index.stop :]], computed_out, out_dtype)
    out = v.to(out_dtype, copy=True)
    out[index] = computed_out
    return out


def _with_identity_blend(request: AttentionRequest, out: torch.Tensor) -> torch.Tensor:
    if request.identity_blend is not None:
        if request.q.shape[2] != request.k.shape[2]:
            raise ValueError(
                "identity_blend needs as many queries as keys (each query's identity is its own value); "
                f"got {request.q.shape[2]} queries and {request.k.shape[2]} keys"
            )
        # lerp returns exactly v where the weight is 1 (PAG's identity), unlike out + w * (v - out).
        blend = request.identity_blend.to(device=out.device, dtype=out.dtype)
        out = torch.lerp(out, request.v.to(out.dtype), blend)
    return out


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    pattern: Pattern | None = None,
    score_mod: ScoreModifier | None = None,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    identity_blend: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    use_dispatcher: bool = False,
    dispatcher_backend: Any = None,
    editors: Sequence[Editor] = (),
    reads: Sequence[ProbabilityRead] = (),
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over ``[batch, heads, tokens, head_dim]`` tensors with a pattern, a score modifier and a blend.

    Args:
        q, k, v: ``[B, H, Nq, D]``, ``[B, H, Nk, D]``, ``[B, H, Nk, Dv]``.
        pattern: which query-key pairs attend (:class:`visattn.kernels.patterns.Pattern`); ``None`` = all.
        score_mod: logit modifier (:class:`visattn.kernels.patterns.ScoreModifier`) applied after scaling.
        attn_mask: the model's own additive or boolean mask, broadcastable to ``[B, H, Nq, Nk]``.
        scale: logit scale, default ``1/sqrt(D)``.
        identity_blend: per-head (or per-token) weight ``s`` broadcastable to ``[B, H, Nq, 1]``;
            the output is ``(1 - s) * attention + s * v`` (SoftPAG, Ahn et al. 2024 / HeadHunter).
        backend: ``"auto"`` or a name from :func:`available_backends`.
        return_lse: also return the natural-log log-sum-exp of the logits, ``[B, H, Nq]``.
        use_dispatcher, dispatcher_backend: route the dense path through diffusers' dispatcher with this
            backend (what ``model.set_attention_backend`` chose).
        editors: the probability stage's editors, ``editor(probs, start, stop)`` changing the fp32 probabilities
            ``[B, H, stop - start, Nk]`` of queries ``[start, stop)`` in place before they weight the values
            (:mod:`visattn.kernels.probabilities`); the reference backend runs edited calls.
        reads: :class:`~visattn.kernels.probabilities.ProbabilityRead` blocks of the final probabilities to hand
            to observers; they leave the call on any backend.

    Returns:
        ``out`` (``[B, H, Nq, Dv]``, dtype of ``q``), or ``(out, lse)`` when ``return_lse``.

    Raises:
        TypeError, ValueError: bad inputs, checked up front by
            :func:`visattn.validation.check_attention_inputs` (shapes, dtypes and devices; no values read).
    """
    check_attention_inputs(
        q, k, v, pattern=pattern, score_mod=score_mod, attn_mask=attn_mask, scale=scale, identity_blend=identity_blend
    )
    request = AttentionRequest(
        q=q,
        k=k,
        v=v,
        pattern=pattern,
        score_mod=score_mod,
        attn_mask=attn_mask,
        scale=scale,
        identity_blend=identity_blend,
        return_lse=return_lse,
        use_dispatcher=use_dispatcher,
        dispatcher_backend=dispatcher_backend,
        editors=tuple(editors),
        reads=tuple(reads),
    )
    out, lse = run_request(request, backend)
    return (out, lse) if return_lse else out
