"""How ``backend="auto"`` decides: per-call keys, measured decisions, their cache, and the timer that measures.

A *decision* is made once per backend-independent key (pattern and modifier parameters, q/k/v shapes, dtypes,
device, model-mask shape, whether the log-sum-exp is asked for) and reused for every later call with that key,
the way Triton's autotuner keys its configurations. :mod:`visattn.kernels.core` lists the candidates (backends
whose ``supports()`` covers the call) and asks this module to time them; this module owns what is shared by
every decision:

* the key (:func:`request_key`), cheap to build because it is built on every call: shapes, dtypes and cache keys
  of the pattern and modifier, never a tensor value;
* the timer (:func:`default_timer`, replaceable with :func:`set_timer` for tests): one untimed first call (which
  pays for compilation, block masks and other caches, reported separately as ``first_s``), then up to
  :data:`ITERATIONS` timed calls, median (fewer for a candidate that has clearly lost, or past
  :data:`BUDGET_S` seconds);
* when measuring is allowed at all (:func:`measurement_blocker`): not while ``torch.compile`` traces, not inside
  CUDA graph capture, not below :data:`MIN_MEASURED_WORK` (where launch overhead decides and timings are noise),
  not with ``VISATTN_AUTOTUNE=0``;
* the cache: in memory always, and on disk when ``VISATTN_AUTOTUNE_CACHE`` names a JSON file (opt-in); the file
  is keyed by the device's name and the torch version, so a cache made on another GPU is not trusted;
* one-time warnings (a backend that failed, a sparse backend slower than dense attention).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..warning_site import user_stacklevel
from .request import AttentionRequest

__all__ = [
    "Decision",
    "Timing",
    "cache_path",
    "clear",
    "decision_for",
    "decisions",
    "default_timer",
    "kept_fraction",
    "measurement_blocker",
    "request_key",
    "set_timer",
    "warn_once",
]

#: timed calls per candidate after the untimed first one (the median is kept)
ITERATIONS = 3

#: calls with less work than this (``batch * heads * Nq * Nk * head_dim``) are not measured: at that size the
#: choice hardly matters and a few timed iterations are dominated by launch overhead and noise, so the cheap
#: preference order decides (``VISATTN_AUTOTUNE_MIN_WORK`` overrides; 2**26 is e.g. 1024 tokens, 1 head, d64)
MIN_MEASURED_WORK = int(os.environ.get("VISATTN_AUTOTUNE_MIN_WORK", str(1 << 26)))

CACHE_ENV = "VISATTN_AUTOTUNE_CACHE"
_FILE_VERSION = 1


@dataclass(frozen=True)
class Timing:
    """One candidate's measurement: the first call (compilation, caches) and the median of the timed calls."""

    first_s: float
    per_call_s: float


@dataclass
class Decision:
    """What ``auto`` chose for one key, and why.

    Attributes:
        backend: the backend that runs calls with this key.
        reason: how it was chosen (``"measured"``, ``"only candidate"``, ``"below measuring size"``, ...).
        candidates: the backends whose ``supports()`` covered the call, in preference order.
        timings: measured candidates (``"dense"`` is plain dense SDPA on the same shapes, the cost to beat).
        rejected: backends dropped for this key, with the reason (a capability error at run time, a failure
            while measuring).
        kept_fraction: fraction of query-key pairs the pattern keeps (measured decisions with a pattern only).
        describe: the key, readable (for ``visattn info`` and ``visattn bench``).
    """

    backend: str
    reason: str
    candidates: tuple[str, ...] = ()
    timings: dict[str, Timing] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    kept_fraction: float | None = None
    describe: str = ""
    #: False for a decision read from the cache file until its backend is checked to still run the call here
    checked: bool = True

    def summary(self) -> str:
        """One line: the backend, why, and the timings in ms."""
        text = f"{self.backend} ({self.reason})"
        if self.timings:
            parts = [f"{name} {format_ms(t.per_call_s)}" for name, t in self.timings.items()]
            text += ": " + ", ".join(parts)
        if self.rejected:
            text += "; rejected " + ", ".join(f"{name}: {why}" for name, why in self.rejected.items())
        return text

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = list(self.candidates)
        data.pop("checked")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        timings = {name: Timing(**t) for name, t in data.get("timings", {}).items()}
        return cls(
            backend=data["backend"],
            reason=data["reason"],
            candidates=tuple(data.get("candidates", ())),
            timings=timings,
            rejected=dict(data.get("rejected", {})),
            kept_fraction=data.get("kept_fraction"),
            describe=data.get("describe", ""),
            checked=False,
        )


