"""The study report: preferences, Bradley–Terry ratings, rater quality and metric agreement.

``compute_report`` returns one JSON-able dict; ``write_report`` writes it as JSON, CSV,
Markdown and plots under ``STUDY/report/``; ``preference_summary`` is the compact form a
run report embeds.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.atomic import atomic_write_json, atomic_write_text
from evalkit.errors import UsageError
from evalkit.human.agreement import (
    agreement_table,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    position_bias,
)
from evalkit.human.bradley_terry import bradley_terry_with_intervals, win_matrices
from evalkit.human.gold import gold_outcomes
from evalkit.human.plots import plot_preferences
from evalkit.human.runs import load_run
from evalkit.human.security import csv_safe, name_key
from evalkit.human.stats import (
    DEFAULT_RESAMPLES,
    cluster_bootstrap,
    count_table,
    outcome_of,
    per_category_stats,
    preference_stats,
)
from evalkit.human.store import Store
from evalkit.human.study import Study, load_study
from evalkit.progress import log
from evalkit.textsafe import md_text

REPORT_DIR = "report"


def run_labels(study: Study) -> dict[str, str]:
    """Display names per run key: the model name, plus the run id where names repeat."""
    names = [r.model for r in study.runs.values()]
    return {
        k: r.model if names.count(r.model) == 1 else f"{r.model} [{r.run_id[:8]}]"
        for k, r in study.runs.items()
    }


# ---------------------------------------------------------------------- rater quality


def rater_quality(study: Study, votes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per rater: tasks, gold accuracy (per gold task), position bias, median seconds per task."""
    by_rater: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for v in votes:
        by_rater[v["rater_id"]].append(v)
    out = {}
    for rater_id, vs in by_rater.items():
        regular = [v for v in vs if not v["is_gold"]]
        gold = [passed for _, passed in gold_outcomes(vs).values()]
        seconds = _task_seconds(vs)
        revoked_at = vs[0].get("rater_revoked_at")
        out[rater_id] = {
            "rater_id": rater_id,
            "name": vs[0].get("rater_name", rater_id),
            "revoked": revoked_at is not None,
            "revoked_at": revoked_at,
            "tasks": len({v["submission_id"] for v in vs}),
            "votes": len(regular),
            "gold_tasks": len(gold),
            "gold_passed": sum(gold),
            "gold_accuracy": sum(gold) / len(gold) if gold else None,
            "position_bias": position_bias(regular),
            "median_seconds_per_task": statistics.median(seconds) if seconds else None,
        }
    return out


def _task_seconds(votes: Iterable[Mapping[str, Any]]) -> list[float]:
    per_sub = {v["submission_id"]: float(v["answered_at"]) - float(v["shown_at"]) for v in votes}
    return list(per_sub.values())


def resolve_raters(quality: Mapping[str, Mapping[str, Any]], wanted: Iterable[str]) -> set[str]:
    """Rater ids for ``wanted`` (rater ids or names); UsageError for unknown or ambiguous names.

    Names are compared as ``invite`` and ``revoke`` compare them (``name_key``: without case,
    width or extra spaces).
    """
    ids: set[str] = set()
    for w in wanted:
        if w in quality:
            ids.add(w)
            continue
        named = sorted(rid for rid, q in quality.items() if name_key(q["name"]) == name_key(w))
        if len(named) > 1:
            raise UsageError(
                f"--exclude-rater {w!r}: {len(named)} raters share this name "
                f"(ids {', '.join(named)}): give the rater id instead"
            )
        if not named:
            raise UsageError(f"--exclude-rater: no votes from {w!r} (a rater id or name)")
        ids.add(named[0])
    return ids


