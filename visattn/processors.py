"""The former name of :mod:`visattn.effects`, kept so that existing ``from visattn.processors import ...`` code runs.

New code imports effects from :mod:`visattn` or :mod:`visattn.effects`.
"""

from __future__ import annotations

from ._lazy import lazy_exports
from .effects import _EXPORTS as _EFFECTS

_EXPORTS = dict.fromkeys(_EFFECTS, "visattn.effects")

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
