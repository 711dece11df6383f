"""Test scaffolding that is not installed with visattn: the coverage checks and table (``coverage_checks``,
``coverage_table``: ``python -m tests.harness.coverage_table`` writes docs/models.md) and the multi-process harness
of the context-parallel tests (``parallel``).

The tests import it as ``harness`` (pytest puts ``tests/`` on ``sys.path`` for ``tests/conftest.py``); the tiny
models it exercises are the installed :mod:`visattn.tiny`.
"""
