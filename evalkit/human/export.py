"""Vote exports (CSV and JSON) with run ids and model names resolved."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from evalkit.errors import UsageError
from evalkit.human.security import csv_safe
from evalkit.human.store import Store
from evalkit.human.study import Study

EXPORT_COLUMNS = [
    "vote_id",
    "submission_id",
    "assignment_id",
    "attempt",
    "undone",
    "rater_id",
    "rater_name",
    "rater_revoked",
    "task_id",
    "item_id",
    "category",
    "prompt",
    "pair_id",
    "is_gold",
    "question",
    "choice",
    "left_source",
    "right_source",
    "left_model",
    "right_model",
    "preferred",
    "preferred_model",
    "shown_at",
    "answered_at",
    "seconds",
]


def _model(study: Study, source: str | None) -> str | None:
    if source is None:
        return None
    run = study.runs.get(source)
    return run.model if run else source  # gold tasks: 'clean' / 'degraded'


def vote_rows(study: Study, store: Store) -> list[dict[str, Any]]:
    """Every vote event (undone ones flagged) with names resolved; oldest first."""
    rows = []
    for v in store.votes(study.study_id, effective_only=False):
        item = study.items.get(v["item_id"])
        rows.append(
            {
                **v,
                "category": item.category if item else None,
                "prompt": item.prompt if item else None,
                "left_model": _model(study, v["left_source"]),
                "right_model": _model(study, v["right_source"]),
                "preferred_model": _model(study, v["preferred"]),
                "rater_revoked": v["rater_revoked_at"] is not None,
                "seconds": round(float(v["answered_at"]) - float(v["shown_at"]), 3),
            }
        )
    return rows


def export_votes(study: Study, store: Store, fmt: str) -> tuple[str, str]:
    """(file name, text) of all vote events as ``csv`` or ``json``."""
    rows = vote_rows(study, store)
    if fmt == "json":
        doc = {
            "study_id": study.study_id,
            "runs": {k: {"run_id": r.run_id, "model": r.model} for k, r in study.runs.items()},
            "pairs": {p.pair_id: {"a": p.a, "b": p.b} for p in study.pairs.values()},
            "votes": rows,
            "undos": store.undos(study.study_id),
        }
        return f"{study.study_id}-votes.json", json.dumps(doc, indent=2, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=EXPORT_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for r in rows:
            writer.writerow({k: csv_safe(r.get(k)) for k in EXPORT_COLUMNS})
        return f"{study.study_id}-votes.csv", buf.getvalue()
    raise UsageError(f"export format must be csv or json, not {fmt!r}")
