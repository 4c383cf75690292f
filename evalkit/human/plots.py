"""Preference plots in the style of Imagen's Fig. 3: stacked horizontal bars with 95% intervals.

Each bar is one comparison: the share preferring model A (left, in A's colour), the share
indifferent (grey, middle) and the share preferring model B (right). Whiskers show the
bootstrap intervals of P(A) (at the A/indifferent boundary) and of P(B) (at the
indifferent/B boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evalkit.plotting import new_figure, save_figure
from evalkit.textsafe import mpl_text

COLOR_A = "#1f6fb4"
COLOR_TIE = "#b9b9b9"
COLOR_B = "#e8862a"


@dataclass(frozen=True)
class Bar:
    """One bar: a label and the three shares with intervals (all as fractions)."""

    label: str
    p_a: float
    p_tie: float
    p_b: float
    p_a_ci: tuple[float, float]
    p_b_ci: tuple[float, float]
    n: int


def _bar_from_stats(label: str, s: dict) -> Bar | None:
    if not s.get("n_votes"):
        return None
    return Bar(
        label, s["p_a"], s["p_tie"], s["p_b"], tuple(s["p_a_ci"]), tuple(s["p_b_ci"]), s["n_votes"]
    )


def preference_bars(
    bars: Sequence[Bar | None], name_a: str, name_b: str, title: str, out_stem: Path
) -> list[Path]:
    """Draw ``bars`` top to bottom; write ``out_stem``.png and .svg atomically; return the paths.

    None entries (no votes) are skipped.
    """
    from matplotlib.patches import Rectangle

    shown = [b for b in bars if b is not None]
    height = 1.4 + 0.5 * max(1, len(shown))
    fig = new_figure(7.5, height, layout=None)
    ax = fig.add_subplot()
    ys = list(range(len(shown)))[::-1]
    for y, b in zip(ys, shown, strict=True):
        a, t, bb = 100 * b.p_a, 100 * b.p_tie, 100 * b.p_b
        ax.barh(y, a, color=COLOR_A, height=0.62)
        ax.barh(y, t, left=a, color=COLOR_TIE, height=0.62)
        ax.barh(y, bb, left=a + t, color=COLOR_B, height=0.62)
        lo, hi = 100 * b.p_a_ci[0], 100 * b.p_a_ci[1]
        ax.errorbar(
            a,
            y + 0.17,
            xerr=[[max(0.0, a - lo)], [max(0.0, hi - a)]],
            fmt="none",
            ecolor="black",
            capsize=2.5,
            lw=0.9,
        )
        lo, hi = 100 * b.p_b_ci[0], 100 * b.p_b_ci[1]
        edge = 100 - bb
        ax.errorbar(
            edge,
            y + 0.17,
            xerr=[[max(0.0, hi - bb)], [max(0.0, bb - lo)]],
            fmt="none",
            ecolor="black",
            capsize=2.5,
            lw=0.9,
        )
        for value, centre, colour in (
            (a, a / 2, "white"),
            (t, a + t / 2, "black"),
            (bb, a + t + bb / 2, "white"),
        ):
            if value >= 7:
                ax.text(
                    centre,
                    y - 0.1,
                    f"{value:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=colour,
                )
    ax.set_yticks(ys, [f"{mpl_text(b.label)} (n={b.n})" for b in shown], fontsize=9)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of votes")
    ax.set_title(mpl_text(title, limit=120), fontsize=10, pad=24)
    handles = [
        Rectangle((0, 0), 1, 1, color=COLOR_A, label=f"prefer {mpl_text(name_a)}"),
        Rectangle((0, 0), 1, 1, color=COLOR_TIE, label="indifferent"),
        Rectangle((0, 0), 1, 1, color=COLOR_B, label=f"prefer {mpl_text(name_b)}"),
    ]
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, out_stem, dpi=150, tight=True)


def plot_preferences(preferences: Sequence[dict], out_dir: Path) -> list[Path]:
    """Overall plot per pair (one bar per question) and per-category plots per pair and question."""
    written: list[Path] = []
    by_pair: dict[str, list[dict]] = {}
    for p in preferences:
        by_pair.setdefault(p["pair_id"], []).append(p)
    for pair_id, entries in by_pair.items():
        name_a, name_b = entries[0]["a"]["model"], entries[0]["b"]["model"]
        overall = [_bar_from_stats(e["question"].capitalize(), e["overall"]) for e in entries]
        written += preference_bars(
            overall,
            name_a,
            name_b,
            f"{name_a} vs {name_b}: all prompts",
            out_dir / f"{pair_id}_overall",
        )
        for e in entries:
            bars = [_bar_from_stats(cat, s) for cat, s in e["per_category"].items()]
            bars.append(_bar_from_stats("Overall", e["overall"]))
            written += preference_bars(
                bars,
                name_a,
                name_b,
                f"{name_a} vs {name_b}: {e['question']} by category",
                out_dir / f"{pair_id}_{e['question']}_by_category",
            )
    return written
