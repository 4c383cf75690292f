"""prc, density_coverage, cmmd, fd_dinov2 and fid's FD-infinity as metrics (tiny random backbones),
``evalkit distance`` and custom reference sets."""

# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_fid are used as arguments)

from __future__ import annotations

import json

import numpy as np
import pytest

from evalkit.cli import main
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.metrics.feature_sets import make_cmmd, make_density_coverage, make_fd_dinov2, make_prc
from evalkit.metrics.fid import make_fid
from evalkit.metrics.manifold import density_coverage, precision_recall
from evalkit.metrics.mmd import cmmd
from evalkit.metrics.refstats import reference_feature_matrix
from evalkit.run import RunOptions, execute
from evalkit.spec import RunSpec
from tests.fixtures_fid import (  # noqa: F401 (pytest fixtures used by name)
    ArrayReferenceSet,
    ArraySuite,
    add_noise,
    context,
    one_thread,
    run,
    save_png_folder,
    shared_weights,
    smooth_images,
    weights_cache,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "prc": (make_prc, {"backbone": "tiny-random"}),
    "density_coverage": (make_density_coverage, {"backbone": "tiny-random"}),
    "cmmd": (make_cmmd, {"model": "tiny-random"}),
    "fd_dinov2": (make_fd_dinov2, {"backbone": "tiny-random"}),
}


def _ctx(tmp_path, reference, allow=True):
    ctx = context(ArraySuite(ArrayReferenceSet(reference)), tmp_path / "cache")
    ctx.allow_random_weights = allow
    return ctx


@pytest.mark.parametrize("name", sorted(TINY))
def test_new_metric_of_a_set_against_itself_is_ideal_and_worsens_with_noise(tmp_path, name):
    factory, options = TINY[name]
    reference = smooth_images(16, seed=0)
    values = {}
    for sigma in (0.0, 40.0, 120.0):
        images = reference if sigma == 0 else add_noise(reference, sigma, seed=1)
        result = run(factory(dict(options), _ctx(tmp_path / f"{name}-{sigma}", reference)), images)
        assert result.uncalibrated and result.manifest["num_generated"] == 16
        values[sigma] = result.value
    if name in ("prc", "density_coverage"):
        assert values[0.0] == 1.0 and values[120.0] < values[0.0]
    else:
        assert abs(values[0.0]) < 1e-6 and values[0.0] < values[40.0] < values[120.0]


def test_new_metrics_equal_their_formulas_on_the_recorded_features(tmp_path):
    reference = smooth_images(16, seed=0)
    generated = add_noise(smooth_images(16, seed=3), 20.0)
    ctx = _ctx(tmp_path, reference)
    metrics = {name: f(dict(o), ctx) for name, (f, o) in TINY.items()}
    for m in metrics.values():
        m.prepare()
    results = {name: run(m, generated) for name, m in metrics.items()}
    vgg = metrics["prc"]
    assert metrics["density_coverage"].extractor is vgg.extractor  # one VGG pass for both
    ref = np.asarray(reference_feature_matrix(ctx, vgg.extractor, vgg.layer, "prc")[0])
    gen = np.asarray(vgg._spill.array())
    assert results["prc"].value == precision_recall(ref, gen, k=3)["precision"]
    assert (
        results["density_coverage"].values["density"] == density_coverage(ref, gen, k=5)["density"]
    )
    c = metrics["cmmd"]
    c_ref = reference_feature_matrix(ctx, c.extractor, c.layer, "cmmd")[0]
    assert results["cmmd"].value == pytest.approx(cmmd(c_ref, c._spill.array()), rel=1e-12)


def test_new_metrics_refuse_random_backbones_unless_allowed_and_name_the_fetch(tmp_path):
    reference = smooth_images(4)
    with pytest.raises(UsageError, match="allow-random-weights"):
        make_prc({"backbone": "tiny-random"}, _ctx(tmp_path, reference, allow=False))
    with pytest.raises(MissingWeightsError, match="evalkit fetch vgg16"):
        make_density_coverage({}, _ctx(tmp_path, reference, allow=False))
    with pytest.raises(MissingWeightsError, match="evalkit fetch dinov2"):
        make_fd_dinov2({}, _ctx(tmp_path, reference, allow=False))
    with pytest.raises(
        MissingWeightsError, match="evalkit fetch clip --model ViT-L-14-336-quickgelu"
    ):
        make_cmmd({}, _ctx(tmp_path, reference, allow=False))
    with pytest.raises(UsageError, match="unknown option"):
        make_prc({"kk": 3}, _ctx(tmp_path, reference))


