"""Parameter sweeps: the FID vs CLIP-score trade-off curve (Imagen Fig. A.8).

Each point is one run at one parameter value (typically the guidance weight). The
runs must share a protocol (checked as in :mod:`evalkit.report.compare`); only the
model settings may differ. With both metrics present the curve is FID (y) against
CLIP score as raw cosine (x), points connected in the given order and labelled by
the parameter value; with one of them missing, the present metric is plotted
against the parameter instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write_json, atomic_write_text
from evalkit.errors import InputError
from evalkit.plotting import new_figure, save_figure
from evalkit.report.compare import check_compatible
from evalkit.results import format_interval, format_value, is_uncalibrated
from evalkit.textsafe import md_cell, mpl_text

SWEEP_METRICS = ("fid", "clip_score")
AXIS_LABELS = {
    "fid": "FID (lower is better)",
    "clip_score": "CLIP score, raw cosine (higher is better)",
}
LINE_COLOR = "#4C72B0"
UNCALIBRATED_NOTE = "\nUNCALIBRATED: some runs used random weights"


def _title_color(suffix: str) -> str:
    return "#b00020" if suffix else "black"


def sweep_points(
    results: Sequence[Mapping[str, Any]], param: str, values: list[Any]
) -> list[dict[str, Any]]:
    """One row per run: parameter value, run id, and each sweep metric's value and interval."""
    points = []
    for value, r in zip(values, results, strict=True):
        row: dict[str, Any] = {
            "param": param,
            "value": value,
            "run_id": r.get("run_id"),
            "model": r.get("manifest", {}).get("model", {}).get("name"),
            "uncalibrated": is_uncalibrated(r),
        }
        for name in SWEEP_METRICS:
            entry = r.get("metrics", {}).get(name)
            row[name] = float(entry["value"]) if entry else None
            row[f"{name}_interval"] = (
                list(entry["interval"]) if entry and entry.get("interval") else None
            )
        points.append(row)
    return points


def _err(points: list[dict[str, Any]], name: str) -> list[list[float]] | None:
    if not any(p[f"{name}_interval"] for p in points):
        return None
    lo, hi = [], []
    for p in points:
        iv = p[f"{name}_interval"]
        lo.append(max(0.0, p[name] - iv[0]) if iv else 0.0)
        hi.append(max(0.0, iv[1] - p[name]) if iv else 0.0)
    return [lo, hi]


def _tradeoff_figure(points: list[dict[str, Any]], param: str, suffix: str) -> Any:
    fig = new_figure(6.5, 4.8)
    ax = fig.add_subplot()
    xs = [p["clip_score"] for p in points]
    ys = [p["fid"] for p in points]
    ax.errorbar(
        xs,
        ys,
        xerr=_err(points, "clip_score"),
        yerr=_err(points, "fid"),
        fmt="-o",
        color=LINE_COLOR,
        ecolor="#999999",
        elinewidth=1,
        capsize=2,
        markersize=5,
    )
    for p in points:
        ax.annotate(
            mpl_text(f"{param}={p['value']}"),
            (p["clip_score"], p["fid"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    ax.margins(0.12)
    ax.grid(alpha=0.3)
    ax.set_xlabel(AXIS_LABELS["clip_score"])
    ax.set_ylabel(AXIS_LABELS["fid"])
    ax.set_title(f"FID vs CLIP score over {mpl_text(param)}{suffix}", color=_title_color(suffix))
    return fig


def _vs_param_figure(
    points: list[dict[str, Any]], param: str, present: list[str], suffix: str
) -> Any:
    fig = new_figure(6.5, 2.2 + 2.6 * len(present))
    numeric = all(
        isinstance(p["value"], (int, float)) and not isinstance(p["value"], bool) for p in points
    )
    for i, name in enumerate(present, start=1):
        ax = fig.add_subplot(len(present), 1, i)
        idx = [j for j, p in enumerate(points) if p[name] is not None]
        pts = [points[j] for j in idx]
        xs = [p["value"] for p in pts] if numeric else idx
        ax.errorbar(
            xs,
            [p[name] for p in pts],
            yerr=_err(pts, name),
            fmt="-o",
            color=LINE_COLOR,
            ecolor="#999999",
            capsize=2,
            markersize=5,
        )
        if not numeric:
            ax.set_xticks(range(len(points)), [mpl_text(p["value"]) for p in points])
        ax.set_xlabel(mpl_text(param))
        ax.set_ylabel(AXIS_LABELS[name])
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{' and '.join(present)} over {mpl_text(param)}{suffix}", color=_title_color(suffix)
    )
    return fig


def _sweep_md(points: list[dict[str, Any]], param: str, warnings: list[str], plot: str) -> str:
    out = [f"## Sweep over {md_cell(param)}", ""]
    if any(p["uncalibrated"] for p in points):
        out += ["> [!WARNING]", "> **UNCALIBRATED**: some runs used random weights.", ""]
    if warnings:
        out += ["> [!CAUTION]", "> Protocol differences between runs (forced):"]
        out += [f"> - {md_cell(w)}" for w in warnings]
        out.append("")
    out += [
        f"| {md_cell(param)} | run | FID ↓ | FID 95% CI | CLIP score ↑ | CLIP 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        out.append(
            f"| {md_cell(p['value'])} | {md_cell(p['run_id'])} | {format_value(p['fid'])} "
            f"| {format_interval(p['fid_interval'])} | {format_value(p['clip_score'])} "
            f"| {format_interval(p['clip_score_interval'])} |"
        )
    out += ["", f"![sweep]({plot})", ""]
    return "\n".join(out)


def render_sweep(
    results: Sequence[Mapping[str, Any]],
    param: str,
    values: list[Any],
    out_dir: Path,
    *,
    force: bool = False,
) -> list[Path]:
    """Write ``sweep.png``, ``sweep.svg``, ``sweep.json`` and ``sweep.md`` into ``out_dir``.

    Raises InputError when the lists differ in length, are empty, or no run has FID or
    CLIP score; ProtocolMismatchError when runs differ in protocol (unless ``force``).
    """
    if not results:
        raise InputError("sweep: no results given")
    if len(results) != len(values):
        raise InputError(f"sweep: {len(results)} results but {len(values)} values of {param!r}")
    warnings: list[str] = []
    for r in results[1:]:
        for w in check_compatible(results[0], r, force=force):
            warnings.append(f"{r.get('run_id', '?')}: {w}")
    points = sweep_points(results, param, values)
    present = [n for n in SWEEP_METRICS if any(p[n] is not None for p in points)]
    if not present:
        raise InputError(f"sweep: none of the runs has {' or '.join(SWEEP_METRICS)}")
    both = all(p["fid"] is not None and p["clip_score"] is not None for p in points)
    suffix = UNCALIBRATED_NOTE if any(p["uncalibrated"] for p in points) else ""
    if both:
        fig = _tradeoff_figure(points, param, suffix)
    else:
        fig = _vs_param_figure(points, param, present, suffix)
    out_dir = Path(out_dir)
    paths = save_figure(fig, out_dir / "sweep")
    summary = {
        "param": param,
        "kind": "fid_vs_clip_score" if both else "metric_vs_param",
        "points": points,
        "warnings": warnings,
    }
    paths.append(atomic_write_json(out_dir / "sweep.json", summary))
    paths.append(
        atomic_write_text(out_dir / "sweep.md", _sweep_md(points, param, warnings, "sweep.png"))
    )
    return paths
