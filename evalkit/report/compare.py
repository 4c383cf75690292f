"""Compare two results: protocol check first, then per-metric deltas.

Two numbers are comparable only when they were measured under the same protocol:
same suite (name, version, options, sample count), same sampling (resolution, images
per prompt, seed derivation, file format) and, per metric, the same manifest
(implementation, extractor weights, resize, reference set, CLIP backbone and scale).
Those differences raise :class:`ProtocolMismatchError` (or come back as warnings with
``force=True``). Model, environment and timing differences are what a comparison is
for: they are listed as notes.

By convention ``a`` is the baseline and ``b`` the candidate: deltas are ``b - a`` and
"better" means ``b`` is better than ``a``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from evalkit.errors import ProtocolMismatchError
from evalkit.results import (
    format_interval,
    format_value,
    is_uncalibrated,
    metric_direction,
)
from evalkit.textsafe import md_cell, md_code

#: Metric manifest / option keys (at any depth) that describe the machine or the run's
#: bookkeeping, not the protocol: differences are notes only.
NOTE_KEYS = frozenset(
    {
        "versions",
        "library_versions",
        "packages",
        "package_versions",
        "device",
        "batch_size",
        "num_workers",
        "elapsed_s",
        "time_s",
        "timings",
        "cache",
        "cache_dir",
        "cache_path",
        "weights_path",
        "weights_source",
        "weights_file_sha256",
        "path",
        "root",
        "data_dir",
        "origin",
        "seed",
        "notes",
    }
)

#: ``<library>_version`` keys (e.g. ``torch_version``) are notes too.
LIBRARY_NAMES = frozenset(
    {
        "torch",
        "torchvision",
        "numpy",
        "scipy",
        "torch_fidelity",
        "torchmetrics",
        "open_clip",
        "open_clip_torch",
        "transformers",
        "diffusers",
        "pillow",
        "python",
        "cuda",
        "cudnn",
        "evalkit",
        "safetensors",
    }
)


def is_note_key(key: str) -> bool:
    """True for manifest keys whose differences never make results incomparable."""
    return key in NOTE_KEYS or (
        key.endswith("_version") and key[: -len("_version")] in LIBRARY_NAMES
    )


#: Sampling keys that must agree.
SAMPLING_KEYS = ("resolution", "images_per_prompt", "seed_derivation", "image_format", "num_images")

_MAX_REPR = 80


def _repr(value: Any) -> str:
    text = (
        json.dumps(value, sort_keys=True, default=str)
        if not isinstance(value, str)
        else repr(value)
    )
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


_MISSING = object()


def _diff(a: Any, b: Any, path: str) -> list[str]:
    """Every leaf where ``a`` and ``b`` differ, as ``"path: A vs B"`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k))
        return out
    if a is _MISSING and b is _MISSING:
        return []
    if a == b and type(a) is type(b):
        return []
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers and float(a) == float(b):
        return []
    ra = "(absent)" if a is _MISSING else _repr(a)
    rb = "(absent)" if b is _MISSING else _repr(b)
    return [f"{path}: {ra} vs {rb}"]


def _split(a: Any, b: Any, path: str) -> tuple[list[str], list[str]]:
    """Diff two metric manifests / option dicts into (protocol differences, notes).

    Keys for which :func:`is_note_key` holds go to the notes, at any depth.
    """
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return _diff(a, b, path), []
    proto: list[str] = []
    notes: list[str] = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb, sub = a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}"
        if is_note_key(str(k)):
            notes += _diff(va, vb, sub)
        else:
            p, n = _split(va, vb, sub)
            proto += p
            notes += n
    return proto, notes


def manifest_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(protocol differences, notes)`` between two results dicts."""
    proto: list[str] = []
    notes: list[str] = []
    sa, sb = a.get("spec", {}), b.get("spec", {})
    ma, mb = a.get("manifest", {}), b.get("manifest", {})

    # suite identity, options and sample count
    for key in ("suite", "num_samples"):
        proto += _diff(sa.get(key, _MISSING), sb.get(key, _MISSING), f"spec.{key}")
    p, n = _split(
        sa.get("suite_options") or {}, sb.get("suite_options") or {}, "spec.suite_options"
    )
    proto += p
    notes += n
    p, n = _split(ma.get("suite", {}), mb.get("suite", {}), "manifest.suite")
    proto += p
    notes += n

    # sampling
    sma, smb = ma.get("sampling", {}), mb.get("sampling", {})
    for key in SAMPLING_KEYS:
        proto += _diff(sma.get(key, _MISSING), smb.get(key, _MISSING), f"manifest.sampling.{key}")
    notes += _diff(sma.get("seed", _MISSING), smb.get("seed", _MISSING), "manifest.sampling.seed")

    # per metric, for the metrics both results have
    metrics_a, metrics_b = a.get("metrics", {}), b.get("metrics", {})
    opts_a, opts_b = sa.get("metric_options") or {}, sb.get("metric_options") or {}
    for name in sorted(set(metrics_a) & set(metrics_b)):
        p, n = _split(
            metrics_a[name].get("manifest") or {},
            metrics_b[name].get("manifest") or {},
            f"metrics.{name}.manifest",
        )
        proto += p
        notes += n
        p, n = _split(opts_a.get(name) or {}, opts_b.get(name) or {}, f"spec.metric_options.{name}")
        proto += p
        notes += n
        proto += _diff(
            bool(metrics_a[name].get("uncalibrated")),
            bool(metrics_b[name].get("uncalibrated")),
            f"metrics.{name}.uncalibrated",
        )
    for name in sorted(set(metrics_a) - set(metrics_b)):
        notes.append(f"metric {name!r} only in a")
    for name in sorted(set(metrics_b) - set(metrics_a)):
        notes.append(f"metric {name!r} only in b")

    # what is being compared: listed, never blocking
    notes += _diff(ma.get("model", {}), mb.get("model", {}), "manifest.model")
    for key in ("model", "model_options", "seed"):
        notes += _diff(sa.get(key, _MISSING), sb.get(key, _MISSING), f"spec.{key}")
    notes += _diff(ma.get("environment", {}), mb.get("environment", {}), "manifest.environment")
    ta, tb = ma.get("timings", {}), mb.get("timings", {})
    if "total_s" in ta or "total_s" in tb:
        notes += _diff(
            ta.get("total_s", _MISSING), tb.get("total_s", _MISSING), "manifest.timings.total_s"
        )
    return proto, notes


def check_compatible(
    a: Mapping[str, Any], b: Mapping[str, Any], *, force: bool = False
) -> list[str]:
    """Raise ProtocolMismatchError listing every protocol difference between ``a`` and ``b``.

    With ``force=True`` the differences are returned as warnings instead. Compatible
    results give an empty list.
    """
    proto, _ = manifest_differences(a, b)
    if proto and not force:
        lines = "\n".join(f"  - {d}" for d in proto)
        raise ProtocolMismatchError(
            f"results {a.get('run_id', '?')!r} (a) and {b.get('run_id', '?')!r} (b) were measured "
            f"under different protocols, so their numbers are not comparable "
            f"({len(proto)} difference(s)):\n{lines}\n"
            "Compare anyway with force (--force); the differences become warnings."
        )
    return proto


def _verdict(direction: str | None, delta: float) -> str:
    if delta == 0:
        return "same"
    if direction is None:
        return "changed"
    improved = delta < 0 if direction == "lower" else delta > 0
    return "better" if improved else "worse"


def _overlap(ia: Any, ib: Any) -> bool | None:
    if not ia or not ib:
        return None
    return not (ia[1] < ib[0] or ib[1] < ia[0])


def _delta(va: float, vb: float, ia: Any, ib: Any, direction: str | None) -> dict[str, Any]:
    delta = float(vb) - float(va)
    relative = delta / abs(float(va)) if va != 0 else None
    overlap = _overlap(ia, ib)
    return {
        "a": float(va),
        "b": float(vb),
        "a_interval": list(ia) if ia else None,
        "b_interval": list(ib) if ib else None,
        "delta": delta,
        "relative": relative,
        "verdict": _verdict(direction, delta),
        "intervals_overlap": overlap,
        # a clear change: the 95% intervals are disjoint
        "clear": overlap is False,
    }


def _summary(r: Mapping[str, Any]) -> dict[str, Any]:
    m = r.get("manifest", {})
    return {
        "run_id": r.get("run_id"),
        "model": m.get("model", {}).get("name") or r.get("spec", {}).get("model"),
        "suite": m.get("suite", {}).get("name") or r.get("spec", {}).get("suite"),
        "num_images": m.get("sampling", {}).get("num_images"),
        "uncalibrated": is_uncalibrated(r),
    }


def compare_results(
    a: Mapping[str, Any], b: Mapping[str, Any], force: bool = False
) -> dict[str, Any]:
    """Per-metric deltas of ``b`` against baseline ``a`` (after the protocol check)."""
    warnings = check_compatible(a, b, force=force)
    _, notes = manifest_differences(a, b)
    metrics: dict[str, Any] = {}
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    for name in sorted(set(ma) & set(mb)):
        ea, eb = ma[name], mb[name]
        direction = metric_direction(name, ea) or metric_direction(name, eb)
        row = _delta(ea["value"], eb["value"], ea.get("interval"), eb.get("interval"), direction)
        row["direction"] = direction
        pa, pb = ea.get("per_category") or {}, eb.get("per_category") or {}
        cats = sorted(set(pa) & set(pb))
        row["per_category"] = {
            c: _delta(
                pa[c]["value"],
                pb[c]["value"],
                pa[c].get("interval"),
                pb[c].get("interval"),
                direction,
            )
            for c in cats
        } or None
        metrics[name] = row
    return {
        "a": _summary(a),
        "b": _summary(b),
        "compatible": not warnings,
        "warnings": warnings,
        "notes": notes,
        "metrics": metrics,
        "only_in_a": sorted(set(ma) - set(mb)),
        "only_in_b": sorted(set(mb) - set(ma)),
    }


def _fmt_rel(rel: float | None) -> str:
    return "—" if rel is None else f"{rel * 100:+.1f}%"


_ARROW = {"better": "✅ better", "worse": "❌ worse", "same": "= same", "changed": "changed"}


def render_comparison_md(comparison: dict[str, Any]) -> str:
    """GitHub markdown for a :func:`compare_results` dict (for pull-request comments)."""
    a, b = comparison["a"], comparison["b"]
    out = [
        "## evalkit comparison",
        "",
        f"**a (baseline)**: {md_code(a['run_id'])} {md_cell(a['model'])} · "
        f"**b (candidate)**: {md_code(b['run_id'])} {md_cell(b['model'])} · "
        f"suite {md_cell(a['suite'])}",
        "",
    ]
    if a["uncalibrated"] or b["uncalibrated"]:
        out += [
            "> [!WARNING]",
            "> **UNCALIBRATED**: at least one side used random weights; these numbers test "
            "plumbing only.",
            "",
        ]
    if comparison["warnings"]:
        out += [
            "> [!CAUTION]",
            "> **Protocol differences** (compared with force; the numbers are not comparable):",
        ]
        out += [f"> - {md_cell(w)}" for w in comparison["warnings"]]
        out.append("")
    out += [
        "| metric | a | b | Δ (b − a) | relative | verdict | 95% CIs overlap |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in comparison["metrics"].items():
        direction = {"lower": " ↓", "higher": " ↑"}.get(row["direction"] or "", "")
        overlap = {True: "yes", False: "**no**", None: "—"}[row["intervals_overlap"]]
        out.append(
            f"| {md_cell(name)}{direction} "
            f"| {format_value(row['a'])} {format_interval(row['a_interval'])} "
            f"| {format_value(row['b'])} {format_interval(row['b_interval'])} "
            f"| {row['delta']:+.4g} | {_fmt_rel(row['relative'])} "
            f"| {_ARROW[row['verdict']]} | {overlap} |"
        )
    for name, row in comparison["metrics"].items():
        if not row.get("per_category"):
            continue
        out += [
            "",
            f"<details><summary>{md_cell(name)} per category</summary>",
            "",
            "| category | a | b | Δ | verdict |",
            "|---|---|---|---|---|",
        ]
        for cat, c in row["per_category"].items():
            out.append(
                f"| {md_cell(cat)} | {format_value(c['a'])} | {format_value(c['b'])} "
                f"| {c['delta']:+.4g} | {_ARROW[c['verdict']]} |"
            )
        out += ["", "</details>"]
    if comparison["only_in_a"] or comparison["only_in_b"]:
        out += [
            "",
            f"Only in a: {md_cell(', '.join(comparison['only_in_a']) or '—')}; "
            f"only in b: {md_cell(', '.join(comparison['only_in_b']) or '—')}.",
        ]
    if comparison["notes"]:
        out += ["", "<details><summary>Notes (allowed differences)</summary>", ""]
        out += [f"- {md_cell(n)}" for n in comparison["notes"]]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"
