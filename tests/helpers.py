"""Test-only effects and patterns that exercise the public extension points."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visattn.effects import AttentionCall, Effect
from visattn.kernels import Pattern, ScoreModifier


@dataclass(frozen=True)
class BandPattern(Pattern):
    """Keeps pairs whose indices differ by at most ``width`` (a 1-D sliding window)."""

    width: int

    def mask_mod(self, b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= self.width

    def cache_key(self):
        return ("band", self.width)


@dataclass(frozen=True)
class HeadScale(ScoreModifier):
    """Multiplies head ``h``'s logits by ``1 + h * step`` (depends on the head index)."""

    step: float

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return score * (1.0 + h * self.step)

    def cache_key(self):
        return ("head_scale", self.step)


class Probe(Effect):
    """Records every call context it sees and leaves the call unchanged."""

    roles = ("self", "cross", "joint", "text")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.contexts = []

    def apply(self, call: AttentionCall) -> None:
        self.contexts.append(call.ctx)


class Recorder(Effect):
    """Appends its name to a shared log on every call (checks composition order)."""

    def __init__(self, name: str, log: list, **kwargs):
        super().__init__(**kwargs)
        self.name, self.log = name, log

    def apply(self, call: AttentionCall) -> None:
        self.log.append(self.name)


class Boom(Effect):
    """Raises inside an attention call (checks that failures leave nothing half-applied)."""

    def apply(self, call: AttentionCall) -> None:
        raise RuntimeError("boom")


class ZeroOutput(Effect):
    """Replaces the attention output with zeros (an effect that visibly changes results)."""

    def apply(self, call: AttentionCall) -> None:
        call.output = torch.zeros_like(call.q[..., : call.v.shape[-1]])
