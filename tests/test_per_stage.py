"""`evalkit run --per-stage`: every cascade stage cached, scored and timed; cache shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evalkit.errors import UsageError
from evalkit.generators.imagen_adapter import ImagenGenerator
from evalkit.results import load_results
from evalkit.run import RunOptions, execute
from evalkit.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "cli_with_test_entries.py"
STAGES = ["base@32", "sr64@64"]  # the random "tiny" cascade
N_IMAGES = 8  # 4 prompts x 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def imagen_spec(**kw) -> RunSpec:
    base = dict(
        model="imagen",
        model_options={"random": "tiny", "steps": 1},
        suite="test-tiny",
        suite_options={"n": 4},
        images_per_prompt=2,
        seed=5,
        resolution=32,
        metrics=("test-pixel-mean",),
    )
    base.update(kw)
    return RunSpec(**base)


def options(tmp_path: Path, out: str, cache: str = "c", **kw) -> RunOptions:
    base = dict(
        out_root=tmp_path / out,
        cache_dir=tmp_path / cache,
        batch_size=3,
        metric_batch_size=3,
        allow_random_weights=True,
        show_progress=False,
        write_report=False,
        per_stage=True,
    )
    base.update(kw)
    return RunOptions(**base)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def run_images(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "images").glob("*.png"))}


def test_per_stage_run_writes_one_entry_per_stage_and_the_last_equals_the_main_metrics(tmp_path):
    run_dir = execute(imagen_spec(), options(tmp_path, "out", write_report=True))
    res = load_results(run_dir / "results.json")  # validates "stages" against the schema
    stages = res["stages"]
    assert [s["name"] for s in stages] == STAGES
    assert [s["native_resolution"] for s in stages] == [32, 64]
    assert all(s["latency_s_per_image"] > 0 for s in stages)
    assert stages[-1]["metrics"] == res["metrics"]
    assert (
        stages[0]["metrics"]["test-pixel-mean"]["value"]
        != res["metrics"]["test-pixel-mean"]["value"]
    )
    assert [s["images"] for s in stages] == ["images/stages/base@32", "images"]
    assert len(list((run_dir / "images" / "stages" / "base@32").glob("*.png"))) == N_IMAGES
    assert res["manifest"]["timings"]["images_generated"] == N_IMAGES
    md = (run_dir / "report.md").read_text()
    assert "### Per stage" in md and "| base@32 | 32 px |" in md and "| sr64@64 | 64 px |" in md
    assert "<h2>Per stage</h2>" in (run_dir / "report.html").read_text()


def test_per_stage_does_not_change_run_id_final_images_or_main_metrics(tmp_path):
    staged = execute(imagen_spec(), options(tmp_path, "a", "ca"))
    plain = execute(imagen_spec(), options(tmp_path, "b", "cb", per_stage=False))
    assert staged.name == plain.name
    assert run_images(staged) == run_images(plain)
    assert results(staged)["metrics"] == results(plain)["metrics"]
    assert "stages" not in results(plain)


def test_rerun_with_per_stage_generates_nothing_and_plain_run_reuses_the_final_images(tmp_path):
    first = results(execute(imagen_spec(), options(tmp_path, "a")))
    again = results(execute(imagen_spec(), options(tmp_path, "b")))
    assert again["manifest"]["timings"]["images_generated"] == 0
    assert again["manifest"]["timings"]["images_from_cache"] == N_IMAGES
    assert [s["latency_s_per_image"] for s in again["stages"]] == [None, None]
    assert [s["metrics"] for s in again["stages"]] == [s["metrics"] for s in first["stages"]]
    plain = results(execute(imagen_spec(), options(tmp_path, "c", per_stage=False)))
    assert plain["manifest"]["timings"]["images_generated"] == 0
    assert plain["metrics"] == first["metrics"]


def test_per_stage_after_plain_run_fills_the_missing_stages_with_the_same_final_images(tmp_path):
    plain_dir = execute(imagen_spec(), options(tmp_path, "a", per_stage=False))
    before = run_images(plain_dir)
    staged = results(execute(imagen_spec(), options(tmp_path, "b")))
    assert staged["manifest"]["timings"]["images_generated"] == N_IMAGES  # stages were missing
    assert run_images(tmp_path / "b" / plain_dir.name) == before


def test_interrupted_per_stage_run_resumes_generating_only_the_missing_images(
    tmp_path, monkeypatch
):
    reference = results(  # one batch of 8, the resumed run uses batches of 3
        execute(imagen_spec(), options(tmp_path, "ref", "cref", batch_size=8, metric_batch_size=8))
    )
    original = ImagenGenerator.generate_stages
    calls = {"n": 0}

    def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second batch
        return original(self, requests)

    monkeypatch.setattr(ImagenGenerator, "generate_stages", flaky)
    with pytest.raises(KeyboardInterrupt):
        execute(imagen_spec(), options(tmp_path, "out"))
    monkeypatch.setattr(ImagenGenerator, "generate_stages", original)
    resumed = results(execute(imagen_spec(), options(tmp_path, "out")))
    assert resumed["manifest"]["timings"]["images_generated"] == N_IMAGES - 3  # batch_size 3
    assert [s["metrics"] for s in resumed["stages"]] == [s["metrics"] for s in reference["stages"]]
    assert run_images(tmp_path / "out" / resumed["run_id"]) == run_images(
        tmp_path / "ref" / reference["run_id"]
    )


def test_per_stage_with_a_generator_without_stages_is_a_usage_error_naming_the_model(tmp_path):
    spec = imagen_spec(model="toy", model_options={})
    with pytest.raises(UsageError, match=r"--per-stage: model 'toy'"):
        execute(spec, options(tmp_path, "out"))
    assert not list((tmp_path / "c").rglob("*.png"))  # refused before generating anything


@pytest.mark.torchrun
def test_per_stage_with_two_torchrun_processes_equals_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "run",
        "--model",
        "imagen",
        "--model-opt",
        "random=tiny",
        "--model-opt",
        "steps=1",
        "--allow-random-weights",
        "--suite",
        "test-tiny",
        "--suite-opt",
        "n=3",
        "-k",
        "2",
        "--resolution",
        "32",
        "--metrics",
        "test-pixel-mean",
        "--per-stage",
        "--quiet",
        "--no-report",
    ]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(DRIVER), *common, "--out", str(tmp_path / "two")],
        env={**env, "EVALKIT_CACHE": str(tmp_path / "cache2")},
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, str(DRIVER), *common, "--out", str(tmp_path / "one")],
        env={**env, "EVALKIT_CACHE": str(tmp_path / "cache1")},
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    run_one = Path(one.stdout.strip().splitlines()[-1]).parent
    run_two = tmp_path / "two" / run_one.name
    assert run_images(run_one) == run_images(run_two)
    stage_one, stage_two = (r / "images" / "stages" / "base@32" for r in (run_one, run_two))
    assert len(list(stage_one.glob("*.png"))) == 6
    assert {p.name: p.read_bytes() for p in stage_one.glob("*.png")} == {
        p.name: p.read_bytes() for p in stage_two.glob("*.png")
    }
    r1, r2 = results(run_one), results(run_two)
    assert [s["metrics"] for s in r1["stages"]] == [s["metrics"] for s in r2["stages"]]
    assert all(s["latency_s_per_image"] > 0 for s in r2["stages"])
    assert r2["manifest"]["environment"]["hardware"]["world_size"] == 2
