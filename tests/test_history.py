"""The run history: records, the index, concurrency, killed appends, bad folders, provenance."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.errors import InputError
from evalkit.history import (
    RECORD_FILE,
    add_record,
    load,
    metric_frame,
    protocol_fingerprint,
    provenance,
    read_record,
    remove_record,
    scan,
)
from evalkit.report.compare import manifest_differences

from .gate_fixtures import item_ids, results_dict, variant, write_run
from .test_gate import evalkit

WORKTREE = Path(__file__).resolve().parents[1]


def _run(tmp: Path, name: str, value: float = 0.3, n: int = 12, **kw) -> Path:
    ids = item_ids(n)
    return write_run(
        tmp / name,
        results_dict(
            {"clip_score": {i: value + k * 1e-3 for k, i in enumerate(ids)}}, run_id=name, **kw
        ),
    )


def test_a_record_holds_results_items_protocol_and_provenance(tmp_path):
    run = _run(tmp_path, "r1", git_commit="abc123")
    out = add_record(run, tmp_path / "h", branch="main", labels=["team=vision"])
    assert out.created
    rec = read_record(out.record.path)
    m = rec.meta
    assert (m["commit"], m["commit_source"], m["branch"]) == ("abc123", "manifest", "main")
    assert m["labels"] == {"team": "vision"} and m["series"] == "constructed/constructed"
    assert rec.results() == json.loads((run / "results.json").read_text())
    items = rec.items()
    per_item = rec.results()["metrics"]["clip_score"]["per_item"]
    assert sorted(items["item_id"]) == sorted(per_item)
    assert dict(zip(items["item_id"], items["per_item.clip_score"], strict=True)) == per_item
    assert {"category", "sample_index", "seed", "image_sha256", "prompt"} <= set(items.columns)
    assert m["protocol"] == protocol_fingerprint(rec.results())


def test_the_index_equals_the_records(tmp_path):
    hist = tmp_path / "h"
    runs = [
        _run(tmp_path, f"r{i}", value=0.1 * i, created=f"2026-01-0{i + 1}T00:00:00+00:00")
        for i in range(5)
    ]
    for i, r in enumerate(runs):
        add_record(r, hist, commit=f"commit{i}", branch="main")
    df = load(hist)
    assert list(df["run_id"]) == [f"r{i}" for i in range(5)]  # oldest first
    assert list(df["commit"]) == [f"commit{i}" for i in range(5)]
    for i, row in df.iterrows():
        res = json.loads((runs[i] / "results.json").read_text())
        assert row["clip_score"] == res["metrics"]["clip_score"]["value"]
        assert [row["clip_score.lo"], row["clip_score.hi"]] == res["metrics"]["clip_score"][
            "interval"
        ]
        assert read_record(row["path"]).meta["run_id"] == row["run_id"]
    assert df.attrs["skipped"] == []
    assert sorted(p.name for p in (hist / "records").iterdir()) == sorted(df["record_id"])


def test_adding_the_same_run_twice_is_a_no_op_and_another_commit_is_refused(tmp_path):
    run = _run(tmp_path, "r")
    first = add_record(run, tmp_path / "h", commit="a")
    again = add_record(run, tmp_path / "h", commit="a")
    assert first.created and not again.created and again.record.record_id == first.record.record_id
    with pytest.raises(InputError, match="already holds these results for commit a"):
        add_record(run, tmp_path / "h", commit="b")
    assert len(load(tmp_path / "h")) == 1


def _append(args: tuple[str, str, str]) -> str:
    run, hist, commit = args
    return add_record(run, hist, commit=commit, branch="main").record.record_id


def test_concurrent_appends_from_several_processes_lose_nothing(tmp_path):
    runs = [str(_run(tmp_path, f"r{i}", value=0.01 * i)) for i in range(12)]
    hist = str(tmp_path / "h")
    jobs = [(r, hist, f"c{i}") for i, r in enumerate(runs)] + [(runs[0], hist, "c0")] * 3
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        ids = pool.map(_append, jobs)
    records, skipped = scan(hist)
    assert skipped == []
    assert sorted(r.record_id for r in records) == sorted(set(ids)) and len(records) == 12
    assert not any((Path(hist) / ".incoming").iterdir())


_KILLED_APPEND = """
import sys, time
import evalkit.history as h
real = h.atomic_write_bytes
def slow(path, data):
    real(path, data)
    print("WROTE", flush=True)
    time.sleep(60)
