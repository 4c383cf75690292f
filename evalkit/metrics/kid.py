"""Kernel Inception Distance with torch-fidelity's defaults, seeded.

KID is the unbiased MMD² between generated and reference pool3 features under the cubic
polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over 100 random subsets of 1000 images
from each side (drawn without replacement with ``numpy.random.RandomState(seed)``, as
torch-fidelity does). Both feature sets live on disk (memmaps); reference features are cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from evalkit.errors import InputError
from evalkit.features.base import FeatureExtractor
from evalkit.features.stats import FeatureSpill
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.inception import (
    POOL3,
    InceptionExtractor,
    check_options,
    inception_features,
    library_versions,
)
from evalkit.metrics.refstats import (
    reference_feature_matrix,
    reference_set_or_raise,
)
from evalkit.metrics.weights import InceptionWeights, resolve_inception_weights
from evalkit.options import as_float, as_int
from evalkit.seeding import legacy_numpy_seed
from evalkit.suites.base import Item

FEATURE_DIM = 2048
KID_DEFAULTS: dict[str, Any] = {
    "weights_path": None,
    "resize": "tf1",
    "subsets": 100,
    "subset_size": 1000,
    "degree": 3,
    "gamma": None,
    "coef0": 1.0,
}


def make_kid(options: dict[str, Any], context: MetricContext) -> KernelInceptionDistance:
    """Registry factory. Options: weights_path, resize, subsets, subset_size, degree, gamma, coef0."""
    opts = check_options(options, KID_DEFAULTS, "kid")
    return KernelInceptionDistance(context, **opts)


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float
) -> np.ndarray:
    """(γ x·yᵀ + c)^degree in float64."""
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD² from the three m×m kernel matrices (diagonals of K_xx, K_yy dropped)."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    generated: np.ndarray,
    reference: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """The per-subset MMD² values (``subsets``,) between two feature arrays (may be memmaps)."""
    n1, d = generated.shape
    n2 = reference.shape[0]
    if reference.shape[1] != d:
        raise ValueError(f"feature dimensions differ: {d} vs {reference.shape[1]}")
    if subset_size < 2 or subset_size > min(n1, n2):
        raise ValueError(f"subset_size {subset_size} must be in [2, min(N)={min(n1, n2)}]")
    g = 1.0 / d if gamma is None else float(gamma)
    # torch-fidelity's sampler: same subsets for the same seed
    rng = np.random.RandomState(legacy_numpy_seed(seed))
    out = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        # Rows are read in sorted order (fast on a memmap); MMD² does not depend on row order.
        x = np.asarray(
            generated[np.sort(rng.choice(n1, subset_size, replace=False))], dtype=np.float64
        )
        y = np.asarray(
            reference[np.sort(rng.choice(n2, subset_size, replace=False))], dtype=np.float64
        )
        out[i] = mmd2_unbiased(
            polynomial_kernel(x, x, degree, g, coef0),
            polynomial_kernel(x, y, degree, g, coef0),
            polynomial_kernel(y, y, degree, g, coef0),
        )
    return out


def reference_features(
    context: MetricContext, extractor: InceptionExtractor, *, metric: str = "kid"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pool3 features of the suite's reference set as a memmap, from the cache or computed."""
    return reference_feature_matrix(context, extractor, POOL3, metric)


class _KidParams(TypedDict):
    subsets: int
    subset_size: int
    degree: int
    #: as given (None: 1/d)
    gamma: float | None
    coef0: float


class KernelInceptionDistance(Metric):
    """KID of the generated images against the suite's reference set."""

    name = "kid"

    def __init__(
        self,
        context: MetricContext,
        *,
        weights_path: str | Path | None = None,
        resize: str = "tf1",
        subsets: int = 100,
        subset_size: int = 1000,
        degree: int = 3,
        gamma: float | None = None,
        coef0: float = 1.0,
    ) -> None:
        where = "metric 'kid'"
        subsets = as_int(subsets, "subsets", where, minimum=1)
        subset_size = as_int(subset_size, "subset_size", where, minimum=2)
        degree = as_int(degree, "degree", where, minimum=1)
        if gamma is not None:  # checked, kept as given (the manifest records it)
            as_float(gamma, "gamma", where)
        coef0 = as_float(coef0, "coef0", where)
        reference_set_or_raise(context, "kid")  # fail now, not after generating every image
        self.context = context
        self.resize = resize
        self.params: _KidParams = {"subsets": subsets, "subset_size": subset_size, "degree": degree,
                       "gamma": gamma, "coef0": coef0}  # fmt: skip
        self.weights: InceptionWeights = resolve_inception_weights(
            context.cache_dir,
            weights_path=weights_path,
            allow_random=context.allow_random_weights,
            purpose="KID",
        )
        self._extractor: InceptionExtractor | None = None
        self._spill = FeatureSpill(FEATURE_DIM, prefix="kid")

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

    def prepare(self) -> None:
        """Compute (or check the cached) reference features before any image is generated."""
        reference_features(self.context, self.extractor)

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        """Add a batch of uint8 (B, 3, H, W) generated images (features from the shared provider)."""
        features = inception_features(
            self.context, self.extractor, images, POOL3, "kid: generated images"
        )
        self._spill.append(features.numpy())

    def compute(self) -> MetricResult:
        """Mean (value) and standard deviation (values["kid_std"]) of the subset MMD²s."""
        generated = self._spill.array()
        if generated.shape[0] < 2:
            raise InputError(f"KID needs at least 2 generated images, got {generated.shape[0]}")
        reference, ref_info = reference_features(self.context, self.extractor)
        if reference.shape[0] < 2:
            raise InputError(f"KID needs at least 2 reference images, got {reference.shape[0]}")
        p = self.params
        size = min(p["subset_size"], generated.shape[0], reference.shape[0])
        notes = []
        if size < p["subset_size"]:
            notes.append(
                f"subset_size clipped from {p['subset_size']} to {size} (generated {generated.shape[0]}, "
                f"reference {reference.shape[0]} images); values are not comparable with subset size "
                f"{p['subset_size']}"
            )
        mmds = kid_from_features(
            generated, reference, subsets=p["subsets"], subset_size=size, degree=p["degree"],
            gamma=p["gamma"], coef0=p["coef0"], seed=self.context.seed,
        )  # fmt: skip
        manifest = {
            "implementation": "evalkit (torch-fidelity Inception features, torch-fidelity KID defaults)",
            **self.extractor.describe(),
            "feature_layer": f"{POOL3} (pool3)",
            "features": {"extractor_key": self.extractor.key(), "layer": POOL3},
            "num_generated": int(generated.shape[0]),
            "num_reference": int(reference.shape[0]),
            "reference_identity": ref_info.get("identity"),
            "reference_features": {k: v for k, v in ref_info.items() if k != "identity"},
            "kernel": f"polynomial degree {p['degree']}, gamma {p['gamma'] or '1/d'}, coef0 {p['coef0']}",
            "degree": p["degree"],
            "gamma": p["gamma"],
            "coef0": p["coef0"],
            "estimator": "unbiased MMD^2",
            "subsets": p["subsets"],
            "subset_size": size,
            "subset_size_requested": p["subset_size"],
            "sampler": "numpy RandomState(seed).choice without replacement (torch-fidelity's)",
            "seed": legacy_numpy_seed(self.context.seed),
            "notes": notes,
            **{f"{k}_version": v for k, v in library_versions().items()},
        }
        return MetricResult(
            name=self.name,
            value=float(mmds.mean()),
            values={"kid_std": float(mmds.std())},
            manifest=manifest,
            uncalibrated=not self.weights.calibrated,
        )
