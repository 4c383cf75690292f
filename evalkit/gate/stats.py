"""The gate's statistics: paired bootstrap intervals of a metric's change between two runs.

Both tests resample the *same* units in both runs, so what the two runs share (the prompt,
its seed, the image index) cancels in the difference:

- prompt-level metrics (a score per prompt: CLIP score, shapes accuracy): the mean of the
  per-prompt differences, with a percentile bootstrap over prompts (:func:`paired_bootstrap`);
- set-level metrics (FID, KID, ...: one number over a set of images): the metric on a resample
  of image indices in each run, the same indices in both, differenced
  (:func:`paired_set_bootstrap`), from per-image features, never by re-running a network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evalkit.metrics.bootstrap import bootstrap_interval
from evalkit.metrics.frechet import frechet_distance_to_features, psd_factor


@dataclass(frozen=True)
class PairedInterval:
    """Candidate minus baseline: the estimate, its interval, the sample size and confidence."""

    delta: float
    lo: float
    hi: float
    n: int
    confidence: float
    resamples: int


def min_pairs(confidence: float) -> int:
    """Fewest pairs with which any paired test can reach ``confidence`` (two-sided).

    With n pairs the smallest two-sided p-value a sign test can give is 2·2⁻ⁿ; below
    ⌈log₂(2 / (1 − confidence))⌉ pairs (6 at 95%) no difference, however large, is significant.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return math.ceil(math.log2(2.0 / (1.0 - confidence)) - 1e-12)


def _check_pairs(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}: baseline has {a.shape[0]} units, candidate {b.shape[0]}")
    if a.shape[0] < 2:
        raise ValueError(f"{what}: need at least 2 paired units, got {a.shape[0]}")


def paired_bootstrap(
    baseline: np.ndarray | list[float],
    candidate: np.ndarray | list[float],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedInterval:
    """Mean of ``candidate − baseline`` over paired units, with its percentile bootstrap interval."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    _check_pairs(a, b, "paired_bootstrap")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_bootstrap: NaN or infinite scores")
    d = b - a
    lo, hi = bootstrap_interval(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return PairedInterval(float(d.mean()), lo, hi, int(d.size), confidence, n_resamples)


def paired_set_bootstrap(
    features_a: np.ndarray,
    features_b: np.ndarray,
    metric_fn: Callable[[np.ndarray], float],
    n_resamples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedInterval:
    """``metric_fn(B) − metric_fn(A)`` with a bootstrap interval over the same image indices.

    Row i of ``features_a`` and of ``features_b`` must be the same (item, sample index, seed)
    in the two runs. Each resample draws N indices with replacement and evaluates
    ``metric_fn`` on those rows of both runs; ``metric_fn(features) -> float`` closes over
    whatever the metric compares against (e.g. fixed reference statistics, see
    :func:`fid_against`).
    """
    fa = np.asarray(features_a)
    fb = np.asarray(features_b)
    _check_pairs(fa, fb, "paired_set_bootstrap")
    if fa.ndim != 2 or fa.shape != fb.shape:
        raise ValueError(f"paired_set_bootstrap: feature shapes {fa.shape} and {fb.shape} differ")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = fa.shape[0]
    delta = float(metric_fn(fb)) - float(metric_fn(fa))
    rng = np.random.Generator(np.random.PCG64(seed))
    diffs = np.empty(n_resamples, dtype=np.float64)
    for i in range(n_resamples):
        idx = np.sort(rng.integers(0, n, size=n))
        diffs[i] = float(metric_fn(fb[idx])) - float(metric_fn(fa[idx]))
    if not np.all(np.isfinite(diffs)) or not math.isfinite(delta):
        raise ValueError("paired_set_bootstrap: the metric gave NaN or infinite values")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha])
    return PairedInterval(delta, float(lo), float(hi), n, confidence, n_resamples)


def fid_against(
    ref_mu: np.ndarray, ref_sigma: np.ndarray, ref_factor: np.ndarray | None = None
) -> Callable[[np.ndarray], float]:
    """``features -> FID`` against fixed reference statistics (their factor A·Aᵀ = Σ computed
    once, or given: see :func:`fid_against_features`; with fewer images than dimensions the
    N×N path of :func:`frechet_distance_to_features`)."""
    mu = np.asarray(ref_mu, dtype=np.float64)
    sigma = np.asarray(ref_sigma, dtype=np.float64)
    factor = psd_factor(sigma) if ref_factor is None else ref_factor

    def fid(features: np.ndarray) -> float:
        return frechet_distance_to_features(mu, sigma, features, factor1=factor)

    return fid


def fid_against_features(reference: np.ndarray) -> Callable[[np.ndarray], float]:
    """``features -> FID`` against reference features: their centred rows / √(m−1) are already
    a factor of the covariance, so no d×d eigendecomposition is needed."""
    ref = np.asarray(reference, dtype=np.float64)
    mu = ref.mean(axis=0)
    factor = (ref - mu).T / np.sqrt(len(ref) - 1)
    return fid_against(mu, factor @ factor.T, factor)
