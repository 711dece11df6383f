"""``visattn demo``: the Gradio editing demo (:mod:`visattn.app`), served on the loopback interface by default.

Loads the model first, so an unknown model id or folder ends the command with a one-line message (exit status
2) instead of starting a server that cannot generate. Needs the ``app`` extra (``pip install "visattn[app]"``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ..generate import DEVICES, DTYPES, ParameterError, UsageError, check_positive_int
from . import MODEL_HELP


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a TCP port from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: must be a TCP port from 1 to 65535")
    return value


def _concurrency(text: str) -> int:
    try:
        return check_positive_int("concurrency", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a positive integer (1 or more)") from None
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(f"invalid value {exc.value!r}: {exc.allowed}") from None


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``visattn demo``."""
    demo = commands.add_parser(
        "demo",
        help="the Gradio editing demo in your browser (needs visattn[app])",
        description="Serve the editing demo: Prompt-to-Prompt edits (swap, refine, re-weight, local blend) with "
        "per-word attention maps, PAG/SoftPAG guidance with saved head sets, sparse attention, extrapolation "
        "beyond the native size, and editing of uploaded images through inversion. Binds the loopback interface "
        "unless --host says otherwise; no public link unless --share. Without --model, uses the embedded default "
        "visattn/toy-image (a small model trained on captioned shapes).",
    )
    demo.add_argument("--model", metavar="ID_OR_DIR", help=MODEL_HELP)
    demo.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    demo.add_argument("--port", type=_port, help="TCP port (default: the first free one from 7860)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    demo.add_argument(
        "--concurrency", type=_concurrency, default=1, help="generations run at once; others queue (default: 1)"
    )
    demo.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda when available, else cpu")
    demo.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights dtype (default: fp32)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo runs offline and reports nothing
    if importlib.util.find_spec("gradio") is None:  # checked without importing it: Gradio takes seconds to load
        raise UsageError("the demo needs Gradio, which is not installed; install it with: pip install 'visattn[app]'")
    from ..app.handlers import DemoEngine, DemoError
    from ..app.ui import launch

    engine = DemoEngine(args.model, device=args.device, dtype=args.dtype)
    print(f"visattn demo: loading {engine.model_name} ...", file=sys.stderr)
    try:
        engine.pipeline()
    except DemoError as exc:
        raise UsageError(str(exc)) from None
    launch(engine, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency)
    return 0
