"""Attention backends: one file each, interchangeable behind :func:`visattn.kernels.attention`.

Every backend module exposes ``NAME``, ``availability() -> (bool, reason)``, ``supports(request) -> bool`` and
``run(request) -> (out, lse | None)``.
"""
