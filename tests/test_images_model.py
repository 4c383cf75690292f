"""``images:DIR`` / ``evalkit score``: scoring images made elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalkit.cli import main
from evalkit.errors import InputError
from evalkit.run import RunOptions, execute
from evalkit.spec import RunSpec
from tests.test_runner import results, tiny_spec


def _options(tmp_path: Path, out: str) -> RunOptions:
    return RunOptions(
        out_root=tmp_path / out, cache_dir=tmp_path / f"cache-{out}", show_progress=False,
        write_report=False,
    )  # fmt: skip


def _images_spec(folder: Path, **kw) -> RunSpec:
    return tiny_spec(model=f"images:{folder}", **kw)


def _folder_of_pngs(tmp_path: Path, n: int = 9, k: int = 2, size: int = 32) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        for s in range(k):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"tiny-{i:03d}_{s}.png")
    return folder


def test_scoring_an_earlier_runs_images_reproduces_its_numbers_exactly(tmp_path):
    spec = tiny_spec(
        metrics=("test-pixel-mean", "fid", "kid"), metric_options={"kid": {"subset_size": 5}}
    )
    first = execute(spec, _options(tmp_path, "gen"))
    rescored = execute(
        RunSpec.from_dict({**spec.to_dict(), "model": f"images:{first / 'images'}"}),
        _options(tmp_path, "score"),
    )
    for name, entry in results(first)["metrics"].items():  # manifests differ in cache paths only
        again = results(rescored)["metrics"][name]
        assert (again["value"], again["values"], again["per_item"]) == (
            entry["value"],
            entry["values"],
            entry["per_item"],
        )
    samples = [json.loads(x) for x in (rescored / "samples.jsonl").read_text().splitlines()]
    assert all(s["source_sha256"] and s["source"].endswith(".png") for s in samples)
    settings = results(rescored)["manifest"]["model"]["settings"]
    assert settings["num_files"] == 18 and settings["resized"] == 0


def test_missing_extra_and_duplicate_files_are_errors_listing_them(tmp_path):
    folder = _folder_of_pngs(tmp_path)
    (folder / "tiny-004_1.png").unlink()
    with pytest.raises(InputError, match=r"1 image\(s\) missing: tiny-004_001"):
        execute(_images_spec(folder), _options(tmp_path, "a"))
    shutil.copy(folder / "tiny-004_0.png", folder / "tiny-004_1.png")
    with pytest.raises(InputError, match=r"2 file\(s\) match no requested image.*tiny-008_0.png"):
        execute(_images_spec(folder, num_samples=8), _options(tmp_path, "b"))
    shutil.copy(folder / "tiny-000_0.png", folder / "tiny-000.png")
    with pytest.raises(
        InputError, match="two files for one image: tiny-000.png and tiny-000_0.png"
    ):
        execute(_images_spec(folder), _options(tmp_path, "c"))
    (folder / "tiny-000.png").unlink()
    (folder / "cat-photo.png").write_bytes((folder / "tiny-000_0.png").read_bytes())
    with pytest.raises(InputError, match="name no item of suite 'test-tiny'.*cat-photo.png"):
        execute(_images_spec(folder), _options(tmp_path, "d"))
    (folder / "cat-photo.png").unlink()
    (folder / "tiny-003_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=r"1 unreadable file\(s\): tiny-003_1.png"):
        execute(_images_spec(folder), _options(tmp_path, "e"))
    assert not list(tmp_path.glob("cache-*/images/??/*.png"))  # all found before any work


def test_mixed_sizes_and_modes_are_converted_and_recorded_non_images_ignored(tmp_path):
    folder = _folder_of_pngs(tmp_path)
    Image.open(folder / "tiny-001_0.png").convert("L").save(folder / "tiny-001_0.png")
    Image.open(folder / "tiny-002_0.png").resize((48, 40)).save(folder / "tiny-002_0.png")
    (folder / "notes.txt").write_text("hello")
    run = execute(_images_spec(folder), _options(tmp_path, "a"))
    settings = results(run)["manifest"]["model"]["settings"]
    assert settings["resized"] == 1 and settings["converted_to_rgb"] == 1
    assert any("notes.txt" in note for note in settings["notes"])
    assert Image.open(run / "images" / "tiny-002_000.png").size == (32, 32)


def test_a_jsonl_manifest_maps_files_by_id_or_prompt(tmp_path):
    folder = _folder_of_pngs(tmp_path, k=1)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    suite_items = [json.loads(x) for x in []]
    del suite_items
    lines = []
    for i, path in enumerate(sorted(folder.iterdir())):
        target = renamed / f"img{i}.png"
        shutil.copy(path, target)
        key = (
            {"id": f"tiny-{i:03d}"}
            if i % 2
            else {"prompt": f"a {['red', 'green', 'blue'][i % 3]} blob number {i}"}
        )
        lines.append(json.dumps({"path": target.name, **key}))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    by_name = execute(_images_spec(folder, images_per_prompt=1), _options(tmp_path, "a"))
    by_manifest = execute(
        _images_spec(renamed, images_per_prompt=1, model_options={"manifest": str(manifest)}),
        _options(tmp_path, "b"),
    )
    assert results(by_manifest)["metrics"] == results(by_name)["metrics"]
    manifest.write_text(json.dumps({"path": "img0.png", "prompt": "no such prompt"}) + "\n")
    with pytest.raises(
        InputError, match=r"manifest.jsonl:1: prompt 'no such prompt' matches no item"
    ):
        execute(
            _images_spec(renamed, images_per_prompt=1, model_options={"manifest": str(manifest)}),
            _options(tmp_path, "c"),
        )


def test_evalkit_score_is_run_with_the_images_model(tmp_path, capsys):
    run = execute(tiny_spec(suite="shapes", suite_options={"num_items": 5}, images_per_prompt=1,
                            metrics=("shapes_accuracy",), resolution=64), _options(tmp_path, "gen"))  # fmt: skip
    code = main(["score", str(run / "images"), "--suite", "shapes", "--num-samples", "5",
                 "--metrics", "shapes_accuracy", "--quiet", "--no-report", "--out",
                 str(tmp_path / "scored"), "--cache-dir", str(tmp_path / "c2")])  # fmt: skip
    assert code == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    scored = json.loads(path.read_text())
    assert (
        scored["metrics"]["shapes_accuracy"]["value"]
        == results(run)["metrics"]["shapes_accuracy"]["value"]
    )
    assert scored["spec"]["model"] == f"images:{(run / 'images').resolve()}"
