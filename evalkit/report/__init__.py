"""Results schema, reports (HTML, Markdown, plots), comparisons and sweeps.

matplotlib is imported only when a plot is drawn, so importing this package is cheap.
"""

from evalkit.report.build import build_report
from evalkit.report.compare import check_compatible, compare_results, render_comparison_md
from evalkit.report.schema import SCHEMA_VERSION, load_results, load_samples
from evalkit.report.sweep import render_sweep

__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "check_compatible",
    "compare_results",
    "load_results",
    "load_samples",
    "render_comparison_md",
    "render_sweep",
]
