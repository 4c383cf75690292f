"""Synthetic finished runs (tiny PNGs, samples.jsonl, results.json) for tests, benchmarks and demos."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from PIL import Image

from evalkit.atomic import atomic_write_json, atomic_write_text
from evalkit.human.security import hash_token, new_id, new_token
from evalkit.human.store import Store, connect
from evalkit.human.study import DEFAULT_DB_FILE, Study, create_study

if TYPE_CHECKING:
    from typing_extensions import Unpack

DEMO_ITEMS: list[tuple[str, str, str]] = [
    ("db-000", "A red colored car.", "Colors"),
    ("db-001", "A black colored banana.", "Colors"),
    ("db-002", "Three cats and two dogs sitting on the grass.", "Counting"),
    ("db-003", "Five cars on the street.", "Counting"),
    ("db-004", "A storefront with 'Text to Image' written on it.", "Text"),
    ("db-005", "A sign that says 'Diffusion'.", "Text"),
    ("db-006", "A horse riding an astronaut.", "Conflicting"),
    ("db-007", "A pizza cooking an oven.", "Conflicting"),
]


def make_run(
    root: str | Path,
    run_id: str,
    model: str,
    *,
    items: Sequence[tuple[str, str, str]] = DEMO_ITEMS,
    images_per_prompt: int = 4,
    size: int = 32,
    suite: str = "drawbench",
    suite_version: str = "1",
    clip: dict[str, float] | None = None,
    seed: int = 0,
) -> Path:
    """Write a finished run folder ``root/run_id`` and return it."""
    run_dir = Path(root) / run_id
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    lines = []
    for item_id, prompt, category in items:
        base = rng.integers(0, 256, size=3)
        for k in range(images_per_prompt):
            arr = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
            name = f"{item_id}_{k}.png"
            Image.fromarray(arr).save(run_dir / "images" / name)
            lines.append(
                json.dumps(
                    {
                        "item_id": item_id,
                        "sample_index": k,
                        "seed": int(seed * 1000 + k),
                        "prompt": prompt,
                        "category": category,
                        "image": f"images/{name}",
                        "key": f"{run_id}-{item_id}-{k}",
                    },
                    sort_keys=True,
                )
            )
    atomic_write_text(run_dir / "samples.jsonl", "\n".join(lines) + "\n")
    metrics = {}
    if clip is not None:
        metrics["clip_score"] = {"value": float(np.mean(list(clip.values()))), "per_item": clip}
    atomic_write_json(
        run_dir / "results.json",
        {
            "run_id": run_id,
            "spec": {
                "model": model,
                "suite": suite,
                "suite_options": {},
                "images_per_prompt": images_per_prompt,
                "seed": seed,
                "resolution": size,
            },
            "manifest": {
                "suite": {"name": suite, "version": suite_version, "num_items": len(items)},
                "model": {"name": model, "fingerprint": f"fp-{model}", "settings": {}},
                "sampling": {"images_per_prompt": images_per_prompt, "seed": seed},
            },
            "metrics": metrics,
        },
    )
    return run_dir


class StudyOptions(TypedDict, total=False):
    """The further keyword arguments of :func:`make_study`, passed on to ``create_study``."""

    questions: list[str] | None
    baseline: str | Path | None
    schedule: str
    undo_window_s: float
    seed: int


def make_study(
    root: str | Path,
    *,
    n_runs: int = 2,
    db: str | None = None,
    images_per_prompt: int = 4,
    images_per_side: int = 4,
    ratings_per_item: int = 3,
    gold_tasks: int | None = 2,
    gold_every: int = 4,
    items: Sequence[tuple[str, str, str]] = DEMO_ITEMS,
    **study_options: Unpack[StudyOptions],
) -> tuple[Study, Store, str]:
    """Synthetic runs plus a study on them, registered in a store: (study, store, admin token).

    ``db`` is a store URL (default: the study's SQLite file).
    """
    root = Path(root)
    runs = [
        make_run(
            root / "runs",
            f"run{k}",
            f"model-{k}",
            items=items,
            images_per_prompt=images_per_prompt,
            seed=k,
        )
        for k in range(n_runs)
    ]
    study = create_study(
        runs,
        root / "study",
        suite="drawbench",
        images_per_side=images_per_side,
        ratings_per_item=ratings_per_item,
        gold_tasks=gold_tasks,
        gold_every=gold_every,
        db="postgresql" if db and db.startswith("postgres") else (db or DEFAULT_DB_FILE),
        **study_options,
    )
    store = connect(db or study.root / DEFAULT_DB_FILE)
    store.register_study(study.study_id, {"root": str(study.root)})
    admin = add_rater(study, store, "admin", role="admin")
    return study, store, admin


def add_rater(study: Study, store: Store, name: str, role: str = "rater") -> str:
    """Register a rater (or admin) and return their token."""
    token = new_token()
    store.add_rater(study.study_id, new_id(), name, hash_token(token), role)
    return token
