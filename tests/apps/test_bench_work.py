"""Counting the work of a call (visattn.bench.work): exact, by place, apart from a debugger's trace function."""

from __future__ import annotations

import sys

import pytest
import torch

from visattn.bench.work import PLACES, count_work


def _python_loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_operators_and_instructions_are_counted_exactly_and_by_place():
    x = torch.ones(3)
    two_ops = count_work(lambda: (x + 1) * 2)
    assert two_ops.aten_ops == 2
    assert count_work(lambda: (x + 1) * 2, calls=3) == two_ops  # the same count every time
    # A longer Python loop runs more instructions (here, in the test's own code: "other"), and no operator.
    short, long = count_work(lambda: _python_loop(10)), count_work(lambda: _python_loop(110))
    assert short.aten_ops == long.aten_ops == 0
    difference = long.minus(short)
    assert difference.opcodes["other"] > 100 * 4 and difference.opcodes["visattn"] == 0
    assert set(difference.opcodes) == set(PLACES) and difference.total_opcodes == sum(difference.opcodes.values())


def test_visattn_code_is_counted_as_visattn():
    from visattn.steps import in_steps

    work = count_work(lambda: in_steps((0.0, 0.5), 0.25))
    assert work.opcodes["visattn"] > 0 and work.aten_ops == 0


def test_a_trace_function_set_before_is_restored_and_bad_counts_are_refused():
    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        count_work(lambda: None)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
    with pytest.raises(ValueError, match="calls must be an integer >= 1; got 0"):
        count_work(lambda: None, calls=0)
