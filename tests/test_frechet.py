"""Fréchet distance (eigh) against the sqrtm formula, and the streaming feature statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from evalkit.errors import InputError
from evalkit.metrics.frechet import frechet_distance, psd_factor, psd_sqrt, trace_sqrt_product
from evalkit.metrics.refstats import FeatureSpill, FeatureStats, weighted_moments


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """Test oracle: the classic formula with scipy.linalg.sqrtm (real part)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _gaussian_sample(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift + rng.normal(size=d) * 0.1


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def test_frechet_matches_scipy_sqrtm_formula_at_full_rank():
    mu1, s1 = _moments(_gaussian_sample(500, 64, seed=1))
    mu2, s2 = _moments(_gaussian_sample(500, 64, seed=2, shift=0.3))
    ours = frechet_distance(mu1, s1, mu2, s2)
    oracle = frechet_distance_sqrtm(mu1, s1, mu2, s2)
    assert ours > 0
    assert abs(ours - oracle) / oracle < 1e-6


def test_frechet_matches_torch_fidelity_statistics_to_metric():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    mu1, s1 = _moments(_gaussian_sample(400, 48, seed=3))
    mu2, s2 = _moments(_gaussian_sample(400, 48, seed=4, shift=-0.2))
    theirs = fid_statistics_to_metric(
        {"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        theirs["frechet_inception_distance"], rel=1e-8
    )


def test_frechet_is_real_and_nonnegative_when_fewer_samples_than_dimensions():
    for seed in range(3):
        mu1, s1 = _moments(_gaussian_sample(20, 64, seed=10 + seed))
        mu2, s2 = _moments(_gaussian_sample(30, 64, seed=20 + seed))
        value = frechet_distance(mu1, s1, mu2, s2)
        assert isinstance(value, float) and np.isfinite(value)
        assert value >= -1e-6
        same = frechet_distance(mu1, s1, mu1, s1)
        assert isinstance(same, float) and -1e-6 <= same < 1e-8 * np.trace(s1)


def test_frechet_equals_exact_low_rank_value_when_fewer_samples_than_dimensions():
    a = np.maximum(_gaussian_sample(25, 96, seed=30), 0)
    b = np.maximum(_gaussian_sample(35, 96, seed=31, shift=0.2), 0)
    (mu1, s1), (mu2, s2) = _moments(a), _moments(b)
    # S1 = A Aᵀ, S2 = B Bᵀ  =>  Tr((S1 S2)^1/2) = nuclear norm of Bᵀ A, exact from an SVD
    fa, fb = (a - mu1).T / np.sqrt(24), (b - mu2).T / np.sqrt(34)
    nuclear = np.linalg.svd(fb.T @ fa, compute_uv=False).sum()
    exact = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * nuclear
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-10)


def test_frechet_equals_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 2.0, 32), rng.uniform(0.1, 2.0, 32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_reuses_a_precomputed_factor_and_is_symmetric():
    mu1, s1 = _moments(_gaussian_sample(200, 32, seed=5))
    mu2, s2 = _moments(_gaussian_sample(200, 32, seed=6))
    root = psd_sqrt(s1)
    assert np.allclose(root @ root, s1, atol=1e-10)
    factor = psd_factor(s1)
    assert factor.shape == (32, 32) and np.allclose(factor @ factor.T, s1, atol=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2, factor1=factor) == frechet_distance(mu1, s1, mu2, s2)
    assert trace_sqrt_product(s1, s2) == pytest.approx(trace_sqrt_product(s2, s1), rel=1e-9)
    # the factored form gives the eigenvalues of sqrt(S1) S2 sqrt(S1) itself
    direct = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(direct, rel=1e-10)


def test_full_rank_factor_is_cholesky_and_gives_the_eigh_path_value():
    mu1, s1 = _moments(_gaussian_sample(300, 48, seed=7))
    mu2, s2 = _moments(_gaussian_sample(300, 48, seed=8, shift=0.1))
    factor = psd_factor(s1)
    assert np.array_equal(factor, np.linalg.cholesky(s1))  # lower triangular: the fast path
    w, v = np.linalg.eigh(s1)
    eigh_factor = v * np.sqrt(w)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu1, s1, mu2, s2, factor1=eigh_factor), rel=1e-12
    )


def test_frechet_factor_of_a_singular_covariance_keeps_only_its_rank():
    x = _gaussian_sample(10, 40, seed=12)
    s = np.cov(x, rowvar=False)
    factor = psd_factor(s)
    assert factor.shape == (40, 9)
    assert np.allclose(factor @ factor.T, s, atol=1e-10)
    other = np.cov(_gaussian_sample(60, 40, seed=13), rowvar=False)
    oracle = np.real(np.trace(scipy.linalg.sqrtm(s @ other)))
    assert trace_sqrt_product(s, other) == pytest.approx(oracle, rel=1e-6)


def test_frechet_rejects_bad_shapes_and_non_finite_values():
    mu, s = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu, s, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, s, mu, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="square"):
        frechet_distance(mu, np.ones((4, 3)), mu, s)


