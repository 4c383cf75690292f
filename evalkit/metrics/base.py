"""The metric interface: streaming ``update`` with a batch, ``compute`` to a result.

Metrics must keep memory flat in the number of images: running sums, or features
spilled to disk, never a growing list of images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from evalkit.features.base import FeatureExtractor
from evalkit.features.store import FeatureProvider, FeatureStore
from evalkit.suites.base import Item, ReferenceSet, Suite


@dataclass
class MetricContext:
    """What a metric factory gets besides its own options."""

    suite: Suite
    resolution: int
    device: str = "cpu"
    batch_size: int = 64
    seed: int = 0
    cache_dir: Path = Path("~/.cache/evalkit").expanduser()
    allow_random_weights: bool = False
    #: number of generated images the metric will see (for progress and sanity checks)
    num_images: int | None = None
    #: the run's shared features (one network pass per image for every metric); by default a
    #: provider over ``<cache_dir>/features``
    features: FeatureProvider = None  # type: ignore[assignment]
    #: a reference set replacing the suite's (``--ref``); None: the suite's own
    reference: ReferenceSet | None = None

    def __post_init__(self) -> None:
        if self.features is None:
            self.features = FeatureProvider(FeatureStore(Path(self.cache_dir) / "features"))


@dataclass
class MetricResult:
    """A metric's value with its 95% interval, breakdowns and the protocol it was measured under."""

    name: str
    value: float
    interval: tuple[float, float] | None = None
    #: secondary values, e.g. {"clip_score_x100": 27.1} or {"kid_std": 0.001}
    values: dict[str, float] = field(default_factory=dict)
    #: item id -> score (CLIP score per prompt, accuracy per prompt ...)
    per_item: dict[str, float] | None = None
    #: category -> {"value": v, "interval": [lo, hi], "n": count}
    per_category: dict[str, dict[str, Any]] | None = None
    #: free-form details (e.g. per-image verdicts with reasons); must be JSON-able
    details: dict[str, Any] = field(default_factory=dict)
    #: implementation, weights sha256, resize, scale, library versions ...
    manifest: dict[str, Any] = field(default_factory=dict)
    #: True when measured with random weights (plumbing only, not a real number)
    uncalibrated: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.interval is not None:
            d["interval"] = [float(self.interval[0]), float(self.interval[1])]
        return d


class Metric(ABC):
    """A streaming metric."""

    name: str = "metric"

    def prepare(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Do, before any image is generated, whatever can fail without the images.

        The runner calls this once before generation: metrics that compare against a
        reference set compute (or load) its statistics here, so a missing or corrupt
        reference image stops the run in minutes, not after hours of generation. The
        default does nothing.
        """

    def extractors(self) -> list[FeatureExtractor]:
        """The feature extractors this metric runs on the generated images (through
        ``context.features``); the runner uses them to extract features ahead (torchrun ranks
        extract their own shard). Metrics that read pixels directly return none."""
        return []

    @abstractmethod
    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        """Add a batch: uint8 images (B, 3, H, W) and, per image, its item and sample index."""

    @abstractmethod
    def compute(self) -> MetricResult:
        """The result over everything added so far."""
