"""Command lines for CI: ``evalkit history``, ``evalkit gate`` and ``evalkit dashboard``.

Exit codes of the gate (besides the common ones of :mod:`evalkit.console`): 0 pass,
10 regression, 11 cannot decide, 5 protocol mismatch (unless ``--force``), 3 bad input,
4 missing input (an empty history branch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from evalkit.errors import InputError, RegressionError, UndecidedError

history_app = typer.Typer(
    help="The run history: one immutable record per run (results, per-item scores, thumbnails)."
)

HistoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--history", help="History folder (default $EVALKIT_HISTORY or ./evalkit-history)."
    ),
]


def _history(path: Path | None) -> Path:
    from evalkit.history import default_history_dir

    return path if path is not None else default_history_dir()


@history_app.command("add")
def history_add_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder or its results.json.")],
    history: HistoryOpt = None,
    commit: Annotated[
        str | None,
        typer.Option(
            help="Commit (default: the run's manifest, else $GITHUB_SHA, $CI_COMMIT_SHA ...)."
        ),
    ] = None,
    branch: Annotated[
        str | None,
        typer.Option(
            help="Branch (default: $GITHUB_HEAD_REF/$GITHUB_REF_NAME, $CI_COMMIT_REF_NAME ...)."
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE (repeatable); series=NAME names the series."),
    ] = None,
    gate: Annotated[
        Path | None,
        typer.Option(help="An `evalkit gate --json` report to attach (the dashboard marks it)."),
    ] = None,
    log_to: Annotated[
        list[str] | None,
        typer.Option(
            "--log-to",
            help="Also send the record to mlflow[=TRACKING_URI] or tensorboard[=LOGDIR] "
            "(optional extras; repeatable).",
        ),
    ] = None,
) -> None:
    """Append one immutable record of RUN to the history (atomic; safe for parallel jobs)."""
    from evalkit.history import add_record
    from evalkit.sinks import log_record, parse_log_to

    sinks = parse_log_to(log_to)

    gate_report = None
    if gate is not None:
        try:
            gate_report = json.loads(gate.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"--gate {gate}: no such file") from None
        except json.JSONDecodeError as e:
            raise InputError(f"--gate {gate}: not valid JSON: {e}") from None
    outcome = add_record(
        run, _history(history), commit=commit, branch=branch, labels=label, gate=gate_report
    )
    m = outcome.record.meta
    typer.echo(
        f"{outcome.message} (commit {(m.get('commit') or '?')[:12]}, branch {m.get('branch') or '?'}, "
        f"series {m['series']})",
        err=True,
    )
    for line in log_record(_history(history), outcome.record, sinks):
        typer.echo(line, err=True)
    typer.echo(str(outcome.record.path))


@history_app.command("list")
def history_list_cmd(history: HistoryOpt = None) -> None:
    """One line per record, oldest first; unreadable entries are listed on stderr."""
    from evalkit.history import scan
    from evalkit.report.render_text import text_table
    from evalkit.results import format_value

    records, skipped = scan(_history(history), verify=False)
    rows = []
    for r in records:
        m = r.meta
        values = ", ".join(
            f"{k} {format_value(v['value'])}" for k, v in sorted(m["metrics"].items())
        )
        rows.append(
            [
                r.record_id,
                m["time"][:19],
                (m.get("commit") or "?")[:10],
                m.get("branch") or "?",
                m["series"],
                (m.get("gate") or {}).get("verdict") or "",
                values,
            ]
        )
    if rows:
        typer.echo(
            text_table(["record", "time", "commit", "branch", "series", "gate", "metrics"], rows)
        )
    for s in skipped:
        typer.echo(f"skipped: {s.reason}", err=True)
    typer.echo(f"{len(records)} record(s), {len(skipped)} skipped", err=True)


@history_app.command("show")
def history_show_cmd(
    record: Annotated[str, typer.Argument(help="Record id (or a unique prefix).")],
    history: HistoryOpt = None,
) -> None:
    """A record's provenance and metric table (its files checked against their sha256)."""
    from evalkit.history import find_record
    from evalkit.report.render_text import metric_table_text

    rec = find_record(_history(history), record)
    m = rec.meta
    results = rec.results()
    for key in ("record_id", "run_id", "time", "added", "commit", "commit_source", "branch",
                "branch_source", "series", "labels"):  # fmt: skip
        typer.echo(f"{key:<14} {m.get(key)}")
    typer.echo(f"{'protocol':<14} {m['protocol']['common'][:16]}")
    if m.get("gate"):
        typer.echo(f"{'gate':<14} {m['gate']['verdict']} against {m['gate'].get('baseline')}")
    typer.echo(f"{'thumbnails':<14} {len(m['thumbnails'])}")
    typer.echo("")
    typer.echo(metric_table_text(results))


@history_app.command("rm")
def history_rm_cmd(
    record: Annotated[str, typer.Argument(help="Record id (or a unique prefix).")],
    history: HistoryOpt = None,
) -> None:
    """Delete one record."""
    from evalkit.history import remove_record

    typer.echo(f"removed {remove_record(_history(history), record)}")


def gate_cmd(
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline", help="Run folder, results.json, history record, or history:DIR@BRANCH."
        ),
    ],
    candidate: Annotated[Path, typer.Option("--candidate", help="Run folder or results.json.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="evalkit-gate.toml (default: ./evalkit-gate.toml if present)."
        ),
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the report as GitHub markdown.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Gate even when the protocols differ (differences become warnings)."),
    ] = False,
) -> None:
    """Fail when the candidate is worse than the baseline beyond the allowed amount and the noise.

    Exit codes: 0 pass, 10 regression, 11 cannot decide, 5 protocol mismatch, 3 bad input,
    4 missing input. The table goes to stdout; --markdown and --json write files, and the
    markdown is appended to $GITHUB_STEP_SUMMARY when that is set.
    """
    from evalkit.atomic import atomic_write_text
    from evalkit.gate.config import load_config
    from evalkit.gate.core import load_run, resolve_baseline, run_gate
    from evalkit.gate.render import render_markdown, render_text, summary_line

    if config is None and Path("evalkit-gate.toml").is_file():
        config = Path("evalkit-gate.toml")
    rules = load_config(config)
    cand = load_run(candidate)
    base, notes = resolve_baseline(baseline, cand, force=force)
    report = run_gate(base, cand, rules, force=force, notes=notes)
    typer.echo(render_text(report))
    md = render_markdown(report)
    if markdown is not None:
        atomic_write_text(markdown, md)
    if json_out is not None:
        atomic_write_text(json_out, report.to_json())
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    if report.verdict == "regression":
        raise RegressionError(summary_line(report))
    if report.verdict == "cannot decide":
        raise UndecidedError(summary_line(report))


def dashboard_cmd(
    history: HistoryOpt = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the static site into.")
    ] = Path("evalkit-dashboard"),
) -> None:
    """Write a static trend dashboard (opens from file://, no network) from a history folder."""
    from evalkit.dashboard import build_dashboard

    site = build_dashboard(_history(history), out)
    for s in site.skipped:
        typer.echo(f"skipped: {s.reason}", err=True)
    typer.echo(str(site.index))


def mount(app: typer.Typer) -> None:
    """Add ``history``, ``gate`` and ``dashboard`` to the ``evalkit`` command line."""
    app.add_typer(history_app, name="history")
    app.command("gate")(gate_cmd)
    app.command("dashboard")(dashboard_cmd)