def test_too_few_images_for_k_is_an_error_not_a_number(tmp_path):
    reference = smooth_images(16)
    with pytest.raises(InputError, match="at least 4 generated"):
        run(make_prc({"backbone": "tiny-random"}, _ctx(tmp_path, reference)), reference[:3])


def test_fid_infinity_is_reported_beside_fid(weights_cache):
    reference = smooth_images(24, seed=0)
    ctx = context(ArraySuite(ArrayReferenceSet(reference)), weights_cache)
    result = run(make_fid({"fid_inf": True}, ctx), add_noise(reference, 16.0))
    assert "fid_inf" in result.values and len(result.details["fid_inf"]["sizes"]) == 15
    assert np.isfinite(result.values["fid_inf"])


def test_distance_of_two_folders_equals_torch_fidelity_fid(
    tmp_path, shared_weights, weights_cache, capsys
):
    import torch_fidelity

    a = save_png_folder(add_noise(smooth_images(12, seed=0), 24.0), tmp_path / "a")
    b = save_png_folder(smooth_images(12, seed=0), tmp_path / "b")
    theirs = torch_fidelity.calculate_metrics(
        input1=str(a), input2=str(b), fid=True, cuda=False, cache=False, verbose=False,
        batch_size=16, save_cpu_ram=True, feature_extractor_weights_path=str(shared_weights.path),
    )["frechet_inception_distance"]  # fmt: skip
    out = tmp_path / "d.json"
    stats = tmp_path / "b-stats.npz"
    code = main(["distance", str(a), str(b), "--metrics", "fid,kid", "--metric-opt", "kid.subset_size=6",
                 "--cache-dir", str(weights_cache), "--json", str(out), "--save-stats", str(stats), "-q"])  # fmt: skip
    assert code == 0
    ours = json.loads(out.read_text())["metrics"]["fid"]["value"]
    assert abs(ours - theirs) / theirs < 1e-4
    # the saved statistics stand in for B, and foreign mu/sigma files are read too
    assert main(["distance", str(a), str(stats), "--metrics", "fid", "--cache-dir", str(weights_cache),
                 "--json", str(out), "-q"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["metrics"]["fid"]["value"] == pytest.approx(ours, rel=1e-12)
    with np.load(stats) as data:
        np.savez(tmp_path / "pytorch-fid.npz", mu=data["mu"], sigma=data["sigma"])
    assert main(["distance", str(a), str(tmp_path / "pytorch-fid.npz"), "--metrics", "fid",
                 "--cache-dir", str(weights_cache), "--json", str(out), "-q"]) == 0  # fmt: skip
    fid = json.loads(out.read_text())["metrics"]["fid"]
    assert fid["value"] == pytest.approx(ours, rel=1e-12)
    assert fid["manifest"]["reference_stats"]["origin"] == "foreign file"
    assert fid["manifest"]["num_reference"] is None
    assert "foreign statistics file" in capsys.readouterr().err
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(64), sigma=np.eye(64))
    assert main(["distance", str(a), str(tmp_path / "wrong.npz"), "--metrics", "fid",
                 "--cache-dir", str(weights_cache), "-q"]) == 3  # fmt: skip
    assert (
        main(
            [
                "distance",
                str(a),
                str(stats),
                "--metrics",
                "kid",
                "--cache-dir",
                str(weights_cache),
                "-q",
            ]
        )
        == 2
    )


def test_a_run_with_ref_folder_or_stats_uses_them_instead_of_the_suite(tmp_path, weights_cache):
    folder = save_png_folder(smooth_images(10, size=48, seed=7), tmp_path / "refs")
    options = RunOptions(
        out_root=tmp_path / "out", cache_dir=weights_cache, show_progress=False, write_report=False
    )
    base = dict(
        model="toy", suite="test-tiny", suite_options={"n": 10}, resolution=32, metrics=("fid",)
    )
    plain = json.loads((execute(RunSpec(**base), options) / "results.json").read_text())
    custom = execute(RunSpec(**base, reference=str(folder)), options)
    result = json.loads((custom / "results.json").read_text())
    identity = result["metrics"]["fid"]["manifest"]["reference_identity"]
    assert identity["name"] == "folder" and identity["count"] == 10 and identity["resolution"] == 32
    assert result["metrics"]["fid"]["value"] != plain["metrics"]["fid"]["value"]
    assert plain["run_id"] != result["run_id"] and "reference" not in plain["spec"]
    with pytest.raises(UsageError, match="holds statistics only"):
        execute(
            RunSpec(**{**base, "metrics": ("kid",)}, reference=str(tmp_path / "x.npz")), options
        ) if ((tmp_path / "x.npz").write_bytes(b"") is not None) else None
