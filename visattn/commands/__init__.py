"""Subcommands of the ``visattn`` command line beyond ``info`` and ``generate``, one module each.

A command module defines ``add_parser(commands)``: it adds its subparser to argparse's subparsers object and
sets ``run`` (``args -> exit status``) as the parser default. Modules must import heavy libraries inside ``run``
so that ``visattn --help`` stays fast. Raise :class:`visattn.generate.UsageError` for bad requests: the command
line prints it on one line and exits with status 2.
"""

#: command modules in the order ``visattn --help`` lists them
COMMAND_MODULES: tuple[str, ...] = ("edit", "bench", "hunt", "batch", "demo", "eval")
