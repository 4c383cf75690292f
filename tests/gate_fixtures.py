"""Constructed run folders with known answers for the gate tests (no model, no network).

``write_run`` writes a schema-valid ``results.json`` and ``samples.jsonl`` whose per-item
scores are exactly the numbers given, so the gate's verdicts can be checked against a
known truth.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("colors", "counting", "positional", "single")


def item_ids(n: int) -> list[str]:
    """``n`` item ids spread over four categories."""
    return [f"{CATEGORIES[i % 4]}-{i:04d}" for i in range(n)]


def results_dict(
    scores: dict[str, dict[str, float]],
    *,
    run_id: str = "constructed",
    seed: int = 0,
    suite_version: str = "1",
    set_metrics: dict[str, float] | None = None,
    per_item: bool = True,
    created: str = "2026-12-01T00:00:00+00:00",
    git_commit: str | None = None,
) -> dict[str, Any]:
    """Results with ``scores[metric][item] = value`` and optional set-level metrics."""
    ids = sorted({i for s in scores.values() for i in s})
    metrics: dict[str, Any] = {}
    for name, s in scores.items():
        vals = np.array([s[i] for i in sorted(s)])
        metrics[name] = {
            "name": name,
            "value": float(vals.mean()),
            "interval": [float(vals.mean() - 0.01), float(vals.mean() + 0.01)],
            "per_item": dict(s) if per_item else None,
            "manifest": {"implementation": "constructed", "backbone": "none"},
        }
    for name, v in (set_metrics or {}).items():
        metrics[name] = {
            "name": name,
            "value": float(v),
            "interval": None,
            "manifest": {"implementation": "constructed", "extractor": "none"},
        }
    return {
        "schema_version": 1,
        "run_id": run_id,
        "created": created,
        "evalkit_version": "0.1.0",
        "spec": {
            "model": "constructed",
            "suite": "constructed",
            "images_per_prompt": 1,
            "seed": seed,
            "resolution": 64,
            "metrics": list(metrics),
            "num_samples": len(ids),
        },
        "manifest": {
            "suite": {"name": "constructed", "version": suite_version, "num_items": len(ids)},
            "model": {"name": "constructed"},
            "sampling": {
                "num_images": len(ids),
                "images_per_prompt": 1,
                "seed": seed,
                "resolution": 64,
                "image_format": "png",
            },
            "environment": {"git_commit": git_commit},
        },
        "metrics": metrics,
        "uncalibrated": False,
    }


def write_run(folder: Path, results: dict[str, Any], *, seed: int | None = None) -> Path:
    """Write ``results.json`` and a matching ``samples.jsonl`` (no images) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    ids = sorted({i for e in results["metrics"].values() for i in (e.get("per_item") or {})})
    run_seed = results["spec"]["seed"] if seed is None else seed
    lines = [
        json.dumps(
            {
                "item_id": i,
                "sample_index": 0,
                "seed": 1000 * run_seed + k,
                "prompt": f"prompt of {i}",
                "category": i.split("-")[0],
                "image": f"images/{i}_000.png",
            }
        )
        for k, i in enumerate(ids)
    ]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def clip_pair(
    tmp: Path,
    *,
    n: int = 100,
    shift: float = 0.0,
    noise: float = 0.0,
    noise_seed: int = 1,
    categories_shift: dict[str, float] | None = None,
) -> tuple[Path, Path]:
    """Baseline and candidate CLIP-score runs: candidate = baseline + shift + noise (per prompt)."""
    rng = np.random.default_rng(0)
    ids = item_ids(n)
    base = {i: float(v) for i, v in zip(ids, rng.normal(0.30, 0.03, n), strict=True)}
    noise_rng = np.random.default_rng(noise_seed)
    cand = {}
    for i in ids:
        extra = (categories_shift or {}).get(i.split("-")[0], 0.0)
        cand[i] = base[i] + shift + extra + (float(noise_rng.normal(0, noise)) if noise else 0.0)
    a = write_run(tmp / "base", results_dict({"clip_score": base}, run_id="base"))
    b = write_run(tmp / "cand", results_dict({"clip_score": cand}, run_id="cand"))
    return a, b


def variant(results: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``results`` with dotted-path changes, e.g. ``{"spec.seed": 3}``."""
    out = copy.deepcopy(results)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        d = out
        for k in path:
            d = d[k]
        d[last] = value
    return out
