"""``visattn demo``: the Gradio editing demo (:mod:`visattn.app`), served on the loopback interface by default.

Loads the model first, so an unknown model id or folder ends the command with a one-line message (exit status
2) instead of starting a server that cannot generate. Weights load from safetensors only unless ``--allow-pickle``
(a pickle can run code when loaded). Needs the ``app`` extra (``pip install "visattn[app]"``).

Exposure: ``--host`` other than a loopback address (or ``--share``) serves the demo to other machines; the command
then prints a warning, and ``--auth USER:PASSWORD`` (or the :data:`AUTH_ENV` environment variable, which keeps the
password out of the process list) puts Gradio's login page in front of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys

from ..generate import ALLOW_PICKLE_HELP, DEVICES, DTYPES, ParameterError, UsageError, check_positive_int
from . import MODEL_HELP

#: environment variable read for ``USER:PASSWORD`` when ``--auth`` is not given
AUTH_ENV = "VISATTN_DEMO_AUTH"
#: Printed under the local URL instead of Gradio's "set `share=True` in `launch()`", which a CLI user cannot do.
SHARE_HINT = "To create a public link, run visattn demo --share (add --auth USER:PASSWORD to require a login)."


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


def parse_auth(text: str, name: str = "--auth") -> tuple[str, str]:
    """``(user, password)`` from ``USER:PASSWORD`` (split at the first colon: passwords may contain colons).

    Raises:
        ValueError: no colon, or an empty user or password; the message names ``name`` but not the password.
    """
    user, colon, password = text.partition(":")
    if not colon or not user.strip() or not password:
        raise ValueError(f"{name} must be USER:PASSWORD with a non-empty user and password (value not shown)")
    return user.strip(), password


def _auth(text: str) -> tuple[str, str]:
    try:
        return parse_auth(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--auth ")) from None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost, or 0.0.0.0-style wildcards written otherwise
        return False


def exposure_warnings(host: str, share: bool, auth: tuple[str, str] | None) -> list[str]:
    """What to tell the operator before serving: who can reach the demo, and what protects it."""
    warnings = []
    if not is_loopback(host):
        reach = "every machine that can reach this one" if host in ("0.0.0.0", "::", "") else f"the network of {host}"
        warnings.append(
            f"--host {host} serves the demo to {reach}, not only to this machine"
            + ("; anyone who reaches it can run generations: add --auth USER:PASSWORD" if auth is None else "")
            + " (Gradio serves plain HTTP: use TLS in front of it on networks you do not trust)"
        )
    if share and auth is None:
        warnings.append("--share opens a public gradio.live link without a login: add --auth USER:PASSWORD")
    return warnings


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``visattn demo``."""
    demo = commands.add_parser(
        "demo",
        help="the Gradio editing demo in your browser (needs visattn[app])",
        description="Serve the editing demo: Prompt-to-Prompt edits (swap, refine, re-weight, local blend with its "
        "threshold, cross/self replace steps) with a labelled sheet of per-word attention maps, PAG/SoftPAG "
        "guidance on chosen layers or saved head sets, sparse attention, extrapolation beyond the native size, and "
        "editing of uploaded images through inversion (DDIM by default, as visattn edit); results download as PNGs "
        "that carry their parameters. Binds the loopback interface "
        "unless --host says otherwise; no public link unless --share. Without --model, uses the embedded default "
        "visattn/toy-image (a small model trained on captioned shapes).",
    )
    demo.add_argument("--model", metavar="ID_OR_DIR", help=MODEL_HELP)
    demo.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    demo.add_argument("--port", type=_port, help="TCP port (default: the first free one from 7860)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    demo.add_argument(
        "--auth",
        type=_auth,
        metavar="USER:PASSWORD",
        help=f"require this login (Gradio's login page); default: ${AUTH_ENV} when set, else no login. Use the "
        "environment variable to keep the password out of the process list",
    )
    demo.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
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
    auth = args.auth
    if auth is None and os.environ.get(AUTH_ENV):
        try:
            auth = parse_auth(os.environ[AUTH_ENV], AUTH_ENV)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for warning in exposure_warnings(args.host, args.share, auth):
        print(f"visattn demo: warning: {warning}", file=sys.stderr)
    from ..app.handlers import DemoEngine
    from ..app.ui import launch
    from ..defaults import DEFAULT_MODEL
    from ..generate import check_dtype, load_pipeline, resolve_device

    name = args.model or DEFAULT_MODEL
    print(f"visattn demo: loading {name} ...", file=sys.stderr)
    # Loaded here rather than by the engine so that --allow-pickle reaches the loader; a failure is a UsageError.
    pipeline = load_pipeline(
        args.model, resolve_device(args.device), check_dtype(args.dtype), allow_pickle=args.allow_pickle
    )
    engine = DemoEngine(name, pipeline=pipeline, device=args.device, dtype=args.dtype)
    launch(
        engine,
        host=args.host,
        port=args.port,
        share=args.share,
        concurrency=args.concurrency,
        auth=auth,
        share_hint=SHARE_HINT,
    )
    return 0
