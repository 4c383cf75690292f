"""Streaming feature statistics and features spilled to disk.

``FeatureStats`` keeps a running float64 sum and sum of outer products around a fixed shift
(the first batch's mean, which keeps the covariance free of cancellation), so memory is
O(d²) whatever the number of images. ``FeatureSpill`` appends features to a temporary file
and reads them back as a ``numpy.memmap``, for metrics that need every feature (KID, IS,
the FID bootstrap) without holding them in memory.

Both are plain feature containers: the feature store (:mod:`evalkit.features.store`) and the
reference-statistics cache (:mod:`evalkit.metrics.refstats`, which re-exports them) use them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.atomic import atomic_write
from evalkit.errors import InputError

STATS_FORMAT = "evalkit-feature-stats"
FORMAT_VERSION = 1


class FeatureStats:
    """Running mean and covariance of d-dimensional features (float64, memory flat in N)."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"feature dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(self.dim, dtype=np.float64)
        self._outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, features: np.ndarray) -> None:
        """Add a batch of features (B, d)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or infinite values")
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
        y = x - self._shift
        self._sum += y.sum(axis=0)
        self._outer += y.T @ y
        self.n += x.shape[0]

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's features to this one (in place); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dimension {other.dim} into {self.dim}")
        if other.n == 0:
            return self
        if other._shift is None:
            raise RuntimeError("FeatureStats with n > 0 has no shift")
        if self._shift is None:
            self._shift = other._shift.copy()
        delta = other._shift - self._shift
        s1 = other._sum + other.n * delta
        self._outer += other._outer + np.outer(other._sum, delta) + np.outer(delta, other._sum)
        self._outer += other.n * np.outer(delta, delta)
        self._sum += s1
        self.n += other.n
        return self

    def mean(self) -> np.ndarray:
        """Mean feature (d,)."""
        if self.n < 1 or self._shift is None:
            raise ValueError("no features added")
        return self._shift + self._sum / self.n

    def cov(self) -> np.ndarray:
        """Unbiased covariance (d, d), normalised by N − 1."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 features, have {self.n}")
        c = (self._outer - np.outer(self._sum, self._sum) / self.n) / (self.n - 1)
        return 0.5 * (c + c.T)

    @classmethod
    def from_moments(cls, n: int, mu: np.ndarray, sigma: np.ndarray) -> FeatureStats:
        """Stats equivalent to ``n`` features with mean ``mu`` and covariance ``sigma``."""
        mu = np.asarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size) or n < 2:
            raise ValueError(f"bad moments: n={n}, mu {mu.shape}, sigma {sigma.shape}")
        stats = cls(mu.size)
        stats.n = int(n)
        stats._shift = mu.copy()
        stats._outer = sigma * (n - 1)
        return stats

    def save(self, path: str | os.PathLike, header: dict[str, Any]) -> Path:
        """Write ``mu``, ``sigma``, ``n`` and a JSON ``header`` to an .npz, atomically."""
        full = {
            "format": STATS_FORMAT,
            "format_version": FORMAT_VERSION,
            **header,
            "num_images": self.n,
        }
        mu = self.mean()
        sigma = self.cov()
        n = np.array(self.n, dtype=np.int64)
        header_array = np.array(json.dumps(full, sort_keys=True))
        return atomic_write(
            path, lambda f: np.savez(f, mu=mu, sigma=sigma, n=n, header=header_array)
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[FeatureStats, dict[str, Any]]:
        """Read a stats file written by :meth:`save`; a corrupt file raises :class:`InputError`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"][()]))
                mu, sigma, n = data["mu"], data["sigma"], int(data["n"])
        except FileNotFoundError as exc:
            raise InputError(f"feature statistics {path}: file not found") from exc
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError) as exc:
            raise InputError(
                f"feature statistics {path}: corrupt or not an evalkit stats file ({exc})"
            ) from exc
        if not isinstance(header, dict) or header.get("format") != STATS_FORMAT:
            raise InputError(f"feature statistics {path}: header is not an {STATS_FORMAT} header")
        try:
            stats = cls.from_moments(n, mu, sigma)
        except ValueError as exc:
            raise InputError(f"feature statistics {path}: {exc}") from exc
        if not (np.all(np.isfinite(stats.mean())) and np.all(np.isfinite(stats.cov()))):
            raise InputError(f"feature statistics {path}: NaN or infinite values")
        return stats, header


class FeatureSpill:
    """Features appended to a temporary file and read back as a read-only memmap (N, d)."""

    def __init__(
        self, dim: int, dtype: np.dtype | type = np.float32, prefix: str = "features"
    ) -> None:
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._dir = Path(tempfile.mkdtemp(prefix=f"evalkit-{prefix}-"))
        self._path = self._dir / "features.bin"
        self._file = open(self._path, "wb")  # noqa: SIM115 (closed by close/finalizer)
        self._finalizer = weakref.finalize(self, FeatureSpill._cleanup, self._file, self._dir)

    @staticmethod
    def _cleanup(handle: Any, folder: Path) -> None:
        try:
            handle.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def append(self, features: np.ndarray) -> None:
        """Add a batch (B, d)."""
        x = np.ascontiguousarray(features, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}), got {x.shape}")
        self._file.write(x.tobytes())
        self.n += x.shape[0]

    def array(self) -> np.ndarray:
        """All features so far as a read-only memmap (an empty array when there are none)."""
        self._file.flush()
        if self.n == 0:
            return np.empty((0, self.dim), dtype=self.dtype)
        return np.memmap(self._path, dtype=self.dtype, mode="r", shape=(self.n, self.dim))

    def close(self) -> None:
        """Delete the temporary file."""
        self._finalizer()
