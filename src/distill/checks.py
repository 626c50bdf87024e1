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


# ---------------------------------------------------------------- numeric command-line flags
# One regime for every command and experiment: a numeric flag is read as text and checked after
# parsing by the rules above, so that ``nan``, ``inf``, ``1e23`` for an integer and the like are
# one-line errors naming the flag.

def add_number_flag(parser, flag: str, default=None, help: str | None = None, nargs=None, **rules) -> None:
    """Add a numeric ``flag`` to an argparse ``parser``, checked by :func:`check_number_flags` with
    ``rules`` (``integer``, ``minimum``, ``maximum``, ``positive``, ``below``: an exclusive upper bound)."""
    # the rules live among the parser's defaults, which an argument group shares with its parser
    numbers = parser._defaults.setdefault("_numbers", {})
    numbers[flag.lstrip("-").replace("-", "_")] = (flag, rules)
    kw = dict(default=default, help=help, metavar="N" if rules.get("integer") else "X")
    if nargs is not None:
        kw["nargs"] = nargs
    parser.add_argument(flag, **kw)


def number_flag_value(flag: str, value, rules: dict):
    """``value`` (text or a number) as the number ``rules`` allow, else a ValueError naming ``flag``."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{flag} must be a number, got {value!r}") from None
    v = check_number(flag, value, minimum=rules.get("minimum"), maximum=rules.get("maximum"),
                     positive=rules.get("positive", False),
                     integer=rules.get("integer", False))
    if "below" in rules and not v < rules["below"]:
        raise ValueError(f"{flag} must be < {rules['below']:g}, got {value!r}")
    return v


def check_number_flags(args) -> None:
    """Check and convert every numeric flag of a parsed command (a ValueError naming the flag)."""
    for dest, (flag, rules) in vars(args).pop("_numbers", {}).items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, list):
            setattr(args, dest, [number_flag_value(flag, v, rules) for v in value])
        else:
            setattr(args, dest, number_flag_value(flag, value, rules))


# ---------------------------------------------------------------- names: lists and suggestions

#: a list of names in a message shows them all up to this many, else the first ones and how many more
SHOW_NAMES = 40


def show_names(names, k: int = SHOW_NAMES, quote: bool = False) -> str:
    """``names`` for a one-line message: all of them when there are at most ``k``, else the first
    ``k`` and ``"and N more"`` (never a list that silently stops)."""
    names = [repr(str(n)) if quote else str(n) for n in names]
    if len(names) <= k:
        return ", ".join(names)
    return ", ".join(names[:k]) + f", and {len(names) - k} more"


def did_you_mean(word: str, candidates, cutoff: float = 0.6) -> str | None:
    """The candidate ``word`` was probably meant to be: the one equal to it ignoring case, else the
    closest by :func:`difflib.get_close_matches` (None when none is close)."""
    import difflib

    candidates = [str(c) for c in candidates]
    folded = [c for c in candidates if c.casefold() == str(word).casefold()]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(str(word), candidates, n=1, cutoff=cutoff)
    return close[0] if close else None
