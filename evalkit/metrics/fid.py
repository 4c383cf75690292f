"""Fréchet Inception Distance against a suite's reference set (torch-fidelity exact by default).

Generated images stream through the Inception network into running float64 statistics;
the reference statistics come from a user file (``ref_stats``), the cache, or one streaming
pass over ``suite.reference_set(resolution)`` that is then cached. With ``bootstrap=B`` the
generated features are also spilled to a temporary memmap and resampled B times for a
percentile interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit.errors import InputError
from evalkit.features.base import FeatureExtractor
from evalkit.features.stats import FeatureSpill, FeatureStats
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.frechet import frechet_distance, frechet_distance_infinity, psd_factor
from evalkit.metrics.inception import (
    POOL3,
    InceptionExtractor,
    check_options,
    feature_stream,
    inception_features,
    library_versions,
)
from evalkit.metrics.refstats import (
    iter_reference_images,
    load_checked_stats,
    load_reference_stats,
    reference_set_or_raise,
    refstats_dir,
    refstats_key,
    weighted_moments,
)
from evalkit.metrics.weights import InceptionWeights, resolve_inception_weights
from evalkit.options import as_bool, as_int
from evalkit.suites.base import Item

FEATURE_DIM = 2048
FID_DEFAULTS: dict[str, Any] = {
    "weights_path": None,
    "resize": "tf1",
    "ref_stats": None,
    "bootstrap": 0,
    "fid_inf": False,
}


def make_fid(options: dict[str, Any], context: MetricContext) -> FrechetInceptionDistance:
    """Registry factory. Options: weights_path, resize ("tf1"|"clean"), ref_stats (.npz), bootstrap
    (int), fid_inf (bool: also FD-infinity)."""
    opts = check_options(options, FID_DEFAULTS, "fid")
    return FrechetInceptionDistance(context, **opts)


def reference_stats(
    context: MetricContext, extractor: InceptionExtractor, *, metric: str = "fid"
) -> tuple[FeatureStats, dict[str, Any]]:
    """Pool3 statistics of the suite's reference set, from the cache or computed and cached."""
    ref = reference_set_or_raise(context, metric)
    identity = ref.identity()
    weights = extractor.weights
    key = refstats_key(identity, extractor.resize, weights.sha256, POOL3, extractor.batch_size)
    path = refstats_dir(context.cache_dir) / f"{key}.npz"
    info = {"origin": "cache", "path": str(path), "key": key, "identity": identity}
    if path.is_file():
        stats, _ = load_checked_stats(
            path, weights_sha256=weights.sha256, resize=extractor.resize, feature_layer=POOL3
        )
        return stats, info
    stats = FeatureStats(FEATURE_DIM)
    stream = feature_stream(stats.update)
    for batch in iter_reference_images(ref, context.batch_size, f"{metric}: reference statistics"):
        stream.add(inception_features(context, extractor, batch, POOL3, "reference images"))
    stream.flush()
    context.features.flush()
    if stats.n < 2:
        raise InputError(
            f"reference set {identity.get('name', identity)} has {stats.n} images; FID needs 2+"
        )
    header = {
        "key": key,
        "reference_identity": identity,
        "resize": extractor.resize,
        "feature_layer": POOL3,
        "weights_sha256": weights.sha256,
        "weights_source": weights.source,
        "extractor": extractor.describe()["extractor"],
        "batch_size": extractor.batch_size,
    }
    stats.save(path, header)
    info["origin"] = "computed"
    return stats, info


