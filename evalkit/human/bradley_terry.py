"""Bradley–Terry ratings on the Elo scale from pairwise votes (ties count half a win each way).

P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400)), R = 400 * coef + 1000, fitted by
maximum likelihood on the win matrix (damped Newton). A very weak ridge (``RIDGE`` times the squared
coefficients) keeps the estimate finite when one model wins every vote; with real data
it moves ratings by far less than their interval. Ratings are anchored so their mean is
1000, or the anchor model's is 1000 when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evalkit.human.stats import DEFAULT_RESAMPLES, cluster_bootstrap

SCALE = 400.0
BASE = 1000.0
RIDGE = 1e-4
_LN10 = math.log(10.0)


def fit_bradley_terry_batch(wins: np.ndarray, anchor: int | None = None) -> np.ndarray:
    """Elo-scale ratings for a batch of (M, M) win matrices, shape (R, M, M) -> (R, M).

    ``wins[r, i, j]`` = wins of i over j (ties as 0.5). Damped Newton on the penalised
    log-likelihood (concave, so it converges); rows with invalid input come back NaN.
    """
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[1] < 2:
        raise ValueError("wins must be (R, M, M) over at least two models")
    r, m, _ = w.shape
    bad = np.asarray(~np.isfinite(w).all(axis=(1, 2)) | (w < 0).any(axis=(1, 2)))  # (R,)
    w = np.where(bad[:, None, None], 0.0, w)
    n = w + np.swapaxes(w, 1, 2)
    c = np.zeros((r, m))
    eye = np.eye(m)
    for _ in range(200):
        d = _LN10 * (c[:, :, None] - c[:, None, :])
        p = 0.5 * (1.0 + np.tanh(0.5 * d))  # sigmoid, overflow-free
        grad = _LN10 * (w - n * p).sum(axis=2) - 2 * RIDGE * c
        curv = _LN10 * _LN10 * n * p * (1.0 - p)
        hess = curv - eye * curv.sum(axis=2)[:, :, None] - 2 * RIDGE * eye
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        step = np.clip(step, -1.0, 1.0)  # at most 400 rating points per iteration
        c = c - step
        if np.abs(step).max() < 1e-10:
            break
    coef = c - (c[:, [anchor]] if anchor is not None else c.mean(axis=1, keepdims=True))
    out = SCALE * coef + BASE
    out[bad] = np.nan
    return out


def fit_bradley_terry(wins: np.ndarray, anchor: int | None = None) -> np.ndarray:
    """Elo-scale ratings from an (M, M) matrix ``wins[i, j]`` = wins of i over j (ties as 0.5)."""
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError("wins must be a square matrix over at least two models")
    return fit_bradley_terry_batch(w[None], anchor)[0]


def win_matrices(
    outcomes: Sequence[tuple[int, int, int, float]], n_items: int, n_models: int
) -> np.ndarray:
    """(n_items, M, M) win matrices from (item index, model i, model j, score of i in {0, .5, 1})."""
    w = np.zeros((n_items, n_models, n_models))
    for item, i, j, s in outcomes:
        w[item, i, j] += s
        w[item, j, i] += 1.0 - s
    return w


def bradley_terry_with_intervals(
    per_item_wins: np.ndarray,
    names: Sequence[str],
    *,
    anchor: int | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Ratings and 95% intervals from a bootstrap over prompts (all votes of a drawn prompt kept)."""
    w = np.asarray(per_item_wins, dtype=np.float64)
    point = fit_bradley_terry(w.sum(axis=0), anchor)

    lo, hi = cluster_bootstrap(
        w, lambda sums: fit_bradley_terry_batch(sums, anchor), n_resamples=n_resamples, seed=seed
    )
    ratings: dict[str, dict[str, Any]] = {
        name: {"rating": float(point[k]), "ci": [float(lo[k]), float(hi[k])]}
        for k, name in enumerate(names)
    }
    order = sorted(names, key=lambda n: -ratings[n]["rating"])
    return {
        "ratings": ratings,
        "ranking": order,
        "n_votes": float(w.sum()),
        "n_items": int((w.sum(axis=(1, 2)) > 0).sum()),
        "anchor": None if anchor is None else names[anchor],
        "scale": {"per_coef": SCALE, "base": BASE, "ridge": RIDGE},
    }