# --------------------------------------------------------------------------- FeatureStats


def test_feature_stats_stream_equals_numpy_mean_and_unbiased_cov():
    x = _gaussian_sample(257, 16, seed=7, shift=3.0)
    stats = FeatureStats(16)
    for start, size in [(0, 1), (1, 100), (101, 7), (108, 149)]:
        stats.update(x[start : start + size])
    assert stats.n == 257
    assert np.allclose(stats.mean(), x.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(stats.cov(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_feature_stats_are_accurate_with_a_large_common_offset():
    x = _gaussian_sample(300, 8, seed=8) * 1e-3 + 1e6
    stats = FeatureStats(8)
    for start in range(0, 300, 64):
        stats.update(x[start : start + 64])
    assert np.allclose(stats.cov(), np.cov(x, rowvar=False), rtol=1e-6, atol=1e-15)


def test_feature_stats_merge_equals_one_stream():
    x = _gaussian_sample(120, 12, seed=9)
    a, b, whole = FeatureStats(12), FeatureStats(12), FeatureStats(12)
    a.update(x[:50])
    b.update(x[50:] + 0.0)
    whole.update(x)
    a.merge(b)
    assert a.n == 120
    assert np.allclose(a.mean(), whole.mean(), atol=1e-12)
    assert np.allclose(a.cov(), whole.cov(), atol=1e-12)
    empty = FeatureStats(12).merge(whole)
    assert np.allclose(empty.cov(), whole.cov(), atol=1e-12)


def test_feature_stats_save_load_round_trip_keeps_header(tmp_path: Path):
    x = _gaussian_sample(40, 6, seed=10)
    stats = FeatureStats(6)
    stats.update(x)
    path = stats.save(tmp_path / "s.npz", {"weights_sha256": "abc", "resize": "tf1"})
    loaded, header = FeatureStats.load(path)
    assert header["weights_sha256"] == "abc" and header["num_images"] == 40
    assert loaded.n == 40
    assert np.allclose(loaded.mean(), stats.mean(), atol=1e-14)
    assert np.allclose(loaded.cov(), stats.cov(), atol=1e-14)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04broken"])
def test_feature_stats_load_of_corrupt_file_raises_input_error_naming_it(
    tmp_path: Path, content: bytes
):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(InputError, match="broken.npz"):
        FeatureStats.load(path)


def test_feature_stats_load_of_npz_without_header_raises_input_error(tmp_path: Path):
    path = tmp_path / "foreign.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(InputError, match="foreign.npz"):
        FeatureStats.load(path)


def test_feature_stats_reject_wrong_dimension_and_non_finite_features():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match="expected features"):
        stats.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 4), np.inf))
    with pytest.raises(ValueError, match="at least 2"):
        stats.update(np.zeros((1, 4))) or stats.cov()


def test_weighted_moments_equal_moments_of_repeated_rows():
    x = _gaussian_sample(30, 5, seed=11)
    counts = np.random.default_rng(0).integers(0, 4, size=30)
    repeated = np.repeat(x, counts, axis=0)
    mu, sigma = weighted_moments(x, counts, chunk=7)
    assert np.allclose(mu, repeated.mean(axis=0), atol=1e-12)
    assert np.allclose(sigma, np.cov(repeated, rowvar=False), atol=1e-12)


def test_feature_spill_round_trips_through_a_memmap_and_cleans_up():
    spill = FeatureSpill(3, prefix="test")
    spill.append(np.arange(6, dtype=np.float64).reshape(2, 3))
    spill.append(np.ones((1, 3)))
    arr = spill.array()
    assert isinstance(arr, np.memmap) and arr.shape == (3, 3) and arr.dtype == np.float32
    assert np.array_equal(arr[2], [1, 1, 1]) and arr[1, 2] == 5
    folder = spill._dir
    del arr
    spill.close()
    assert not folder.exists()


def test_distance_to_features_equals_the_covariance_path_at_low_and_full_rank():
    from evalkit.metrics.frechet import frechet_distance_to_features

    mu1, s1 = _moments(_gaussian_sample(300, 48, seed=40))
    for n in (20, 300):  # N < d: the N×N path; N > d: the ordinary one
        x = _gaussian_sample(n, 48, seed=41, shift=0.2)
        mu2, s2 = _moments(x)
        expected = frechet_distance(mu1, s1, mu2, s2)
        assert frechet_distance_to_features(mu1, s1, x) == pytest.approx(expected, rel=1e-10)
    low_rank = _gaussian_sample(30, 48, seed=42)
    mu_r, s_r = _moments(low_rank)
    factor = (low_rank - mu_r).T / np.sqrt(29)
    x = _gaussian_sample(20, 48, seed=43)
    assert frechet_distance_to_features(mu_r, s_r, x, factor1=factor) == pytest.approx(
        frechet_distance(mu_r, s_r, *_moments(x)), rel=1e-9
    )
