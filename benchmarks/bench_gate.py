"""How long `evalkit gate` takes on a 200-prompt shapes run pair.

Makes two real runs of the toy model on the ``shapes`` suite (200 prompts, shapes accuracy,
run seeds 0 and 1), records the first in a history, then times

- ``evalkit gate --baseline RUN_A --candidate RUN_B`` through the console script (wall time,
  including Python start-up and imports), best and median of ``--repeats``;
- the same against ``history:DIR@main`` (reads and verifies the record, parquet included);
- :func:`evalkit.gate.core.run_gate` alone, in-process (the statistics: 2000 paired
  resamples over 200 prompts, per-category checks on).

Usage:
    python benchmarks/bench_gate.py [--prompts 200] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="OMP/MKL threads (default: all)")
    args = ap.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    from evalkit.gate.config import parse_config
    from evalkit.gate.core import load_run, run_gate
    from evalkit.history import add_record
    from evalkit.run import RunOptions, execute
    from evalkit.spec import RunSpec

    work = Path(tempfile.mkdtemp(prefix="evalkit-bench-gate-"))
    os.environ["EVALKIT_CACHE"] = str(work / "cache")
    try:
        runs = []
        for seed in (0, 1):
            spec = RunSpec(
                model="toy", suite="shapes", suite_options={"num_items": args.prompts},
                num_samples=args.prompts, images_per_prompt=1, seed=seed, resolution=64,
                metrics=("shapes_accuracy",), metric_options={},
            )  # fmt: skip
            runs.append(
                execute(
                    spec,
                    RunOptions(out_root=work / "runs", show_progress=False, write_report=False),
                )
            )
        add_record(runs[0], work / "history", commit="0" * 40, branch="main")
        (work / "evalkit-gate.toml").write_text("[defaults]\nper_category = true\n")
        exe = str(Path(sys.executable).with_name("evalkit"))

        def cli(baseline: str) -> None:
            proc = subprocess.run(
                [exe, "gate", "--baseline", baseline, "--candidate", str(runs[1])],
                cwd=work, capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode not in (0, 10, 11):
                raise SystemExit(proc.stderr)

        config = parse_config({"defaults": {"per_category": True}})
        base, cand = load_run(runs[0]), load_run(runs[1])
        report = run_gate(base, cand, config)
        print(
            f"gate on {args.prompts}-prompt shapes runs (toy model, seeds 0 vs 1): verdict {report.verdict}"
        )
        for m in report.metrics:
            print(
                f"  {m.metric}: delta {m.delta:+.4f} [{m.interval[0]:+.4f}, {m.interval[1]:+.4f}], {m.verdict}"
            )
        b, med = _timed(lambda: cli(str(runs[0])), args.repeats)
        print(
            f"evalkit gate (console script, run folders):      best {b:.2f} s, median {med:.2f} s"
        )
        b, med = _timed(lambda: cli(f"history:{work / 'history'}@main"), args.repeats)
        print(
            f"evalkit gate (console script, history:DIR@main): best {b:.2f} s, median {med:.2f} s"
        )
        b, med = _timed(
            lambda: run_gate(load_run(runs[0]), load_run(runs[1]), config), args.repeats
        )
        print(
            f"load_run x2 + run_gate in-process:               best {b:.3f} s, median {med:.3f} s"
        )
        print(f"machine: {os.cpu_count()} CPU(s), threads {args.threads or 'all'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
