"""``backend="auto"``: only backends that can compute a call compete, the fastest measured one wins and is cached.

NATTEN is exercised two ways: the real package when it is importable (NATTEN 0.21 builds without its CUDA
library on a CPU machine and then runs through eager FlexAttention, refusing head sizes that are not powers of
two in [8, 512] and windows of one token), and always a stand-in whose capability errors copy NATTEN 0.21's
(``NotImplementedError("... could not find a suitable backend ...")``, ``ValueError`` for ``kernel_size`` 1).
Timings on CPU are tiny and never asserted as speed; the choice itself is tested with a fake timer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
import warnings

import pytest
import torch
from helpers import BandPattern, HeadScale
from test_natten import fake_natten

from visattn.kernels import AttentionRequest, NeighborhoodPattern, attention, autotune, choose_backend, core
from visattn.kernels.backends import flex, reference
from visattn.kernels.backends import natten as natten_backend
from visattn.kernels.extrapolation_scores import DecayModifier
from visattn.kernels.radial import RadialPattern

HAS_NATTEN = importlib.util.find_spec("natten") is not None
HEAD_SIZES = (4, 12, 16, 24, 72, 96)


def qkv(n, heads=2, dim=16, batch=1, seed=0, n_k=None):
    generator = torch.Generator().manual_seed(seed)
    n_k = n if n_k is None else n_k
    q = torch.randn(batch, heads, n, dim, generator=generator)
    k = torch.randn(batch, heads, n_k, dim, generator=generator)
    v = torch.randn(batch, heads, n_k, dim, generator=generator)
    return q, k, v


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    """Every test starts with no cached decision, no cache file and the real timer."""
    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
    monkeypatch.delenv("VISATTN_AUTOTUNE", raising=False)
    autotune.clear()
    natten_backend._ACCEPTS.clear()
    yield
    autotune.set_timer(None)
    autotune.clear()
    natten_backend._ACCEPTS.clear()


# --- a stand-in NATTEN with NATTEN 0.21's CPU capability errors -----------------------------------------------------
def _cpu_natten_can_run(query, key, value) -> None:
    dim = query.shape[-1]
    if dim != value.shape[-1] or not (8 <= dim <= 512 and dim & (dim - 1) == 0):
        raise NotImplementedError(
            "NATTEN could not find a suitable backend for this use case. Run with NATTEN_LOG_LEVEL=DEBUG to find out."
        )


def simulated_natten(calls: list) -> types.ModuleType:
    module = fake_natten(calls)
    functional = module.functional
    for name in ("na1d", "na2d", "na3d"):
        computed = getattr(functional, name)

        def checked(query, key, value, kernel_size, *args, computed=computed, **kwargs):
            sizes = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
            if min(sizes) < 2:
                raise ValueError(f"Invalid value for `kernel_size`; expected ... all >= 2, got {kernel_size=}.")
            _cpu_natten_can_run(query, key, value)
            return computed(query, key, value, kernel_size, *args, **kwargs)

        setattr(functional, name, checked)
    backends = types.ModuleType("natten.backends")
    backends.choose_backend = lambda q, k, v, torch_compile=False: _cpu_natten_can_run(q, k, v) or "flex-fna"
    backends.choose_fmha_backend = lambda q, k, v, **kwargs: _cpu_natten_can_run(q, k, v) or "flex-fmha"
    module.backends = backends
    return module


@pytest.fixture(params=["real", "simulated"])
def natten(request, monkeypatch):
    """NATTEN as installed (skipped when it is not) or the stand-in; the list records the stand-in's calls."""
    calls: list = []
    if request.param == "real":
        if not HAS_NATTEN:
            pytest.skip("natten is not importable here")
        return calls
    module = simulated_natten(calls)
    monkeypatch.setitem(sys.modules, "natten", module)
    monkeypatch.setitem(sys.modules, "natten.functional", module.functional)
    monkeypatch.setitem(sys.modules, "natten.backends", module.backends)
    return calls


# --- auto is always correct ----------------------------------------------------------------------------------------
NEIGHBORHOODS = {
    "1d": NeighborhoodPattern((24,), 5),
    "2d": NeighborhoodPattern((6, 7), 3),
    "3d": NeighborhoodPattern((3, 4, 5), 3),
    "per-frame-video": NeighborhoodPattern((3, 4, 5), (1, 3, 3)),
    "2d-text-first": NeighborhoodPattern((6, 7), 3, offset=4),
}


