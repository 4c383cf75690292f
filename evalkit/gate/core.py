"""The CI regression gate: is the candidate run worse than the baseline beyond noise and threshold?

For every metric of the baseline the gate states its test and one verdict:

- **regression**: the whole ``confidence`` interval of the degradation (the change in the
  metric's worse direction) lies above the allowed degradation, i.e. a one-sided test of
  "degradation ≤ allowed" at level (1 − confidence)/2 rejects it;
- **warn**: the estimate is above the allowed degradation but the interval reaches below it
  (possibly worse, within noise: passes);
- **improved**: the whole interval lies on the better side of zero (passes);
- **pass**: otherwise;
- **cannot decide**: too few paired samples for the confidence asked, per-item scores or
  per-image features missing, items missing from the candidate, an unknown direction;
- **skipped**: ``gate = false`` in the config (reported only).

Overall: regression if any metric regressed, else cannot decide if any could not be decided,
else pass. Results measured under different protocols are refused before any statistics
(:func:`evalkit.report.compare.check_compatible`), unless forced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from evalkit.errors import InputError, MissingWeightsError, ProtocolMismatchError
from evalkit.gate.config import SET_LEVEL, GateConfig, MetricRule
from evalkit.gate.features import load_set_features, missing_features_reason
from evalkit.gate.stats import min_pairs, paired_bootstrap, paired_set_bootstrap
from evalkit.hashing import sha256_file
from evalkit.report.compare import check_compatible, manifest_differences
from evalkit.results import RESULTS_FILE, is_uncalibrated, metric_direction, read_run

HISTORY_PREFIX = "history:"
#: allowed differences worth listing in a gate report (the rest: `evalkit compare`)
_COMPARED = ("manifest.model", "spec.model", "spec.seed", "manifest.sampling.seed")
VERDICT_ORDER = ("regression", "cannot decide", "warn", "pass", "improved", "skipped")


@dataclass
class GateRun:
    """One side of the gate: its results, its per-image table (or None) and where it came from."""

    label: str
    path: Path
    results: dict[str, Any]
    samples: Any = None  # pandas DataFrame: item_id, sample_index, seed, category, image_sha256
    record_id: str | None = None
    commit: str | None = None
    branch: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports."""
        return {
            "label": self.label,
            "path": str(self.path),
            "run_id": self.results.get("run_id"),
            "model": self.results.get("manifest", {}).get("model", {}).get("name"),
            "suite": self.results.get("manifest", {}).get("suite", {}).get("name"),
            "record_id": self.record_id,
            "commit": self.commit,
            "branch": self.branch,
            "uncalibrated": is_uncalibrated(self.results),
        }


def _samples_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "item_id": s["item_id"],
                "sample_index": int(s["sample_index"]),
                "seed": s.get("seed"),
                "category": s.get("category"),
                "image_sha256": s.get("sha256"),
            }
            for s in rows
        ],
        columns=["item_id", "sample_index", "seed", "category", "image_sha256"],
    )


def load_run(ref: str | Path) -> GateRun:
    """A run folder, a results.json, or a history record folder."""
    from evalkit.history import RECORD_FILE, read_record

    path = Path(ref)
    if path.is_dir() and (path / RECORD_FILE).is_file():
        return run_from_record(read_record(path))
    run = read_run(path, missing_hint="expected a run folder or results.json")
    results: dict[str, Any] = dict(run.results)
    samples = None if run.samples is None else _samples_frame(run.samples)
    env = results["manifest"].get("environment") or {}
    return GateRun(str(path), run.folder, results, samples, commit=env.get("git_commit"))


def run_from_record(record: Any) -> GateRun:
    """A history record as one side of the gate (results and items checked by sha256)."""
    items = record.items()
    samples = None
    if len(items) and items["sample_index"].notna().all():
        samples = items[["item_id", "sample_index", "seed", "category", "image_sha256"]].copy()
    meta = record.meta
    commit = meta.get("commit")
    label = f"history record {record.record_id}"
    if commit or meta.get("branch"):
        label += f" ({(commit or '?')[:10]} on {meta.get('branch') or '?'})"
    return GateRun(
        label,
        record.path,
        record.results(),
        samples,
        record_id=record.record_id,
        commit=commit,
        branch=meta.get("branch"),
    )


