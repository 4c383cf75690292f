"""Reports (HTML, Markdown, plots), comparisons and sweeps of results read by :mod:`evalkit.results`.

matplotlib is imported only when a plot is drawn, so importing this package is cheap.
"""

from evalkit.report.build import build_report
from evalkit.report.compare import check_compatible, compare_results, render_comparison_md
from evalkit.report.sweep import render_sweep

__all__ = [
    "build_report",
    "check_compatible",
    "compare_results",
    "render_comparison_md",
    "render_sweep",
]
