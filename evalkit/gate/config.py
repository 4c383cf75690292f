"""The gate's per-metric settings (``evalkit-gate.toml``) and their documented defaults.

```toml
[defaults]                       # apply to every metric unless overridden
confidence = 0.95                # two-sided interval of the change
resamples = 2000                 # bootstrap resamples (set-level metrics: set_resamples)
set_resamples = 200
min_samples = 10                 # fewer paired prompts/images: "cannot decide"
seed = 0
per_category = false             # also test each category (Bonferroni-corrected)

[metrics.clip_score]
max_degradation = 0.005          # absolute, in the metric's units
# max_relative_degradation = 0.01  (fraction of the baseline value; give one of the two)
direction = "higher"             # default: from the results (evalkit.results.metric_direction)
kind = "prompt"                  # "prompt" (per-item scores) or "set" (needs per-image features)
gate = true                      # false: reported, never fails the gate
```
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evalkit.errors import InputError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Allowed degradation per built-in metric when the config names none: (kind, amount).
#: "abs" is in the metric's own units, "rel" a fraction of the baseline value.
DEFAULT_ALLOWED: dict[str, tuple[str, float]] = {
    "clip_score": ("abs", 0.005),  # raw cosine: 0.5 on the ×100 scale
    "shapes_accuracy": ("abs", 0.02),  # two percentage points
    "fid": ("rel", 0.05),
    "kid": ("rel", 0.10),
    "is": ("rel", 0.05),
}
#: for any other metric
FALLBACK_ALLOWED: tuple[str, float] = ("rel", 0.02)

#: metrics known to be one number over a set of images (no per-item scores exist)
SET_LEVEL = frozenset(
    {
        "fid",
        "kid",
        "is",
        "cmmd",
        "fd_dinov2",
        "prc",
        "precision",
        "recall",
        "density_coverage",
        "density",
        "coverage",
        "clip_fid",
    }  # fmt: skip
)

_METRIC_KEYS = {
    "max_degradation",
    "max_relative_degradation",
    "direction",
    "confidence",
    "min_samples",
    "resamples",
    "set_resamples",
    "seed",
    "per_category",
    "kind",
    "gate",
}
_DEFAULT_KEYS = {"confidence", "min_samples", "resamples", "set_resamples", "seed", "per_category"}


@dataclass(frozen=True)
class MetricRule:
    """How one metric is gated."""

    allowed_kind: str = "rel"
    allowed: float = 0.02
    direction: str | None = None
    confidence: float = 0.95
    min_samples: int = 10
    resamples: int = 2000
    set_resamples: int = 200
    seed: int = 0
    per_category: bool = False
    kind: str | None = None
    gate: bool = True

    def allowed_degradation(self, baseline: float) -> float:
        """The allowed degradation in the metric's units, for this baseline value."""
        return self.allowed if self.allowed_kind == "abs" else self.allowed * abs(baseline)

    def describe_allowed(self) -> str:
        """``0.005`` or ``5%`` for tables."""
        if self.allowed_kind == "abs":
            return f"{self.allowed:g}"
        return f"{self.allowed * 100:g}%"


@dataclass(frozen=True)
class GateConfig:
    """Defaults plus per-metric overrides."""

    defaults: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "(built-in defaults)"

    def rule(self, name: str) -> MetricRule:
        """The rule for metric ``name``: built-in default, then [defaults], then [metrics.NAME]."""
        kind, amount = DEFAULT_ALLOWED.get(name, FALLBACK_ALLOWED)
        rule = replace(MetricRule(allowed_kind=kind, allowed=amount), **self.defaults)
        own = dict(self.metrics.get(name, {}))
        if "max_degradation" in own:
            rule = replace(rule, allowed_kind="abs", allowed=float(own.pop("max_degradation")))
        if "max_relative_degradation" in own:
            rule = replace(
                rule, allowed_kind="rel", allowed=float(own.pop("max_relative_degradation"))
            )
        return replace(rule, **own)


def _check(table: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(f"{where}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    out = dict(table)
    if "confidence" in out and not (
        isinstance(out["confidence"], float) and 0.5 <= out["confidence"] < 1.0
    ):
        raise InputError(
            f"{where}.confidence: expected a number in [0.5, 1), got {out['confidence']!r}"
        )
    for key in ("min_samples", "resamples", "set_resamples", "seed"):
        if key in out and (
            isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 0
        ):
            raise InputError(f"{where}.{key}: expected a non-negative integer, got {out[key]!r}")
    for key in ("resamples", "set_resamples"):
        if key in out and out[key] < 100:
            raise InputError(f"{where}.{key}: at least 100 resamples, got {out[key]}")
    for key in ("max_degradation", "max_relative_degradation"):
        if key in out and (
            isinstance(out[key], bool) or not isinstance(out[key], (int, float)) or out[key] < 0
        ):
            raise InputError(f"{where}.{key}: expected a non-negative number, got {out[key]!r}")
    if "max_degradation" in out and "max_relative_degradation" in out:
        raise InputError(f"{where}: give max_degradation or max_relative_degradation, not both")
    if "direction" in out and out["direction"] not in ("lower", "higher"):
        raise InputError(
            f'{where}.direction: expected "lower" or "higher", got {out["direction"]!r}'
        )
    if "kind" in out and out["kind"] not in ("prompt", "set"):
        raise InputError(f'{where}.kind: expected "prompt" or "set", got {out["kind"]!r}')
    for key in ("per_category", "gate"):
        if key in out and not isinstance(out[key], bool):
            raise InputError(f"{where}.{key}: expected true or false, got {out[key]!r}")
    return out


def parse_config(data: dict[str, Any], source: str = "config") -> GateConfig:
    """A :class:`GateConfig` from a parsed TOML table; unknown keys and bad values are errors."""
    unknown = sorted(set(data) - {"defaults", "metrics"})
    if unknown:
        raise InputError(
            f"{source}: unknown table(s) {', '.join(unknown)}; expected [defaults] and [metrics.NAME]"
        )
    defaults = _check(data.get("defaults", {}), _DEFAULT_KEYS, f"{source}: defaults")
    metrics_table = data.get("metrics", {})
    if not isinstance(metrics_table, dict):
        raise InputError(f"{source}: metrics: expected [metrics.NAME] tables")
    metrics = {
        name: _check(t, _METRIC_KEYS, f"{source}: metrics.{name}")
        for name, t in metrics_table.items()
    }
    return GateConfig(defaults, metrics, source)


def load_config(path: str | Path | None) -> GateConfig:
    """Read ``evalkit-gate.toml``; ``None`` gives the built-in defaults."""
    if path is None:
        return GateConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {p}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, str(p))