def select_raters(
    quality: Mapping[str, Mapping[str, Any]],
    min_gold_accuracy: float | None,
    exclude: Iterable[str],
    exclude_revoked: bool = False,
) -> tuple[set[str], list[dict[str, Any]]]:
    """(excluded rater ids, why) from a gold-accuracy threshold, revocation and raters named by hand.

    ``exclude`` holds rater ids or names. Raters with no gold answers are kept (their accuracy
    is unknown) and flagged in the report.
    """
    by_hand = resolve_raters(quality, exclude)
    dropped: dict[str, dict[str, Any]] = {}
    for rid, q in quality.items():
        who = {"rater": q["name"], "rater_id": rid}
        if rid in by_hand:
            dropped[rid] = {**who, "reason": "excluded by hand"}
        elif exclude_revoked and q["revoked"]:
            dropped[rid] = {**who, "reason": "revoked"}
        elif (
            min_gold_accuracy is not None
            and q["gold_accuracy"] is not None
            and q["gold_accuracy"] < min_gold_accuracy
        ):
            dropped[rid] = {
                **who,
                "reason": f"gold accuracy {q['gold_accuracy']:.3f} < {min_gold_accuracy}",
                "gold_accuracy": q["gold_accuracy"],
                "gold_tasks": q["gold_tasks"],
            }
    return set(dropped), sorted(dropped.values(), key=lambda d: (d["rater"], d["rater_id"]))


# ---------------------------------------------------------------------- preferences


def pair_preferences(
    study: Study, votes: Sequence[Mapping[str, Any]], n_resamples: int, seed: int
) -> list[dict[str, Any]]:
    """One entry per (pair, question): overall and per-category P(A)/P(tie)/P(B) and win rate."""
    labels = run_labels(study)
    items = sorted(study.items)
    categories = {i: study.items[i].category for i in items}
    out = []
    for pair in study.pairs.values():
        for q in study.questions:
            vs = [v for v in votes if v["pair_id"] == pair.pair_id and v["question"] == q]
            table = count_table(vs, items, pair.a, pair.b)
            out.append(
                {
                    "pair_id": pair.pair_id,
                    "question": q,
                    "a": {
                        "key": pair.a,
                        "model": labels[pair.a],
                        "run_id": study.runs[pair.a].run_id,
                    },
                    "b": {
                        "key": pair.b,
                        "model": labels[pair.b],
                        "run_id": study.runs[pair.b].run_id,
                    },
                    "overall": preference_stats(table, n_resamples=n_resamples, seed=seed),
                    "per_category": per_category_stats(
                        table, items, categories, n_resamples=n_resamples, seed=seed
                    ),
                }
            )
    return out


def bradley_terry_report(
    study: Study, votes: Sequence[Mapping[str, Any]], n_resamples: int, seed: int
) -> dict[str, Any] | None:
    """Bradley–Terry ratings per question (3+ models), bootstrap over prompts."""
    if len(study.runs) < 3:
        return None
    keys = list(study.runs)
    labels = run_labels(study)
    items = sorted(study.items)
    item_index = {i: k for k, i in enumerate(items)}
    key_index = {k: n for n, k in enumerate(keys)}
    anchor = key_index[study.baseline] if study.baseline else None
    out = {}
    for q in study.questions:
        outcomes = []
        for v in votes:
            if v["question"] != q:
                continue
            pair = study.pairs[v["pair_id"]]
            score = 1.0 - outcome_of(v, pair.a, pair.b) / 2.0  # 1 a wins, .5 tie, 0 b wins
            outcomes.append((item_index[v["item_id"]], key_index[pair.a], key_index[pair.b], score))
        if not outcomes:
            continue
        res = bradley_terry_with_intervals(
            win_matrices(outcomes, len(items), len(keys)),
            [labels[k] for k in keys],
            anchor=anchor,
            n_resamples=n_resamples,
            seed=seed,
        )
        out[q] = res
    return out or None


