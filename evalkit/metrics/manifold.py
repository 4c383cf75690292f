"""k-nearest-neighbour manifold metrics over feature sets: precision/recall and density/coverage.

- **Precision/recall** (Kynkäänniemi et al. 2019): the share of generated samples inside the
  union of the real samples' k-NN balls, and of real samples inside the generated ones'
  (k = 3). Computed by torch-fidelity 0.4's ``calculate_precision_recall_part`` (its
  convention: a point on a ball's boundary counts as inside).
- **Density/coverage** (Naeem et al. 2020): density = (1/k)·mean over generated samples of
  the number of real k-NN balls containing it; coverage = share of real samples whose ball
  contains at least one generated sample (k = 5). The ``prdc`` package's definitions (strict
  ``<``), computed block by block so memory is O(block × N) instead of O(N²).

Distances are Euclidean in float64 (exact differences, no ‖x‖² + ‖y‖² − 2xy expansion).
"""

from __future__ import annotations

import numpy as np
import torch

from evalkit.errors import InputError

DEFAULT_BLOCK = 1024


def _as_tensor(features: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    x = torch.from_numpy(np.array(features, dtype=np.float64))  # a copy: features may be read-only
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(
            f"{what}: expected a non-empty (N, D) feature matrix, got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise InputError(f"{what}: features contain NaN or infinite values")
    return x


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def kth_neighbour_radii(features: torch.Tensor, k: int, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row (the row itself excluded)."""
    n = features.shape[0]
    if n <= k:
        raise InputError(f"a {k}-nearest-neighbour radius needs more than {k} samples, got {n}")
    radii = [
        _cdist(features[s : s + block], features).kthvalue(k + 1, dim=1).values
        for s in range(0, n, block)
    ]
    return torch.cat(radii)


def density_coverage(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 5,
    block: int = DEFAULT_BLOCK,
) -> dict[str, float]:
    """Density and coverage of ``fake`` against ``real`` (Naeem et al. 2020, k-NN balls of ``real``)."""
    r = _as_tensor(real, "density/coverage: real features")
    f = _as_tensor(fake, "density/coverage: generated features")
    if r.shape[1] != f.shape[1]:
        raise InputError(
            f"density/coverage: feature dimensions differ ({r.shape[1]} vs {f.shape[1]})"
        )
    radii = kth_neighbour_radii(r, k, block)
    inside_counts = torch.zeros(f.shape[0], dtype=torch.float64)
    nearest_fake = torch.empty(r.shape[0], dtype=torch.float64)
    for s in range(0, r.shape[0], block):
        d = _cdist(r[s : s + block], f)  # (block of real, all fake)
        inside_counts += (d < radii[s : s + block, None]).sum(dim=0)
        nearest_fake[s : s + block] = d.min(dim=1).values
    density = float(inside_counts.mean() / k)
    coverage = float((nearest_fake < radii).double().mean())
    return {"density": density, "coverage": coverage}


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    block: int = DEFAULT_BLOCK,
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) by torch-fidelity's implementation."""
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    r = _as_tensor(real, "precision/recall: real features")
    f = _as_tensor(fake, "precision/recall: generated features")
    if r.shape[1] != f.shape[1]:
        raise InputError(
            f"precision/recall: feature dimensions differ ({r.shape[1]} vs {f.shape[1]})"
        )
    for what, x in (("real", r), ("generated", f)):
        if x.shape[0] <= k:
            raise InputError(
                f"precision/recall: needs more than k={k} {what} samples, got {x.shape[0]}"
            )
    precision, recall = calculate_precision_recall_part(f, r, neighborhood=k, batch_size=block)
    f_score = 2 * precision * recall / max(1e-5, precision + recall)
    return {"precision": float(precision), "recall": float(recall), "f_score": float(f_score)}
