"""Optional sinks for history records: MLflow runs and TensorBoard scalars.

``evalkit history add RUN --log-to mlflow[=TRACKING_URI] --log-to tensorboard[=LOGDIR]`` also
sends the record to experiment trackers people already watch. Each sink is an optional extra
(``pip install evalkit[mlflow]`` / ``evalkit[tensorboard]``) imported only when asked for.

- MLflow: one run per record in the experiment named after the record's series; params from
  the manifest (model, suite, sampling, model settings, each metric's implementation), metrics
  (``metric``, ``metric.ci_lo``, ``metric.ci_hi``, ``metric.category.NAME``) at step = the record's position in its series, tags
  (commit, branch, record id, protocol fingerprint), and the record's results.json, record.json
  and a rendered report.md as artifacts.
- TensorBoard: scalars ``<metric>``, ``<metric>/ci_lo``, ``<metric>/ci_hi`` and
  ``<metric>/category/<name>`` under ``LOGDIR/<series>/``, at step = the position in the series and
  wall time = when the run was measured; the record's provenance as text.
"""

from __future__ import annotations

import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from evalkit.errors import MissingWeightsError, UsageError
from evalkit.history import Record, scan

SINKS = ("mlflow", "tensorboard")
#: without ``=TARGET``: MLflow's own default ($MLFLOW_TRACKING_URI ...), ./evalkit-tensorboard
DEFAULT_TARGETS = {"mlflow": "", "tensorboard": "evalkit-tensorboard"}
_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]+")


def parse_log_to(values: list[str] | None) -> list[tuple[str, str]]:
    """``["mlflow=URI", "tensorboard"]`` -> ``[("mlflow", "URI"), ("tensorboard", default)]``.

    An empty MLflow target means MLflow's own default tracking URI.
    """
    out = []
    for text in values or []:
        name, _, target = text.partition("=")
        name = name.strip()
        if name not in SINKS:
            raise UsageError(f"--log-to {text!r}: unknown sink; choose from {', '.join(SINKS)}")
        out.append((name, target.strip() or DEFAULT_TARGETS[name]))
    return out


def series_step(history: Path, record: Record) -> int:
    """The record's 0-based position among the readable records of its series (time order)."""
    records, _ = scan(history, verify=False)
    series = [r.record_id for r in records if r.meta["series"] == record.meta["series"]]
    return series.index(record.record_id) if record.record_id in series else len(series)


def _key(text: str) -> str:
    return _KEY.sub("_", text)[:250] or "_"


def scalars(record: Record, sep: str = "/") -> dict[str, float]:
    """Metric name (``metric``, ``metric<sep>ci_lo``, ``metric<sep>category<sep>NAME``) -> value.

    MLflow's file store keeps a metric per file, so a key cannot also be a folder: it gets
    ``sep="."``; TensorBoard groups by ``/``.
    """
    out: dict[str, float] = {}
    for name, s in sorted(record.meta["metrics"].items()):
        out[_key(name)] = float(s["value"])
        if s.get("interval"):
            out[_key(f"{name}{sep}ci_lo")] = float(s["interval"][0])
            out[_key(f"{name}{sep}ci_hi")] = float(s["interval"][1])
        for cat, c in sorted((s.get("per_category") or {}).items()):
            label = re.sub(r"[/.]", "_", str(cat))
            out[_key(f"{name}{sep}category{sep}{label}")] = float(c["value"])
    return out


def params(results: dict[str, Any]) -> dict[str, str]:
    """Flat run parameters from the manifest (what was measured, how)."""
    m = results["manifest"]
    out = {
        "model": m["model"].get("name"),
        "suite": m["suite"].get("name"),
        "suite_version": m["suite"].get("version"),
        "num_items": m["suite"].get("num_items"),
        "num_images": m["sampling"].get("num_images"),
        "images_per_prompt": m["sampling"].get("images_per_prompt"),
        "resolution": m["sampling"].get("resolution"),
        "seed": m["sampling"].get("seed"),
    }
    for k, v in sorted((m["model"].get("settings") or {}).items()):
        out[f"model.{k}"] = v
    for name, entry in sorted(results["metrics"].items()):
        impl = (entry.get("manifest") or {}).get("implementation")
        if impl:
            out[f"{name}.implementation"] = impl
    return {_key(k): str(v)[:500] for k, v in out.items() if v is not None}


