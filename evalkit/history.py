"""The run history: one immutable record per evaluated run, appended without a lock.

A history folder holds ``records/<record-id>/``, each with

- ``record.json``: commit, branch, time, labels, series, the protocol fingerprint, a summary
  of every metric (value, interval, n, per category), the gate's verdict when one was attached,
  and the sha256 and size of every other file of the record;
- ``results.json``: the run's results, byte for byte;
- ``items.parquet``: one row per generated image (item id, category, prompt, sample index,
  seed, image sha256) with every metric's per-item value (``per_item.<metric>``);
- ``thumbs/``: small PNG thumbnails of a fixed subset of prompts (the same items in every
  record of a suite, chosen by a hash of the item id, so two commits can be shown side by side);
- ``features/``: the run's per-image features and the reference data its set metrics compared
  against, as the run folder has them (the gate resamples these for FID, KID ...).

A record is written into ``.incoming/<random>/`` and renamed into ``records/`` in one step, so
parallel CI jobs can append to the same folder (or a git branch, or a synced bucket) without a
lock, and a killed append leaves only a temporary folder that no reader takes for a record.
The record id is ``<run-id>-<results sha256[:12]>``: the same results cannot be recorded twice.

:func:`load` returns the index as a pandas DataFrame (one row per readable record); records
that cannot be read are listed in ``df.attrs["skipped"]`` with the reason, never silently used.
A record measured under another protocol than the previous one of its series is kept and
marked as a break (``break`` in :func:`metric_frame`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit import __version__
from evalkit.atomic import atomic_write_bytes, atomic_write_json
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.hashing import sha256_file, sha256_json, sha256_text
from evalkit.report.compare import SAMPLING_KEYS, is_note_key
from evalkit.results import (
    FEATURES_DIR,
    RESULTS_FILE,
    SAMPLES_FILE,
    Sample,
    metric_direction,
    parse_results,
    read_run,
    safe_image_path,
)

RECORD_FORMAT = "evalkit-history-record"
RECORD_FORMAT_VERSION = 1
RECORDS_DIR = "records"
INCOMING_DIR = ".incoming"
RECORD_FILE = "record.json"
ITEMS_FILE = "items.parquet"
THUMBS_DIR = "thumbs"
#: how many prompts get thumbnails, and how many images of each
THUMB_PROMPTS = 12
THUMB_IMAGES_PER_PROMPT = 2
THUMB_SIZE = 128
#: default history folder when neither ``--history`` nor ``$EVALKIT_HISTORY`` is given
DEFAULT_HISTORY = "evalkit-history"

#: CI variables read for the commit and the branch, first set wins (after the arguments).
COMMIT_ENV = ("GITHUB_SHA", "CI_COMMIT_SHA", "BUILDKITE_COMMIT", "CIRCLE_SHA1", "GIT_COMMIT")
BRANCH_ENV = (
    "GITHUB_HEAD_REF",  # set (non-empty) on pull requests only: the source branch
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "CIRCLE_BRANCH",
    "GIT_BRANCH",
)


def default_history_dir() -> Path:
    """``$EVALKIT_HISTORY`` or ``./evalkit-history``."""
    return Path(os.environ.get("EVALKIT_HISTORY") or DEFAULT_HISTORY)


# --------------------------------------------------------------------------- protocol


def _normalise(value: Any) -> Any:
    """Protocol-relevant part of a manifest value: note keys dropped at any depth, 1.0 == 1."""
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items() if not is_note_key(str(k))}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def protocol_fingerprint(results: Mapping[str, Any]) -> dict[str, Any]:
    """Hashes of what :func:`evalkit.report.compare.manifest_differences` checks.

    ``common`` covers the suite and the sampling; ``metrics[name]`` each metric's manifest,
    options and calibration. Two results have no protocol difference for a metric exactly when
    ``common`` and that metric's hash agree (tested against ``manifest_differences``).
    """
    spec, manifest = results.get("spec", {}), results.get("manifest", {})
    sampling = manifest.get("sampling", {})
    common: dict[str, Any] = {
        "suite_options": _normalise(spec.get("suite_options") or {}),
        "manifest_suite": _normalise(manifest.get("suite", {})),
        "sampling": {k: _normalise(sampling[k]) for k in SAMPLING_KEYS if k in sampling},
    }
    for key in ("suite", "num_samples"):
        if key in spec:
            common[key] = _normalise(spec[key])
    options = spec.get("metric_options") or {}
    metrics = {
        name: sha256_json(
            {
                "common": sha256_json(common),
                "manifest": _normalise(entry.get("manifest") or {}),
                "options": _normalise(options.get(name) or {}),
                "uncalibrated": bool(entry.get("uncalibrated")),
            }
        )
        for name, entry in results.get("metrics", {}).items()
    }
    return {"common": sha256_json(common), "metrics": metrics}


# --------------------------------------------------------------------------- provenance


def _from_env(names: Iterable[str], env: Mapping[str, str]) -> tuple[str | None, str | None]:
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return value, name
    return None, None


def provenance(
    results: Mapping[str, Any],
    *,
    commit: str | None = None,
    branch: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Commit and branch of a run, with where each came from.

    Commit: ``--commit``, else the run manifest's ``environment.git_commit``, else the CI
    variables (:data:`COMMIT_ENV`). Branch: ``--branch``, else the CI variables
    (:data:`BRANCH_ENV`); the manifest records no branch.
    """
    env = os.environ if env is None else env
    environment = results.get("manifest", {}).get("environment") or {}
    out: dict[str, Any] = {"dirty": environment.get("git_dirty")}
    if commit:
        out["commit"], out["commit_source"] = commit, "argument"
    elif environment.get("git_commit"):
        out["commit"], out["commit_source"] = environment["git_commit"], "manifest"
    else:
        out["commit"], out["commit_source"] = _from_env(COMMIT_ENV, env)
    if branch:
        out["branch"], out["branch_source"] = branch, "argument"
    else:
        out["branch"], out["branch_source"] = _from_env(BRANCH_ENV, env)
    return out


