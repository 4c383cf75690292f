"""Checking the options of suites, models and metrics: unknown keys and typed values.

Options arrive from the command line (``--model-opt steps=25`` parsed by
:func:`evalkit.spec.parse_value`), from model cards and from Python callers. Every check
raises :class:`~evalkit.errors.UsageError` naming the component, the option and what is
wrong, before any work starts. Booleans are never accepted as numbers (``True`` is an
``int`` in Python, and ``steps=true`` is a typo, not 1).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from evalkit.errors import UsageError


def check_known(options: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """UsageError listing every key of ``options`` not in ``known``, with the nearest names."""
    known = sorted(known)
    unknown = sorted(set(options) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hints.append(f"{key!r} → {close[0]!r}?")
    hint = f" Did you mean: {', '.join(hints)}" if hints else ""
    raise UsageError(
        f"{where}: unknown option(s) {', '.join(unknown)}.{hint} Known: {', '.join(known) or '(none)'}"
    )


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" ≥ {minimum}"
    if maximum is not None:
        return f" ≤ {maximum}"
    return ""


def as_int(
    value: Any,
    name: str,
    where: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as an int within the bounds; floats, strings and booleans are refused.

    Any integral number (``int``, ``numpy.int64``) is accepted and returned as an ``int``.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    raise UsageError(
        f"{where}: option {name} must be an integer{_bounds(minimum, maximum)}, got {value!r}"
    )


def as_float(
    value: Any,
    name: str,
    where: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite float within the bounds (ints accepted; strings and booleans refused)."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return float(value)
    raise UsageError(
        f"{where}: option {name} must be a number{_bounds(minimum, maximum)}, got {value!r}"
    )


def as_bool(value: Any, name: str, where: str) -> bool:
    """``value`` as a bool (``true``/``false`` on the command line); anything else is refused."""
    if isinstance(value, bool):
        return value
    raise UsageError(f"{where}: option {name} must be true or false, got {value!r}")


def as_choice(value: Any, choices: Collection[str], name: str, where: str) -> str:
    """``value`` if it is one of ``choices``, else UsageError listing them."""
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(
        f"{where}: option {name} must be one of {', '.join(choices)}, got {value!r}.{hint}"
    )
