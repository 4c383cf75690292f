"""Reports: results schema validation, report.html / report.md / plots, escaping, sweeps."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from evalkit.errors import InputError
from evalkit.report import build_report, render_sweep
from evalkit.results import load_results, load_samples
from evalkit.textsafe import md_cell

XSS = "<script>alert(1)</script> a red cube"

SAMPLES = [
    # item_id, category, prompt, sample_index
    ("colors-000", "Colors", "a red cube", 0),
    ("colors-000", "Colors", "a red cube", 1),
    ("colors-001", "Colors", XSS, 0),
    ("colors-001", "Colors", XSS, 1),
    ("count-000", "Counting", "three | blue spheres", 0),
    ("count-000", "Counting", "three | blue spheres", 1),
]


def make_results(*, uncalibrated: bool = False) -> dict[str, Any]:
    """A results.json dict as the runner writes it, with fid, clip_score and shapes_accuracy."""
    return {
        "schema_version": 1,
        "run_id": "run-abc123",
        "created": "2026-01-02T03:04:05+00:00",
        "evalkit_version": "0.1.0",
        "spec": {
            "model": "tiny-imagen",
            "model_options": {"guidance": 1.35},
            "suite": "drawbench",
            "suite_options": {},
            "num_samples": None,
            "images_per_prompt": 2,
            "seed": 0,
            "resolution": 64,
            "metrics": ["fid", "clip_score", "shapes_accuracy"],
            "metric_options": {},
        },
        "manifest": {
            "suite": {
                "name": "drawbench",
                "version": "1",
                "source_sha256": "ab" * 32,
                "num_items": 3,
            },
            "model": {
                "name": "tiny-<b>imagen</b>",
                "fingerprint": {"weights_sha256": "cd" * 32},
                "settings": {"guidance": 1.35},
                "native_resolution": 64,
                "uncalibrated": uncalibrated,
            },
            "sampling": {
                "num_images": 6,
                "images_per_prompt": 2,
                "seed": 0,
                "resolution": 64,
                "image_format": "png",
                "seed_derivation": "sha256(run_seed, item_id, sample_index)",
            },
            "environment": {
                "python": "3.11.7",
                "platform": "linux",
                "packages": {"torch": "2.14.1"},
                "git_commit": "0123456789abcdef",
                "git_dirty": False,
                "hardware": {"device": "cpu", "cpu": "x86_64", "gpus": [], "world_size": 1},
            },
            "timings": {
                "generate_s": 1.5,
                "metrics_s": {"fid": 0.7, "clip_score": 0.3, "shapes_accuracy": 0.1},
                "total_s": 2.75,
                "images_generated": 4,
                "images_from_cache": 2,
            },
        },
        "metrics": {
            "fid": {
                "name": "fid",
                "value": 12.3456,
                "interval": [11.5, 13.25],
                "values": {},
                "per_item": None,
                "per_category": None,
                "details": {},
                "manifest": {
                    "implementation": "torch-fidelity inception-v3-compat",
                    "weights_sha256": "f" * 64,
                    "resize": "tf1-bilinear-299",
                    "reference_identity": {
                        "name": "coco2014-val",
                        "count": 40504,
                        "content_sha256": "9" * 64,
                    },
                    "reference_stats": {"key": "7" * 64, "origin": "cache", "path": "/cache/x.npz"},
                    "torch_version": "2.14.1",
                },
                "uncalibrated": False,
            },
            "clip_score": {
                "name": "clip_score",
                "value": 0.2734,
                "interval": [0.26, 0.285],
                "values": {"clip_score_x100": 27.34},
                "per_item": {"colors-000": 0.28, "colors-001": 0.27, "count-000": 0.27},
                "per_category": {
                    "Colors": {"value": 0.275, "interval": [0.27, 0.28], "n": 2},
                    "Counting": {"value": 0.27, "interval": [0.27, 0.27], "n": 1},
                },
                "details": {},
                "manifest": {
                    "backbone": "ViT-L-14-quickgelu",
                    "pretrained": "openai",
                    "scale": {
                        "value": "raw cosine cos(E_I, E_T); mean per prompt",
                        "clip_score_x100": "100 x",
                    },
                },
                "uncalibrated": uncalibrated,
            },
            "shapes_accuracy": {
                "name": "shapes_accuracy",
                "value": 0.5,
                "interval": [0.0, 1.0],
                "values": {},
                "per_item": {"colors-000": 1.0, "colors-001": 0.5, "count-000": 0.0},
                "per_category": {
                    "Colors": {"value": 0.75, "interval": [0.5, 1.0], "n": 2},
                    "Counting": {"value": 0.0, "interval": [0.0, 0.0], "n": 1},
                },
                "details": {
                    "verdicts": [
                        {
                            "item_id": "count-000",
                            "sample_index": 0,
                            "correct": False,
                            "reason": "found 2 <spheres>",
                        },
                        {
                            "item_id": "colors-000",
                            "sample_index": 1,
                            "correct": True,
                            "reason": "red cube found",
                        },
                    ]
                },
                "manifest": {"implementation": "shapes-detector v1"},
                "uncalibrated": False,
            },
        },
        "uncalibrated": uncalibrated,
    }


def write_run(
    tmp_path: Path, results: dict[str, Any] | None = None, image_override: str | None = None
) -> Path:
    """A synthetic run dir: results.json, samples.jsonl and 6 tiny PNGs."""
    run = tmp_path / "run-abc123"
    (run / "images").mkdir(parents=True)
    lines = []
    for n, (item, cat, prompt, k) in enumerate(SAMPLES):
        name = f"images/{item}_{k}.png"
        Image.new("RGB", (8, 8), (40 * n, 100, 200)).save(run / name)
        image = image_override if (image_override and n == 0) else name
        rec = {"item_id": item, "sample_index": k, "seed": 1000 + n, "prompt": prompt,
               "category": cat, "image": image, "key": f"k{n}"}  # fmt: skip
        lines.append(json.dumps(rec))
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    (run / "results.json").write_text(json.dumps(results or make_results()))
    return run


def test_build_report_writes_html_md_and_plots_with_values(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    paths = build_report(run)
    names = {p.name for p in paths}
    assert {"report.html", "report.md"} <= names
    assert {"clip_score_per_category.png", "clip_score_per_category.svg"} <= names
    assert {"shapes_accuracy_per_category.png", "shapes_accuracy_per_category.svg"} <= names
    assert "fid_per_category.png" not in names  # fid has no per_category
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        assert p.resolve().is_relative_to(run.resolve())
    assert (run / "assets" / "clip_score_per_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (run / "report.html").read_text()
    for text in ("12.35", "[11.5, 13.25]", "0.2734", "27.34", "coco2014-val", "content_sha256 999999999999", "777777777777", "ffffffffffff",
                 "tf1-bilinear-299", "ViT-L-14-quickgelu", "raw cosine", "run-abc123",
                 "drawbench", "6 images", "assets/clip_score_per_category.png",
                 'src="images/colors-000_0.png"', "red cube found", "<details>", "2.75 s"):  # fmt: skip
        assert text in page, text
    md = (run / "report.md").read_text()
    for text in ("| fid ↓", "12.35", "[11.5, 13.25]", "0.2734", "| Colors |", "0.275 [0.27, 0.28] (n=2)",
                 "ViT-L-14-quickgelu", "coco2014-val"):  # fmt: skip
        assert text in md, text


def test_html_escapes_prompts_model_names_and_reasons(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    build_report(run)
    page = (run / "report.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a red cube" in page
    assert "tiny-&lt;b&gt;imagen&lt;/b&gt;" in page and "<b>imagen</b>" not in page
    assert "found 2 &lt;spheres&gt;" in page


def test_markdown_escapes_pipes_and_html_in_cells() -> None:
    assert md_cell("a|b") == "a\\|b"
    assert md_cell("<b>x</b>\nnext") == "&lt;b&gt;x&lt;/b&gt; next"


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "/etc/passwd", "images/../../x.png", "C:\\x.png"]
)
def test_sample_image_path_outside_run_dir_is_refused(tmp_path: Path, bad: str) -> None:
    run = write_run(tmp_path, image_override=bad)
    with pytest.raises(InputError, match="samples.jsonl:1"):
        build_report(run)
    assert not (run / "report.html").exists()


def test_uncalibrated_banner_appears_iff_uncalibrated(tmp_path: Path) -> None:
    calibrated = write_run(tmp_path / "a", make_results(uncalibrated=False))
    uncalibrated = write_run(tmp_path / "b", make_results(uncalibrated=True))
    build_report(calibrated)
    build_report(uncalibrated)
    assert "UNCALIBRATED" not in (calibrated / "report.html").read_text()
    assert "UNCALIBRATED" not in (calibrated / "report.md").read_text()
    page = (uncalibrated / "report.html").read_text()
    assert 'class="banner-uncal"' in page and "UNCALIBRATED" in page
    assert "UNCALIBRATED" in (uncalibrated / "report.md").read_text()


def test_load_results_missing_metrics_names_file_and_key(tmp_path: Path) -> None:
    data = make_results()
    del data["metrics"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"results\.json: metrics: missing required key"):
        load_results(path)


def test_load_results_wrong_nested_type_names_key_path(tmp_path: Path) -> None:
    data = make_results()
    data["manifest"]["sampling"]["resolution"] = "64"
    data2 = copy.deepcopy(make_results())
    data2["metrics"]["clip_score"]["per_category"]["Colors"]["interval"] = [0.1, "x"]
    for d, key in ((data, "manifest.sampling.resolution"),
                   (data2, r"metrics.clip_score.per_category.Colors.interval\[1\]")):  # fmt: skip
        path = tmp_path / "results.json"
        path.write_text(json.dumps(d))
        with pytest.raises(InputError, match=key):
            load_results(path)


def test_load_results_accepts_valid_file_and_rejects_other_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(make_results()))
    assert load_results(path)["run_id"] == "run-abc123"
    data = make_results()
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="schema_version"):
        load_results(path)


def test_load_samples_missing_key_names_line(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    lines = (run / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    del rec["prompt"]
    lines[2] = json.dumps(rec)
    (run / "samples.jsonl").write_text("\n".join(lines))
    with pytest.raises(InputError, match=r"samples\.jsonl:3: prompt: missing required key"):
        load_samples(run / "samples.jsonl")


def test_report_without_samples_file_still_renders(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    (run / "samples.jsonl").unlink()
    build_report(run)
    assert "No samples.jsonl found" in (run / "report.html").read_text()


def _sweep_results(guidance: float, fid: float | None, clip: float | None) -> dict[str, Any]:
    r = make_results()
    r["run_id"] = f"run-g{guidance}"
    r["manifest"]["model"]["settings"] = {"guidance": guidance}
    if fid is None:
        del r["metrics"]["fid"]
    else:
        r["metrics"]["fid"]["value"] = fid
        r["metrics"]["fid"]["interval"] = [fid - 0.4, fid + 0.4]
    if clip is None:
        del r["metrics"]["clip_score"]
    else:
        r["metrics"]["clip_score"]["value"] = clip
        r["metrics"]["clip_score"]["interval"] = [clip - 0.002, clip + 0.002]
    return r


def test_sweep_renders_tradeoff_png_and_tables_for_three_points(tmp_path: Path) -> None:
    results = [
        _sweep_results(1.0, 14.0, 0.255),
        _sweep_results(3.0, 10.5, 0.27),
        _sweep_results(8.0, 12.0, 0.28),
    ]
    paths = render_sweep(results, "guidance", [1.0, 3.0, 8.0], tmp_path / "sweep")
    assert {p.name for p in paths} == {"sweep.png", "sweep.svg", "sweep.json", "sweep.md"}
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert summary["kind"] == "fid_vs_clip_score"
    assert [p["value"] for p in summary["points"]] == [1.0, 3.0, 8.0]
    assert [p["fid"] for p in summary["points"]] == [14.0, 10.5, 12.0]
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| 3.0 | run-g3.0 | 10.5 |" in md and "0.27" in md
    assert "guidance=8.0" in (tmp_path / "sweep" / "sweep.svg").read_text()


def test_sweep_with_only_one_metric_plots_it_against_the_parameter(tmp_path: Path) -> None:
    results = [_sweep_results(g, None, c) for g, c in ((1.0, 0.25), (2.0, 0.26), (4.0, 0.27))]
    render_sweep(results, "guidance", [1.0, 2.0, 4.0], tmp_path)
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["kind"] == "metric_vs_param"
    assert all(p["fid"] is None for p in summary["points"])
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_sweep_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="2 results but 3 values"):
        render_sweep([make_results(), make_results()], "guidance", [1, 2, 3], tmp_path)


def test_sample_image_symlink_leading_outside_run_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    run = write_run(tmp_path, image_override="images/link.png")
    (run / "images" / "link.png").symlink_to(outside)
    with pytest.raises(InputError, match="outside the run folder"):
        build_report(run)


def with_stages(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with a two-stage ``stages`` list as ``evalkit run --per-stage`` writes it."""
    base = copy.deepcopy(results["metrics"]["fid"])
    base.update(value=48.5, interval=[45.0, 51.25])
    results["stages"] = [
        {"name": "base@<i>32</i>", "native_resolution": 32, "latency_s_per_image": 0.125,
         "metrics": {"fid": base}, "metrics_s": {"fid": 0.5}, "images": "images/stages/base@32"},
        {"name": "sr64@64", "native_resolution": 64, "latency_s_per_image": None,
         "metrics": copy.deepcopy(results["metrics"]), "images": "images"},
    ]  # fmt: skip
    return results