def _check_auto_equals_reference(q, k, v, **call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # auto must not need a fallback for these
        warnings.filterwarnings("ignore", ".*slower than dense", RuntimeWarning)  # tiny CPU sizes: it is
        out = attention(q, k, v, **call)
    expected = attention(q, k, v, backend="reference", **call)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dim", HEAD_SIZES)
@pytest.mark.parametrize("case", list(NEIGHBORHOODS))
def test_auto_equals_reference_for_neighborhoods_and_head_sizes(natten, case, dim):
    pattern = NEIGHBORHOODS[case]
    q, k, v = qkv(pattern.offset + pattern.num_tokens, dim=dim)
    _check_auto_equals_reference(q, k, v, pattern=pattern)
    request = AttentionRequest(q, k, v, pattern=pattern)
    natten_runs = natten_backend.supports(request)
    assert natten_runs == (case != "per-frame-video" and dim in (16,))
    assert choose_backend(request) == ("natten" if natten_runs else "reference")


@pytest.mark.parametrize(
    "call",
    [
        {"pattern": RadialPattern((4, 4, 4), block_size=16)},
        {"score_mod": HeadScale(0.5)},
        {"score_mod": DecayModifier((4, 4, 4), (2, 2, 2), 0.5)},
        {"pattern": NeighborhoodPattern((4, 4, 4), 3), "score_mod": HeadScale(0.25)},
        {"pattern": BandPattern(3), "return_lse": True},
    ],
    ids=["radial", "head-scale", "decay", "neighborhood+modifier", "band+lse"],
)
@pytest.mark.parametrize("dim", (12, 16))
def test_auto_equals_reference_for_other_patterns_and_modifiers(natten, call, dim):
    q, k, v = qkv(64, dim=dim)
    if call.get("return_lse"):
        out, lse = attention(q, k, v, **call)
        expected, expected_lse = attention(q, k, v, backend="reference", **call)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse, expected_lse, atol=2e-5, rtol=2e-5)
        return
    _check_auto_equals_reference(q, k, v, **call)


@pytest.mark.parametrize("case", ["2d", "per-frame-video"])
def test_measured_auto_equals_reference(natten, monkeypatch, case):
    # The real timer on tiny sizes: which backend wins is not asserted, only that the result is right.
    monkeypatch.setattr(autotune, "MIN_MEASURED_WORK", 0)
    pattern = NEIGHBORHOODS[case]
    q, k, v = qkv(pattern.num_tokens, dim=24)
    _check_auto_equals_reference(q, k, v, pattern=pattern)
    decision = core.auto_decision(AttentionRequest(q, k, v, pattern=pattern))
    assert decision.reason == "measured" and "natten" not in decision.candidates
    assert set(decision.timings) == {"flex", "reference", "dense"}
    assert all(t.per_call_s >= 0 and t.first_s >= 0 for t in decision.timings.values())