# --- keys ------------------------------------------------------------------------------------------------------------
def request_key(request: AttentionRequest) -> Hashable | None:
    """The backend-independent key of a call, or ``None`` when a pattern or modifier has no cache key.

    Built on every auto call, so it reads only shapes, dtypes and the (small, tuple) cache keys: no tensor data,
    no device synchronization.
    """
    q, k, v, mask = request.q, request.k, request.v, request.attn_mask
    try:
        pattern = None if request.pattern is None else request.pattern.cache_key()
        modifier = None if request.score_mod is None else request.score_mod.cache_key()
    except NotImplementedError:
        return None
    return (
        pattern,
        modifier,
        tuple(q.shape),
        tuple(k.shape),
        tuple(v.shape),
        q.dtype,
        k.dtype,
        v.dtype,
        str(q.device),
        None if mask is None else (tuple(mask.shape), mask.dtype),
        request.return_lse,
    )


def describe_key(key: Hashable) -> str:
    """A readable form of :func:`request_key`'s key."""
    pattern, modifier, q_shape, k_shape, _, dtype, *_rest = key  # type: ignore[misc]
    device, mask, lse = key[8], key[9], key[10]  # type: ignore[index]
    text = f"pattern={pattern} score_mod={modifier} q={list(q_shape)} k={list(k_shape)} {dtype} {device}"
    if mask is not None:
        text += f" mask={list(mask[0])}"
    return text + (" lse" if lse else "")


def work(request: AttentionRequest) -> int:
    """``batch * heads * Nq * Nk * head_dim``: the dense cost, the size measure :data:`MIN_MEASURED_WORK` uses."""
    batch, heads, n_q, dim = request.q.shape
    return batch * heads * n_q * request.k.shape[2] * dim


# --- when to measure -------------------------------------------------------------------------------------------------
def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def measurement_blocker(request: AttentionRequest) -> str | None:
    """Why this call must not be measured now (``None``: it may be).

    Tracing (``torch.compile``) and CUDA graph capture would record the trial runs into the graph; a disabled
    autotuner or a call too small to be worth timing decide by preference order instead.
    """
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if _capturing(request.q.device):
        return "CUDA graph capture"
    if os.environ.get("VISATTN_AUTOTUNE", "1") in ("0", "false", "False", "off"):
        return "VISATTN_AUTOTUNE=0"
    if work(request) < MIN_MEASURED_WORK:
        return "below measuring size"
    return None


# --- the timer -------------------------------------------------------------------------------------------------------
Timer = Callable[[str, Callable[[], Any], torch.device], "Timing | float"]


#: a candidate whose timed call takes this many times the best median so far stops being timed (it has lost)
CUTOFF = 2.0

#: timed calls stop once they add up to this many seconds (at least one is timed): at seconds per call (large
#: CPU calls), one sample is already far above the noise
BUDGET_S = 1.0