def test_load_results_accepts_stages(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(with_stages(make_results())))
    assert [s["name"] for s in load_results(path)["stages"]] == ["base@<i>32</i>", "sr64@64"]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda r: r.update(stages={"base": {}}), r"stages: expected list, got object"),
        (lambda r: r["stages"][0].pop("latency_s_per_image"), r"stages\[0\]\.latency_s_per_image: missing"),
        (lambda r: r["stages"][1].update(native_resolution="64"), r"stages\[1\]\.native_resolution: expected integer"),
        (lambda r: r["stages"][0]["metrics"]["fid"].update(interval=[1.0]), r"stages\[0\]\.metrics\.fid\.interval"),
        (lambda r: r["stages"][0]["metrics"]["fid"].pop("value"), r"stages\[0\]\.metrics\.fid\.value: missing"),
        (lambda r: r["stages"][1].update(name="base@<i>32</i>"), r"stages\[1\]\.name: duplicate"),
    ],
)  # fmt: skip
def test_load_results_refuses_malformed_stages_naming_the_key(
    tmp_path: Path, break_it: Any, message: str
) -> None:
    data = with_stages(make_results())
    break_it(data)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        load_results(path)


def test_reports_show_the_per_stage_table_escaped_and_only_for_per_stage_runs(
    tmp_path: Path,
) -> None:
    run = write_run(tmp_path / "staged", with_stages(make_results()))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "### Per stage" in md
    assert (
        "| stage | resolution | latency (s/image) | fid ↓ | clip_score ↑ | shapes_accuracy ↑ |"
        in md
    )
    assert "| base@&lt;i&gt;32&lt;/i&gt; | 32 px | 0.125 | 48.5 [45, 51.25] | — | — |" in md
    assert "| sr64@64 | 64 px | — (cached) | 12.35 [11.5, 13.25] | 0.2734 [0.26, 0.285] |" in md
    page = (run / "report.html").read_text()
    assert "<h2>Per stage</h2>" in page and "<i>32</i>" not in page
    assert "base@&lt;i&gt;32&lt;/i&gt;" in page and "48.5" in page and "[45, 51.25]" in page
    plain = write_run(tmp_path / "plain")
    build_report(plain)
    assert "Per stage" not in (plain / "report.md").read_text()
    assert "Per stage" not in (plain / "report.html").read_text()
