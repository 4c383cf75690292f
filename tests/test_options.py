"""Options: the helpers of :mod:`evalkit.options`, and every built-in suite and metric factory
refusing an unknown option (with a did-you-mean) and ``True`` for an integer option."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalkit.errors import UsageError
from evalkit.metrics.base import MetricContext
from evalkit.options import as_bool, as_choice, as_float, as_int, check_known
from evalkit.registry import METRICS, SUITES, Registry
from evalkit.suites.shapes import ShapesSuite

#: an integer option of every built-in factory; None where the factory has none. A new
#: built-in must be added here (test_every_builtin_is_listed), so it is covered below.
INTEGER_OPTION: dict[str, dict[str, str | None]] = {
    "suites": {
        "coco": "num_samples",
        "shapes": "num_items",
        "drawbench": None,
        "csv": None,
        "jsonl": None,
    },
    "metrics": {
        "fid": "bootstrap",
        "kid": "subsets",
        "is": "splits",
        "prc": "k",
        "density_coverage": "k",
        "cmmd": None,
        "fd_dinov2": None,
        "clip_score": "batch_size",
        "shapes_accuracy": "max_verdicts",
    },
}
KINDS = {"suites": SUITES, "metrics": METRICS}


def _builtins(registry: Registry) -> list[str]:
    """evalkit's own entries (lazy ``evalkit.…`` targets; not the tests' or plugins' entries)."""
    return [
        name
        for name, entry in registry.entries().items()
        if isinstance(entry.target, str) and entry.target.startswith("evalkit.")
    ]


def _cases(with_integer: bool = False) -> list[tuple[str, str]]:
    out = []
    for kind, registry in KINDS.items():
        for name in _builtins(registry):
            if not with_integer or INTEGER_OPTION[kind].get(name):
                out.append((kind, name))
    return out


def _make(kind: str, name: str, options: dict[str, Any], cache: Path) -> Any:
    """Call the factory as the runner does; no weights or data are available, so a factory
    that does any work before checking its options fails with another error."""
    factory = KINDS[kind].get(name)
    if kind == "suites":
        return factory(options)
    context = MetricContext(suite=ShapesSuite(num_items=5), resolution=64, cache_dir=cache)
    return factory(options, context)


def _where(kind: str, name: str) -> str:
    return f"{kind[:-1]} {name!r}"


def test_every_builtin_is_listed() -> None:
    for kind, registry in KINDS.items():
        assert sorted(_builtins(registry)) == sorted(INTEGER_OPTION[kind]), (
            f"add the new built-in {kind} to INTEGER_OPTION"
        )


@pytest.mark.parametrize(("kind", "name"), _cases())
def test_factory_refuses_an_unknown_option_with_a_did_you_mean(
    kind: str, name: str, tmp_path: Path
) -> None:
    with pytest.raises(UsageError) as probe:
        _make(kind, name, {"zz_no_such_option": 1}, tmp_path)
    message = str(probe.value)
    assert message.startswith(f"{_where(kind, name)}: unknown option(s) zz_no_such_option.")
    known = re.search(r"Known: (.*)$", message)
    assert known, message
    target = max(known.group(1).split(", "), key=len)
    typo = target + "s"
    with pytest.raises(UsageError, match=re.escape(f"Did you mean: {typo!r} → ")):
        _make(kind, name, {typo: 1}, tmp_path)


@pytest.mark.parametrize(("kind", "name"), _cases(with_integer=True))
def test_factory_refuses_true_for_an_integer_option(kind: str, name: str, tmp_path: Path) -> None:
    key = INTEGER_OPTION[kind][name]
    expected = f"{_where(kind, name)}: option {key} must be an integer"
    with pytest.raises(UsageError, match=re.escape(expected) + r".*got True"):
        _make(kind, name, {key: True}, tmp_path)
    with pytest.raises(UsageError, match=re.escape(expected) + r".*got '2'"):
        _make(kind, name, {key: "2"}, tmp_path)


# --------------------------------------------------------------------------- the helpers


def test_check_known_lists_every_unknown_key_with_hints() -> None:
    check_known({"a": 1}, ("a", "b"), "w")
    with pytest.raises(UsageError) as err:
        check_known({"stpes": 1, "zzz": 2}, ("steps", "seed"), "model 'x'")
    assert str(err.value) == (
        "model 'x': unknown option(s) stpes, zzz. Did you mean: 'stpes' → 'steps'? "
        "Known: seed, steps"
    )


def test_as_int_refuses_bools_floats_text_and_out_of_range() -> None:
    assert as_int(3, "n", "w") == 3
    assert type(as_int(np.int64(3), "n", "w")) is int
    for bad in (True, np.bool_(False), 3.0, "3", None):
        with pytest.raises(UsageError, match="option n must be an integer, got"):
            as_int(bad, "n", "w")
    with pytest.raises(UsageError, match=r"option n must be an integer in \[1, 5\], got 6"):
        as_int(6, "n", "w", minimum=1, maximum=5)
    with pytest.raises(UsageError, match="option n must be an integer ≥ 0, got -1"):
        as_int(-1, "n", "w", minimum=0)


def test_as_float_accepts_ints_and_refuses_bools_text_and_non_finite() -> None:
    assert as_float(2, "x", "w") == 2.0 and as_float(np.float32(0.5), "x", "w") == 0.5
    for bad in (True, "1.5", float("nan"), float("inf"), None):
        with pytest.raises(UsageError, match="option x must be a number, got"):
            as_float(bad, "x", "w")
    with pytest.raises(UsageError, match="option x must be a number ≤ 1, got 2"):
        as_float(2, "x", "w", maximum=1)


def test_as_bool_and_as_choice() -> None:
    assert as_bool(False, "b", "w") is False
    for bad in (0, 1, "true", None):
        with pytest.raises(UsageError, match="option b must be true or false"):
            as_bool(bad, "b", "w")
    assert as_choice("tf1", ("tf1", "clean"), "resize", "w") == "tf1"
    with pytest.raises(
        UsageError, match="must be one of tf1, clean, got 'claen'. Did you mean 'clean'"
    ):
        as_choice("claen", ("tf1", "clean"), "resize", "w")
