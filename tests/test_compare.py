"""Comparing results: protocol check before numbers, deltas by metric direction."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from evalkit.errors import ProtocolMismatchError
from evalkit.report.compare import check_compatible, compare_results, render_comparison_md
from evalkit.results import load_results


def make_results(run_id: str = "a", fid: float = 10.0, clip: float = 0.27) -> dict[str, Any]:
    """A minimal but complete results dict with fid and clip_score."""
    return {
        "schema_version": 1,
        "run_id": run_id,
        "created": "2026-01-01T00:00:00+00:00",
        "evalkit_version": "0.1.0",
        "spec": {
            "model": "model-a",
            "model_options": {},
            "suite": "coco-fid30k",
            "suite_options": {"split": "val2014"},
            "num_samples": 30000,
            "images_per_prompt": 1,
            "seed": 0,
            "resolution": 256,
            "metrics": ["fid", "clip_score"],
            "metric_options": {"fid": {"batch_size": 64}},
        },
        "manifest": {
            "suite": {"name": "coco-fid30k", "version": "1", "num_items": 30000},
            "model": {
                "name": "model-a",
                "fingerprint": {"weights_sha256": "1" * 64},
                "settings": {},
            },
            "sampling": {
                "num_images": 30000,
                "images_per_prompt": 1,
                "seed": 0,
                "resolution": 256,
                "image_format": "png",
                "seed_derivation": "sha256(seed,item,k)",
            },
            "environment": {"python": "3.11.7", "hardware": {"device": "cuda:0", "world_size": 8}},
            "timings": {"total_s": 100.0},
        },
        "metrics": {
            "fid": {
                "name": "fid",
                "value": fid,
                "interval": [fid - 0.2, fid + 0.2],
                "manifest": {
                    "implementation": "torch-fidelity",
                    "weights_sha256": "f" * 64,
                    "resize": "tf1-bilinear-299",
                    "reference": {"name": "coco2014-val", "sha256": "9" * 64},
                    "versions": {"torch": "2.14.1"},
                },
            },
            "clip_score": {
                "name": "clip_score",
                "value": clip,
                "interval": [clip - 0.001, clip + 0.001],
                "per_category": {"all": {"value": clip, "interval": None, "n": 30000}},
                "manifest": {
                    "backbone": "ViT-L-14-quickgelu",
                    "pretrained": "openai",
                    "weights_sha256": "c" * 64,
                },
            },
        },
        "uncalibrated": False,
    }


def test_identical_manifests_have_no_differences() -> None:
    a = make_results("a")
    assert check_compatible(a, copy.deepcopy(a)) == []


def test_model_environment_and_timing_differences_are_notes_not_errors() -> None:
    a, b = make_results("a"), make_results("b", fid=9.0)
    b["spec"]["model"] = "model-b"
    b["manifest"]["model"] = {"name": "model-b", "fingerprint": {"weights_sha256": "2" * 64}}
    b["manifest"]["environment"]["hardware"]["world_size"] = 1
    b["manifest"]["timings"]["total_s"] = 50.0
    b["metrics"]["fid"]["manifest"]["versions"] = {"torch": "2.15.0"}
    b["spec"]["metric_options"]["fid"]["batch_size"] = 8
    assert check_compatible(a, b) == []
    notes = compare_results(a, b)["notes"]
    for key in ("manifest.model.name", "manifest.model.fingerprint.weights_sha256",
                "manifest.environment.hardware.world_size", "manifest.timings.total_s",
                "metrics.fid.manifest.versions.torch", "spec.metric_options.fid.batch_size"):  # fmt: skip
        assert any(n.startswith(key) for n in notes), key


def _incompatible_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = make_results("a"), make_results("b")
    b["metrics"]["clip_score"]["manifest"]["backbone"] = "ViT-B-16"
    b["metrics"]["fid"]["manifest"]["weights_sha256"] = "e" * 64
    b["spec"]["num_samples"] = 10000
    b["manifest"]["suite"]["num_items"] = 10000
    b["manifest"]["sampling"]["num_images"] = 10000
    b["manifest"]["sampling"]["resolution"] = 64
    b["spec"]["resolution"] = 64
    return a, b


def test_protocol_differences_raise_listing_each_one() -> None:
    a, b = _incompatible_pair()
    with pytest.raises(ProtocolMismatchError) as err:
        check_compatible(a, b)
    msg = str(err.value)
    for key in ("metrics.clip_score.manifest.backbone: 'ViT-L-14-quickgelu' vs 'ViT-B-16'",
                "metrics.fid.manifest.weights_sha256", "spec.num_samples: 30000 vs 10000",
                "manifest.suite.num_items", "manifest.sampling.resolution: 256 vs 64"):  # fmt: skip
        assert key in msg, key
    with pytest.raises(ProtocolMismatchError):
        compare_results(a, b)


@pytest.mark.parametrize(
    "path,value",
    [
        (("manifest", "suite", "version"), "2"),
        (("spec", "suite_options", "split"), "val2017"),
        (("manifest", "sampling", "images_per_prompt"), 4),
        (("manifest", "sampling", "seed_derivation"), "legacy"),
        (("metrics", "fid", "manifest", "resize"), "pil-bicubic"),
        (("metrics", "fid", "manifest", "reference", "sha256"), "8" * 64),
        (("metrics", "clip_score", "manifest", "pretrained"), "laion2b"),
        (("metrics", "clip_score", "manifest", "weights_sha256"), "d" * 64),
        (("metrics", "fid", "uncalibrated"), True),
    ],
)
def test_each_protocol_key_blocks_comparison(path: tuple[str, ...], value: Any) -> None:
    a, b = make_results("a"), make_results("b")
    node = b
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ProtocolMismatchError, match=r"\.".join(path[-2:])):
        check_compatible(a, b)


def test_force_returns_differences_as_warnings() -> None:
    a, b = _incompatible_pair()
    warnings = check_compatible(a, b, force=True)
    assert len(warnings) == 6  # backbone, fid sha, num_samples, num_items, num_images, resolution
    comparison = compare_results(a, b, force=True)
    assert comparison["warnings"] == warnings and not comparison["compatible"]
    assert "Protocol differences" in render_comparison_md(comparison)


def test_deltas_and_direction_for_fid_and_clip_score() -> None:
    a = make_results("a", fid=10.0, clip=0.27)
    b = make_results("b", fid=8.0, clip=0.26)
    c = compare_results(a, b)
    fid, clip = c["metrics"]["fid"], c["metrics"]["clip_score"]
    assert fid["direction"] == "lower" and fid["delta"] == pytest.approx(-2.0)
    assert fid["relative"] == pytest.approx(-0.2)
    assert fid["verdict"] == "better" and fid["clear"] is True  # [7.8, 8.2] vs [9.8, 10.2]
    assert clip["direction"] == "higher" and clip["delta"] == pytest.approx(-0.01)
    assert clip["verdict"] == "worse"
    assert clip["per_category"]["all"]["verdict"] == "worse"
    # the other way round flips both verdicts
    r = compare_results(b, a)
    assert (
        r["metrics"]["fid"]["verdict"] == "worse"
        and r["metrics"]["clip_score"]["verdict"] == "better"
    )
    assert compare_results(a, copy.deepcopy(a))["metrics"]["fid"]["verdict"] == "same"


def test_overlapping_intervals_are_not_a_clear_change() -> None:
    c = compare_results(make_results("a", fid=10.0), make_results("b", fid=10.1))
    assert c["metrics"]["fid"]["verdict"] == "worse"
    assert (
        c["metrics"]["fid"]["intervals_overlap"] is True and c["metrics"]["fid"]["clear"] is False
    )


def test_metrics_only_in_one_result_are_noted_not_compared() -> None:
    a, b = make_results("a"), make_results("b")
    del b["metrics"]["clip_score"]
    c = compare_results(a, b)
    assert list(c["metrics"]) == ["fid"] and c["only_in_a"] == ["clip_score"]
    assert "metric 'clip_score' only in a" in c["notes"]


def test_comparison_markdown_has_table_and_verdicts() -> None:
    md = render_comparison_md(
        compare_results(make_results("a", fid=10.0), make_results("b", fid=8.0))
    )
    assert "| fid ↓ | 10 [9.8, 10.2] | 8 [7.8, 8.2] | -2 | -20.0% | ✅ better | **no** |" in md
    assert "| clip_score ↑ |" in md and "UNCALIBRATED" not in md


def test_machine_keys_at_any_depth_are_notes() -> None:
    a, b = make_results("a"), make_results("b")
    a["metrics"]["fid"]["manifest"]["reference_stats"] = {
        "key": "k1",
        "origin": "cache",
        "path": "/x",
    }
    b["metrics"]["fid"]["manifest"]["reference_stats"] = {
        "key": "k1",
        "origin": "computed",
        "path": "/y",
    }
    b["metrics"]["clip_score"]["manifest"]["torch_version"] = "9.9"
    b["metrics"]["clip_score"]["manifest"]["weights_source"] = "cache"
    b["spec"]["suite_options"]["root"] = "/data/coco"
    assert check_compatible(a, b) == []
    b["metrics"]["fid"]["manifest"]["reference_stats"]["key"] = "k2"
    with pytest.raises(ProtocolMismatchError, match=r"reference_stats\.key"):
        check_compatible(a, b)


def test_real_runs_that_differ_only_in_seed_are_comparable(tmp_path) -> None:
    """The run seed and every seed derived from it (KID subsets, IS splits, bootstrap) are notes."""
    from evalkit.run import RunOptions, execute
    from evalkit.spec import RunSpec

    runs = []
    for seed in (0, 1):
        spec = RunSpec(
            model="toy",
            suite="shapes",
            suite_options={"num_items": 10},
            seed=seed,
            resolution=64,
            metrics=("fid", "kid", "is", "shapes_accuracy"),
            metric_options={"fid": {"bootstrap": 5}, "kid": {"subset_size": 5, "subsets": 3}},
        )
        options = RunOptions(
            out_root=tmp_path / "out", cache_dir=tmp_path / "c", show_progress=False,
            write_report=False, allow_random_weights=True,  # IS needs logits: random offline
        )  # fmt: skip
        runs.append(load_results(execute(spec, options) / "results.json"))
    comparison = compare_results(runs[0], runs[1])
    assert comparison["compatible"] and not comparison["warnings"]
    assert any("seed" in note for note in comparison["notes"])
    assert set(comparison["metrics"]) == {"fid", "kid", "is", "shapes_accuracy"}
