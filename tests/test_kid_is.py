"""KID and Inception Score: torch-fidelity equality of the formulas, sanity, determinism, weights."""

# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_fid are used as arguments)

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.metrics import weights as weights_mod
from evalkit.metrics.inception_score import inception_score_from_logits, make_inception_score
from evalkit.metrics.kid import kid_from_features, make_kid
from tests.fixtures_fid import (  # noqa: F401 (pytest fixtures used by name)
    ArrayReferenceSet,
    ArraySuite,
    add_noise,
    context,
    feed,
    one_thread,
    run,
    shared_weights,
    smooth_images,
    weights_cache,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- formulas


def test_kid_formula_equals_torch_fidelity_kid_features_to_metric():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 32)).astype(np.float32)
    b = (rng.normal(size=(50, 32)) + 0.3).astype(np.float32)
    theirs = kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=25,
        kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1, rng_seed=7, verbose=False,
    )  # fmt: skip
    ours = kid_from_features(a, b, subsets=20, subset_size=25, seed=7)
    assert ours.mean() == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5)
    assert ours.std() == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-4)


def test_kid_formula_is_seeded_and_near_zero_for_one_distribution():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    first = kid_from_features(a, b, subsets=10, subset_size=100, seed=3)
    assert np.array_equal(first, kid_from_features(a, b, subsets=10, subset_size=100, seed=3))
    assert not np.array_equal(first, kid_from_features(a, b, subsets=10, subset_size=100, seed=4))
    far = kid_from_features(a, b + 1.0, subsets=10, subset_size=100, seed=3)
    assert abs(first.mean()) < 0.1 * far.mean()


def test_inception_score_formula_equals_torch_fidelity_isc_features_to_metric():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(2).normal(scale=3.0, size=(103, 40)).astype(np.float32)
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=11)
    ours = inception_score_from_logits(logits, splits=10, seed=11)
    assert ours.mean() == pytest.approx(theirs["inception_score_mean"], rel=1e-10)
    assert ours.std() == pytest.approx(theirs["inception_score_std"], rel=1e-8)


def test_inception_score_formula_bounds_confident_distinct_and_uniform_predictions():
    confident = np.eye(10)[np.arange(100) % 10] * 50.0
    assert inception_score_from_logits(confident, splits=1).mean() == pytest.approx(10.0, rel=1e-6)
    assert inception_score_from_logits(np.zeros((20, 10)), splits=2).mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 10"):
        inception_score_from_logits(np.zeros((5, 10)), splits=10)


# --------------------------------------------------------------------------- KID metric


def test_kid_is_near_zero_on_identical_sets_and_positive_on_different_sets(weights_cache):
    reference = smooth_images(8, seed=0)
    ref_set = ArrayReferenceSet(reference)
    ctx = context(ArraySuite(ref_set), weights_cache, seed=5)
    same = run(make_kid({"subsets": 20}, ctx), reference)
    noisy_metric = make_kid({"subsets": 20}, ctx)
    different = run(noisy_metric, add_noise(reference, 60.0))
    assert different.value > 0.01
    # torch-fidelity's "unbiased" estimator on a set against itself is -2(mean k(x,x) - mean
    # k(x,y))/m: slightly negative, O(1/m) with m = 8 here
    assert abs(same.value) < 0.1 * different.value
    assert ref_set.passes == 1  # the second KID read the cached reference features
    assert different.manifest["reference_features"]["origin"] == "cache"
    assert (
        different.manifest["subset_size"] == 8
        and different.manifest["subset_size_requested"] == 1000
    )
    assert "clipped" in different.manifest["notes"][0]
    assert different.values["kid_std"] >= 0 and different.uncalibrated is False
    # deterministic for a fixed seed: computing again gives the same number
    assert noisy_metric.compute().value == different.value


def test_kid_does_not_depend_on_batch_size(weights_cache):
    # 10 images over micro-batches of 4 (tests/conftest.py); runner batches of 1, 3 and 10
    reference = smooth_images(10, seed=0)
    ctx = context(ArraySuite(ArrayReferenceSet(reference)), weights_cache, seed=5)
    generated = add_noise(reference, 30.0, seed=2)
    first, *others = [
        run(make_kid({"subsets": 5}, ctx), generated, batch_size=size) for size in (10, 1, 3)
    ]
    assert all(r.value == first.value and r.values == first.values for r in others)


def test_inception_score_does_not_depend_on_batch_size(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "find_fid_helper_weights", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    ctx = context(ArraySuite(None), tmp_path / "cache", seed=9, allow_random=True)
    images = smooth_images(6, seed=1)
    first, *others = [
        run(make_inception_score({"splits": 2}, ctx), images, batch_size=size) for size in (6, 1, 5)
    ]
    assert all(r.value == first.value and r.values == first.values for r in others)


def test_kid_without_reference_set_raises_usage_error_naming_the_suite(weights_cache):
    with pytest.raises(UsageError, match="'bare-suite'"):
        make_kid({}, context(ArraySuite(None, name="bare-suite"), weights_cache))


# --------------------------------------------------------------------------- IS metric


def test_inception_score_without_logits_weights_raises_missing_weights(
    weights_cache, monkeypatch, tmp_path
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    suite = ArraySuite(None)
    with pytest.raises(MissingWeightsError, match="evalkit fetch inception"):
        make_inception_score({}, context(suite, weights_cache))  # only the converted file is cached
    converted = next(p for p in (weights_cache / "weights").iterdir() if p.suffix == ".pth")
    with pytest.raises(MissingWeightsError, match="logits"):
        make_inception_score({"weights_path": str(converted)}, context(suite, weights_cache))


def test_inception_score_with_random_weights_is_uncalibrated_and_deterministic(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(weights_mod, "find_fid_helper_weights", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    ctx = context(ArraySuite(None), tmp_path / "cache", seed=9, allow_random=True)
    metric = make_inception_score({"splits": 2}, ctx)
    result = run(metric, smooth_images(4, seed=1))
    assert result.uncalibrated is True
    assert result.value >= 1.0 and np.isfinite(result.values["is_std"])
    assert metric.compute().value == result.value
    assert result.manifest["splits"] == 2 and "random" in result.manifest["weights_source"]


def test_inception_score_needs_as_many_images_as_splits(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "find_fid_helper_weights", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    ctx = context(ArraySuite(None), tmp_path / "cache", allow_random=True)
    metric = make_inception_score({}, ctx)
    feed(metric, smooth_images(2))
    with pytest.raises(InputError, match="10 splits"):
        metric.compute()
    with pytest.raises(UsageError, match="splits"):
        make_inception_score({"splits": 0}, ctx)


def test_kid_and_inception_score_accept_the_runners_63_bit_derived_seeds():
    from evalkit.seeding import derive_seed, legacy_numpy_seed

    seed = derive_seed(0, "metrics", 0)  # what evalkit run gives the metrics
    assert seed >= 2**32
    rng = np.random.default_rng(1)
    a, b = rng.random((40, 8)), rng.random((40, 8))
    folded = legacy_numpy_seed(seed)
    assert np.array_equal(
        kid_from_features(a, b, subsets=3, subset_size=10, seed=seed),
        kid_from_features(a, b, subsets=3, subset_size=10, seed=folded),
    )
    logits = rng.normal(size=(20, 5))
    assert np.array_equal(
        inception_score_from_logits(logits, splits=2, seed=seed),
        inception_score_from_logits(logits, splits=2, seed=folded),
    )