# --------------------------------------------------------------------------- writing


def _parse_labels(labels: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {str(k): str(v) for k, v in labels.items()}
    out: dict[str, str] = {}
    for text in labels:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--label: expected KEY=VALUE, got {text!r}")
        out[key.strip()] = value.strip()
    return out


def _metric_summary(name: str, entry: Mapping[str, Any], results: Mapping[str, Any]) -> dict:
    per_item = entry.get("per_item") or None
    n = len(per_item) if per_item else results["manifest"]["sampling"].get("num_images")
    return {
        "value": entry["value"],
        "interval": entry.get("interval"),
        "n": n,
        "unit": "prompts" if per_item else "images",
        "direction": metric_direction(name, dict(entry)),
        "uncalibrated": bool(entry.get("uncalibrated")),
        "per_category": entry.get("per_category") or None,
    }


def thumbnail_items(
    samples: Sequence[Mapping[str, Any]], n_prompts: int = THUMB_PROMPTS
) -> list[str]:
    """A fixed subset of item ids: round robin over categories in the order of sha256(item id).

    Depends only on the item ids, so every record of a suite shows the same prompts.
    """
    by_cat: dict[str, list[str]] = {}
    seen: set[str] = set()
    for s in samples:
        if s["item_id"] in seen:
            continue
        seen.add(s["item_id"])
        by_cat.setdefault(str(s.get("category") or ""), []).append(s["item_id"])
    queues = [
        sorted(ids, key=lambda i: sha256_text("evalkit-thumb-v1:" + i))
        for _, ids in sorted(by_cat.items())
    ]
    chosen: list[str] = []
    while len(chosen) < n_prompts and any(queues):
        for q in queues:
            if q and len(chosen) < n_prompts:
                chosen.append(q.pop(0))
    return sorted(chosen)


def _thumbnail_png(path: Path, size: int) -> bytes:
    from PIL import Image

    with Image.open(path) as src:
        img = src.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _items_table(results: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> Any:
    """The per-image table (pandas DataFrame) stored as ``items.parquet``."""
    import pandas as pd

    per_item = {
        name: entry["per_item"]
        for name, entry in results["metrics"].items()
        if entry.get("per_item")
    }
    rows: list[dict[str, Any]] = []
    if samples:
        for s in samples:
            rows.append(
                {
                    "item_id": s["item_id"],
                    "sample_index": int(s["sample_index"]),
                    "category": s.get("category"),
                    "prompt": s.get("prompt"),
                    "seed": s.get("seed"),
                    "image_sha256": s.get("sha256"),
                }
            )
    else:  # no samples.jsonl: one row per item that has a per-item score
        ids = sorted({i for scores in per_item.values() for i in scores})
        rows = [
            {
                "item_id": i,
                "sample_index": None,
                "category": None,
                "prompt": None,
                "seed": None,
                "image_sha256": None,
            }  # fmt: skip
            for i in ids
        ]
    df = pd.DataFrame(
        rows,
        columns=["item_id", "sample_index", "category", "prompt", "seed", "image_sha256"],
    )
    df["sample_index"] = df["sample_index"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")
    for col in ("item_id", "category", "prompt", "image_sha256"):
        df[col] = df[col].astype("string")
    for name, scores in sorted(per_item.items()):
        df[f"per_item.{name}"] = df["item_id"].map(lambda i, s=scores: s.get(i)).astype("Float64")
    return df


def _parquet_bytes(df: Any) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


@dataclass(frozen=True)
class AddOutcome:
    """What :func:`add_record` did: the record's folder, and whether it was new."""

    record: Record
    created: bool
    message: str


def add_record(
    run: str | os.PathLike,
    history: str | os.PathLike,
    *,
    commit: str | None = None,
    branch: str | None = None,
    labels: Iterable[str] | Mapping[str, str] | None = None,
    gate: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> AddOutcome:
    """Append one immutable record of ``run`` (a run folder or results.json) to ``history``.

    ``gate`` is a gate report (``evalkit gate --json``) to attach: the dashboard marks its
    verdicts. Adding the same results again for the same commit is a no-op; for another
    commit it is refused (:class:`InputError`): one run cannot belong to two commits.
    """
    run_files = read_run(Path(run))
    results_path, run_dir, raw, results = (
        run_files.results_path,
        run_files.run_dir,
        run_files.raw,
        run_files.results,
    )
    samples: list[Sample] = list(run_files.samples or [])
    results_sha = hashlib.sha256(raw).hexdigest()
    record_id = f"{results['run_id']}-{results_sha[:12]}"
    root = Path(history)
    records = root / RECORDS_DIR
    target = records / record_id
    prov = provenance(results, commit=commit, branch=branch, env=env)
    if target.exists():
        return _existing(target, prov)

    label_map = _parse_labels(labels)
    manifest = results["manifest"]
    suite, model = manifest["suite"]["name"], manifest["model"]["name"]
    meta: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "format_version": RECORD_FORMAT_VERSION,
        "record_id": record_id,
        "run_id": results["run_id"],
        "results_sha256": results_sha,
        "time": results["created"],
        "added": (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds"),
        **prov,
        "labels": label_map,
        "suite": suite,
        "model": model,
        "series": label_map.get("series") or f"{suite}/{model}",
        "protocol": protocol_fingerprint(results),
        "uncalibrated": bool(results.get("uncalibrated")),
        "num_items": manifest["suite"].get("num_items"),
        "num_images": manifest["sampling"].get("num_images"),
        "metrics": {
            name: _metric_summary(name, entry, results)
            for name, entry in results["metrics"].items()
        },
        "gate": _gate_summary(gate) if gate else None,
        "evalkit_version": __version__,
        "source": str(results_path),
    }

    tmp = root / INCOMING_DIR / f"{record_id}.{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        files: dict[str, dict[str, Any]] = {}

        def put(rel: str, data: bytes) -> None:
            atomic_write_bytes(tmp / rel, data)
            files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

        put(RESULTS_FILE, raw)
        put(ITEMS_FILE, _parquet_bytes(_items_table(results, samples)))
        thumbs, notes = _write_thumbnails(samples, run_dir, put)
        if run_dir is not None and (run_dir / FEATURES_DIR).is_dir():
            # the per-image features and reference data the gate resamples for set metrics
            for path in sorted((run_dir / FEATURES_DIR).rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    put(path.relative_to(run_dir).as_posix(), path.read_bytes())
        meta["thumbnails"] = thumbs
        meta["notes"] = notes
        meta["files"] = files
        atomic_write_json(tmp / RECORD_FILE, meta)
        records.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, target)  # atomic; fails when another job recorded it first
        except OSError:
            if target.exists():
                return _existing(target, prov)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return AddOutcome(read_record(target), True, f"recorded {record_id}")


def _existing(target: Path, prov: dict[str, Any]) -> AddOutcome:
    record = read_record(target)
    theirs = record.meta.get("commit")
    if prov.get("commit") and theirs and prov["commit"] != theirs:
        raise InputError(
            f"record {record.record_id} already holds these results for commit {theirs}; "
            f"refusing to record them again for commit {prov['commit']} "
            "(one run belongs to one commit)"
        )
    return AddOutcome(record, False, f"already recorded as {record.record_id}; nothing added")


def _write_thumbnails(
    samples: Sequence[Mapping[str, Any]], run_dir: Path | None, put: Any
) -> tuple[list[dict[str, Any]], list[str]]:
    if not samples or run_dir is None:
        return [], [f"no {SAMPLES_FILE}: no thumbnails"]
    chosen = set(thumbnail_items(samples))
    thumbs: list[dict[str, Any]] = []
    notes: list[str] = []
    for s in samples:
        if s["item_id"] not in chosen or int(s["sample_index"]) >= THUMB_IMAGES_PER_PROMPT:
            continue
        path = safe_image_path(run_dir, s["image"], f"{run_dir}/{SAMPLES_FILE}")
        if not path.is_file():
            notes.append(f"image {s['image']} missing: no thumbnail")
            continue
        if s.get("sha256") and sha256_file(path) != s["sha256"]:
            notes.append(f"image {s['image']} does not match its sha256: no thumbnail")
            continue
        try:
            png = _thumbnail_png(path, THUMB_SIZE)
        except OSError as e:
            notes.append(f"image {s['image']} unreadable ({e}): no thumbnail")
            continue
        rel = f"{THUMBS_DIR}/{sha256_text(s['item_id'])[:16]}_{int(s['sample_index']):03d}.png"
        put(rel, png)
        thumbs.append(
            {
                "item_id": s["item_id"],
                "sample_index": int(s["sample_index"]),
                "seed": s.get("seed"),
                "prompt": s.get("prompt"),
                "category": s.get("category"),
                "image_sha256": s.get("sha256"),
                "file": rel,
            }
        )
    return thumbs, notes


def _gate_summary(gate: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a gate report a record keeps: overall verdict, per-metric verdicts, baseline."""
    if not isinstance(gate, Mapping) or "verdict" not in gate or "metrics" not in gate:
        raise InputError("gate report: not an `evalkit gate --json` file (verdict/metrics missing)")
    return {
        "verdict": gate["verdict"],
        "baseline": (gate.get("baseline") or {}).get("label"),
        "metrics": {
            m["metric"]: {
                "verdict": m["verdict"],
                "delta": m.get("delta"),
                "interval": m.get("interval"),
            }
            for m in gate["metrics"]
        },
    }


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Record:
    """One readable history record: its folder and its ``record.json``."""

    path: Path
    meta: dict[str, Any]

    @property
    def record_id(self) -> str:
        """The record's id (its folder name)."""
        return self.meta["record_id"]

    def _verified(self, rel: str) -> Path:
        info = self.meta["files"].get(rel)
        path = self.path / rel
        if info is None:
            raise InputError(f"history record {self.record_id}: {rel} is not part of the record")
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            raise InputError(f"history record {self.record_id}: {rel} is missing") from None
        if digest != info["sha256"]:
            raise InputError(
                f"history record {self.record_id}: {rel} does not match the sha256 in "
                f"{RECORD_FILE} (truncated or modified)"
            )
        return path

    def results(self) -> dict[str, Any]:
        """The run's results.json, checked against its sha256 and the results schema."""
        path = self._verified(RESULTS_FILE)
        return dict(
            parse_results(path.read_bytes(), f"history record {self.record_id}: {RESULTS_FILE}")
        )

    def items(self) -> Any:
        """``items.parquet`` as a pandas DataFrame, checked against its sha256."""
        import pandas as pd

        path = self._verified(ITEMS_FILE)
        try:
            return pd.read_parquet(path, engine="pyarrow")
        except Exception as e:  # noqa: BLE001 - any parser error is a bad record
            raise InputError(f"history record {self.record_id}: {ITEMS_FILE}: {e}") from None

    def thumbnail(self, rel: str) -> Path:
        """A thumbnail's path, checked against its sha256."""
        return self._verified(rel)


_REQUIRED = {
    "record_id": str,
    "run_id": str,
    "results_sha256": str,
    "time": str,
    "added": str,
    "suite": str,
    "model": str,
    "series": str,
    "protocol": dict,
    "metrics": dict,
    "files": dict,
    "labels": dict,
    "thumbnails": list,
}


def read_record(path: str | os.PathLike, *, verify: bool = True) -> Record:
    """Read and check one record folder; :class:`InputError` names the record and the fault.

    With ``verify`` the results and items files are checked against their sha256 (they are
    small); thumbnails are checked by size here and by sha256 when read.
    """
    path = Path(path)
    name = path.name
    if not path.is_dir():
        raise InputError(f"history record {name}: not a record folder (a stray file)")
    try:
        meta = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"history record {name}: {RECORD_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(
            f"history record {name}: {RECORD_FILE} is truncated or not JSON ({e})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != RECORD_FORMAT:
        raise InputError(f"history record {name}: {RECORD_FILE} is not an {RECORD_FORMAT} file")
    if meta.get("format_version") != RECORD_FORMAT_VERSION:
        raise InputError(
            f"history record {name}: format version {meta.get('format_version')!r} is not "
            f"supported (this evalkit reads {RECORD_FORMAT_VERSION})"
        )
    for key, tp in _REQUIRED.items():
        if not isinstance(meta.get(key), tp):
            raise InputError(
                f"history record {name}: {RECORD_FILE}: {key}: missing or not {tp.__name__}"
            )
    if meta["record_id"] != name:
        raise InputError(
            f"history record {name}: {RECORD_FILE} names record {meta['record_id']!r} "
            "(a copied or renamed folder)"
        )
    for rel, info in meta["files"].items():
        f = path / rel
        if not f.is_file():
            raise InputError(f"history record {name}: {rel} is missing")
        if f.stat().st_size != info.get("bytes"):
            raise InputError(
                f"history record {name}: {rel} has {f.stat().st_size} bytes, expected {info.get('bytes')} (truncated or modified)"
            )
    for rel in (RESULTS_FILE, ITEMS_FILE):
        if rel not in meta["files"]:
            raise InputError(f"history record {name}: {rel} is not listed in {RECORD_FILE}")
    record = Record(path, meta)
    if verify:
        for rel in (RESULTS_FILE, ITEMS_FILE):
            record._verified(rel)
    return record


@dataclass(frozen=True)
class Skipped:
    """A history entry that is not a usable record, and why."""

    path: Path
    reason: str


def scan(history: str | os.PathLike, *, verify: bool = True) -> tuple[list[Record], list[Skipped]]:
    """Every readable record (oldest first) and every entry skipped, with the reason.

    Interrupted writes (``.incoming/``) are listed as skipped; of two records holding the same
    results (a copied folder), the one added first is kept.
    """
    root = Path(history)
    if not root.is_dir():
        raise MissingWeightsError(
            f"history folder {root} does not exist (evalkit history add creates it)"
        )
    records: list[Record] = []
    skipped: list[Skipped] = []
    for entry in sorted(root.iterdir()):
        if entry.name not in (RECORDS_DIR, INCOMING_DIR):
            skipped.append(
                Skipped(entry, f"{entry.name}: not part of an evalkit history (foreign file)")
            )
    incoming = root / INCOMING_DIR
    if incoming.is_dir():
        for entry in sorted(incoming.iterdir()):
            skipped.append(
                Skipped(
                    entry, f"{entry.name}: incomplete write (interrupted, or still in progress)"
                )
            )
    base = root / RECORDS_DIR
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        try:
            records.append(read_record(entry, verify=verify))
        except InputError as e:
            skipped.append(Skipped(entry, str(e)))
    records.sort(key=lambda r: (r.meta["time"], r.meta["added"], r.record_id))
    by_results: dict[str, Record] = {}
    unique: list[Record] = []
    for r in sorted(records, key=lambda r: (r.meta["added"], r.record_id)):
        first = by_results.get(r.meta["results_sha256"])
        if first is not None:
            skipped.append(
                Skipped(
                    r.path,
                    f"history record {r.record_id}: claims the same run as record "
                    f"{first.record_id} (results sha256 {r.meta['results_sha256'][:12]}); "
                    "kept the first",
                )
            )
            continue
        by_results[r.meta["results_sha256"]] = r
        unique.append(r)
    unique.sort(key=lambda r: (r.meta["time"], r.meta["added"], r.record_id))
    return unique, skipped


def _time(text: str) -> Any:
    import pandas as pd

    return pd.to_datetime(text, utc=True, errors="coerce")


def frame(records: list[Record], skipped: list[Skipped] | None = None) -> Any:
    """The index DataFrame of :func:`load` from scanned records."""
    import pandas as pd

    rows = []
    for r in records:
        m = r.meta
        row: dict[str, Any] = {
            "record_id": r.record_id,
            "run_id": m["run_id"],
            "time": _time(m["time"]),
            "added": _time(m["added"]),
            "commit": m.get("commit"),
            "branch": m.get("branch"),
            "suite": m["suite"],
            "model": m["model"],
            "series": m["series"],
            "protocol": m["protocol"].get("common"),
            "num_items": m.get("num_items"),
            "uncalibrated": bool(m.get("uncalibrated")),
            "gate": (m.get("gate") or {}).get("verdict"),
            "labels": dict(m.get("labels") or {}),
            "path": str(r.path),
        }
        for name, s in sorted(m["metrics"].items()):
            iv = s.get("interval") or [None, None]
            row[name] = s["value"]
            row[f"{name}.lo"], row[f"{name}.hi"] = iv[0], iv[1]
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = [(str(s.path), s.reason) for s in (skipped or [])]
    return df


def load(history: str | os.PathLike) -> Any:
    """The history index: a pandas DataFrame with one row per readable record, oldest first.

    Columns: ``record_id``, ``run_id``, ``time`` (when the run was measured, UTC), ``added``,
    ``commit``, ``branch``, ``suite``, ``model``, ``series``, ``protocol`` (fingerprint of the
    suite and sampling), ``num_items``, ``uncalibrated``, ``gate`` (attached verdict or None),
    ``labels``, ``path``, and per metric ``<metric>``, ``<metric>.lo``, ``<metric>.hi``.
    ``df.attrs["skipped"]`` lists ``(path, reason)`` of every entry that is not a readable record.
    """
    records, skipped = scan(history)
    return frame(records, skipped)


def metric_frame(records: list[Record]) -> Any:
    """Long form: one row per (record, metric, category) with breaks and gate verdicts.

    ``category`` is ``""`` for the overall value. ``break`` is True where the record's protocol
    for that metric differs from the previous record of the same series that has the metric.
    """
    import pandas as pd

    rows = []
    last: dict[tuple[str, str], str] = {}
    for r in records:
        m = r.meta
        gate = (m.get("gate") or {}).get("metrics") or {}
        for name, s in sorted(m["metrics"].items()):
            fp = m["protocol"]["metrics"].get(name, "")
            key = (m["series"], name)
            brk = key in last and last[key] != fp
            last[key] = fp
            base = {
                "record_id": r.record_id,
                "time": _time(m["time"]),
                "commit": m.get("commit"),
                "branch": m.get("branch"),
                "series": m["series"],
                "suite": m["suite"],
                "model": m["model"],
                "metric": name,
                "direction": s.get("direction"),
                "protocol": fp,
                "break": brk,
                "uncalibrated": bool(s.get("uncalibrated")),
                "gate": (gate.get(name) or {}).get("verdict"),
            }
            iv = s.get("interval") or [None, None]
            rows.append(
                {
                    **base,
                    "category": "",
                    "value": s["value"],
                    "lo": iv[0],
                    "hi": iv[1],
                    "n": s.get("n"),
                }
            )
            for cat, c in sorted((s.get("per_category") or {}).items()):
                civ = c.get("interval") or [None, None]
                rows.append(
                    {
                        **base,
                        "category": cat,
                        "value": c["value"],
                        "lo": civ[0],
                        "hi": civ[1],
                        "n": c.get("n"),
                    }
                )
    return pd.DataFrame(rows)


def find_record(history: str | os.PathLike, record_id: str) -> Record:
    """The record with this id (or a unique prefix of it)."""
    base = Path(history) / RECORDS_DIR
    if "/" in record_id or record_id in ("", ".", ".."):
        raise UsageError(f"not a record id: {record_id!r}")
    exact = base / record_id
    if exact.is_dir():
        return read_record(exact)
    matches = sorted(p for p in base.glob(f"{record_id}*") if p.is_dir()) if base.is_dir() else []
    if len(matches) == 1:
        return read_record(matches[0])
    if not matches:
        raise InputError(f"history {history}: no record {record_id!r}")
    raise UsageError(
        f"history {history}: {record_id!r} matches {len(matches)} records: "
        + ", ".join(p.name for p in matches[:5])
    )


def remove_record(history: str | os.PathLike, record_id: str) -> str:
    """Delete a record (renamed away first, so readers never see half of it); returns its id."""
    base = Path(history) / RECORDS_DIR
    exact = base / record_id
    target_id = record_id if exact.is_dir() else find_record(history, record_id).record_id
    doomed = Path(history) / INCOMING_DIR / f"rm-{target_id}.{uuid.uuid4().hex}"
    doomed.parent.mkdir(parents=True, exist_ok=True)
    os.rename(base / target_id, doomed)
    with contextlib.suppress(OSError):
        shutil.rmtree(doomed)
    return target_id