def parse_history_ref(ref: str) -> tuple[Path, str]:
    """``history:DIR@BRANCH`` -> (DIR, BRANCH)."""
    body = ref[len(HISTORY_PREFIX) :]
    folder, sep, branch = body.rpartition("@")
    if not sep or not folder or not branch:
        raise InputError(f"baseline {ref!r}: expected history:DIR@BRANCH")
    return Path(folder), branch


def resolve_baseline(
    ref: str, candidate: GateRun, *, force: bool = False
) -> tuple[GateRun, list[str]]:
    """The baseline side for ``ref``; for ``history:DIR@BRANCH`` the latest comparable record.

    Latest means measured last; comparable means no protocol difference with the candidate
    (records of the candidate's model preferred). Unreadable records are skipped and noted.
    """
    if not ref.startswith(HISTORY_PREFIX):
        return load_run(ref), []
    from evalkit.history import scan

    folder, branch = parse_history_ref(ref)
    records, skipped = scan(folder)
    notes = [f"skipped {s.reason}" for s in skipped]
    on_branch = [r for r in records if r.meta.get("branch") == branch]
    cand_sha = None
    if (candidate.path / RESULTS_FILE).is_file():
        cand_sha = sha256_file(candidate.path / RESULTS_FILE)
    on_branch = [r for r in on_branch if r.meta["results_sha256"] != cand_sha]
    if not on_branch:
        raise MissingWeightsError(
            f"history {folder}: no record on branch {branch!r} to gate against "
            f"({len(records)} readable record(s) on other branches); add one with "
            f"`evalkit history add RUN --history {folder} --branch {branch}`"
        )
    model = candidate.results["manifest"]["model"].get("name")
    on_branch.sort(key=lambda r: (r.meta.get("model") == model, r.meta["time"], r.meta["added"]))
    first_error: str | None = None
    for record in reversed(on_branch):
        try:
            run = run_from_record(record)
        except InputError as e:
            notes.append(f"skipped {e}")
            continue
        proto, _ = manifest_differences(run.results, candidate.results)
        if not proto:
            if run.results["manifest"]["model"].get("name") != model:
                notes.append(
                    f"no comparable record of model {model!r} on {branch}: using {record.record_id}"
                )
            return run, notes
        if first_error is None:
            first_error = f"latest record {record.record_id}: " + "; ".join(proto[:5])
        if force:
            return run, notes
    raise ProtocolMismatchError(
        f"history {folder}: no record on branch {branch!r} was measured under the candidate's "
        f"protocol ({first_error}); gate with --force to compare anyway"
    )


# --------------------------------------------------------------------------- verdicts


@dataclass
class MetricVerdict:
    """The gate's decision for one metric (or one category of it)."""

    metric: str
    kind: str
    direction: str | None
    baseline: float | None
    candidate: float | None
    verdict: str
    reason: str
    test: str = ""
    delta: float | None = None
    interval: list[float] | None = None
    n: int | None = None
    unit: str = ""
    confidence: float | None = None
    allowed: float | None = None
    allowed_text: str = ""
    category: str | None = None
    categories: list[MetricVerdict] = field(default_factory=list)


class _TestInfo(TypedDict, total=False):
    """How a metric was tested: keyword arguments of :class:`MetricVerdict` shared by its paths."""

    n: int
    unit: str
    confidence: float
    allowed: float
    allowed_text: str
    test: str


