"""Metrics that compare the generated images' feature set with the reference set's.

- ``prc``: precision (headline) and recall, k = 3, VGG16 fc2_relu (Kynkäänniemi et al. 2019);
- ``density_coverage``: coverage (headline) and density, k = 5, the same VGG16 features
  (Naeem et al. 2020);
- ``cmmd``: CMMD, 1000 × MMD² with a Gaussian RBF kernel (σ = 10) on L2-normalised CLIP
  ViT-L/14@336 image embeddings (Jayasumana et al. 2024);
- ``fd_dinov2``: Fréchet distance on DINOv2 ViT-L/14 features (Stein et al. 2023).

Generated features come from the run's shared feature provider (one network pass per
image, cached), spilled to a memory-mapped file; reference features are computed once per
reference set and cached. Each result's manifest states the backbone, its weights and the
exact preprocessing; random (``tiny-random``) backbones mark the result uncalibrated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from evalkit.errors import InputError
from evalkit.features.backbones import (
    TINY_RANDOM,
    ClipImageExtractor,
    resolve_dinov2,
    resolve_vgg16,
)
from evalkit.features.base import FeatureExtractor
from evalkit.features.stats import FeatureSpill
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.frechet import frechet_distance
from evalkit.metrics.manifold import density_coverage, precision_recall
from evalkit.metrics.mmd import CMMD_SCALE, CMMD_SIGMA, cmmd
from evalkit.metrics.refstats import reference_feature_matrix, reference_set_or_raise
from evalkit.options import as_choice, as_int, check_known
from evalkit.suites.base import Item

CMMD_MODEL = "ViT-L-14-336-quickgelu"
CMMD_PRETRAINED = "openai"


class FeatureSetMetric(Metric):
    """A score of (reference features, generated features), both of one extractor layer."""

    #: what the score says, for the manifest
    description = ""
    higher_is_better = False

    def __init__(
        self,
        name: str,
        context: MetricContext,
        extractor: FeatureExtractor,
        layer: str,
        score: Callable[[np.ndarray, np.ndarray], tuple[float, dict[str, float]]],
        min_samples: int,
        protocol: dict[str, Any],
    ) -> None:
        reference_set_or_raise(context, name)  # fail now, not after generating every image
        self.name = name
        self.context = context
        self.extractor = context.features.shared(extractor)
        self.layer = layer
        self.score = score
        self.min_samples = min_samples
        self.protocol = protocol
        self._spill = FeatureSpill(self.extractor.layers[layer], prefix=name)

    def extractors(self) -> list[FeatureExtractor]:
        return [self.extractor]

    def prepare(self) -> None:
        """Compute (or check the cached) reference features before any image is generated."""
        reference_feature_matrix(self.context, self.extractor, self.layer, self.name)

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        """Add uint8 (B, 3, H, W) generated images (features from the shared provider)."""
        self._spill.append(self.context.features.extract(self.extractor, images)[self.layer])

    def compute(self) -> MetricResult:
        generated = self._spill.array()
        reference, ref_info = reference_feature_matrix(
            self.context, self.extractor, self.layer, self.name
        )
        for what, x in (("generated", generated), ("reference", reference)):
            if x.shape[0] < self.min_samples:
                raise InputError(
                    f"{self.name} needs at least {self.min_samples} {what} images, got {x.shape[0]}"
                )
        value, values = self.score(np.asarray(reference), np.asarray(generated))
        manifest = {
            "implementation": f"evalkit.metrics.feature_sets ({self.description})",
            **self.extractor.describe(),
            "feature_layer": self.layer,
            "features": {"extractor_key": self.extractor.key(), "layer": self.layer},
            **self.protocol,
            "num_generated": int(generated.shape[0]),
            "num_reference": int(reference.shape[0]),
            "reference_identity": ref_info.get("identity"),
            "reference_features": {k: v for k, v in ref_info.items() if k != "identity"},
            "higher_is_better": self.higher_is_better,
        }
        return MetricResult(
            name=self.name,
            value=value,
            values=values,
            manifest=manifest,
            uncalibrated=not self.extractor.calibrated,
        )


def _backbone_options(options: dict[str, Any], extra: Sequence[str], where: str) -> dict[str, Any]:
    check_known(options, ("weights_path", "backbone", *extra), where)
    backbone = options.get("backbone", "default")
    as_choice(backbone, ("default", TINY_RANDOM), "backbone", where)
    return options


def _vgg16_knn_metric(
    name: str,
    default_k: int,
    options: dict[str, Any],
    context: MetricContext,
    score: Callable[[np.ndarray, np.ndarray, int], tuple[float, dict[str, float]]],
    estimator: str,
    description: str,
) -> FeatureSetMetric:
    """A k-NN manifold metric on VGG16 fc2_relu features (prc and density/coverage)."""
    where = f"metric {name!r}"
    options = _backbone_options(options, ("k",), where)
    k = as_int(options.get("k", default_k), "k", where, minimum=1)
    extractor = resolve_vgg16(
        options.get("weights_path"), context.cache_dir, context.device,
        context.allow_random_weights, options.get("backbone", "default"),
    )  # fmt: skip
    metric = FeatureSetMetric(
        name, context, extractor, "fc2_relu", lambda ref, gen: score(ref, gen, k), k + 1,
        {"k": k, "estimator": estimator},
    )  # fmt: skip
    metric.description = description
    metric.higher_is_better = True
    return metric


def _prc_score(ref: np.ndarray, gen: np.ndarray, k: int) -> tuple[float, dict[str, float]]:
    out = precision_recall(ref, gen, k=k)
    return out["precision"], {"recall": out["recall"], "f_score": out["f_score"]}


def _density_coverage_score(
    ref: np.ndarray, gen: np.ndarray, k: int
) -> tuple[float, dict[str, float]]:
    out = density_coverage(ref, gen, k=k)
    return out["coverage"], {"density": out["density"]}


def make_prc(options: dict[str, Any], context: MetricContext) -> FeatureSetMetric:
    """Registry factory. Options: ``k`` (3), ``weights_path`` (torchvision VGG16), ``backbone``."""
    return _vgg16_knn_metric(
        "prc", 3, options, context, _prc_score,
        "Kynkäänniemi et al. 2019 precision (value) and recall; torch-fidelity 0.4 "
        "calculate_precision_recall_part (a point on a ball's boundary is inside)",
        "precision/recall on VGG16 features",
    )  # fmt: skip


def make_density_coverage(options: dict[str, Any], context: MetricContext) -> FeatureSetMetric:
    """Registry factory. Options: ``k`` (5), ``weights_path`` (torchvision VGG16), ``backbone``."""
    return _vgg16_knn_metric(
        "density_coverage", 5, options, context, _density_coverage_score,
        "Naeem et al. 2020 coverage (value) and density, prdc package definitions (strict <), "
        "float64 distances",
        "density/coverage on VGG16 features",
    )  # fmt: skip


def make_cmmd(options: dict[str, Any], context: MetricContext) -> FeatureSetMetric:
    """Registry factory. Options: ``model`` (ViT-L-14-336-quickgelu), ``pretrained`` (openai),
    ``weights_path``; ``model=tiny-random`` for plumbing."""
    from evalkit.metrics.clip_models import load_clip

    check_known(options, ("model", "pretrained", "weights_path"), "metric 'cmmd'")
    model_name = str(options.get("model", CMMD_MODEL))
    model, preprocess, _, info = load_clip(
        model_name=model_name,
        pretrained=str(options.get("pretrained", CMMD_PRETRAINED)),
        weights_path=options.get("weights_path"),
        cache_dir=context.cache_dir,
        device=context.device,
        allow_random_weights=context.allow_random_weights,
    )
    extractor = ClipImageExtractor(
        model, info, preprocess.image_size, preprocess.mean, preprocess.std, context.device
    )

    def score(ref: np.ndarray, gen: np.ndarray) -> tuple[float, dict[str, float]]:
        return cmmd(ref, gen), {}

    metric = FeatureSetMetric(
        "cmmd", context, extractor, "embedding", score, 2,
        {"kernel": f"Gaussian RBF, sigma {CMMD_SIGMA}", "scale": CMMD_SCALE,
         "estimator": "biased full-set MMD^2 (Gretton et al. 2012 eq. 5), as google-research cmmd",
         "backbone": model_name},
    )  # fmt: skip
    metric.description = "CMMD on CLIP embeddings"
    return metric


def make_fd_dinov2(options: dict[str, Any], context: MetricContext) -> FeatureSetMetric:
    """Registry factory. Options: ``weights_path`` (a local facebook/dinov2-large folder), ``backbone``."""
    options = _backbone_options(options, (), "metric 'fd_dinov2'")
    extractor = resolve_dinov2(
        options.get("weights_path"), context.cache_dir, context.device,
        context.allow_random_weights, options.get("backbone", "default"),
    )  # fmt: skip

    def score(ref: np.ndarray, gen: np.ndarray) -> tuple[float, dict[str, float]]:
        r, g = ref.astype(np.float64), gen.astype(np.float64)
        value = frechet_distance(
            r.mean(0), np.cov(r, rowvar=False), g.mean(0), np.cov(g, rowvar=False)
        )
        return value, {}

    metric = FeatureSetMetric(
        "fd_dinov2", context, extractor, "cls", score, 2,
        {"estimator": "Frechet distance, unbiased covariances, float64 (evalkit.metrics.frechet)"},
    )  # fmt: skip
    metric.description = "Frechet distance on DINOv2 features"
    return metric
