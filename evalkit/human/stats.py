"""Preference proportions with intervals from a clustered bootstrap over prompts.

Votes of one prompt are not independent (same images, often the same raters), so the
bootstrap resamples prompts with replacement and keeps all votes of each drawn prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
OUTCOMES = ("A", "tie", "B")  # in pair orientation: A = the pair's run a preferred


def cluster_bootstrap(
    counts: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``statistic`` over resampled clusters.

    ``counts`` is (n_clusters, ...) per-cluster sufficient statistics that add up; each
    resample sums the drawn clusters and ``statistic`` maps the (R, ...) sums to (R, m).
    Returns (low, high) arrays of length m; resamples where a statistic is NaN are ignored.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[0]
    if n == 0:
        raise ValueError("cluster_bootstrap needs at least one cluster")
    rng = np.random.Generator(np.random.PCG64(seed))
    flat = counts.reshape(n, -1)
    sums = np.empty((n_resamples, flat.shape[1]))
    chunk = max(1, 20_000_000 // max(1, n * flat.shape[1]))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)
        sums[start:stop] = weights @ flat
    stats = np.asarray(statistic(sums.reshape((n_resamples, *counts.shape[1:]))), dtype=np.float64)
    stats = stats.reshape(n_resamples, -1)
    alpha = (1.0 - confidence) / 2.0
    lo = np.nanquantile(stats, alpha, axis=0)
    hi = np.nanquantile(stats, 1.0 - alpha, axis=0)
    return lo, hi


def _proportions(sums: np.ndarray) -> np.ndarray:
    total = sums.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = sums / total
        win = (sums[..., 0] + 0.5 * sums[..., 1]) / total[..., 0]
    return np.concatenate([p, win[..., None]], axis=-1)


def preference_stats(
    counts: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """P(A), P(tie), P(B) and the tie-as-half win rate of A, each with a 95% interval.

    ``counts`` is (n_items, 3): votes per item for A, tie, B.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    counts = counts[counts.sum(axis=1) > 0]
    if counts.shape[0] == 0:
        return {"n_votes": 0, "n_items": 0}
    point = _proportions(counts.sum(axis=0))
    lo, hi = cluster_bootstrap(counts, _proportions, n_resamples=n_resamples, seed=seed)
    names = ("p_a", "p_tie", "p_b", "win_rate_a")
    out: dict[str, Any] = {"n_votes": int(counts.sum()), "n_items": int(counts.shape[0])}
    for k, name in enumerate(names):
        out[name] = float(point[k])
        out[f"{name}_ci"] = [float(lo[k]), float(hi[k])]
    out["counts"] = {o: int(c) for o, c in zip(OUTCOMES, counts.sum(axis=0), strict=True)}
    return out


def outcome_of(vote: Mapping[str, Any], a: str, b: str) -> int:
    """Index into OUTCOMES of a vote in pair orientation (0 = a preferred, 1 = tie, 2 = b)."""
    pref = vote["preferred"]
    if pref is None:
        return 1
    if pref == a:
        return 0
    if pref == b:
        return 2
    raise ValueError(f"vote prefers {pref!r}, which is neither {a!r} nor {b!r}")


def count_table(
    votes: Iterable[Mapping[str, Any]], items: Sequence[str], a: str, b: str
) -> np.ndarray:
    """(len(items), 3) vote counts per item for A, tie, B."""
    index = {item: i for i, item in enumerate(items)}
    table = np.zeros((len(items), 3), dtype=np.int64)
    for v in votes:
        i = index.get(v["item_id"])
        if i is not None:
            table[i, outcome_of(v, a, b)] += 1
    return table


def per_category_stats(
    table: np.ndarray,
    items: Sequence[str],
    categories: Mapping[str, str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``preference_stats`` per category (items of a category only)."""
    out = {}
    for cat in sorted({categories[i] for i in items}):
        rows = [k for k, i in enumerate(items) if categories[i] == cat]
        out[cat] = preference_stats(table[rows], n_resamples=n_resamples, seed=seed)
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))