def metric_agreement(
    study: Study, votes: Sequence[Mapping[str, Any]], n_resamples: int, seed: int
) -> dict[str, Any] | None:
    """How often the run with the higher per-prompt CLIP score is the one humans preferred on alignment.

    Per (pair, prompt): the human verdict is the tie-as-half mean of its alignment votes
    (> 0.5: a, < 0.5: b, exactly 0.5: no verdict); prompts without a verdict or with equal
    CLIP scores are left out. The interval is a bootstrap over prompts.
    """
    if "alignment" not in study.questions:
        return None
    clip: dict[str, dict[str, float]] = {}
    for key, run in study.runs.items():
        if run.has_clip:
            per_item = load_run(run.path).clip_per_item
            if per_item:
                clip[key] = per_item
    entries = []
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for pair in study.pairs.values():
        if pair.a not in clip or pair.b not in clip:
            continue
        scores: dict[str, list[float]] = defaultdict(list)
        for v in votes:
            if v["pair_id"] == pair.pair_id and v["question"] == "alignment":
                scores[v["item_id"]].append(1.0 - outcome_of(v, pair.a, pair.b) / 2.0)
        agree = total = 0
        for item_id, s in scores.items():
            human = float(np.mean(s))
            ca, cb = clip[pair.a].get(item_id), clip[pair.b].get(item_id)
            if human == 0.5 or ca is None or cb is None or ca == cb:
                continue
            hit = (human > 0.5) == (ca > cb)
            agree += hit
            total += 1
            rows[f"{pair.pair_id}:{item_id}"][0] += hit
            rows[f"{pair.pair_id}:{item_id}"][1] += 1
        entries.append(
            {
                "pair_id": pair.pair_id,
                "agree": agree,
                "comparable_prompts": total,
                "agreement": agree / total if total else None,
            }
        )
    if not entries:
        return None
    counts = np.array([[a, n] for a, n in rows.values()]).reshape(-1, 2)
    agree, total = counts.sum(axis=0) if counts.size else (0, 0)
    ci = None
    if total:
        with np.errstate(invalid="ignore", divide="ignore"):
            lo, hi = cluster_bootstrap(
                counts, lambda s: s[:, 0] / s[:, 1], n_resamples=n_resamples, seed=seed
            )
        ci = [float(lo[0]), float(hi[0])]
    return {
        "metric": "clip_score",
        "question": "alignment",
        "agreement": float(agree / total) if total else None,
        "ci": ci,
        "comparable_prompts": int(total),
        "per_pair": entries,
    }


# ---------------------------------------------------------------------- the report


