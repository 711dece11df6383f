"""``python -m lab COMMAND [ARGS]``: the lab's entry point, one subcommand per tool (see :mod:`lab`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

#: Subcommand -> (module holding ``main(argv) -> int``, one-line description). Modules import on use, so
#: ``python -m lab --help`` does not load torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lab.train", "train the toy image and video models (writes visattn/toy/weights by default)"),
    "colour-swaps": ("lab.colour_swaps", "two image models' Prompt-to-Prompt colour swaps side by side, with IoUs"),
}


def _usage() -> str:
    lines = ["usage: python -m lab COMMAND [ARGS]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<14}{description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the subcommand named by ``argv[0]`` with the rest of ``argv``; returns its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"python -m lab: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command: Callable[[list[str]], int] = import_module(COMMANDS[args[0]][0]).main
    return command(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