def default_timer(name: str, call: Callable[[], Any], device: torch.device, best_s: float | None = None) -> Timing:
    """Time ``call``: one untimed first call (compilation and caches), then up to :data:`ITERATIONS` timed ones.

    With ``best_s`` (the best median so far), timing stops after a sample slower than ``CUTOFF * best_s``: a
    backend at several seconds per call on CPU would otherwise cost many seconds more just to lose. Timing also
    stops once the timed calls add up to :data:`BUDGET_S`.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    call()
    sync()
    first = time.perf_counter() - start
    samples = []
    for _ in range(ITERATIONS):
        start = time.perf_counter()
        call()
        sync()
        samples.append(time.perf_counter() - start)
        if (best_s is not None and samples[-1] > CUTOFF * best_s) or sum(samples) > BUDGET_S:
            break
    return Timing(first, statistics.median(samples))


_TIMER: Timer = default_timer


def set_timer(timer: Timer | None) -> Timer:
    """Replace the timer (``None`` restores :func:`default_timer`); returns the previous one.

    A timer is ``timer(backend_name, call, device) -> Timing | float`` (seconds per call). It may skip calling
    ``call`` (a fake timer in tests); the chosen backend then runs once more to produce the output.
    """
    global _TIMER
    previous = _TIMER
    _TIMER = default_timer if timer is None else timer
    return previous


def time_candidate(name: str, call: Callable[[], Any], device: torch.device, best_s: float | None = None) -> Timing:
    """Time one candidate with the active timer (the default one stops early once it is clearly slower)."""
    result = default_timer(name, call, device, best_s) if _TIMER is default_timer else _TIMER(name, call, device)
    return result if isinstance(result, Timing) else Timing(0.0, float(result))


# --- density of a pattern, for the sparse-vs-dense warning -----------------------------------------------------------
_SAMPLED_ROWS = 512


def kept_fraction(request: AttentionRequest) -> float | None:
    """Fraction of query-key pairs the pattern keeps: exact up to 512 queries, else on 512 evenly spaced ones.

    Evaluated on batch 0, head 0, on CPU (the pattern's mask_mod on index grids), so it never syncs the device.
    """
    pattern = request.pattern
    if pattern is None:
        return None
    n_q, n_k = request.q.shape[2], request.k.shape[2]
    rows = torch.arange(n_q) if n_q <= _SAMPLED_ROWS else torch.linspace(0, n_q - 1, _SAMPLED_ROWS).long()
    zero = torch.zeros((), dtype=torch.long)
    try:
        keep = pattern.mask_mod(zero, zero, rows.view(-1, 1), torch.arange(n_k).view(1, -1))
    except Exception:  # a pattern whose mask needs its own device or per-head data: density is only a hint
        return None
    return float(keep.expand(rows.numel(), n_k).float().mean())


# --- cache -----------------------------------------------------------------------------------------------------------
_DECISIONS: dict[Hashable, Decision] = {}
_DISK: dict[str, Decision] | None = None  # the file's entries, loaded on the first miss
_DEVICE_NAMES: dict[str, str] = {}


def decision_for(key: Hashable) -> Decision | None:
    """The cached decision for ``key``: in memory, else from the cache file (then kept in memory too)."""
    decision = _DECISIONS.get(key)
    if decision is not None or cache_path() is None:
        return decision
    decision = _disk_entries().get(_disk_key(key))
    if decision is not None:
        _DECISIONS[key] = decision
    return decision


def remember(key: Hashable, decision: Decision, persist: bool = True) -> None:
    """Cache ``decision`` in memory and, when measured and a cache file is configured, on disk."""
    decision.describe = decision.describe or describe_key(key)
    _DECISIONS[key] = decision
    if persist and cache_path() is not None and decision.timings:
        entries = _disk_entries()
        entries[_disk_key(key)] = decision
        _write(entries)


def decisions() -> dict[str, Decision]:
    """Every decision made in this process (and those read from the cache file), by readable key."""
    found = {decision.describe: decision for decision in _DECISIONS.values()}
    if cache_path() is not None:
        for key, decision in _disk_entries().items():
            found.setdefault(decision.describe or key, decision)
    return found


def clear(memory: bool = True) -> None:
    """Forget decisions (and warnings already given): in memory; the cache file is left alone."""
    global _DISK
    if memory:
        _DECISIONS.clear()
        _WARNED.clear()
    _DISK = None


def cache_path() -> str | None:
    """The JSON file decisions persist to (``VISATTN_AUTOTUNE_CACHE``), or ``None`` (memory only, the default)."""
    path = os.environ.get(CACHE_ENV)
    return os.path.expanduser(path) if path else None


def _device_name(device: str) -> str:
    name = _DEVICE_NAMES.get(device)
    if name is None:
        dev = torch.device(device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
        _DEVICE_NAMES[device] = name
    return name


def _disk_key(key: Hashable) -> str:
    # repr of shapes, dtypes and the patterns' cache keys (numbers and strings) is stable across processes; the
    # device's name makes a file shared between machines safe.
    return f"{_device_name(key[8])}|{key!r}"  # type: ignore[index]


def _fingerprint() -> dict[str, str]:
    return {"torch": torch.__version__}


def _disk_entries() -> dict[str, Decision]:
    global _DISK
    if _DISK is None:
        _DISK = {}
        path = cache_path()
        try:
            with open(path, encoding="utf-8") as handle:  # type: ignore[arg-type]
                data = json.load(handle)
            if data.get("version") == _FILE_VERSION and data.get("fingerprint") == _fingerprint():
                _DISK = {key: Decision.from_json(value) for key, value in data.get("entries", {}).items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no file yet, or one from another torch version: start afresh
    return _DISK


def _write(entries: dict[str, Decision]) -> None:
    path = cache_path()
    data = {
        "version": _FILE_VERSION,
        "fingerprint": _fingerprint(),
        "entries": {key: decision.to_json() for key, decision in entries.items()},
    }
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # type: ignore[arg-type]
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        os.replace(temporary, path)  # type: ignore[arg-type]
    except OSError as error:
        warn_once(("cache-write", path), f"visattn: cannot write the autotune cache {path}: {error}")


# --- warnings --------------------------------------------------------------------------------------------------------
_WARNED: set[Hashable] = set()


def warn_once(key: Hashable, message: str) -> None:
    """``warnings.warn(message)`` the first time ``key`` is seen in this process."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=user_stacklevel())


def format_ms(seconds: float) -> str:
    """``0.0123`` -> ``"12.3 ms"``, ``5.15`` -> ``"5150.0 ms"``: milliseconds, without exponents."""
    if not math.isfinite(seconds):
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.3g} ms"
