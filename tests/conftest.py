"""Shared fixtures: an isolated cache, a tiny in-memory suite and a pixel metric.

The test suite and metric are registered under names starting with ``test-`` so
they never collide with built-ins.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evalkit.errors import InputError
from evalkit.metrics import inception
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.bootstrap import summarize
from evalkit.registry import METRICS, SUITES
from evalkit.suites.base import Item, ReferenceSet, Suite

SHARED = Path(__file__).resolve().parents[2] / "shared"
DRAWBENCH_CSV = SHARED / "data" / "drawbench" / "drawbench.csv"


@pytest.fixture(autouse=True, scope="session")
def small_inception_micro_batch() -> Iterator[None]:
    """Test sets hold a few images: an Inception micro-batch of 4 (not 32) keeps padding cheap."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception, "BATCH_SIZE", 4)
        yield


class TinyReferenceSet(ReferenceSet):
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def identity(self) -> dict[str, Any]:
        return {"name": "tiny", "count": len(self.images), "size": int(self.images.shape[1])}

    def __len__(self) -> int:
        return len(self.images)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self.images), batch_size):
            yield self.images[i : i + batch_size]


class TinySuite(Suite):
    """N prompts over 3 categories with procedurally drawn reference images."""

    name = "test-tiny"
    version = "1"

    def __init__(self, n: int = 12) -> None:
        self.n = int(n)

    def items(self) -> list[Item]:
        colours = ["red", "green", "blue"]
        return [
            Item(
                id=f"tiny-{i:03d}",
                prompt=f"a {colours[i % 3]} blob number {i}",
                category=colours[i % 3],
            )
            for i in range(self.n)
        ]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "n": self.n}

    def reference_image(self, item: Item, resolution: int) -> np.ndarray:
        rng = np.random.default_rng(int(item.id.split("-")[1]))
        return rng.integers(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)

    def reference_set(self, resolution: int) -> ReferenceSet:
        return TinyReferenceSet(
            np.stack([self.reference_image(i, resolution) for i in self.items()])
        )


class PixelMean(Metric):
    """Mean pixel value per prompt (a cheap deterministic metric for runner tests)."""

    name = "test-pixel-mean"

    def __init__(self, context: MetricContext) -> None:
        self.context = context
        self.sums: dict[str, list[float]] = {}
        self.categories: dict[str, str | None] = {}

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        means = images.double().mean(dim=(1, 2, 3))
        for item, m in zip(items, means.tolist(), strict=False):
            self.sums.setdefault(item.id, []).append(m)
            self.categories[item.id] = item.category

    def compute(self) -> MetricResult:
        per_item = {k: float(np.mean(v)) for k, v in self.sums.items()}
        value, interval, per_cat = summarize(per_item, self.categories, seed=self.context.seed)
        return MetricResult(
            self.name,
            value,
            interval,
            per_item=per_item,
            per_category=per_cat,
            manifest={"implementation": "tests"},
        )


class BrokenReference(PixelMean):
    """A metric whose reference check fails, as a corrupt reference image does (rank 0 only)."""

    name = "test-broken-reference"

    def prepare(self) -> None:
        raise InputError("test-broken-reference: reference image 3 is corrupt (tests only)")


def _register_test_entries() -> None:
    if "test-tiny" not in SUITES.names():
        SUITES.register("test-tiny", lambda options: TinySuite(**options), description="tests only")
    if "test-pixel-mean" not in METRICS.names():
        METRICS.register(
            "test-pixel-mean", lambda options, context: PixelMean(context), description="tests only"
        )
    if "test-broken-reference" not in METRICS.names():
        METRICS.register(
            "test-broken-reference",
            lambda options, context: BrokenReference(context),
            description="tests only",
        )


_register_test_entries()


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own EVALKIT_CACHE unless it asks for the shared session cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("EVALKIT_CACHE", str(cache))
    return cache
