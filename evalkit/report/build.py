"""Build the report of one run: ``report.html``, ``report.md`` and ``assets/`` plots."""

from __future__ import annotations

from pathlib import Path

from evalkit.atomic import atomic_write_text
from evalkit.errors import InputError
from evalkit.report.plots import plot_per_category
from evalkit.report.render_html import render_report_html
from evalkit.report.render_md import render_report_md
from evalkit.report.schema import load_results, load_samples

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
ASSETS_DIR = "assets"


def build_report(run_dir: Path) -> list[Path]:
    """Read ``run_dir/results.json`` (and ``samples.jsonl`` if present); write the report.

    Returns the written paths: ``report.html``, ``report.md``, then the plots.
    Raises InputError for a missing or malformed results file, or for a samples line
    whose image path leaves the run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    results = load_results(run_dir / RESULTS_FILE)
    samples_path = run_dir / SAMPLES_FILE
    samples = load_samples(samples_path, run_dir) if samples_path.is_file() else []

    plot_files = plot_per_category(results, run_dir / ASSETS_DIR)
    rel_plots = {
        name: [p.relative_to(run_dir).as_posix() for p in paths]
        for name, paths in plot_files.items()
    }
    page = render_report_html(results, samples, rel_plots, run_dir=run_dir)
    html_path = atomic_write_text(run_dir / "report.html", page)
    md_path = atomic_write_text(run_dir / "report.md", render_report_md(results))
    return [html_path, md_path, *(p for paths in plot_files.values() for p in paths)]
