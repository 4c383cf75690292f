"""Study creation: runs must line up, pairs and gold tasks are built, paths stay inside runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalkit.errors import InputError, UsageError
from evalkit.human.demo import DEMO_ITEMS, make_run
from evalkit.human.study import STUDY_FILE, create_study, load_study


def _runs(tmp_path: Path, n: int = 2, **kw) -> list[Path]:
    return [make_run(tmp_path / "runs", f"run{k}", f"model-{k}", seed=k, **kw) for k in range(n)]


def test_create_study_writes_runs_pairs_items_questions_gold_and_targets(tmp_path):
    runs = _runs(tmp_path, 3)
    study = create_study(
        runs, tmp_path / "s", suite="drawbench", images_per_side=3, ratings_per_item=4, gold_tasks=2
    )
    data = json.loads((tmp_path / "s" / STUDY_FILE).read_text())
    assert [r["run_id"] for r in data["runs"]] == ["run0", "run1", "run2"]
    assert [r["model"] for r in data["runs"]] == ["model-0", "model-1", "model-2"]
    assert [(p["a"], p["b"]) for p in data["pairs"]] == [("r0", "r1"), ("r0", "r2"), ("r1", "r2")]
    assert len(data["items"]) == len(DEMO_ITEMS)
    assert data["questions"] == ["fidelity", "alignment"]
    assert data["question_text"]["alignment"].endswith("caption: {caption}?")
    assert data["answers"] == {
        "A": "I prefer set A",
        "tie": "I am indifferent",
        "B": "I prefer set B",
    }
    assert data["target_ratings"] == 3 * len(DEMO_ITEMS) * 4
    assert len(data["gold"]["tasks"]) == 2
    assert all(len(v) == 3 for v in data["items"][0]["images"].values())
    loaded = load_study(tmp_path / "s")
    assert loaded.study_id == study.study_id and len(loaded.tasks()) == 3 * len(DEMO_ITEMS) + 2


def test_baseline_pairs_compare_the_baseline_with_each_other_run(tmp_path):
    runs = _runs(tmp_path, 3)
    study = create_study(
        runs, tmp_path / "s", suite="drawbench", images_per_side=2, baseline=str(runs[1])
    )
    assert [(p.a, p.b) for p in study.pairs.values()] == [("r1", "r0"), ("r1", "r2")]
    assert study.baseline == "r1"


def test_gold_images_are_heavily_degraded_copies_of_a_run_set(tmp_path):
    runs = _runs(tmp_path, 2, size=64)
    study = create_study(runs, tmp_path / "s", suite="drawbench", images_per_side=2, gold_tasks=1)
    (g,) = study.gold.values()
    task = study.tasks()[f"gold:{g.gold_id}"]
    clean = [np.asarray(Image.open(p), dtype=float) for p in study.side_images(task, "clean")]
    bad = [np.asarray(Image.open(p), dtype=float) for p in study.side_images(task, "degraded")]
    assert len(bad) == 2 and all(c.shape == b.shape for c, b in zip(clean, bad, strict=True))
    assert all(np.abs(c - b).mean() > 20 for c, b in zip(clean, bad, strict=True))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"suite": "coco"}, "is on suite 'coco'"),
        ({"suite_version": "2"}, "suite versions differ"),
        ({"images_per_prompt": 3}, "images_per_prompt differ"),
        ({"items": DEMO_ITEMS[:-1]}, "item ids differ"),
        (
            {"items": [(DEMO_ITEMS[0][0], "A blue car.", "Colors"), *DEMO_ITEMS[1:]]},
            "prompt text of item 'db-000' differs",
        ),
    ],
)
def test_runs_that_do_not_line_up_are_refused_naming_the_mismatch(tmp_path, change, message):
    good = make_run(tmp_path / "runs", "good", "m0")
    bad = make_run(tmp_path / "runs", "bad", "m1", **change)
    with pytest.raises(UsageError, match=message):
        create_study([good, bad], tmp_path / "s", suite="drawbench", images_per_side=2)
    assert not (tmp_path / "s" / STUDY_FILE).exists()


def test_too_few_images_per_prompt_for_the_sets_is_refused(tmp_path):
    runs = _runs(tmp_path, 2, images_per_prompt=2)
    with pytest.raises(UsageError, match="fewer than --images-per-side 8"):
        create_study(runs, tmp_path / "s", suite="drawbench", images_per_side=8)


def test_bad_options_are_usage_errors(tmp_path):
    runs = _runs(tmp_path, 2)
    with pytest.raises(UsageError, match="at least two runs"):
        create_study(runs[:1], tmp_path / "s", suite="drawbench")
    with pytest.raises(UsageError, match="--questions"):
        create_study(runs, tmp_path / "s", suite="drawbench", questions=["beauty"])
    with pytest.raises(UsageError, match="--baseline"):
        create_study(runs, tmp_path / "s", suite="drawbench", images_per_side=2, baseline="nope")
    with pytest.raises(UsageError, match="listed twice"):
        create_study([runs[0], runs[0]], tmp_path / "s", suite="drawbench", images_per_side=2)


def test_sample_image_paths_leaving_the_run_folder_are_refused(tmp_path):
    a, b = _runs(tmp_path, 2)
    lines = (b / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["image"] = "../run0/images/" + Path(rec["image"]).name
    (b / "samples.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    with pytest.raises(InputError, match="must be relative and inside"):
        create_study([a, b], tmp_path / "s", suite="drawbench", images_per_side=2)


def test_a_tampered_study_file_cannot_point_images_outside_the_runs(tmp_path):
    runs = _runs(tmp_path, 2)
    create_study(runs, tmp_path / "s", suite="drawbench", images_per_side=2, gold_tasks=0)
    path = tmp_path / "s" / STUDY_FILE
    data = json.loads(path.read_text())
    data["items"][0]["images"]["r0"][0] = "../../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="inside"):
        load_study(tmp_path / "s")


def test_loading_an_unknown_study_names_the_folder(tmp_path):
    with pytest.raises(InputError, match="unknown study"):
        load_study(tmp_path / "nowhere")
