"""Tiny instances of every diffusers text-to-image and text-to-video denoiser class visattn covers.

``TINY_DENOISERS`` joins the per-kind tables (:mod:`.images`, :mod:`.videos`, :mod:`.unets`); each entry builds a
seeded model from a config and its forward inputs, offline. ``visattn bench --dispatch`` times visattn on them; the
repository's coverage checks (``tests/harness/coverage_checks.py``, not installed) measure every effect on each and
write docs/models.md.
"""

from __future__ import annotations

from visattn.tiny.denoisers.denoiser_spec import TinyDenoiser


def _tables() -> tuple[TinyDenoiser, ...]:
    from visattn.tiny.denoisers import unets

    entries = list(unets.TINY_DENOISERS)
    for name in ("images", "videos"):
        try:
            module = __import__(f"visattn.tiny.denoisers.{name}", fromlist=["TINY_DENOISERS"])
        except ImportError:
            continue
        entries.extend(module.TINY_DENOISERS)
    return tuple(entries)


TINY_DENOISERS: tuple[TinyDenoiser, ...] = _tables()

__all__ = ["TINY_DENOISERS", "TinyDenoiser", "tiny_denoiser_entry"]


def tiny_denoiser_entry(class_name: str) -> TinyDenoiser:
    """The entry of one class; ValueError listing the covered classes otherwise."""
    for entry in TINY_DENOISERS:
        if entry.class_name == class_name:
            return entry
    raise ValueError(f"no tiny {class_name}; covered: {', '.join(e.class_name for e in TINY_DENOISERS)}")