class FrechetInceptionDistance(Metric):
    """FID of the generated images against the suite's reference set."""

    name = "fid"

    def __init__(
        self,
        context: MetricContext,
        *,
        weights_path: str | Path | None = None,
        resize: str = "tf1",
        ref_stats: str | Path | None = None,
        bootstrap: int = 0,
        fid_inf: bool = False,
    ) -> None:
        self.bootstrap = as_int(bootstrap, "bootstrap", "metric 'fid'", minimum=0)
        self.fid_inf = as_bool(fid_inf, "fid_inf", "metric 'fid'")
        self.context = context
        self.resize = resize
        self.weights: InceptionWeights = resolve_inception_weights(
            context.cache_dir,
            weights_path=weights_path,
            allow_random=context.allow_random_weights,
            purpose="FID",
        )
        self._user_ref: tuple[FeatureStats, dict[str, Any]] | None = None
        if ref_stats is None:
            reference_set_or_raise(context, "fid")  # fail now, not after generating every image
        else:  # check it now, before any image is generated
            path = Path(ref_stats).expanduser()
            stats, header = load_reference_stats(
                path, weights_sha256=self.weights.sha256, resize=resize, feature_layer=POOL3,
                dim=FEATURE_DIM,
            )  # fmt: skip
            origin = "foreign file" if header.get("foreign") else "file"
            self._user_ref = (
                stats,
                {
                    "origin": origin,
                    "path": str(path),
                    "identity": header.get("reference_identity"),
                    **({"unknown": header} if header.get("foreign") else {}),
                },
            )
        self._extractor: InceptionExtractor | None = None
        self._stats = FeatureStats(FEATURE_DIM)
        self._spill = FeatureSpill(FEATURE_DIM, prefix="fid") if bootstrap or self.fid_inf else None
        self._ref: tuple[FeatureStats, dict[str, Any]] | None = None
        self._pending = feature_stream(self._add_features)

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
        """Load or compute the reference statistics before any image is generated."""
        self._reference()

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        """Add a batch of uint8 (B, 3, H, W) generated images (features from the shared provider)."""
        self._pending.add(
            inception_features(self.context, self.extractor, images, POOL3, "fid: generated images")
        )

    def _add_features(self, features: np.ndarray) -> None:
        self._stats.update(features)
        if self._spill is not None:
            self._spill.append(features)

    def _reference(self) -> tuple[FeatureStats, dict[str, Any]]:
        if self._ref is None:
            self._ref = self._user_ref or reference_stats(self.context, self.extractor)
        return self._ref

    def compute(self) -> MetricResult:
        """FID (and its bootstrap interval when asked) over everything added so far."""
        self._pending.flush()
        n = self._stats.n
        if n < 2:
            raise InputError(f"FID needs at least 2 generated images, got {n}")
        ref, ref_info = self._reference()
        ref_mu, ref_sigma = ref.mean(), ref.cov()
        factor = psd_factor(ref_sigma)  # eigh of the reference once, reused by the bootstrap
        value = frechet_distance(
            ref_mu, ref_sigma, self._stats.mean(), self._stats.cov(), factor1=factor
        )
        interval = None
        values: dict[str, float] = {}
        if self._spill is not None and self.bootstrap > 0:
            boot = self._bootstrap(self._spill.array(), ref_mu, ref_sigma, factor)
            lo, hi = np.quantile(boot, [0.025, 0.975])
            interval = (float(lo), float(hi))
            values = {
                "fid_bootstrap_mean": float(boot.mean()),
                "fid_bootstrap_std": float(boot.std(ddof=1)),
            }
        details: dict[str, Any] = {}
        if self.fid_inf and self._spill is not None:
            inf = frechet_distance_infinity(
                ref_mu, ref_sigma, self._spill.array(), seed=self.context.seed
            )
            values["fid_inf"] = inf["value"]
            details["fid_inf"] = {k: v for k, v in inf.items() if k != "value"}
        notes = []
        foreign = "unknown" in ref_info
        ref_n = None if foreign else ref.n
        if min(n, ref_n or n) <= FEATURE_DIM:
            notes.append(
                f"fewer than {FEATURE_DIM + 1} images on a side (generated {n}, reference "
                f"{ref_n or 'unknown'}): covariances are singular and FID is biased upwards; "
                "compare only at equal N"
            )
        if foreign:
            notes.append(
                "reference statistics from a foreign file: the weights, resize and image count "
                "they were made with are unknown"
            )
        manifest = {
            "implementation": "evalkit (torch-fidelity Inception features, eigh Fréchet distance in float64)",
            **self.extractor.describe(),
            "feature_layer": f"{POOL3} (pool3)",
            "features": {"extractor_key": self.extractor.key(), "layer": POOL3},
            "num_generated": n,
            "num_reference": ref_n,
            "reference_identity": ref_info.get("identity"),
            "reference_stats": {k: v for k, v in ref_info.items() if k != "identity"},
            "frechet": "Tr((S1 S2)^1/2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), numpy eigh in float64, S1 = reference",
            "covariance": "unbiased (N-1)",
            "bootstrap": {
                "resamples": self.bootstrap,
                "seed": self.context.seed,
                "over": "generated images",
            }
            if self.bootstrap
            else None,
            "fid_inf": "FD at 15 subset sizes from min(5000, N//10) to N, least-squares line in 1/N, "
            "intercept (dgm-eval's FD-infinity; subsets seeded)"
            if self.fid_inf
            else None,
            "notes": notes,
            **{f"{k}_version": v for k, v in library_versions().items()},
        }
        return MetricResult(
            name=self.name,
            value=value,
            interval=interval,
            values=values,
            details=details,
            manifest=manifest,
            uncalibrated=not self.weights.calibrated,
        )

    def _bootstrap(
        self, features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, factor: np.ndarray
    ) -> np.ndarray:
        n = features.shape[0]
        rng = np.random.Generator(np.random.PCG64(self.context.seed))
        out = np.empty(self.bootstrap, dtype=np.float64)
        for b in range(self.bootstrap):
            counts = np.bincount(rng.integers(0, n, size=n), minlength=n)
            mu, sigma = weighted_moments(features, counts)
            out[b] = frechet_distance(ref_mu, ref_sigma, mu, sigma, factor1=factor)
        return out
