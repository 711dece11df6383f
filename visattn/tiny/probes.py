"""Probes for looking at what visattn sees on a model: a recorder of call contexts and a prompt with one word per
text position.

The benchmarks use them to choose the effects a tiny denoiser can carry, and the coverage checks to measure what
visattn found on each class; a user can attach :class:`ContextRecorder` to their own model the same way to list
the roles, grids and text spans of its attention calls.

>>> recorder = ContextRecorder()
>>> with visattn.attach(model, recorder):  # doctest: +SKIP
...     model(**inputs)
>>> {ctx.role for ctx in recorder.contexts}  # doctest: +SKIP
{'cross', 'self'}
"""

from __future__ import annotations

from typing import Any

from visattn.context import CallContext
from visattn.effects.base import AttentionCall, Effect
from visattn.words import PromptTokens


class ContextRecorder(Effect):
    """Observes every call it is attached to (its context) and changes nothing."""

    # Every role a call can have
    roles = ("self", "cross", "joint", "text", "stream")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.contexts: list[CallContext] = []

    def apply(self, call: AttentionCall) -> None:
        self.contexts.append(call.ctx)


def synthetic_prompt(length: int, swap: int | None = None) -> PromptTokens:
    """One word per text position, so every text token has a word to collect a map for.

    Args:
        length: the number of text positions (one word each, ``w0``, ``w1``, ...).
        swap: the position whose word is renamed (``x<swap>``), for a Prompt-to-Prompt target of the same length.
    """
    words = tuple(f"x{i}" if i == swap else f"w{i}" for i in range(length))
    return PromptTokens(" ".join(words), words, tuple((i,) for i in range(length)), (), length, family="")
