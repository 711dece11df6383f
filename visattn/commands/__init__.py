"""Subcommands of the ``visattn`` command line beyond ``info`` and ``generate``, one module each.

A command module defines ``add_parser(commands)``: it adds its subparser to argparse's subparsers object and
sets ``run`` (``args -> exit status``) as the parser default. Modules must import heavy libraries inside ``run``
so that ``visattn --help`` stays fast. Raise :class:`visattn.generate.UsageError` for bad requests: the command
line prints it on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def checked_type(convert: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts the text, then applies a :mod:`visattn.generate` check.

    Both failures end up as one argparse error: ``argument --steps: invalid value 0: must be a positive integer``.
    """
    from ..generate import ParameterError

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = text  # not even a number: let the check reject it with the rule it enforces
        try:
            return check(value)
        except ParameterError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {exc.value!r}: {exc.allowed}") from None

    return parse


#: ``--model`` help of every command that loads a pipeline (names: :data:`visattn.defaults.EMBEDDED_MODELS`).
MODEL_HELP = (
    "diffusers model id, local pipeline folder, or a pipeline shipped with visattn: visattn/toy-image (the default), "
    "visattn/toy-video, visattn/tiny-sd (random weights, fastest)"
)


#: command modules in the order ``visattn --help`` lists them
COMMAND_MODULES: tuple[str, ...] = ("edit", "bench", "hunt", "batch", "demo", "eval")
