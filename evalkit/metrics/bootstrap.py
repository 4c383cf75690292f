"""Percentile-bootstrap 95% intervals over prompts, overall and per category.

Scores are first averaged per prompt (a prompt with K images is one unit), then
prompts are resampled with replacement: prompts, not images, are the independent
draws of a suite.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


def bootstrap_interval(
    values: np.ndarray | list[float],
    *,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` (default: mean) over resamples of ``values``.

    ``statistic`` receives a (n_resamples, n) array and returns (n_resamples,) values.
    One value gives a degenerate interval (the value itself).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_interval needs a non-empty 1-D array")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.Generator(np.random.PCG64(seed))
    stat = statistic or (lambda a: a.mean(axis=1))
    estimates = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, min(n_resamples, 50_000_000 // max(1, x.size)))  # bound memory
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        estimates[start:stop] = stat(x[idx])
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(estimates, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def per_unit_means(scores: Mapping[str, list[float]]) -> dict[str, float]:
    """Mean score per unit (prompt) from unit -> list of per-image scores."""
    return {unit: float(np.mean(v)) for unit, v in scores.items() if len(v)}


def summarize(
    per_item: Mapping[str, float],
    categories: Mapping[str, str | None],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, tuple[float, float], dict[str, dict[str, Any]] | None]:
    """Mean over items with its bootstrap interval, plus the same per category.

    Returns ``(value, interval, per_category)``; ``per_category`` is None when no item has
    a category.
    """
    ids = sorted(per_item)
    if not ids:
        raise ValueError("no scores to summarize")
    vals = np.array([per_item[i] for i in ids], dtype=np.float64)
    value = float(vals.mean())
    interval = bootstrap_interval(vals, n_resamples=n_resamples, seed=seed)
    groups: dict[str, list[float]] = defaultdict(list)
    for i in ids:
        cat = categories.get(i)
        if cat:
            groups[cat].append(per_item[i])
    if not groups:
        return value, interval, None
    per_category = {}
    for cat in sorted(groups):
        g = np.array(groups[cat], dtype=np.float64)
        lo, hi = bootstrap_interval(g, n_resamples=n_resamples, seed=seed)
        per_category[cat] = {"value": float(g.mean()), "interval": [lo, hi], "n": int(g.size)}
    return value, interval, per_category
