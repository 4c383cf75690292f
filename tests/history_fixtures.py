"""Real evalkit runs and a history of them, for the gate, history and dashboard tests.

The runs are real (``evalkit.run.execute``, the code path of ``evalkit run``) on the
``shapes`` suite with the ``toy`` and ``reference`` models; they run in-process (one torch
import) with the shapes accuracy only, so twelve runs take seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.errors import ProtocolMismatchError
from evalkit.gate.config import GateConfig
from evalkit.gate.core import load_run, run_gate
from evalkit.history import add_record
from evalkit.run import RunOptions, execute
from evalkit.spec import RunSpec


def real_run(
    out: Path,
    *,
    model: str = "toy",
    seed: int = 0,
    num_items: int = 20,
    metrics: tuple[str, ...] = ("shapes_accuracy",),
    model_options: dict[str, Any] | None = None,
    metric_options: dict[str, dict[str, Any]] | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """One real run of ``model`` on ``shapes``; returns its folder."""
    spec = RunSpec(
        model=model,
        suite="shapes",
        model_options=dict(model_options or {}),
        suite_options={"num_items": num_items},
        num_samples=num_items,
        images_per_prompt=1,
        seed=seed,
        resolution=64,
        metrics=metrics,
        metric_options=dict(metric_options or {}),
    )
    run_dir = execute(
        spec,
        RunOptions(out_root=out, cache_dir=cache_dir, show_progress=False, write_report=False),
    )
    assert isinstance(run_dir, Path)
    return run_dir


#: (model, seed, num_items): toy, then the suite's own renders (a step up), then toy again
#: (a regression the gate catches), then a larger suite (a protocol change).
HISTORY_PLAN = [
    ("toy", 0, 20),
    ("toy", 1, 20),
    ("toy", 2, 20),
    ("toy", 3, 20),
    ("reference", 0, 20),
    ("reference", 1, 20),
    ("reference", 2, 20),
    ("reference", 3, 20),
    ("toy", 4, 20),
    ("toy", 5, 20),
    ("reference", 4, 24),
    ("reference", 5, 24),
]


def build_history(
    root: Path, plan: list[tuple[str, int, int]] = HISTORY_PLAN
) -> tuple[Path, list[Path]]:
    """Run ``plan``, gate each run against the previous one, record both; returns (history, runs).

    Commits are ``c01``, ``c02`` ... on branch ``main``, in one series ``shapes/main``.
    """
    history = root / "history"
    runs: list[Path] = []
    for i, (model, seed, n) in enumerate(plan):
        run_dir = real_run(root / "runs", model=model, seed=seed, num_items=n)
        gate = None
        if runs:
            base, cand = load_run(runs[-1]), load_run(run_dir)
            try:
                gate = run_gate(base, cand, GateConfig()).to_dict()
            except ProtocolMismatchError:  # another protocol: no verdict to attach
                gate = None
        add_record(
            run_dir,
            history,
            commit=f"c{i + 1:02d}" + "0" * 38,
            branch="main",
            labels={"series": "shapes/main"},
            gate=gate,
        )
        runs.append(run_dir)
    return history, runs
