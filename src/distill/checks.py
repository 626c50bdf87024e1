"""Validation of numbers shared by the whole package: one place for the rules (finite, in
range, the right type) and their one-line messages."""
from __future__ import annotations

import math

import numpy as np

def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, integer: bool = False) -> float:
    """``value`` as a float (or int with ``integer``) after checking that it is a real number (not a
    bool or a string), finite, ``> 0`` with ``positive`` and ``>= minimum`` when given. Every numeric
    setting of the toolkit goes through here, so a bad one is a ``ValueError`` naming ``name``."""
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if v != int(v):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if abs(v) >= 2 ** 63:
            raise ValueError(f"{name} is too large, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return int(v) if integer else v


#: largest weight of a loss term (larger ones overflow float32 losses)
MAX_WEIGHT = 1e6
#: temperatures outside this range overflow or underflow ``z / T`` in float32
TEMPERATURE_RANGE = (1e-3, 1e6)


def check_temperature(temperature) -> float:
    """The one temperature validator: a real number in :data:`TEMPERATURE_RANGE` (bools and strings
    refused; outside the range ``z / T`` over- or underflows in float32)."""
    t = check_number("temperature", temperature, positive=True)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi:
        raise ValueError(f"temperature must lie in [{lo:g}, {hi:g}], got {temperature!r}")
    return t
