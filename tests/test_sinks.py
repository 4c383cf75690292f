"""Optional sinks: MLflow (its local file store) and TensorBoard (a temporary log dir)."""

from __future__ import annotations

import json

import pytest

from evalkit.errors import UsageError
from evalkit.history import add_record, scan
from evalkit.sinks import log_record, parse_log_to, scalars

from .gate_fixtures import item_ids, results_dict, write_run
from .test_gate import evalkit


def _history(tmp_path, n: int = 2):
    hist = tmp_path / "h"
    ids = item_ids(12)
    for k in range(n):
        r = results_dict({"clip_score": {i: 0.3 + 0.01 * k for i in ids}}, run_id=f"r{k}",
                         created=f"2026-01-0{k + 1}T00:00:00+00:00")  # fmt: skip
        add_record(write_run(tmp_path / f"r{k}", r), hist, commit=f"c{k}", branch="main")
    return hist, scan(hist)[0]


def test_log_to_names_a_known_sink():
    assert parse_log_to(["mlflow=file:///x", "tensorboard"]) == [
        ("mlflow", "file:///x"), ("tensorboard", "evalkit-tensorboard"),
    ]  # fmt: skip
    with pytest.raises(UsageError, match="unknown sink"):
        parse_log_to(["wandb"])


def test_scalars_cover_value_interval_and_categories(tmp_path):
    _, records = _history(tmp_path, 1)
    s = scalars(records[0], ".")
    assert s["clip_score"] == pytest.approx(0.3)
    assert {"clip_score.ci_lo", "clip_score.ci_hi"} <= set(s)


def test_mlflow_file_store_gets_one_run_per_record(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    hist, records = _history(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()
    for r in records:
        log_record(hist, r, [("mlflow", uri)])
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("evalkit/constructed/constructed")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert sorted(r.data.tags["mlflow.source.git.commit"] for r in runs) == ["c0", "c1"]
    by_commit = {r.data.tags["mlflow.source.git.commit"]: r for r in runs}
    assert by_commit["c1"].data.metrics["clip_score"] == pytest.approx(0.31)
    assert by_commit["c1"].data.params["model"] == "constructed"
    history = client.get_metric_history(by_commit["c1"].info.run_id, "clip_score")
    assert [m.step for m in history] == [1]
    arts = {a.path for a in client.list_artifacts(by_commit["c0"].info.run_id)}
    assert {"results.json", "record.json", "report.md"} <= arts


def test_console_history_add_logs_to_mlflow_and_tensorboard(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    run = write_run(tmp_path / "r", results_dict({"clip_score": {i: 0.3 for i in item_ids(12)}}))
    uri = (tmp_path / "mlruns").as_uri()
    proc = evalkit(
        "history", "add", str(run), "--history", "h", "--commit", "abc",
        "--log-to", f"mlflow={uri}", "--log-to", "tensorboard=tb",
        cwd=tmp_path, env={"MLFLOW_ALLOW_FILE_STORE": "true"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "mlflow: run" in proc.stderr and "tensorboard:" in proc.stderr
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))
    proc = evalkit("history", "add", str(run), "--history", "h", "--log-to", "wandb", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown sink" in proc.stderr


def test_tensorboard_scalars_are_readable_at_each_records_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hist, records = _history(tmp_path, 3)
    for r in records:
        (line,) = log_record(hist, r, [("tensorboard", str(tmp_path / "tb"))])
    acc = EventAccumulator(str(tmp_path / "tb" / "constructed_constructed"))
    acc.Reload()
    events = acc.Scalars("clip_score")
    assert [e.step for e in events] == [0, 1, 2]
    assert [round(e.value, 4) for e in events] == [0.3, 0.31, 0.32]
    assert json.loads(json.dumps(line.split(": ", 1)[1]))
