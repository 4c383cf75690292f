"""Rater agreement and bias: Fleiss' kappa, Krippendorff's alpha (nominal), position bias.

Agreement tables are (n_units, n_categories) counts: how many raters put each unit
(an item under a pair and question) into each category (A, tie, B).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.stats import binomtest

from evalkit.human.stats import wilson_interval


def fleiss_kappa(table: np.ndarray) -> float | None:
    """Fleiss' kappa; units rated fewer than twice are dropped (raters per unit may vary).

    None when undefined: fewer than one unit with two ratings, or a single category used.
    """
    t = np.asarray(table, dtype=np.float64)
    n_i = t.sum(axis=1)
    t, n_i = t[n_i >= 2], n_i[n_i >= 2]
    if t.shape[0] == 0:
        return None
    p_i = ((t * t).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = t.sum(axis=0) / n_i.sum()
    p_e = float((p_j * p_j).sum())
    if np.isclose(p_e, 1.0):
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha_nominal(table: np.ndarray) -> float | None:
    """Krippendorff's alpha for nominal data from a units x categories count table.

    Units with fewer than two ratings carry no pairable values and are dropped.
    None when undefined (no pairable values, or no expected disagreement).
    """
    t = np.asarray(table, dtype=np.float64)
    m = t.sum(axis=1)
    t, m = t[m >= 2], m[m >= 2]
    if t.shape[0] == 0:
        return None
    # Coincidence matrix: o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1)
    o = np.einsum("uc,uk->ck", t / (m - 1)[:, None], t) - np.diag(
        (t / (m - 1)[:, None]).sum(axis=0)
    )
    n_c = o.sum(axis=1)
    n = n_c.sum()
    observed = o.sum() - np.trace(o)
    expected = (n_c.sum() ** 2 - (n_c * n_c).sum()) / (n - 1)
    if expected <= 0:
        return None
    return float(1.0 - observed / expected)


def agreement_table(votes: Iterable[Mapping[str, Any]], a_of: Mapping[str, str]) -> np.ndarray:
    """Units (task) x (A, tie, B) counts; ``a_of`` maps a task id to its pair's run a."""
    units: dict[str, np.ndarray] = {}
    for v in votes:
        row = units.setdefault(v["task_id"], np.zeros(3, dtype=np.int64))
        pref = v["preferred"]
        row[1 if pref is None else (0 if pref == a_of[v["task_id"]] else 2)] += 1
    return np.array(list(units.values()), dtype=np.int64).reshape(-1, 3)


def position_bias(votes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How often the left set (shown as "set A") wins among decisive votes; 0.5 is unbiased.

    Returns the rate, its Wilson 95% interval, the two-sided binomial p-value against 0.5,
    and the counts.
    """
    left = right = ties = 0
    for v in votes:
        if v["choice"] == "A":
            left += 1
        elif v["choice"] == "B":
            right += 1
        else:
            ties += 1
    decisive = left + right
    if decisive == 0:
        return {
            "left_win_rate": None,
            "ci": None,
            "p_value": None,
            "left": 0,
            "right": 0,
            "ties": ties,
        }
    return {
        "left_win_rate": left / decisive,
        "ci": list(wilson_interval(left, decisive)),
        "p_value": float(binomtest(left, decisive, 0.5).pvalue),
        "left": left,
        "right": right,
        "ties": ties,
    }
