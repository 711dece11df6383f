"""Where a warning should point: the user's line, not visattn's or diffusers' internals.

visattn warns from deep inside a model's forward (hooks on the denoiser and its attention modules), so a fixed
``stacklevel`` lands on a frame of diffusers or torch, which depends on how the model was called. Walking the
stack to the first frame outside these packages names the line of the user's own code that ran the model.
(Python 3.12's ``warnings.warn(skip_file_prefixes=...)`` does this; visattn still supports 3.10 and 3.11.)
"""

from __future__ import annotations

import os
import sys
from functools import cache


@cache
def _internal_prefixes() -> tuple[str, ...]:
    import diffusers
    import torch

    import visattn

    prefixes = [os.path.dirname(module.__file__) + os.sep for module in (visattn, diffusers, torch)]
    for name in ("accelerate", "transformers"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            prefixes.append(os.path.dirname(module.__file__) + os.sep)
    # contextlib and functools frames sit between a hook and the code that called the model
    prefixes.append(os.path.dirname(os.__file__) + os.sep)
    return tuple(prefixes)


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by the caller of this function that points at the first
    frame outside visattn, diffusers, torch (and accelerate, transformers, the standard library)."""
    frame = sys._getframe(1)  # the function about to call warnings.warn: stacklevel 1
    level = 1
    prefixes = _internal_prefixes()
    while frame.f_back is not None and frame.f_code.co_filename.startswith(prefixes):
        frame = frame.f_back
        level += 1
    return level
