"""Lazy package exports: public names resolve to their modules on first use.

Light entry points (``visattn --version``, ``visattn --help``) must not pay for importing diffusers, transformers
or every effect; each package maps its public names to the module that defines them and imports on access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str], extra: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` resolving ``exports`` (name -> relative module) lazily.

    A resolved name is stored in the package's ``namespace`` so later lookups are plain attribute reads.
    ``extra`` lists eagerly defined public names that ``dir()`` should show too.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*exports, *extra, *(k for k in namespace if not k.startswith("_"))})

    return __getattr__, __dir__
