"""The package's three houses (issue 25): the installed library and its apps, the lab, and the test scaffolding.

Read from the source with :mod:`ast`, so a late import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "visattn"

#: the apps a user runs, installed beside the library; the library never imports them
APPS = (
    "visattn.app",
    "visattn.batch",
    "visattn.bench",
    "visattn.cli",
    "visattn.commands",
    "visattn.defaults",
    "visattn.edit",
    "visattn.effect_specs",
    "visattn.eval",
    "visattn.charts",
    "visattn.frames",
    "visattn.generate",
    "visattn.images",
    "visattn.info",
)

#: what stays in the repository and is never installed
NOT_INSTALLED = ("tests", "harness", "helpers", "conftest", "lab", "pytest")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, relative imports resolved, with ``from m import n`` giving ``m.n`` too."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("name", MODULES)
def test_nothing_installed_imports_the_tests_the_lab_or_pytest(name):
    leaks = sorted(target for target in _imports(MODULES[name]) if _is_under(target, NOT_INSTALLED))
    assert not leaks, f"{name} imports {leaks}, which are not installed"


def test_the_library_never_imports_an_app():
    library = [name for name in MODULES if not _is_under(name, APPS)]
    assert "visattn.attachment" in library and "visattn.tiny" in library
    upward = {name: sorted(target for target in _imports(MODULES[name]) if _is_under(target, APPS)) for name in library}
    upward = {name: targets for name, targets in upward.items() if targets}
    assert not upward, f"library modules import apps: {upward}"


def test_every_app_named_here_exists():
    # a renamed app would silently drop out of the check above
    for app in APPS:
        assert app in MODULES, f"{app} is listed as an app but is not a module of the package"


def test_the_former_test_scaffolding_name_is_gone():
    assert "visattn.testing" not in MODULES
    assert not any(_is_under(name, ("visattn.testing",)) for name in MODULES)