h.atomic_write_bytes = slow
h.add_record(sys.argv[1], sys.argv[2], commit="k")
"""


def test_a_killed_append_leaves_no_record_that_loads_as_valid(tmp_path):
    run = _run(tmp_path, "r")
    hist = tmp_path / "h"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_APPEND, str(run), str(hist)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )
    try:
        assert proc.stdout.readline().strip() == "WROTE"  # mid-append: one file written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    records, skipped = scan(hist)
    assert records == []
    assert len(skipped) == 1 and "incomplete write" in skipped[0].reason
    assert not (hist / "records").exists() or not any((hist / "records").iterdir())
    again = add_record(run, hist, commit="k")  # the same run can be recorded afterwards
    assert again.created and len(load(hist)) == 1


def test_bad_entries_are_skipped_with_the_record_named(tmp_path):
    hist = tmp_path / "h"
    ids = [
        add_record(_run(tmp_path, f"r{i}", value=0.1 * i), hist, commit=f"c{i}").record.record_id
        for i in range(5)
    ]
    recs = hist / "records"
    # a truncated record.json
    text = (recs / ids[0] / RECORD_FILE).read_text()
    (recs / ids[0] / RECORD_FILE).write_text(text[: len(text) // 2])
    # results.json modified after the fact (same size)
    res = recs / ids[1] / "results.json"
    data = res.read_bytes()
    res.write_bytes(data.replace(b'"constructed"', b'"constructeD"', 1))
    # a truncated parquet
    pq = recs / ids[2] / "items.parquet"
    pq.write_bytes(pq.read_bytes()[:50])
    # a foreign file and a foreign folder
    (hist / "notes.txt").write_text("hello")
    (recs / "something-else").mkdir()
    # a copy of a record under another name claiming the same run
    shutil.copytree(recs / ids[3], recs / "zz-copy")
    meta = json.loads((recs / "zz-copy" / RECORD_FILE).read_text())
    meta["record_id"] = "zz-copy"
    meta["added"] = "2999-01-01T00:00:00+00:00"
    (recs / "zz-copy" / RECORD_FILE).write_text(json.dumps(meta))
    records, skipped = scan(hist)
    assert [r.record_id for r in records] == [ids[3], ids[4]]
    reasons = "\n".join(s.reason for s in skipped)
    assert f"history record {ids[0]}: record.json is truncated or not JSON" in reasons
    assert f"history record {ids[1]}: results.json does not match the sha256" in reasons
    assert f"history record {ids[2]}: items.parquet has" in reasons and "truncated" in reasons
    assert "notes.txt: not part of an evalkit history" in reasons
    assert "history record something-else: record.json is missing" in reasons
    assert f"history record zz-copy: claims the same run as record {ids[3]}" in reasons
    assert len(load(hist)) == 2 and len(load(hist).attrs["skipped"]) == 6


def test_a_renamed_record_folder_is_refused(tmp_path):
    hist = tmp_path / "h"
    rid = add_record(_run(tmp_path, "r"), hist).record.record_id
    os.rename(hist / "records" / rid, hist / "records" / "renamed")
    _, skipped = scan(hist)
    assert "names record" in skipped[0].reason and "renamed" in skipped[0].reason


def test_a_record_under_another_protocol_is_kept_and_marked_as_a_break(tmp_path):
    hist = tmp_path / "h"
    for i, version in enumerate(["1", "1", "2", "2"]):
        add_record(
            _run(
                tmp_path, f"r{i}", suite_version=version, created=f"2026-01-0{i + 1}T00:00:00+00:00"
            ),
            hist,
            commit=f"c{i}",
        )
    records, _ = scan(hist)
    mf = metric_frame(records)
    overall = mf[mf["category"] == ""]
    assert list(overall["break"]) == [False, False, True, False]
    assert len(records) == 4


@pytest.mark.parametrize(
    "change",
    [
        {"manifest__suite__version": "2"},
        {"spec__num_samples": 99},
        {"spec__seed": 7},  # a note, not protocol
        {"manifest__sampling__resolution": 128},
        {"manifest__environment": {"git_commit": "zzz"}},  # a note
    ],
)
def test_protocol_fingerprint_agrees_with_manifest_differences(change):
    r = results_dict({"clip_score": {i: 0.3 for i in item_ids(8)}})
    r["metrics"]["clip_score"]["manifest"]["versions"] = {"torch": "1"}
    other = variant(r, **change)
    proto, _ = manifest_differences(r, other)
    fa, fb = protocol_fingerprint(r), protocol_fingerprint(other)
    same = fa["common"] == fb["common"] and fa["metrics"] == fb["metrics"]
    assert same == (not proto)


def test_metric_manifest_changes_move_only_that_metrics_fingerprint():
    r = results_dict(
        {"clip_score": {i: 0.3 for i in item_ids(8)}, "other": {i: 0.1 for i in item_ids(8)}}
    )
    other = variant(r)
    other["metrics"]["clip_score"]["manifest"]["backbone"] = "ViT-B-32"
    other["metrics"]["other"]["manifest"]["torch_version"] = "9"  # a note
    fa, fb = protocol_fingerprint(r), protocol_fingerprint(other)
    assert fa["common"] == fb["common"] and fa["metrics"]["other"] == fb["metrics"]["other"]
    assert fa["metrics"]["clip_score"] != fb["metrics"]["clip_score"]


def test_provenance_order_argument_then_manifest_then_ci_environment():
    r = results_dict({"x": {"a": 1.0}}, git_commit="fromManifest")
    bare = results_dict({"x": {"a": 1.0}})
    env = {"GITHUB_SHA": "fromEnv", "GITHUB_REF_NAME": "main", "GITHUB_HEAD_REF": ""}
    assert provenance(r, commit="arg", env=env)["commit"] == "arg"
    assert provenance(r, env=env)["commit"] == "fromManifest"
    p = provenance(bare, env=env)
    assert (p["commit"], p["commit_source"], p["branch"], p["branch_source"]) == (
        "fromEnv", "GITHUB_SHA", "main", "GITHUB_REF_NAME",
    )  # fmt: skip
    gl = provenance(bare, env={"CI_COMMIT_SHA": "gl", "CI_COMMIT_REF_NAME": "dev"})
    assert (gl["commit"], gl["branch"]) == ("gl", "dev")
    pr = provenance(bare, env={"GITHUB_HEAD_REF": "feature", "GITHUB_REF_NAME": "12/merge"})
    assert pr["branch"] == "feature"


def test_remove_record_takes_it_out_of_the_index(tmp_path):
    hist = tmp_path / "h"
    a = add_record(_run(tmp_path, "a"), hist).record.record_id
    b = add_record(_run(tmp_path, "b", value=0.5), hist).record.record_id
    assert remove_record(hist, a[:8]) == a
    assert list(load(hist)["record_id"]) == [b]


def test_thumbnails_are_the_same_prompts_in_every_record(tmp_path):
    from evalkit.history import thumbnail_items

    samples = [{"item_id": i, "category": i.split("-")[0]} for i in item_ids(40)]
    chosen = thumbnail_items(samples)
    assert len(chosen) == 12 and len({c.split("-")[0] for c in chosen}) == 4
    assert thumbnail_items(list(reversed(samples))) == chosen


def test_console_history_add_list_show_rm(tmp_path):
    run = _run(tmp_path, "r1")
    env = {"GITHUB_SHA": "deadbeef" * 5, "GITHUB_REF_NAME": "main", "GITHUB_HEAD_REF": ""}
    proc = evalkit(
        "history", "add", str(run), "--history", "h", "--label", "gpu=none", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    rec_path = Path(tmp_path / proc.stdout.strip().splitlines()[-1])
    assert rec_path.is_dir() and "branch main" in proc.stderr
    (tmp_path / "h" / "stray.bin").write_bytes(b"\x00\x01")
    proc = evalkit("history", "list", "--history", "h", cwd=tmp_path)
    assert proc.returncode == 0 and "deadbeefde" in proc.stdout and "main" in proc.stdout
    assert "skipped: stray.bin" in proc.stderr
    proc = evalkit("history", "show", rec_path.name, "--history", "h", cwd=tmp_path)
    assert proc.returncode == 0 and "GITHUB_SHA" in proc.stdout and "clip_score" in proc.stdout
    proc = evalkit("history", "add", str(run), "--history", "h", "--commit", "other", cwd=tmp_path)
    assert proc.returncode == 3 and "one run belongs to one commit" in proc.stderr
    proc = evalkit("history", "rm", rec_path.name, "--history", "h", cwd=tmp_path)
    assert proc.returncode == 0 and not rec_path.exists()
    proc = evalkit("history", "show", "nothing", "--history", "h", cwd=tmp_path)
    assert proc.returncode == 3 and "no record 'nothing'" in proc.stderr


def test_scan_of_a_missing_folder_is_missing_input(tmp_path):
    from evalkit.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="does not exist"):
        scan(tmp_path / "nope")
