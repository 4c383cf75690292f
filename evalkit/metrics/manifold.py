"""k-nearest-neighbour manifold metrics over feature sets: precision/recall and density/coverage.

- **Precision/recall** (Kynkäänniemi et al. 2019): the share of generated samples inside the
  union of the real samples' k-NN balls, and of real samples inside the generated ones'
  (k = 3), with torch-fidelity 0.4's convention that a point on a ball's boundary is inside.
- **Density/coverage** (Naeem et al. 2020): density = (1/k)·mean over generated samples of
  the number of real k-NN balls containing it; coverage = share of real samples whose ball
  contains at least one generated sample (k = 5); the ``prdc`` package's strict ``<``.

The features may be memory-mapped files of any size: every pass reads blocks of rows and
keeps only O(block²) distances plus O(N) radii, so memory stays flat as N grows (torch-fidelity
and prdc hold all features, and prdc the N×N distance matrices, in memory). Distances are
Euclidean in float64 by the Gram expansion ‖x‖² + ‖y‖² − 2x·y (matrix products, clamped at 0).
Tests check equality with torch-fidelity's and prdc's results on the same features.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from evalkit.errors import InputError

DEFAULT_BLOCK = 2048


def _check(features: np.ndarray, what: str) -> np.ndarray:
    if not hasattr(features, "shape") or len(features.shape) != 2 or features.shape[0] == 0:
        raise InputError(f"{what}: expected a non-empty (N, D) feature matrix")
    return features


def _feature_pair(real: np.ndarray, fake: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets checked: non-empty (N, D) matrices of the same dimension."""
    real = _check(real, f"{what}: real features")
    fake = _check(fake, f"{what}: generated features")
    if real.shape[1] != fake.shape[1]:
        raise InputError(f"{what}: feature dimensions differ ({real.shape[1]} vs {fake.shape[1]})")
    return real, fake


def _blocks(x: np.ndarray, block: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(start, rows as float64, their squared norms) for consecutive blocks of ``x``."""
    for start in range(0, x.shape[0], block):
        rows = torch.from_numpy(np.array(x[start : start + block], dtype=np.float64))
        if not torch.isfinite(rows).all():
            raise InputError("features contain NaN or infinite values")
        yield start, rows, (rows * rows).sum(dim=1)


def _squared_distances(
    a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor
) -> torch.Tensor:
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def kth_neighbour_radii(features: np.ndarray, k: int, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row (the row itself excluded)."""
    return _kth_squared(features, k, block).sqrt()


def _kth_squared(features: np.ndarray, k: int, block: int) -> torch.Tensor:
    n = features.shape[0]
    if n <= k:
        raise InputError(f"a {k}-nearest-neighbour radius needs more than {k} samples, got {n}")
    radii = torch.empty(n, dtype=torch.float64)
    for start, rows, rows_sq in _blocks(features, block):
        best = torch.full((len(rows), k + 1), float("inf"), dtype=torch.float64)
        for _, cols, cols_sq in _blocks(features, block):
            d = _squared_distances(rows, rows_sq, cols, cols_sq)
            best = torch.cat([best, d], dim=1).topk(k + 1, dim=1, largest=False).values
        # the k+1-th smallest includes the row itself at distance 0
        radii[start : start + len(rows)] = best[:, k]
    return radii


def density_coverage(
    real: np.ndarray, fake: np.ndarray, k: int = 5, block: int = DEFAULT_BLOCK
) -> dict[str, float]:
    """Density and coverage of ``fake`` against ``real`` (Naeem et al. 2020, k-NN balls of ``real``)."""
    real, fake = _feature_pair(real, fake, "density/coverage")
    r2 = _kth_squared(real, k, block)
    inside = torch.zeros(fake.shape[0], dtype=torch.float64)
    nearest = torch.full((real.shape[0],), float("inf"), dtype=torch.float64)
    for rs, rows, rows_sq in _blocks(real, block):
        radius = r2[rs : rs + len(rows), None]
        for fs, cols, cols_sq in _blocks(fake, block):
            d = _squared_distances(rows, rows_sq, cols, cols_sq)
            inside[fs : fs + len(cols)] += (d < radius).sum(dim=0)
            nearest[rs : rs + len(rows)] = torch.minimum(
                nearest[rs : rs + len(rows)], d.min(dim=1).values
            )
    return {
        "density": float(inside.mean() / k),
        "coverage": float((nearest < r2).double().mean()),
    }


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = DEFAULT_BLOCK
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), torch-fidelity's definitions."""
    real, fake = _feature_pair(real, fake, "precision/recall")
    for what, x in (("real", real), ("generated", fake)):
        if x.shape[0] <= k:
            raise InputError(
                f"precision/recall: needs more than k={k} {what} samples, got {x.shape[0]}"
            )
    real_r2 = _kth_squared(real, k, block)
    fake_r2 = _kth_squared(fake, k, block)
    fake_inside = torch.zeros(fake.shape[0], dtype=torch.bool)
    real_inside = torch.zeros(real.shape[0], dtype=torch.bool)
    for rs, rows, rows_sq in _blocks(real, block):
        for fs, cols, cols_sq in _blocks(fake, block):
            d = _squared_distances(rows, rows_sq, cols, cols_sq)
            fake_inside[fs : fs + len(cols)] |= (d <= real_r2[rs : rs + len(rows), None]).any(dim=0)
            real_inside[rs : rs + len(rows)] |= (d <= fake_r2[None, fs : fs + len(cols)]).any(dim=1)
    precision = float(fake_inside.double().mean())
    recall = float(real_inside.double().mean())
    f_score = 2 * precision * recall / max(1e-5, precision + recall)
    return {"precision": precision, "recall": recall, "f_score": f_score}
