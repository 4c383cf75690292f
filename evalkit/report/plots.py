"""Per-category bar plots of a run's metrics (PNG + SVG, drawn with :mod:`evalkit.plotting`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.plotting import BAR_COLOR, OVERALL_COLOR, new_figure, safe_stem, save_figure
from evalkit.results import format_value, metric_direction
from evalkit.textsafe import mpl_text


def _errors(rows: list[tuple[str, dict[str, Any]]]) -> tuple[list[float], list[float]] | None:
    lo_err, hi_err, any_interval = [], [], False
    for _, r in rows:
        iv = r.get("interval")
        if iv:
            any_interval = True
            lo_err.append(max(0.0, r["value"] - iv[0]))
            hi_err.append(max(0.0, iv[1] - r["value"]))
        else:
            lo_err.append(0.0)
            hi_err.append(0.0)
    return (lo_err, hi_err) if any_interval else None


def per_category_figure(name: str, entry: dict[str, Any]) -> Any:
    """Horizontal bars per category with 95% interval whiskers and the overall value."""
    rows = sorted(entry["per_category"].items())
    values = [r["value"] for _, r in rows]
    fig = new_figure(7.0, 1.4 + 0.38 * len(rows))
    ax = fig.add_subplot()
    ypos = list(range(len(rows)))[::-1]  # first category on top
    err = _errors(rows)
    ax.barh(
        ypos,
        values,
        xerr=err,
        color=BAR_COLOR,
        alpha=0.85,
        error_kw={"ecolor": "#222222", "capsize": 3, "elinewidth": 1},
    )
    ax.axvline(entry["value"], color=OVERALL_COLOR, linestyle="--", linewidth=1)
    for y, (_, r) in zip(ypos, rows, strict=True):
        end = max(r["value"], (r.get("interval") or [0, r["value"]])[1])
        ax.annotate(
            format_value(r["value"]),
            (end, y),
            textcoords="offset points",
            xytext=(4, 0),
            va="center",
            fontsize=8,
        )
    ax.margins(x=0.12)
    labels = [
        f"{mpl_text(c)}  (n={r['n']})" if r.get("n") is not None else mpl_text(c) for c, r in rows
    ]
    ax.set_yticks(ypos, labels)
    direction = metric_direction(name, entry)
    hint = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(direction or "", "")
    ax.set_xlabel(f"{mpl_text(name)}{hint}; dashed line: overall {format_value(entry['value'])}")
    title = f"{mpl_text(name)} per category, 95% intervals"
    if entry.get("uncalibrated"):
        title += "\nUNCALIBRATED: random weights"
    ax.set_title(title, color=OVERALL_COLOR if entry.get("uncalibrated") else "black")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def plot_per_category(results: dict[str, Any], out_dir: Path) -> dict[str, list[Path]]:
    """One PNG + SVG per metric that has per-category results; metric name -> paths."""
    out: dict[str, list[Path]] = {}
    for name, entry in results["metrics"].items():
        if not entry.get("per_category"):
            continue
        fig = per_category_figure(name, entry)
        out[name] = save_figure(fig, Path(out_dir) / f"{safe_stem(name)}_per_category")
    return out
