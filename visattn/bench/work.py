"""The work a call does, counted rather than timed: the ATen operators it dispatches and the Python bytecode
instructions it executes.

On a tiny model a generation's time is mostly per-operator and per-instruction overhead, and a shared CPU moves
it by a percent or two between runs (the tiny-model generation rows of ``visattn bench --dispatch`` do), more than
a change of a few microseconds per call that the overhead budget is made of. Counts are the same on every run and
machine for the same versions, so they show such a change exactly, and where it lands: instructions are counted
per place (visattn's own code, diffusers' hooks, everything else: the pipeline, the model, torch's Python).

Counting traces every instruction (``sys.settrace`` with opcode events), which makes the counted calls some ten
times slower: count and time in separate runs.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: where an instruction runs, by the file of its code: visattn's package, diffusers' hooks, anything else
PLACES = ("visattn", "diffusers hooks", "other")

_VISATTN_ROOT = str(Path(__file__).resolve().parents[1]) + os.sep


@dataclass(frozen=True)
class Work:
    """What one call did (the mean over the counted calls)."""

    #: ATen operators dispatched (views included: each costs a dispatch)
    aten_ops: float
    #: Python bytecode instructions executed, by place (:data:`PLACES`)
    opcodes: dict[str, float]

    @property
    def total_opcodes(self) -> float:
        return sum(self.opcodes.values())

    def minus(self, other: Work) -> Work:
        """What this call did beyond ``other``."""
        return Work(
            self.aten_ops - other.aten_ops, {place: self.opcodes[place] - other.opcodes[place] for place in PLACES}
        )

    def as_dict(self) -> dict[str, Any]:
        return {"aten_ops": self.aten_ops, "opcodes": dict(self.opcodes)}


class _OperatorCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _place(filename: str) -> str:
    if filename.startswith(_VISATTN_ROOT):
        return "visattn"
    if "/diffusers/hooks/" in filename.replace("\\", "/"):
        return "diffusers hooks"
    return "other"


def count_work(call: Callable[[], Any], *, calls: int = 2) -> Work:
    """Run ``call`` ``2 * calls`` times, counting what each did (:class:`Work`, the mean): the instructions in the
    first ``calls`` runs, the operators in the others (each count apart, so that neither counts the other's
    machinery). Run it once before so that first-call work (imports, caches) is not counted. The previous trace
    function (a debugger's, coverage's) is restored after."""
    if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
        raise ValueError(f"calls must be an integer >= 1; got {calls!r}")
    opcodes: Counter[str] = Counter()
    places: dict[str, str] = {}

    def trace(frame, event, arg):
        filename = frame.f_code.co_filename
        place = places.get(filename)
        if place is None:
            place = places[filename] = _place(filename)
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False

        def per_instruction(frame, event, arg):
            if event == "opcode":
                opcodes[place] += 1
            return per_instruction

        return per_instruction

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        for _ in range(calls):
            call()
    finally:
        sys.settrace(previous)
    operators = _OperatorCount()
    with operators:
        for _ in range(calls):
            call()
    return Work(operators.count / calls, {place: opcodes[place] / calls for place in PLACES})
