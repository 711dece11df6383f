"""One family vocabulary: the keys of :mod:`visattn.families`, and no module outside it keeps family keys of its own.

A module "keeps family keys of its own" when it writes them down: a table keyed by family (a dict literal with
family keys), a list of families (a tuple, list or set literal of family keys), or a branch on one (``family ==
"flux"``, ``family in ("sd", "sdxl")``). Such facts belong in the family records, where every module reads them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import visattn
from visattn.families import FAMILY_KEYS, PROMPT_FAMILIES, VIDEO_FAMILIES
from visattn.tiny import TINY_PIPELINES, VIDEO_PIPELINES, pipeline_spec

PACKAGE = Path(visattn.__file__).parent
# Keys the package used before its vocabulary became one; a module that still writes them keeps its own.
RETIRED_KEYS = {"sd", "sdxl", "hunyuan", "hunyuanvideo"}
SUSPECT = set(FAMILY_KEYS) | RETIRED_KEYS


def _family_strings(nodes) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in SUSPECT]


def family_key_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` for every table, list or branch of family keys in a module's syntax tree."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = _family_strings(k for k in node.keys if k is not None)
            if len(keys) >= 2:
                found.append((node.lineno, f"a table keyed by families {keys}"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            keys = _family_strings(node.elts)
            if len(keys) >= 2:
                found.append((node.lineno, f"a list of families {keys}"))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            keys = _family_strings(operands)
            if keys and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                found.append((node.lineno, f"a branch on family {keys}"))
    return found


def _modules_outside_families() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] != "families"]


def test_no_module_outside_families_keeps_family_keys_of_its_own():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in _modules_outside_families()
        for line, what in family_key_uses(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert not offenders, "family facts outside visattn/families:\n" + "\n".join(offenders)


def test_the_detector_catches_what_it_should():
    tree = ast.parse('A = {"sd": 1, "flux": 2}\nB = ("wan", "cogvideox")\nif f == "sd3": pass\nC = getattr(p, "unet")')
    assert [line for line, _ in family_key_uses(tree)] == [1, 2, 3]


def test_every_vocabulary_is_the_family_keys():
    assert set(PROMPT_FAMILIES) <= set(FAMILY_KEYS)
    assert set(VIDEO_FAMILIES) <= set(FAMILY_KEYS)
    for key in TINY_PIPELINES:
        spec = pipeline_spec(key)
        assert spec.family in FAMILY_KEYS
        # A family's default tiny pipeline is named by the family key, any other by its diffusers class.
        assert key == (spec.family if spec.default else spec.pipeline_cls.__name__)
    assert {pipeline_spec(k).family for k in VIDEO_PIPELINES} <= set(VIDEO_FAMILIES)


@pytest.mark.parametrize("key", TINY_PIPELINES)
def test_tiny_pipelines_answer_to_their_class_name_too(key):
    spec = pipeline_spec(key)
    assert pipeline_spec(spec.pipeline_cls.__name__) is spec