@dataclass
class GateReport:
    """Everything the gate decided, JSON-able with :meth:`to_dict`."""

    verdict: str
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    metrics: list[MetricVerdict]
    warnings: list[str]
    notes: list[str]
    config: str

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (``evalkit gate --json``)."""
        out = asdict(self)
        out["format"] = "evalkit-gate-report"
        out["format_version"] = 1
        return out

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def failing(self, verdict: str) -> list[MetricVerdict]:
        """The metrics with this verdict (overall or in a category)."""
        return [
            m
            for m in self.metrics
            if m.verdict == verdict or any(c.verdict == verdict for c in m.categories)
        ]


def decide(direction: str, delta: float, lo: float, hi: float, allowed: float) -> tuple[str, str]:
    """Verdict and reason from the change ``delta`` in [lo, hi] and the allowed degradation."""
    sign = 1.0 if direction == "lower" else -1.0
    worse = sign * delta
    worse_lo, worse_hi = sorted((sign * lo, sign * hi))
    if worse_lo > allowed:
        return "regression", (
            f"worse by {worse:.4g} (interval {worse_lo:.4g} to {worse_hi:.4g}), "
            f"beyond the allowed {allowed:.4g} and the sampling noise"
        )
    if worse > allowed:
        return "warn", (
            f"worse by {worse:.4g}, above the allowed {allowed:.4g}, but the interval of the "
            f"degradation reaches down to {worse_lo:.4g}: within sampling noise"
        )
    if worse_hi < 0:
        return "improved", f"better by {-worse:.4g} (the whole interval on the better side)"
    return "pass", "no degradation beyond the allowed amount and the sampling noise"


def _undecided(
    name: str, kind: str, direction: str | None, a: Any, b: Any, reason: str, **kw: Any
) -> MetricVerdict:
    return MetricVerdict(name, kind, direction, a, b, "cannot decide", reason, **kw)


def _per_item(entry: dict[str, Any]) -> dict[str, float] | None:
    return entry.get("per_item") or None


def _categories(base: GateRun, cand: GateRun) -> dict[str, str]:
    """item id -> category, from whichever side records categories."""
    for side in (base, cand):
        if side.samples is not None and side.samples["category"].notna().any():
            df = side.samples.dropna(subset=["category"]).drop_duplicates("item_id")
            return dict(zip(df["item_id"].astype(str), df["category"].astype(str), strict=True))
    return {}


def _prompt_level(
    name: str, rule: MetricRule, direction: str, base: GateRun, cand: GateRun
) -> MetricVerdict:
    ea, eb = base.results["metrics"][name], cand.results["metrics"][name]
    va, vb = float(ea["value"]), float(eb["value"])
    pa, pb = _per_item(ea), _per_item(eb)
    allowed = rule.allowed_degradation(va)
    if pa is None or pb is None:
        side = base if pa is None else cand
        return _undecided(
            name, "prompt", direction, va, vb,
            f"no per-item scores for {name} in {side.label} (older results?)",
        )  # fmt: skip
    missing = sorted(set(pa) - set(pb))
    if missing:
        return _undecided(
            name, "prompt", direction, va, vb,
            f"the candidate has per-item {name} for {len(pa) - len(missing)} of "
            f"the baseline's {len(pa)} items (missing: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''})",
        )  # fmt: skip
    ids = sorted(pa)
    test = (
        f"paired bootstrap over prompts of the mean per-prompt difference, "
        f"{rule.resamples} resamples, {rule.confidence:.0%} percentile interval"
    )
    verdict = _paired(name, rule, direction, ids, pa, pb, va, vb, rule.confidence, allowed, test)
    if rule.per_category:
        cats = _categories(base, cand)
        groups: dict[str, list[str]] = {}
        for i in ids:
            if i in cats:
                groups.setdefault(cats[i], []).append(i)
        if groups:
            conf = 1.0 - (1.0 - rule.confidence) / len(groups)  # Bonferroni over categories
            for cat, members in sorted(groups.items()):
                ca = float(np.mean([pa[i] for i in members]))
                cb = float(np.mean([pb[i] for i in members]))
                cv = _paired(
                    name, rule, direction, members, pa, pb, ca, cb, conf,
                    rule.allowed_degradation(ca), test + f" (Bonferroni: {conf:.4g} per category)",
                )  # fmt: skip
                cv.category = cat
                verdict.categories.append(cv)
            bad = [c for c in verdict.categories if c.verdict == "regression"]
            if bad and verdict.verdict != "regression":
                verdict.verdict = "regression"
                verdict.reason = "regression in category " + ", ".join(str(c.category) for c in bad)
            elif verdict.verdict not in ("regression", "cannot decide") and any(
                c.verdict == "cannot decide" for c in verdict.categories
            ):
                verdict.verdict = "cannot decide"
                verdict.reason = "per-category check asked, but " + "; ".join(
                    f"{c.category}: {c.reason}"
                    for c in verdict.categories
                    if c.verdict == "cannot decide"
                )
        else:
            verdict.reason += " (per-category check asked, but the runs record no categories)"
    return verdict


def _paired(
    name: str,
    rule: MetricRule,
    direction: str,
    ids: list[str],
    pa: dict[str, float],
    pb: dict[str, float],
    va: float,
    vb: float,
    confidence: float,
    allowed: float,
    test: str,
) -> MetricVerdict:
    n = len(ids)
    need = max(rule.min_samples, min_pairs(confidence), 2)
    kw: _TestInfo = {"n": n, "unit": "prompts", "confidence": confidence, "allowed": allowed,
          "allowed_text": rule.describe_allowed(), "test": test}  # fmt: skip
    if n < need:
        return _undecided(
            name, "prompt", direction, va, vb,
            f"{n} paired prompts, fewer than the {need} needed "
            f"(min_samples {rule.min_samples}; {min_pairs(confidence)} for {confidence:.4g} confidence)",
            **kw,
        )  # fmt: skip
    iv = paired_bootstrap(
        [pa[i] for i in ids],
        [pb[i] for i in ids],
        n_resamples=rule.resamples,
        seed=rule.seed,
        confidence=confidence,
    )
    verdict, reason = decide(direction, iv.delta, iv.lo, iv.hi, allowed)
    return MetricVerdict(
        name, "prompt", direction, va, vb, verdict, reason,
        delta=iv.delta, interval=[iv.lo, iv.hi], **kw,
    )  # fmt: skip


def _set_level(
    name: str, rule: MetricRule, direction: str, base: GateRun, cand: GateRun
) -> MetricVerdict:
    va = float(base.results["metrics"][name]["value"])
    vb = float(cand.results["metrics"][name]["value"])
    allowed = rule.allowed_degradation(va)
    test = (
        f"paired bootstrap over image indices (the same indices in both runs) of the metric's "
        f"difference, from per-image features, {rule.set_resamples} resamples, "
        f"{rule.confidence:.0%} percentile interval"
    )
    kw: _TestInfo = {"unit": "images", "confidence": rule.confidence, "allowed": allowed,
          "allowed_text": rule.describe_allowed(), "test": test}  # fmt: skip
    fa = load_set_features(base, name)
    if fa is None:
        return _undecided(
            name, "set", direction, va, vb, missing_features_reason(name, base.label), **kw
        )
    fb = load_set_features(cand, name)
    if fb is None:
        return _undecided(
            name, "set", direction, va, vb, missing_features_reason(name, cand.label), **kw
        )
    rows_b = {k: i for i, k in enumerate(fb.keys)}
    missing = [k for k in fa.keys if k not in rows_b]
    if missing:
        return _undecided(
            name, "set", direction, va, vb,
            f"the candidate lacks features of {len(missing)} of the baseline's "
            f"{len(fa.keys)} images (first: {missing[0][0]} #{missing[0][1]})", **kw,
        )  # fmt: skip
    n = len(fa.keys)
    kw["n"] = n
    need = max(rule.min_samples, min_pairs(rule.confidence), 2)
    if n < need:
        return _undecided(
            name, "set", direction, va, vb,
            f"{n} paired images, fewer than the {need} needed", **kw,
        )  # fmt: skip
    aligned_b = np.asarray(fb.features)[[rows_b[k] for k in fa.keys]]
    iv = paired_set_bootstrap(
        fa.features, aligned_b, fa.metric_fn, rule.set_resamples, rule.seed, rule.confidence
    )
    verdict, reason = decide(direction, iv.delta, iv.lo, iv.hi, allowed)
    return MetricVerdict(
        name, "set", direction, va, vb, verdict, reason,
        delta=iv.delta, interval=[iv.lo, iv.hi], **kw,
    )  # fmt: skip


def _seed_notes(base: GateRun, cand: GateRun) -> list[str]:
    if base.samples is None or cand.samples is None:
        return ["per-image seeds unknown on one side: paired over prompts"]
    merged = base.samples.merge(cand.samples, on=["item_id", "sample_index"], suffixes=("_a", "_b"))
    if merged.empty or merged["seed_a"].isna().any() or merged["seed_b"].isna().any():
        return ["per-image seeds unknown on one side: paired over prompts"]
    differ = int((merged["seed_a"].astype("Int64") != merged["seed_b"].astype("Int64")).sum())
    if differ:
        return [
            f"{differ} of {len(merged)} images have other seeds in the two runs (run seeds differ): "
            "paired over prompts; seed noise stays in the differences"
        ]
    return [f"paired over the same {len(merged)} (prompt, seed) images"]


def run_gate(
    baseline: GateRun,
    candidate: GateRun,
    config: GateConfig,
    *,
    force: bool = False,
    notes: list[str] | None = None,
) -> GateReport:
    """Decide every metric of the baseline (see the module docstring)."""
    warnings = check_compatible(baseline.results, candidate.results, force=force)
    _, diff_notes = manifest_differences(baseline.results, candidate.results)
    all_notes = list(notes or []) + _seed_notes(baseline, candidate)
    if is_uncalibrated(baseline.results) or is_uncalibrated(candidate.results):
        all_notes.append(
            "UNCALIBRATED: random weights on at least one side; the numbers test plumbing only"
        )
    verdicts: list[MetricVerdict] = []
    ma, mb = baseline.results["metrics"], candidate.results["metrics"]
    for name in ma:
        rule = config.rule(name)
        direction = (
            rule.direction
            or metric_direction(name, ma[name])
            or metric_direction(name, mb.get(name))
        )
        va = float(ma[name]["value"])
        vb = float(mb[name]["value"]) if name in mb else None
        kind = rule.kind or (
            "prompt" if (_per_item(ma[name]) or (name in mb and _per_item(mb[name])))
            else "set" if name in SET_LEVEL else "prompt"
        )  # fmt: skip
        if not rule.gate:
            verdicts.append(
                MetricVerdict(
                    name,
                    kind,
                    direction,
                    va,
                    vb,
                    "skipped",
                    "not gated (gate = false in the config)",
                )
            )
        elif name not in mb:
            verdicts.append(
                _undecided(
                    name,
                    kind,
                    direction,
                    va,
                    None,
                    f"{name} is missing from the candidate {candidate.label}",
                )
            )
        elif direction is None:
            verdicts.append(
                _undecided(
                    name,
                    kind,
                    None,
                    va,
                    vb,
                    f"unknown direction for {name}; set direction in the gate config",
                )
            )
        elif kind == "prompt":
            verdicts.append(_prompt_level(name, rule, direction, baseline, candidate))
        else:
            verdicts.append(_set_level(name, rule, direction, baseline, candidate))
    for name in sorted(set(mb) - set(ma)):
        all_notes.append(f"{name}: only in the candidate, not gated")
    if any(v.verdict == "regression" for v in verdicts):
        overall = "regression"
    elif any(v.verdict == "cannot decide" for v in verdicts):
        overall = "cannot decide"
    else:
        overall = "pass"
    return GateReport(
        overall,
        baseline.describe(),
        candidate.describe(),
        verdicts,
        warnings,
        all_notes + [f"what differs (allowed): {n}" for n in diff_notes if n.startswith(_COMPARED)],
        config.source,
    )
