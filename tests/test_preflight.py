"""Checks before generation, dry runs, and outputs that never disagree with each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.cli import main
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.report import build as report_build
from evalkit.run import RunOptions, RunPlan, execute
from tests.test_coco_suite import make_coco
from tests.test_runner import DRIVER, REPO, results, tiny_spec


def _options(tmp_path: Path, **kw) -> RunOptions:
    base = dict(
        out_root=tmp_path / "out", cache_dir=tmp_path / "c", show_progress=False, write_report=True
    )
    base.update(kw)
    return RunOptions(**base)


def _pngs(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "c").rglob("*.png"))


def test_a_corrupt_reference_image_stops_the_run_before_any_image_is_generated(tmp_path):
    root = tmp_path / "coco"
    make_coco(root)
    victim = sorted((root / "val2014").glob("*.jpg"))[5]
    victim.write_bytes(victim.read_bytes()[:40])
    spec = tiny_spec(
        suite="coco",
        suite_options={"root": str(root), "num_samples": 6},
        images_per_prompt=1,
        metrics=("fid",),
    )
    with pytest.raises(InputError, match=victim.name):
        execute(spec, _options(tmp_path, allow_random_weights=True))
    assert not _pngs(tmp_path)


def test_missing_clip_weights_are_found_before_generation(tmp_path):
    with pytest.raises(MissingWeightsError, match="evalkit fetch clip"):
        execute(tiny_spec(metrics=("test-pixel-mean", "clip_score")), _options(tmp_path))
    assert not _pngs(tmp_path)


def test_metric_options_must_name_one_of_the_runs_metrics(tmp_path):
    spec = tiny_spec(metric_options={"fdi": {"resize": "clean"}})
    with pytest.raises(UsageError, match="'fdi' is not one of this run's metrics"):
        execute(spec, _options(tmp_path))
    with pytest.raises(UsageError, match="no metrics to compute"):
        execute(tiny_spec(metrics=()), _options(tmp_path))


def test_batch_sizes_are_checked_by_the_options_themselves():
    with pytest.raises(UsageError, match="--batch-size must be a positive integer"):
        RunOptions(batch_size=0)
    with pytest.raises(UsageError, match="--metric-batch-size"):
        RunOptions(metric_batch_size=True)


def test_dry_run_checks_everything_and_writes_nothing(tmp_path, capsys):
    plan = execute(tiny_spec(), _options(tmp_path, dry_run=True))
    assert isinstance(plan, RunPlan) and plan.cached == 0 and len(plan.planned) == 18
    assert not _pngs(tmp_path) and not (tmp_path / "out").joinpath(plan.run_dir.name).exists()
    code = main(
        ["run", "--model", "toy", "--suite", "shapes", "--num-samples", "4", "--metrics",
         "fid,shapes_accuracy", "--dry-run", "--out", str(tmp_path / "out"),
         "--cache-dir", str(tmp_path / "c")]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "0 of 4 images cached" in out and "fid" in out
    assert not _pngs(tmp_path)
    # the dry run did the reference pass: it is cached for the real run
    assert list((tmp_path / "c").rglob("refstats/*.npz"))
    code = main(
        ["run", "--model", "toy", "--suite", "shapes", "--num-samples", "4", "--metrics",
         "shapes_accuracy,clip_score", "--dry-run", "--cache-dir", str(tmp_path / "c")]
    )  # fmt: skip
    assert code == 4


def test_a_kill_in_the_report_phase_leaves_no_result_beside_a_stale_report(tmp_path, monkeypatch):
    run_dir = execute(tiny_spec(), _options(tmp_path))
    for name in ("report.md", "report.html"):
        (run_dir / name).write_text("a report of another run, FID 62.25")
    (run_dir / "assets").mkdir(exist_ok=True)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_build, "render_report", killed)
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_spec(), _options(tmp_path))
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "report.md").exists() and not (run_dir / "report.html").exists()
    monkeypatch.undo()
    execute(tiny_spec(), _options(tmp_path))
    assert "62.25" not in (run_dir / "report.md").read_text()
    assert results(run_dir)["metrics"]["test-pixel-mean"]["value"] > 0


def test_a_failure_while_scoring_removes_the_previous_report(tmp_path, monkeypatch):
    from tests.conftest import PixelMean

    run_dir = execute(tiny_spec(), _options(tmp_path))
    assert (run_dir / "report.html").exists()

    def broken(self):
        raise InputError("metric failed")

    monkeypatch.setattr(PixelMean, "compute", broken)
    with pytest.raises(InputError):
        execute(tiny_spec(), _options(tmp_path))
    assert not any((run_dir / n).exists() for n in ("results.json", "report.md", "report.html"))


@pytest.mark.torchrun
def test_a_check_failing_on_rank_0_only_stops_every_rank_before_generation(tmp_path):
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(DRIVER), "run", "--model", "toy", "--suite", "test-tiny", "--resolution", "32",
         "--metrics", "test-pixel-mean,test-broken-reference", "--quiet", "--out",
         str(tmp_path / "out")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "reference image 3 is corrupt" in proc.stderr  # rank 0's own error
    assert "another process of this torchrun job failed its checks" in proc.stderr  # rank 1
    assert not list((tmp_path / "cache").rglob("*.png"))


@pytest.mark.torchrun
def test_missing_clip_weights_stop_every_rank_before_generation(tmp_path):
    # every rank builds its metrics (ranks extract their own features), so each names the fix
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(DRIVER), "run", "--model", "toy", "--suite", "test-tiny", "--resolution", "32",
         "--metrics", "test-pixel-mean,clip_score", "--quiet", "--out", str(tmp_path / "out")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count("evalkit fetch clip") >= 2
    assert not list((tmp_path / "cache").rglob("*.png"))
