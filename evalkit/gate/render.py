"""The gate's report as a terminal table, GitHub markdown (pull-request comment) and JSON."""

from __future__ import annotations

from typing import Any

from evalkit.gate.core import GateReport, MetricVerdict
from evalkit.report.render_text import text_table
from evalkit.results import format_value
from evalkit.textsafe import md_cell, md_code

_ARROWS = {"lower": "↓", "higher": "↑"}
_MD_VERDICT = {
    "regression": "❌ regression",
    "cannot decide": "⚠️ cannot decide",
    "warn": "⚠️ warn (within noise)",
    "pass": "✅ pass",
    "improved": "✅ improved",
    "skipped": "➖ skipped",
}
_OVERALL = {
    "pass": "PASS",
    "regression": "REGRESSION",
    "cannot decide": "CANNOT DECIDE",
}


def _num(x: float | None) -> str:
    return "—" if x is None else format_value(x)


def _delta(m: MetricVerdict) -> str:
    return "—" if m.delta is None else f"{m.delta:+.4g}"


def _ci(m: MetricVerdict) -> str:
    if not m.interval:
        return "—"
    return f"[{m.interval[0]:+.4g}, {m.interval[1]:+.4g}]"


def _allowed(m: MetricVerdict) -> str:
    if m.allowed is None:
        return "—"
    if m.allowed_text.endswith("%"):
        return f"{m.allowed_text} ({m.allowed:.4g})"
    return m.allowed_text


def _row(m: MetricVerdict, name: str) -> list[str]:
    return [
        name,
        m.kind,
        _num(m.baseline),
        _num(m.candidate),
        _delta(m),
        _ci(m),
        _allowed(m),
        "—" if m.n is None else f"{m.n} {m.unit}".strip(),
        m.verdict,
    ]


_HEADER = [
    "metric",
    "kind",
    "baseline",
    "candidate",
    "Δ (cand − base)",
    "CI of Δ",
    "allowed",
    "n",
    "verdict",
]


def _rows(report: GateReport) -> list[tuple[list[str], MetricVerdict]]:
    rows = []
    for m in report.metrics:
        label = f"{m.metric} {_ARROWS.get(m.direction or '', '')}".rstrip()
        rows.append((_row(m, label), m))
        for c in m.categories:
            rows.append((_row(c, f"  {m.metric}[{c.category}]"), c))
    return rows


def render_text(report: GateReport) -> str:
    """The verdict table and the reasons, for stdout."""
    b, c = report.baseline, report.candidate
    out = [
        f"evalkit gate: {_OVERALL[report.verdict]}",
        f"  baseline   {b['label']} (run {b['run_id']}, {b['model']})",
        f"  candidate  {c['label']} (run {c['run_id']}, {c['model']})",
        f"  config     {report.config}",
        "",
        text_table(_HEADER, [r for r, _ in _rows(report)]),
        "",
    ]
    for m in report.metrics:
        if m.test:
            out.append(f"{m.metric}: test: {m.test}")
        out.append(f"{m.metric}: {m.verdict}: {m.reason}")
        for cat in m.categories:
            if cat.verdict not in ("pass", "improved"):
                out.append(f"{m.metric}[{cat.category}]: {cat.verdict}: {cat.reason}")
    for w in report.warnings:
        out.append(f"protocol difference (forced): {w}")
    for n in report.notes:
        out.append(f"note: {n}")
    return "\n".join(out)


def render_markdown(report: GateReport) -> str:
    """GitHub markdown: a pull-request comment or a job summary."""
    b, c = report.baseline, report.candidate
    icon = {"pass": "✅", "regression": "❌", "cannot decide": "⚠️"}[report.verdict]
    out = [
        f"## evalkit gate: {icon} {_OVERALL[report.verdict]}",
        "",
        f"**baseline** {md_cell(b['label'])} ({md_code(b['run_id'])}, {md_cell(b['model'])}) · "
        f"**candidate** {md_cell(c['label'])} ({md_code(c['run_id'])}, {md_cell(c['model'])}) · "
        f"suite {md_cell(c['suite'])}",
        "",
    ]
    if report.warnings:
        out += ["> [!CAUTION]", "> **Protocol differences** (gated with --force):"]
        out += [f"> - {md_cell(w)}" for w in report.warnings]
        out.append("")
    out += ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for row, m in _rows(report):
        cells = [md_cell(x) for x in row[:-1]] + [_MD_VERDICT[m.verdict]]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "<details><summary>Tests and reasons</summary>", ""]
    for m in report.metrics:
        out.append(f"- **{md_cell(m.metric)}**: {md_cell(m.reason)}")
        if m.test:
            out.append(f"  test: {md_cell(m.test)}")
        for cat in m.categories:
            out.append(
                f"  - {md_cell(cat.category)}: {md_cell(cat.verdict)}: {md_cell(cat.reason)}"
            )
    out += ["", "</details>"]
    if report.notes:
        out += ["", "<details><summary>Notes</summary>", ""]
        out += [f"- {md_cell(n)}" for n in report.notes]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


def summary_line(report: GateReport) -> str:
    """One line naming the failing metrics, for the console error message."""
    failing: list[Any] = report.failing(report.verdict)
    names = ", ".join(m.metric for m in failing)
    if report.verdict == "regression":
        return f"gate: regression in {names} (candidate worse than the baseline beyond the allowed amount and the noise)"
    reasons = "; ".join(m.reason for m in failing)
    return f"gate: cannot decide {names}: {reasons[:800]}"
