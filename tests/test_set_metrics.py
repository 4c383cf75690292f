"""Set-level metrics over features against their reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.errors import InputError
from evalkit.metrics.frechet import frechet_distance, frechet_distance_infinity
from evalkit.metrics.manifold import density_coverage, precision_recall
from evalkit.metrics.mmd import cmmd, rbf_mmd2


def _features(n: int, d: int = 16, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)).astype(np.float32)
    return base + noise * rng.normal(size=(n, d)).astype(np.float32)


def test_density_coverage_and_precision_recall_equal_prdc():
    prdc = pytest.importorskip("prdc")
    real, fake = _features(300, seed=1), _features(250, seed=2, noise=0.5)
    theirs = prdc.compute_prdc(real, fake, nearest_k=5)
    ours = density_coverage(real, fake, k=5, block=64)  # several blocks on each side
    assert ours["density"] == pytest.approx(theirs["density"], abs=1e-12)
    assert ours["coverage"] == pytest.approx(theirs["coverage"], abs=1e-12)


def test_precision_recall_equal_torch_fidelity_prc():
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = _features(300, seed=3), _features(200, seed=4, noise=0.7)
    theirs = prc_features_to_metric(
        torch.from_numpy(fake).double(), torch.from_numpy(real).double(),
        prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False,
    )  # fmt: skip
    ours = precision_recall(real, fake, k=3, block=50)
    # the same counts of samples inside balls (torch-fidelity averages in float32)
    assert round(ours["precision"] * 200) == round(theirs["precision"] * 200)
    assert round(ours["recall"] * 300) == round(theirs["recall"] * 300)


def test_manifold_metrics_are_perfect_for_a_set_against_itself_and_fall_with_noise():
    real = _features(200, seed=5)
    assert density_coverage(real, real)["coverage"] == 1.0
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0, "f_score": 1.0}
    coverage = [
        density_coverage(real, _features(200, seed=5, noise=s) + s)["coverage"]
        for s in (0.2, 1.0, 3.0)
    ]
    assert coverage[0] > coverage[1] > coverage[2]


def test_manifold_metrics_refuse_too_few_samples():
    with pytest.raises(InputError, match="more than 5 samples"):
        density_coverage(_features(5), _features(20))
    with pytest.raises(InputError, match="more than k=3 generated samples"):
        precision_recall(_features(20), _features(3))


def test_cmmd_equals_the_reference_formula_and_the_clip_mmd_port():
    x = _features(120, d=32, seed=6)
    y = _features(90, d=32, seed=7, noise=0.3) + 0.2
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    gamma = 1 / (2 * 10.0**2)

    def k(a, b):
        d2 = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-gamma * d2).mean()

    direct = 1000 * (k(x, x) + k(y, y) - 2 * k(x, y))
    assert cmmd(x, y) == pytest.approx(direct, rel=1e-9)
    port = pytest.importorskip("clip_mmd.calculation")
    theirs = float(port.mmd(torch.from_numpy(x).double(), torch.from_numpy(y).double()))
    assert cmmd(x, y) == pytest.approx(theirs, rel=1e-9)
    assert rbf_mmd2(x, y, block=7) == pytest.approx(rbf_mmd2(x, y, block=1000), rel=1e-12)


def test_cmmd_is_zero_for_a_set_against_itself_and_grows_with_a_shift():
    x = _features(100, d=8, seed=8)
    assert abs(cmmd(x, x)) < 1e-9
    values = [cmmd(x, x + s) for s in (0.5, 2.0, 8.0)]
    assert values[0] < values[1] < values[2]


def test_fd_infinity_extrapolates_like_dgm_eval_on_the_same_subsets():
    from sklearn.linear_model import LinearRegression

    ref = _features(3000, d=8, seed=9)
    gen = _features(2000, d=8, seed=10, noise=0.5)
    mu, sigma = ref.mean(0).astype(np.float64), np.cov(ref.astype(np.float64), rowvar=False)
    out = frechet_distance_infinity(mu, sigma, gen, seed=3)
    assert out["sizes"][0] == 200 and out["sizes"][-1] == 2000 and len(out["fds"]) == 15
    fit = LinearRegression().fit(1 / np.array(out["sizes"]).reshape(-1, 1), np.array(out["fds"]))
    assert out["value"] == pytest.approx(float(fit.intercept_), rel=1e-9)
    full = frechet_distance(mu, sigma, gen.mean(0), np.cov(gen.astype(np.float64), rowvar=False))
    assert out["value"] < full  # FD is biased upwards at finite N
