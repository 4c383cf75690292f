"""The seam through which the gate gets per-image features for set-level metrics.

The gate decides FID, KID and the other set-level metrics from per-image features
(resampled, never recomputed by a network). Until evalkit keeps per-image features, this
module finds none, and the gate says "cannot decide" for those metrics (exit code 11),
never a silent pass. The feature store plugs in by making :func:`load_set_features` return a
:class:`SetFeatures` for a run; nothing else in the gate changes.
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
    :func:`evalkit.gate.stats.fid_against`). ``metric_fn(features)`` must equal the value in
    the run's results.json.
    """

    keys: list[tuple[str, int]]
    features: np.ndarray
    metric_fn: Callable[[np.ndarray], float]
    source: str = ""


def load_set_features(run: GateRun, metric_name: str) -> SetFeatures | None:
    """Per-image features of ``run`` for ``metric_name``, or None when there are none.

    ``run.path`` is the run folder or history record, ``run.results`` its results and
    ``run.samples`` its per-image table (``item_id``, ``sample_index``, ``seed``,
    ``image_sha256``: the key of a content-addressed feature cache). evalkit does not keep
    per-image features yet, so this returns None for every run.
    """
    del run, metric_name  # nothing to read until the feature store exists
    return None


def missing_features_reason(metric_name: str, where: str | Path) -> str:
    """The "cannot decide" message for a run without per-image features."""
    return f"no per-image features for {metric_name} in {where} (older run / feature store absent)"