def test_a_capability_error_at_run_time_falls_back_with_one_warning(monkeypatch):
    # supports() too generous (an older visattn, a new NATTEN): the run-time refusal is caught, named once.
    calls: list = []
    module = simulated_natten(calls)
    monkeypatch.setitem(sys.modules, "natten", module)
    monkeypatch.setattr(natten_backend, "natten_accepts", lambda request: True)
    pattern = NEIGHBORHOODS["2d"]
    q, k, v = qkv(42, dim=24)
    with pytest.warns(RuntimeWarning, match="backend 'natten' cannot compute this call .*NotImplementedError"):
        out = attention(q, k, v, pattern=pattern)
    torch.testing.assert_close(out, attention(q, k, v, pattern=pattern, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v, pattern=pattern)  # no second warning, no second try
    decision = core.auto_decision(AttentionRequest(q, k, v, pattern=pattern))
    assert decision.backend == "reference" and "natten" in decision.rejected


def test_genuine_errors_are_not_swallowed(monkeypatch):
    def out_of_memory(request):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(reference, "run", out_of_memory)
    q, k, v = qkv(32)
    with pytest.raises(torch.OutOfMemoryError):
        attention(q, k, v, pattern=BandPattern(2))


# --- auto by measurement -------------------------------------------------------------------------------------------
class FakeTimer:
    """Seconds per call by backend name; runs each call once (as a real timer would) and counts the timings."""

    def __init__(self, seconds: dict[str, float], run: bool = True):
        self.seconds, self.run, self.timed = seconds, run, []

    def __call__(self, name, call, device):
        self.timed.append(name)
        if self.run:
            call()
        return autotune.Timing(first_s=10 * self.seconds[name], per_call_s=self.seconds[name])


@pytest.fixture
def measured(monkeypatch):
    """Measure every call (no size threshold) with a fake timer the test fills in."""
    monkeypatch.setattr(autotune, "MIN_MEASURED_WORK", 0)
    timer = FakeTimer({})
    autotune.set_timer(timer)
    return timer


@pytest.mark.parametrize("fastest", ["flex", "reference"])
def test_auto_picks_the_fastest_candidate_and_caches_it(measured, fastest):
    measured.seconds.update({"flex": 2e-3, "reference": 3e-3, "dense": 1e-3})
    measured.seconds[fastest] = 1e-4
    q, k, v = qkv(40)
    pattern = BandPattern(3)
    out = attention(q, k, v, pattern=pattern)
    assert measured.timed == ["flex", "reference", "dense"]
    torch.testing.assert_close(out, attention(q, k, v, pattern=pattern, backend="reference"), atol=1e-5, rtol=1e-5)
    decision = core.auto_decision(AttentionRequest(q, k, v, pattern=pattern))
    assert decision.backend == fastest and decision.reason == "measured"
    assert decision.timings[fastest] == autotune.Timing(1e-3, 1e-4)  # the first call (compilation) apart
    # Later calls with the same key reuse the decision; a new shape is measured again.
    attention(q, k, v, pattern=pattern)
    assert choose_backend(AttentionRequest(q, k, v, pattern=pattern)) == fastest
    assert measured.timed == ["flex", "reference", "dense"]
    attention(*qkv(41), pattern=pattern)
    assert measured.timed == ["flex", "reference", "dense"] * 2


def test_measured_output_is_the_winners_even_when_the_timer_does_not_run_it(monkeypatch):
    monkeypatch.setattr(autotune, "MIN_MEASURED_WORK", 0)
    autotune.set_timer(FakeTimer({"flex": 1e-4, "reference": 1e-3, "dense": 1e-5}, run=False))
    ran = []
    original = flex.run
    monkeypatch.setattr(flex, "run", lambda request: ran.append(1) or original(request))
    q, k, v = qkv(40)
    with pytest.warns(RuntimeWarning):  # slower than dense, see below
        out = attention(q, k, v, pattern=BandPattern(2))
    assert ran == [1]
    torch.testing.assert_close(out, attention(q, k, v, pattern=BandPattern(2), backend="reference"))


def test_sparse_slower_than_dense_warns_once_with_both_times_and_density(measured):
    measured.seconds.update({"flex": 4e-3, "reference": 6e-3, "dense": 1e-3})
    q, k, v = qkv(64)
    pattern = BandPattern(4)  # keeps 9 of 64 keys in the middle rows, 5 to 8 in the first and last four
    kept = (64 * 9 - 2 * (4 + 3 + 2 + 1)) / 64**2
    with pytest.warns(RuntimeWarning) as record:
        attention(q, k, v, pattern=pattern)
    messages = [str(w.message) for w in record if "slower than dense" in str(w.message)]
    assert len(messages) == 1
    assert "'flex' (4 ms)" in messages[0] and "(1 ms)" in messages[0] and f"{kept:.1%} density" in messages[0]
    decision = core.auto_decision(AttentionRequest(q, k, v, pattern=pattern))
    assert decision.kept_fraction == pytest.approx(kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v, pattern=pattern)


def test_no_warning_when_sparse_beats_dense(measured):
    measured.seconds.update({"flex": 1e-4, "reference": 6e-3, "dense": 1e-3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(*qkv(64), pattern=BandPattern(4))


def test_plain_calls_and_single_candidates_are_not_measured(measured):
    q, k, v = qkv(32)
    attention(q, k, v)
    assert choose_backend(AttentionRequest(q, k, v)) == "sdpa"
    mask = torch.ones(1, 1, 32, 32, dtype=torch.bool)  # a per-query model mask: only the reference computes it
    attention(q, k, v, pattern=BandPattern(2), attn_mask=mask)
    assert measured.timed == []
    decision = core.auto_decision(AttentionRequest(q, k, v, pattern=BandPattern(2), attn_mask=mask))
    assert (decision.backend, decision.reason) == ("reference", "only candidate")


def test_small_calls_use_the_preference_order_without_measuring(monkeypatch):
    timer = FakeTimer({})
    autotune.set_timer(timer)
    q, k, v = qkv(32)
    assert choose_backend(AttentionRequest(q, k, v, pattern=BandPattern(2))) == "reference"
    assert timer.timed == []
    assert core.auto_decision(AttentionRequest(q, k, v, pattern=BandPattern(2))).reason == "below measuring size"


def test_no_measurement_while_compiling_and_nothing_cached(measured, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = qkv(32)
    attention(q, k, v, pattern=BandPattern(2))
    assert measured.timed == []
    assert core.auto_decision(AttentionRequest(q, k, v, pattern=BandPattern(2))) is None


def test_autograd_calls_are_measured_without_a_graph_and_keep_their_gradients(measured, monkeypatch):
    # FlexAttention has no CPU backward (it is not a candidate then): a stand-in candidate that supports grads.
    monkeypatch.setattr(flex, "supports", lambda request: True)
    monkeypatch.setattr(flex, "run", reference.run)
    measured.seconds.update({"flex": 1e-4, "reference": 1e-3, "dense": 1e-3})
    q, k, v = (t.requires_grad_() for t in qkv(40))
    out = attention(q, k, v, pattern=BandPattern(3))
    assert measured.timed == ["flex", "reference", "dense"] and out.grad_fn is not None
    assert core.auto_decision(AttentionRequest(q, k, v, pattern=BandPattern(3))).backend == "flex"
    (grad_q,) = torch.autograd.grad(out.sum(), q)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected = attention(q2, k2, v2, pattern=BandPattern(3), backend="reference")
    (expected_grad,) = torch.autograd.grad(expected.sum(), q2)
    torch.testing.assert_close(grad_q, expected_grad, atol=1e-5, rtol=1e-5)


def test_a_candidate_failing_while_measured_is_dropped_with_a_warning(measured, monkeypatch):
    measured.seconds.update({"flex": 1e-5, "reference": 1e-3, "dense": 1e-2})

    def broken(request):
        raise RuntimeError("inductor failed (simulated)")

    monkeypatch.setattr(flex, "run", broken)
    q, k, v = qkv(40)
    with pytest.warns(RuntimeWarning, match="backend 'flex' failed while backend='auto' measured it"):
        out = attention(q, k, v, pattern=BandPattern(3))
    torch.testing.assert_close(out, attention(q, k, v, pattern=BandPattern(3), backend="reference"))
    decision = core.auto_decision(AttentionRequest(q, k, v, pattern=BandPattern(3)))
    assert decision.backend == "reference" and "inductor failed" in decision.rejected["flex"]


def test_decisions_persist_to_the_cache_file(measured, monkeypatch, tmp_path):
    path = tmp_path / "autotune.json"
    monkeypatch.setenv(autotune.CACHE_ENV, str(path))
    measured.seconds.update({"flex": 1e-4, "reference": 1e-3, "dense": 1e-3})
    q, k, v = qkv(40)
    attention(q, k, v, pattern=BandPattern(3))
    data = json.loads(path.read_text())
    assert data["fingerprint"] == {"torch": torch.__version__}
    (entry,) = data["entries"].values()
    assert entry["backend"] == "flex" and entry["timings"]["flex"]["per_call_s"] == 1e-4
    # A new process (memory cleared) reads the file instead of measuring again.
    autotune.clear()
    measured.timed.clear()
    assert choose_backend(AttentionRequest(q, k, v, pattern=BandPattern(3))) == "flex"
    assert measured.timed == []
    assert any(d.backend == "flex" for d in autotune.decisions().values())
    # A file entry whose backend cannot run here any more (uninstalled, another machine) is decided again.
    autotune.clear()
    monkeypatch.setattr(flex, "availability", lambda: (False, "gone"))
    assert choose_backend(AttentionRequest(q, k, v, pattern=BandPattern(3))) == "reference"
    assert core.auto_decision(AttentionRequest(q, k, v, pattern=BandPattern(3))).reason == "only candidate"


def test_request_key_reads_shapes_only():
    # Meta tensors have no data: building the key must not need any (no sync, no .item()).
    q = torch.empty(2, 8, 1024, 64, device="meta")
    key = autotune.request_key(AttentionRequest(q, q, q, pattern=BandPattern(3), score_mod=HeadScale(0.5)))
    assert key[:3] == (("band", 3), ("head_scale", 0.5), (2, 8, 1024, 64))
    assert autotune.measurement_blocker(AttentionRequest(q, q, q)) is None  # 2*8*1024*1024*64 >= 2**26
    assert autotune.measurement_blocker(AttentionRequest(q[:, :, :16], q, q)) == "below measuring size"


# --- forcing -------------------------------------------------------------------------------------------------------
def test_backend_argument_and_env_var_still_force(measured, monkeypatch):
    measured.seconds.update({"flex": 1e-4, "reference": 1e-3, "dense": 1e-3})
    q, k, v = qkv(40)
    request = AttentionRequest(q, k, v, pattern=BandPattern(3))
    assert choose_backend(request, "flex") == "flex"
    monkeypatch.setenv("VISATTN_BACKEND", "flex")
    assert choose_backend(request) == "flex"
    out = attention(q, k, v, pattern=BandPattern(3))
    assert measured.timed == []  # forced: nothing measured
    torch.testing.assert_close(out, flex.run(request)[0])
    assert choose_backend(request, "reference") == "reference"  # the argument wins over the variable
    # A forced backend that cannot compute a call leaves that call to auto, with a warning.
    monkeypatch.setenv("VISATTN_BACKEND", "sdpa")
    with pytest.warns(RuntimeWarning, match="VISATTN_BACKEND='sdpa' cannot compute this call"):
        assert choose_backend(request) in ("flex", "reference")
    monkeypatch.setenv("VISATTN_BACKEND", "nope")
    with pytest.raises(ValueError, match="VISATTN_BACKEND='nope' is not one of auto"):
        attention(q, k, v, pattern=BandPattern(3))
    with pytest.raises(ValueError, match="backend='sdpa' cannot compute"):
        attention(q, k, v, pattern=BandPattern(3), backend="sdpa")


def test_the_backend_variable_is_read_as_os_environ_holds_it(monkeypatch):
    """The per-call read of VISATTN_BACKEND (one lookup in os.environ's own mapping) follows every way os.environ
    changes: set, changed, emptied, removed."""
    from visattn.kernels.core import backend_variable

    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    assert backend_variable() is None
    for value in ("flex", "reference", "", "auto"):
        monkeypatch.setenv("VISATTN_BACKEND", value)
        assert backend_variable() == os.environ.get("VISATTN_BACKEND") == value
    del os.environ["VISATTN_BACKEND"]
    assert backend_variable() is None


# --- showing the choice ---------------------------------------------------------------------------------------------
def test_info_shows_what_auto_chose(measured):
    from visattn.info import collect_info, format_info

    measured.seconds.update({"flex": 1e-4, "reference": 1e-3, "dense": 1e-3})
    attention(*qkv(40), pattern=BandPattern(3))
    info = collect_info()
    (decision,) = info["autotune"]["decisions"].values()
    assert decision["backend"] == "flex" and decision["reason"] == "measured"
    text = format_info(info)
    assert "auto" in text and "flex (measured)" in text
    assert text.index("backend='auto'") < text.index("attention backends")


def test_flex_is_no_candidate_for_cpu_inputs_that_require_grad(measured):
    # torch's FlexAttention refuses them on CPU (no CPU backward), even under no_grad.
    measured.seconds.update({"flex": 1e-5, "reference": 1e-3, "dense": 1e-3})
    q, k, v = (t.requires_grad_() for t in qkv(40))
    names, rejected = core.candidates(AttentionRequest(q, k, v, pattern=BandPattern(3)))
    assert names == ["reference"] and rejected["flex"] == "does not support this call"
    attention(q, k, v, pattern=BandPattern(3)).sum().backward()
    assert q.grad is not None and measured.timed == []


def test_default_timer_stops_timing_a_candidate_that_has_lost():
    calls = []
    timing = autotune.default_timer("slow", lambda: calls.append(1), torch.device("cpu"), best_s=1e-12)
    assert len(calls) == 2 and timing.per_call_s >= 0  # the first call and one timed call
    calls.clear()
    autotune.default_timer("any", lambda: calls.append(1), torch.device("cpu"))
    assert len(calls) == 1 + autotune.ITERATIONS


def test_bench_auto_method_names_the_choice(measured):
    from visattn.bench import configurations
    from visattn.bench.methods import METHODS

    measured.seconds.update({"natten": 1e-3, "flex": 1e-4, "reference": 1e-3, "dense": 1e-3})
    config = next(c for c in configurations(quick=True) if c.kind == "neighborhood")
    q, k, v = qkv(config.tokens, heads=config.heads, dim=config.head_dim)
    call = METHODS["auto"](config, q, k, v, None)
    call()
    assert call.label == "-> flex, measured"
