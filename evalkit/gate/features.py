"""Per-image features for the gate's set-level metrics, read from a run folder or history record.

The gate decides FID, KID, FD-DINOv2 and CMMD from per-image features (resampled, never
recomputed by a network). A run keeps its images' features in ``features/<extractor key>/``
(rows in ``samples.jsonl`` order; the metric's manifest names the key and layer) and what each
metric compared against beside them (FID's reference mean and covariance, other metrics'
reference features); a history record carries the same folder. Where any of this is missing
(an older run, a pruned cache, prc or density/coverage whose k-NN balls degenerate under
resampling with replacement), :func:`load_set_features` returns None and the gate says
"cannot decide" (exit code 11), never a silent pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evalkit.gate.core import GateRun


@dataclass(frozen=True)
class SetFeatures:
    """Per-image features of one run for one set-level metric.

    ``keys[i]`` is the ``(item_id, sample_index)`` of row ``i`` of ``features`` (N, d);
    ``metric_fn(rows) -> float`` computes the metric on any subset of rows, closing over what
    the metric compares against (e.g. the reference set's mean and covariance for FID,
    :func:`evalkit.gate.stats.fid_against`). ``metric_fn(features)`` equals the value in the
    run's results.json, except for KID, where it is the full-set unbiased MMD² that KID's
    random subsets estimate (the gate's delta and interval for KID are in those units).
    """

    keys: list[tuple[str, int]]
    features: np.ndarray
    metric_fn: Callable[[np.ndarray], float]
    source: str = ""


def load_set_features(run: GateRun, metric_name: str) -> SetFeatures | None:
    """Per-image features of ``run`` for ``metric_name`` and the metric as a function of them,
    or None when the run lacks them (see the module docstring)."""
    from evalkit.errors import InputError
    from evalkit.features.store import REFERENCE_STATS, load_run_features
    from evalkit.gate.stats import fid_against, fid_against_features

    entry = run.results.get("metrics", {}).get(metric_name) or {}
    manifest = entry.get("manifest") or {}
    wanted = manifest.get("features") or {}
    key, layer = wanted.get("extractor_key"), wanted.get("layer")
    if not key or not layer or run.samples is None:
        return None
    try:
        features, meta = load_run_features(run.path, key, layer)
    except InputError:
        return None
    keys = [
        (str(i), int(k))
        for i, k in zip(run.samples["item_id"], run.samples["sample_index"], strict=True)
    ]
    if len(keys) != features.shape[0]:
        return None
    folder = Path(run.path) / "features" / key
    reference = _reference_features(folder, layer, manifest)
    if metric_name == "fid":
        if reference is not None:  # a factor of the covariance for free
            return SetFeatures(keys, features, fid_against_features(reference), str(folder))
        stats = folder / REFERENCE_STATS
        if not stats.is_file():
            return None
        with np.load(stats) as data:
            return SetFeatures(keys, features, fid_against(data["mu"], data["sigma"]), str(folder))
    if reference is None:
        return None
    if metric_name == "kid":
        return SetFeatures(keys, features, _full_set_mmd2(reference, manifest), str(folder))
    if metric_name == "fd_dinov2":
        ref = np.asarray(reference, dtype=np.float64)
        return SetFeatures(
            keys, features, fid_against(ref.mean(0), np.cov(ref, rowvar=False)), str(folder)
        )
    if metric_name == "cmmd":
        from evalkit.metrics.mmd import cmmd

        return SetFeatures(keys, features, lambda x: cmmd(reference, x), str(folder))
    return None


def _full_set_mmd2(reference: np.ndarray, manifest: dict) -> Callable[[np.ndarray], float]:
    """``features -> MMD²`` against the reference: the unbiased full-set estimator with KID's
    polynomial kernel, the quantity KID's random subsets estimate (resampling them inside a
    bootstrap would cost a hundred kernel passes per resample; the reference-reference term is
    computed once)."""
    from evalkit.metrics.kid import polynomial_kernel

    ref = np.asarray(reference, dtype=np.float64)
    d = ref.shape[1]
    degree = int(manifest.get("degree", 3))
    gamma = float(manifest.get("gamma") or 1.0 / d)
    coef0 = float(manifest.get("coef0", 1.0))
    k_yy = polynomial_kernel(ref, ref, degree, gamma, coef0)
    m = len(ref)
    yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))

    def mmd2(x: np.ndarray) -> float:
        g = np.asarray(x, dtype=np.float64)
        n = len(g)
        k_xx = polynomial_kernel(g, g, degree, gamma, coef0)
        xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
        xy = polynomial_kernel(g, ref, degree, gamma, coef0).mean()
        return float(xx + yy - 2.0 * xy)

    return mmd2


def _reference_features(folder: Path, layer: str, manifest: dict) -> np.ndarray | None:
    """The reference features a metric used: exported beside the run's, else from the cache."""
    exported = folder / f"reference.{layer}.npy"
    cached = Path(str((manifest.get("reference_features") or {}).get("path", "")))
    for path in (exported, cached):
        if path.is_file():
            try:
                return np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                return None
    return None


def missing_features_reason(metric_name: str, where: str | Path) -> str:
    """The "cannot decide" message for a run without per-image features."""
    return f"no per-image features for {metric_name} in {where} (older run / feature store absent)"