def compute_report(
    study: Study,
    store: Store,
    *,
    min_gold_accuracy: float | None = None,
    exclude_raters: Iterable[str] = (),
    exclude_revoked: bool = False,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Every statistic of the study from its effective (not undone) votes.

    Votes of revoked raters are kept and flagged (``per_rater[].revoked``, ``counts``)
    unless ``exclude_revoked``; ``exclude_raters`` takes rater ids or names.
    """
    if min_gold_accuracy is not None and not 0.0 <= min_gold_accuracy <= 1.0:
        raise UsageError("--min-gold-accuracy must be between 0 and 1")
    all_votes = store.votes(study.study_id, effective_only=False)
    effective = [v for v in all_votes if not v["undone"]]
    quality = rater_quality(study, effective)
    exclude_raters = list(exclude_raters)
    excluded, why = select_raters(quality, min_gold_accuracy, exclude_raters, exclude_revoked)
    kept = [v for v in effective if v["rater_id"] not in excluded]
    regular = [v for v in kept if not v["is_gold"]]
    a_of = {t.task_id: study.pairs[t.pair_id].a for t in study.tasks().values() if not t.is_gold}
    agreement = {}
    for q in study.questions:
        table = agreement_table([v for v in regular if v["question"] == q], a_of)
        agreement[q] = {
            "fleiss_kappa": fleiss_kappa(table),
            "krippendorff_alpha": krippendorff_alpha_nominal(table),
            "units_with_2plus_ratings": int((table.sum(axis=1) >= 2).sum()),
        }
    gold = [v for v in kept if v["is_gold"]]
    seconds = _task_seconds(kept)
    labels = run_labels(study)
    return {
        "study_id": study.study_id,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite": {"name": study.suite, "version": study.suite_version},
        "runs": {
            k: {"run_id": r.run_id, "model": labels[k], "fingerprint": r.fingerprint}
            for k, r in study.runs.items()
        },
        "questions": {q: t for q, t in zip(study.questions, _question_texts(study), strict=True)},
        "method": {
            "intervals": f"95% percentile bootstrap over prompts ({n_resamples} resamples, seed {seed}); "
            "each drawn prompt keeps all its votes",
            "ties": "count half a win to each side in win rates and Bradley–Terry",
            "bradley_terry": "MLE, R = 400*coef + 1000, mean 1000 (or the baseline at 1000)",
            "votes": "effective votes only (undone votes are excluded); gold tasks are excluded "
            "from preferences",
        },
        "filters": {
            "min_gold_accuracy": min_gold_accuracy,
            "exclude_raters": sorted(set(exclude_raters)),
            "exclude_revoked": exclude_revoked,
            "excluded": why,
        },
        "counts": {
            "votes_recorded": len(all_votes),
            "votes_undone": len(all_votes) - len(effective),
            "votes_used": len(regular),
            "gold_votes_used": len(gold),
            "raters_with_votes": len(quality),
            "raters_used": len({v["rater_id"] for v in kept}),
            "revoked_raters_with_votes": sum(q["revoked"] for q in quality.values()),
            "votes_from_revoked_raters_used": sum(
                v["rater_revoked_at"] is not None for v in regular
            ),
        },
        "preferences": pair_preferences(study, regular, n_resamples, seed),
        "bradley_terry": bradley_terry_report(study, regular, n_resamples, seed),
        "rater_quality": {
            "gold_accuracy": _gold_accuracy(gold),
            "gold_tasks": len(gold_outcomes(gold)),
            "agreement": agreement,
            "position_bias": position_bias(regular),
            "seconds_per_task": {
                "median": statistics.median(seconds) if seconds else None,
                "p90": float(np.quantile(seconds, 0.9)) if seconds else None,
            },
            "per_rater": sorted(
                ({**q, "excluded": rid in excluded} for rid, q in quality.items()),
                key=lambda r: (r["name"], r["rater_id"]),
            ),
        },
        "metric_agreement": metric_agreement(study, regular, n_resamples, seed),
    }


def _gold_accuracy(gold_votes: Sequence[Mapping[str, Any]]) -> float | None:
    outcomes = [passed for _, passed in gold_outcomes(gold_votes).values()]
    return sum(outcomes) / len(outcomes) if outcomes else None


def _question_texts(study: Study) -> list[str]:
    from evalkit.human.study import QUESTIONS

    return [QUESTIONS[q] for q in study.questions]


# ---------------------------------------------------------------------- writing


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def preferences_csv(report: Mapping[str, Any]) -> str:
    """One row per (pair, question, category or 'overall')."""
    buf = io.StringIO()
    cols = ["pair_id", "model_a", "model_b", "question", "category", "n_votes", "n_items"]
    for name in ("p_a", "p_tie", "p_b", "win_rate_a"):
        cols += [name, f"{name}_lo", f"{name}_hi"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for p in report["preferences"]:
        for cat, s in [("overall", p["overall"]), *p["per_category"].items()]:
            row = {
                "pair_id": p["pair_id"],
                "model_a": p["a"]["model"],
                "model_b": p["b"]["model"],
                "question": p["question"],
                "category": cat,
                "n_votes": s.get("n_votes", 0),
                "n_items": s.get("n_items", 0),
            }
            for name in ("p_a", "p_tie", "p_b", "win_rate_a"):
                if s.get("n_votes"):
                    row[name] = round(s[name], 6)
                    row[f"{name}_lo"], row[f"{name}_hi"] = (round(x, 6) for x in s[f"{name}_ci"])
            w.writerow({k: csv_safe(v) for k, v in row.items()})
    return buf.getvalue()


def raters_csv(report: Mapping[str, Any]) -> str:
    """One row per rater with votes; text cells are protected against spreadsheet formulas."""
    buf = io.StringIO()
    cols = [
        "rater_id",
        "name",
        "revoked",
        "tasks",
        "votes",
        "gold_tasks",
        "gold_accuracy",
        "left_win_rate",
        "median_seconds_per_task",
        "excluded",
    ]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in report["rater_quality"]["per_rater"]:
        row = {
            "rater_id": r["rater_id"],
            "name": r["name"],
            "revoked": r["revoked"],
            "tasks": r["tasks"],
            "votes": r["votes"],
            "gold_tasks": r["gold_tasks"],
            "gold_accuracy": r["gold_accuracy"],
            "left_win_rate": r["position_bias"]["left_win_rate"],
            "median_seconds_per_task": r["median_seconds_per_task"],
            "excluded": r["excluded"],
        }
        w.writerow({k: csv_safe(v) for k, v in row.items()})
    return buf.getvalue()


def render_markdown(report: Mapping[str, Any], plots: Sequence[str]) -> str:
    """A human-readable summary of the report."""
    lines = [f"# Human evaluation: study {md_text(report['study_id'])}", ""]
    lines.append(
        f"Suite {md_text(report['suite']['name'])} (version {md_text(report['suite']['version'])}). "
        + report["method"]["intervals"]
        + "."
    )
    c = report["counts"]
    lines += [
        "",
        f"Votes used: {c['votes_used']} from {c['raters_used']} raters "
        f"({c['votes_undone']} undone, {c['gold_votes_used']} gold votes).",
        "",
    ]
    f = report["filters"]
    if f["excluded"]:
        lines.append(f"Excluded raters (min gold accuracy {f['min_gold_accuracy']}):")
        lines += [
            f"- {md_text(e['rater'])} ({md_text(e['rater_id'])}): {md_text(e['reason'])}"
            for e in f["excluded"]
        ]
        lines.append("")
    if c["revoked_raters_with_votes"]:
        lines += [
            f"Revoked raters with votes: {c['revoked_raters_with_votes']}; their votes "
            + (
                "are excluded (--exclude-revoked)."
                if f["exclude_revoked"]
                else f"are counted ({c['votes_from_revoked_raters_used']} used; "
                "--exclude-revoked drops them)."
            ),
            "",
        ]
    lines += [
        "## Preferences",
        "",
        "| A vs B | question | n | prefer A | indifferent | prefer B | A win rate (ties ½) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in report["preferences"]:
        s = p["overall"]
        if not s.get("n_votes"):
            lines.append(
                f"| {md_text(p['a']['model'])} vs {md_text(p['b']['model'])} | {p['question']} | 0 | – | – | – | – |"
            )
            continue
        lines.append(
            f"| {md_text(p['a']['model'])} vs {md_text(p['b']['model'])} | {p['question']} | {s['n_votes']} | "
            f"{_pct(s['p_a'])} {_ci(s['p_a_ci'])} | {_pct(s['p_tie'])} {_ci(s['p_tie_ci'])} | "
            f"{_pct(s['p_b'])} {_ci(s['p_b_ci'])} | {_pct(s['win_rate_a'])} {_ci(s['win_rate_a_ci'])} |"
        )
    bt = report.get("bradley_terry")
    if bt:
        lines += ["", "## Bradley–Terry ratings (Elo scale)", ""]
        for q, res in bt.items():
            lines += [f"**{q}**", "", "| model | rating | 95% interval |", "|---|---|---|"]
            for name in res["ranking"]:
                r = res["ratings"][name]
                lines.append(
                    f"| {md_text(name)} | {r['rating']:.0f} | [{r['ci'][0]:.0f}, {r['ci'][1]:.0f}] |"
                )
            lines.append("")
    rq = report["rater_quality"]
    pb = rq["position_bias"]
    lines += [
        "",
        "## Rater quality",
        "",
        f"Gold accuracy: {_pct(rq['gold_accuracy'])} of {rq['gold_tasks']} gold tasks "
        "(passed: the clean set preferred on every question). Position bias (left set wins among decisive votes): "
        f"{_pct(pb['left_win_rate'])} {_ci(pb['ci'])}, binomial p = {_num(pb['p_value'])}. "
        f"Median seconds per task: {_num(rq['seconds_per_task']['median'], 1)}.",
        "",
        "| question | Fleiss' κ | Krippendorff's α | units with ≥2 ratings |",
        "|---|---|---|---|",
    ]
    for q, a in rq["agreement"].items():
        lines.append(
            f"| {q} | {_num(a['fleiss_kappa'])} | {_num(a['krippendorff_alpha'])} | {a['units_with_2plus_ratings']} |"
        )
    lines += [
        "",
        "| rater | id | tasks | gold accuracy (tasks) | left wins | median s/task | excluded |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rq["per_rater"]:
        name = md_text(r["name"]) + (" (revoked)" if r["revoked"] else "")
        lines.append(
            f"| {name} | {md_text(r['rater_id'])} | {r['tasks']} | "
            f"{_pct(r['gold_accuracy'])} ({r['gold_tasks']}) | "
            f"{_pct(r['position_bias']['left_win_rate'])} | {_num(r['median_seconds_per_task'], 1)} | {r['excluded']} |"
        )
    ma = report.get("metric_agreement")
    if ma:
        lines += [
            "",
            "## Metric–human agreement",
            "",
            f"The run with the higher per-prompt CLIP score was the one humans preferred on alignment for "
            f"{_pct(ma['agreement'])} {_ci(ma['ci'])} of {ma['comparable_prompts']} comparable prompts.",
        ]
    if plots:
        lines += ["", "## Plots", ""] + [
            f"![{md_text(Path(p).stem)}]({p})" for p in plots if p.endswith(".png")
        ]
    return "\n".join(lines) + "\n"


def open_store_for(study: Study, db_url: str | None) -> Store:
    """The study's store: ``db_url``, else $EVALKIT_RATE_DB, else the study's SQLite file."""
    import os

    from evalkit.human.store import connect

    url = db_url or os.environ.get("EVALKIT_RATE_DB")
    if not url:
        if not study.db or study.db == "postgresql":
            raise UsageError(
                "this study stores its votes in PostgreSQL: set EVALKIT_RATE_DB=postgresql://... "
                "or pass --db-file FILE (a file holding the URL)"
            )
        url = str(study.root / study.db)
    return connect(url)


def write_report(
    study_dir: str | Path,
    *,
    db_url: str | None = None,
    min_gold_accuracy: float | None = None,
    exclude_raters: Iterable[str] = (),
    exclude_revoked: bool = False,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Path:
    """Compute the report and write report.json, CSVs, report.md and plots into STUDY/report/."""
    study = load_study(study_dir)
    store = open_store_for(study, db_url)
    report = compute_report(
        study,
        store,
        min_gold_accuracy=min_gold_accuracy,
        exclude_raters=exclude_raters,
        exclude_revoked=exclude_revoked,
        n_resamples=n_resamples,
        seed=seed,
    )
    out = study.root / REPORT_DIR
    plots = [
        str(p.relative_to(out)) for p in plot_preferences(report["preferences"], out / "plots")
    ]
    report["plots"] = plots
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "preferences.csv", preferences_csv(report))
    atomic_write_text(out / "raters.csv", raters_csv(report))
    atomic_write_text(out / "report.md", render_markdown(report, plots))
    log(f"report: {out / 'report.md'}")
    return out


def preference_summary(
    study_dir: str | Path, db_url: str | None = None, n_resamples: int = 1000
) -> dict[str, Any]:
    """Compact preferences for embedding in a run report: per pair and question, overall only."""
    study = load_study(study_dir)
    report = compute_report(study, open_store_for(study, db_url), n_resamples=n_resamples)
    return {
        "study_id": report["study_id"],
        "runs": report["runs"],
        "votes_used": report["counts"]["votes_used"],
        "raters_used": report["counts"]["raters_used"],
        "preferences": [
            {
                "pair_id": p["pair_id"],
                "question": p["question"],
                "a": p["a"],
                "b": p["b"],
                **{k: v for k, v in p["overall"].items() if k != "counts"},
            }
            for p in report["preferences"]
        ],
        "bradley_terry": {
            q: {n: r["rating"] for n, r in res["ratings"].items()}
            for q, res in (report["bradley_terry"] or {}).items()
        }
        or None,
        "gold_accuracy": report["rater_quality"]["gold_accuracy"],
        "metric_agreement": (report["metric_agreement"] or {}).get("agreement"),
    }