def _measured(record: Record) -> datetime:
    return datetime.fromisoformat(record.meta["time"])


def log_mlflow(record: Record, tracking_uri: str, *, step: int) -> str:
    """Log the record as one MLflow run; returns the MLflow run id.

    MLflow's errors (an unreachable server, a refused backend) become :class:`UsageError`.
    """
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise MissingWeightsError(
            "--log-to mlflow needs MLflow: pip install 'evalkit[mlflow]'"
        ) from None
    try:
        return _log_mlflow(record, tracking_uri or None, step=step)
    except MlflowException as e:
        first = str(e).split(". ")[0]
        raise UsageError(f"--log-to mlflow={tracking_uri}: {first} ({type(e).__name__})") from None


def _log_mlflow(record: Record, tracking_uri: str | None, *, step: int) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from evalkit.report.render_md import render_report_md

    results = record.results()
    meta = record.meta
    client = MlflowClient(tracking_uri=tracking_uri)
    name = f"evalkit/{meta['series']}"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    tags = {
        "evalkit.record_id": record.record_id,
        "evalkit.run_id": meta["run_id"],
        "evalkit.branch": meta.get("branch") or "",
        "evalkit.protocol": meta["protocol"]["common"],
        "mlflow.source.git.commit": meta.get("commit") or "",
    }
    run = client.create_run(exp_id, run_name=record.record_id, tags=tags)
    run_id = run.info.run_id
    ts = int(_measured(record).timestamp() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, ts, step) for k, v in scalars(record, ".").items()],
        params=[Param(k, v) for k, v in params(results).items()],
        tags=[RunTag("evalkit.gate", (meta.get("gate") or {}).get("verdict") or "none")],
    )
    with tempfile.TemporaryDirectory(prefix="evalkit-mlflow-") as tmp:
        report = Path(tmp) / "report.md"
        report.write_text(render_report_md(results), encoding="utf-8")
        client.log_artifact(run_id, str(report))
    client.log_artifact(run_id, str(record.path / "results.json"))
    client.log_artifact(run_id, str(record.path / "record.json"))
    client.set_terminated(run_id)
    return run_id


def log_tensorboard(record: Record, logdir: str | Path, *, step: int) -> Path:
    """Write the record's scalars to ``logdir/<series>/``; returns that folder."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingWeightsError(
            "--log-to tensorboard needs TensorBoard: pip install 'evalkit[tensorboard]'"
        ) from None
    folder = Path(logdir) / re.sub(r"[^A-Za-z0-9_.-]+", "_", record.meta["series"])
    walltime = _measured(record).timestamp()
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for key, value in scalars(record).items():
            writer.add_scalar(key, value, global_step=step, walltime=walltime)
        meta = record.meta
        writer.add_text(
            "record",
            f"record {record.record_id} · commit {meta.get('commit')} · branch {meta.get('branch')}"
            f" · gate {(meta.get('gate') or {}).get('verdict') or 'none'}",
            global_step=step,
            walltime=walltime,
        )
    finally:
        writer.close()
    return folder


def log_record(history: Path, record: Record, sinks: list[tuple[str, str]]) -> list[str]:
    """Send ``record`` to every sink; returns one line per sink saying where it went."""
    lines = []
    step = series_step(history, record) if sinks else 0
    for name, target in sinks:
        if name == "mlflow":
            run_id = log_mlflow(record, target, step=step)
            lines.append(f"mlflow: run {run_id} at {target}")
        else:
            lines.append(f"tensorboard: {log_tensorboard(record, target, step=step)}")
    return lines
