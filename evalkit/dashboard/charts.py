"""Trend charts of a metric over a history series (matplotlib, via :mod:`evalkit.plotting`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evalkit.changepoint import Step
from evalkit.plotting import BAR_COLOR, OVERALL_COLOR, new_figure, save_figure
from evalkit.textsafe import mpl_text

BAND_ALPHA = 0.2
BREAK_COLOR = "#777777"
STEP_COLOR = "#E08A00"
VERDICT_STYLE = {
    "regression": ("X", OVERALL_COLOR, "gate: regression"),
    "cannot decide": ("d", "#E08A00", "gate: cannot decide"),
    "pass": ("o", "#1b7f1b", "gate: pass"),
    "warn": ("o", "#E08A00", "gate: warn"),
    "improved": ("^", "#1b7f1b", "gate: improved"),
}
CATEGORY_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
                   "#8C8C8C", "#CCB974", "#64B5CD"]  # fmt: skip
MAX_TICKS = 24


def _ticks(ax: Any, rows: Any) -> None:
    n = len(rows)
    every = max(1, int(np.ceil(n / MAX_TICKS)))
    idx = list(range(0, n, every))
    labels = []
    for i in idx:
        r = rows.iloc[i]
        commit = (r["commit"] or "?")[:7]
        when = r["time"].strftime("%m-%d %H:%M") if r["time"] is not None else ""
        labels.append(f"{mpl_text(commit)}\n{when}")
    ax.set_xticks(
        idx,
        labels,
        fontsize=7,
        rotation=0 if len(idx) <= 8 else 45,
        ha="center" if len(idx) <= 8 else "right",
    )
    ax.set_xlim(-0.5, max(n - 0.5, 0.5))


def _segments(rows: Any) -> list[tuple[int, int]]:
    """[start, stop) index ranges between protocol breaks."""
    starts = [0] + [i for i in range(1, len(rows)) if bool(rows.iloc[i]["break"])]
    return [(s, e) for s, e in zip(starts, [*starts[1:], len(rows)], strict=True)]


def trend_figure(
    title: str, rows: Any, steps: list[tuple[int, Step]], direction: str | None
) -> Any:
    """Value vs commit with the 95% band, protocol breaks, change points and gate verdicts."""
    fig = new_figure(9.0, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    v = rows["value"].to_numpy(dtype=np.float64)
    lo = rows["lo"].to_numpy(dtype=np.float64, na_value=np.nan)
    hi = rows["hi"].to_numpy(dtype=np.float64, na_value=np.nan)
    labelled = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for s, e in _segments(rows):
        ax.plot(
            x[s:e],
            v[s:e],
            marker="o",
            markersize=4,
            color=BAR_COLOR,
            linewidth=1.5,
            label=once("value"),
        )
        if np.any(np.isfinite(lo[s:e])):
            ax.fill_between(x[s:e], lo[s:e], hi[s:e], color=BAR_COLOR, alpha=BAND_ALPHA,
                            linewidth=0, label=once("95% interval"))  # fmt: skip
        if s > 0:
            ax.axvline(
                s - 0.5,
                color=BREAK_COLOR,
                linestyle="--",
                linewidth=1.2,
                label=once("protocol change"),
            )
    for i, _ in steps:
        ax.axvline(
            i - 0.5,
            color=STEP_COLOR,
            linestyle="-",
            linewidth=2,
            alpha=0.7,
            label=once("detected step"),
        )
    for verdict, (marker, color, label) in VERDICT_STYLE.items():
        mask = (rows["gate"] == verdict).to_numpy()
        if mask.any():
            ax.scatter(x[mask], v[mask], marker=marker, s=70 if marker == "X" else 40, color=color,
                       zorder=5, edgecolors="white", linewidths=0.5, label=once(label))  # fmt: skip
    _ticks(ax, rows)
    hint = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(direction or "", "")
    ax.set_title(mpl_text(title) + hint, fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), framealpha=0.8)
    return fig


def category_figure(title: str, rows: Any, direction: str | None) -> Any:
    """One line per category over the series' records (breaks dashed)."""
    fig = new_figure(9.0, 3.4)
    ax = fig.add_subplot()
    order = {rid: i for i, rid in enumerate(dict.fromkeys(rows["record_id"]))}
    for k, (cat, g) in enumerate(sorted(rows.groupby("category", sort=True), key=lambda t: t[0])):
        xs = np.array([order[r] for r in g["record_id"]])
        ax.plot(xs, g["value"].to_numpy(dtype=np.float64), marker="o", markersize=3, linewidth=1.2,
                color=CATEGORY_COLORS[k % len(CATEGORY_COLORS)], label=mpl_text(cat))  # fmt: skip
    first = rows.drop_duplicates("record_id")
    for i in range(1, len(first)):
        if bool(first.iloc[i]["break"]):
            ax.axvline(i - 0.5, color=BREAK_COLOR, linestyle="--", linewidth=1.2)
    _ticks(ax, first.reset_index(drop=True))
    hint = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(direction or "", "")
    ax.set_title(mpl_text(title) + " per category" + hint, fontsize=10)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def save_chart(fig: Any, base: Path) -> Path:
    """Write the chart (SVG for the page, PNG beside it); returns the SVG path."""
    paths = save_figure(fig, base)
    return next(p for p in paths if p.suffix == ".svg")
