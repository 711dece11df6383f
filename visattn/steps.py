"""Step ranges: which part of the denoising schedule an attach or an effect is active in."""

from __future__ import annotations


def normalize_steps(steps, parameter: str = "steps") -> tuple[float, float] | None:
    """``None`` (every step) or a ``(start, stop)`` fraction range with ``0 <= start < stop <= 1``.

    A single number ``f`` means ``(0, f)``: the first fraction ``f`` of the schedule.
    """
    if steps is None:
        return None
    given = steps  # quoted in errors as the user wrote it
    if isinstance(steps, (int, float)) and not isinstance(steps, bool):
        steps = (0.0, float(steps))
    try:
        start, stop = (float(x) for x in steps)
    except (TypeError, ValueError):
        raise ValueError(f"{parameter} must be a fraction or a (start, stop) fraction range; got {given!r}") from None
    if not (0.0 <= start < stop <= 1.0):
        raise ValueError(
            f"{parameter}={given!r} must be a fraction in (0, 1] or a (start, stop) range with "
            "0 <= start < stop <= 1 (fractions of the schedule)"
        )
    return (start, stop)


def in_steps(steps: tuple[float, float] | None, fraction: float | None) -> bool:
    """Whether a step at ``fraction`` of the schedule lies in ``steps`` (unknown schedule: only if unrestricted,
    ``None`` or the whole schedule ``(0, 1)``)."""
    if steps is None or (steps[0] <= 0.0 and steps[1] >= 1.0):
        return True
    if fraction is None:
        return False
    start, stop = steps
    return start <= fraction < stop or (stop >= 1.0 and fraction >= start)
