"""The outputs of one run: ``results.json``, ``report.html``, ``report.md`` and ``assets/`` plots.

They are written together: every file is rendered first, then renamed into place with
``results.json`` last, and the previous run's files are removed before a new run starts.
A run killed at any point therefore leaves either no results or results with the report
made from them, never a report of another run beside them.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write_json, atomic_write_text
from evalkit.errors import InputError
from evalkit.report.plots import plot_per_category
from evalkit.report.render_html import render_report_html
from evalkit.report.render_md import render_report_md
from evalkit.results import (
    FEATURES_DIR,
    RESULTS_FILE,
    load_results,
    load_run_samples,
    validate_results,
)

ASSETS_DIR = "assets"
REPORT_FILES = ("report.html", "report.md")


def remove_outputs(run_dir: Path) -> None:
    """Delete a run folder's results, report and recorded features (before a run writes new ones)."""
    run_dir = Path(run_dir)
    (run_dir / RESULTS_FILE).unlink(missing_ok=True)  # first: without it nothing else is trusted
    for name in REPORT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / ASSETS_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / FEATURES_DIR, ignore_errors=True)


def render_report(run_dir: Path, results: Mapping[str, Any]) -> tuple[dict[str, str], list[Path]]:
    """The report pages of ``results`` (file name → text) and the plots, written to ``assets/``.

    Raises InputError for a samples line whose image path leaves the run folder.
    """
    samples = load_run_samples(run_dir) or []
    plot_files = plot_per_category(dict(results), run_dir / ASSETS_DIR)
    rel_plots = {
        name: [p.relative_to(run_dir).as_posix() for p in paths]
        for name, paths in plot_files.items()
    }
    pages = {
        "report.html": render_report_html(dict(results), samples, rel_plots, run_dir=run_dir),
        "report.md": render_report_md(dict(results)),
    }
    return pages, [p for paths in plot_files.values() for p in paths]


def write_outputs(run_dir: Path, results: dict[str, Any], *, write_report: bool = True) -> Path:
    """Validate ``results``, render the report, then write the report and ``results.json`` (last)."""
    run_dir = Path(run_dir)
    validate_results(results, str(run_dir / RESULTS_FILE))
    pages: dict[str, str] = {}
    if write_report:
        pages, _ = render_report(run_dir, results)
    for name, text in pages.items():
        atomic_write_text(run_dir / name, text)
    return atomic_write_json(run_dir / RESULTS_FILE, results)


def build_report(run_dir: Path) -> list[Path]:
    """(Re)build the report of a finished run from its ``results.json``.

    Returns the written paths: ``report.html``, ``report.md``, then the plots.
    Raises InputError for a missing or malformed results file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    results = load_results(run_dir / RESULTS_FILE)
    pages, plots = render_report(run_dir, results)
    written = [atomic_write_text(run_dir / name, text) for name, text in pages.items()]
    return [*written, *plots]
