"""The study report and the `evalkit rate` commands, end to end on synthetic runs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from evalkit.human.cli import main
from evalkit.human.demo import DEMO_ITEMS, add_rater, make_run, make_study
from evalkit.human.report import compute_report, preference_summary, write_report
from evalkit.human.security import NoRateLimit
from evalkit.human.service import RatingService
from evalkit.human.study import load_study


def cast(svc: RatingService, token: str, decide, limit: int | None = None) -> int:
    """Answer tasks until none is left; ``decide(task, question) -> 'a' | 'b' | 'tie' | 'clean' | 'degraded' | 'left'``."""
    store, study = svc.store, svc.study
    n = 0
    while (limit is None or n < limit) and (v := svc.next_task(token)) is not None:
        a = store.assignment(study.study_id, v.assignment_id)
        answers = {}
        for q in study.questions:
            want = decide(a, q)
            if want == "left":
                answers[q] = "A"
            elif want == "tie":
                answers[q] = "tie"
            else:
                if a.is_gold:
                    source = "clean" if want == "clean" else "degraded"
                else:
                    pair = study.pairs[a.pair_id]
                    source = pair.a if want == "a" else pair.b
                answers[q] = "A" if a.left_source == source else "B"
        svc.submit(token, v.assignment_id, answers, v.submission_id)
        n += 1
    return n


def test_report_reproduces_a_70_10_20_split_per_question(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=10, gold_tasks=0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    for k in range(10):
        tok = add_rater(study, store, f"r{k}")
        verdict = "a" if k < 7 else ("tie" if k == 7 else "b")
        cast(svc, tok, lambda a, q, v=verdict: v)
    report = compute_report(study, store, n_resamples=300)
    for entry in report["preferences"]:
        s = entry["overall"]
        assert s["n_votes"] == 10 * len(DEMO_ITEMS)
        assert (s["p_a"], s["p_tie"], s["p_b"]) == pytest.approx((0.7, 0.1, 0.2))
        assert s["win_rate_a"] == pytest.approx(0.75)
        assert set(entry["per_category"]) == {c for _, _, c in DEMO_ITEMS}
    agreement = report["rater_quality"]["agreement"]["fidelity"]
    assert agreement["units_with_2plus_ratings"] == len(DEMO_ITEMS)
    assert report["bradley_terry"] is None  # two models: the win rate says it all


def test_low_gold_accuracy_raters_are_excluded_and_recorded(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=3, gold_tasks=2, gold_every=3)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    good = [add_rater(study, store, n) for n in ("good1", "good2")]
    for tok in good:
        cast(svc, tok, lambda a, q: "clean" if a.is_gold else "a")
    lazy = add_rater(study, store, "lazy")
    # clicks the left set on every pair and misses the gold checks (decided here: sides are
    # drawn at random, so an always-left rater would pass both golds one time in four)
    cast(svc, lazy, lambda a, q: "degraded" if a.is_gold else "left")
    full = compute_report(study, store, n_resamples=200)
    lazy_row = next(r for r in full["rater_quality"]["per_rater"] if r["name"] == "lazy")
    assert lazy_row["position_bias"]["left_win_rate"] == 1.0
    assert lazy_row["gold_accuracy"] is not None and lazy_row["gold_accuracy"] < 1.0
    filtered = compute_report(study, store, min_gold_accuracy=0.8, n_resamples=200)
    assert [e["rater"] for e in filtered["filters"]["excluded"]] == ["lazy"]
    assert filtered["filters"]["min_gold_accuracy"] == 0.8
    assert filtered["counts"]["raters_used"] == 2
    assert filtered["preferences"][0]["overall"]["p_a"] == pytest.approx(1.0)


def test_bradley_terry_and_metric_agreement_with_three_runs(tmp_path):
    strength = {"run0": 0.0, "run1": 1.0, "run2": 2.0}
    runs = [
        make_run(
            tmp_path / "runs",
            rid,
            f"model-{rid}",
            seed=k,
            clip={i: 0.2 + 0.05 * strength[rid] for i, _, _ in DEMO_ITEMS},
        )
        for k, rid in enumerate(strength)
    ]
    from evalkit.human.store import connect
    from evalkit.human.study import create_study

    study = create_study(
        runs, tmp_path / "s", suite="drawbench", images_per_side=2, ratings_per_item=3, gold_tasks=0
    )
    store = connect(study.root / "votes.sqlite3")
    store.register_study(study.study_id, {})
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    rank = {k: strength[r.run_id] for k, r in study.runs.items()}
    for k in range(3):
        tok = add_rater(study, store, f"r{k}")
        cast(
            svc,
            tok,
            lambda a, q: (
                "a" if rank[study.pairs[a.pair_id].a] > rank[study.pairs[a.pair_id].b] else "b"
            ),
        )
    report = compute_report(study, store, n_resamples=200)
    for q in ("fidelity", "alignment"):
        assert report["bradley_terry"][q]["ranking"] == ["model-run2", "model-run1", "model-run0"]
    ma = report["metric_agreement"]
    assert ma["agreement"] == 1.0 and ma["comparable_prompts"] == 3 * len(DEMO_ITEMS)


def test_write_report_writes_json_csv_markdown_and_plots(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=2)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    for k in range(2):
        cast(svc, add_rater(study, store, f"=cmd|{k}"), lambda a, q: "clean" if a.is_gold else "a")
    out = write_report(study.root, n_resamples=200)
    report = json.loads((out / "report.json").read_text())
    assert report["study_id"] == study.study_id
    rows = list(csv.DictReader((out / "preferences.csv").open()))
    assert {r["category"] for r in rows} >= {"overall", "Colors"}
    raters = (out / "raters.csv").read_text()
    assert "'=cmd|0" in raters  # no spreadsheet formula injection
    md = (out / "report.md").read_text()
    assert "## Preferences" in md and "Fleiss" in md
    for stem in ("p0_overall", "p0_fidelity_by_category", "p0_alignment_by_category"):
        assert (out / "plots" / f"{stem}.png").stat().st_size > 1000
        assert (out / "plots" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


def test_preference_summary_is_compact_and_json_ready(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=2, gold_tasks=0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    cast(svc, add_rater(study, store, "ann"), lambda a, q: "b")
    from evalkit.human import preference_summary as lazy_summary

    summary = preference_summary(study.root)
    assert lazy_summary(study.root)["study_id"] == summary["study_id"]
    json.dumps(summary, allow_nan=False)
    (entry,) = [p for p in summary["preferences"] if p["question"] == "fidelity"]
    assert entry["p_b"] == 1.0 and entry["a"]["model"] == "model-0"


# ---------------------------------------------------------------------- the CLI


def _runs(tmp_path: Path, n: int = 3) -> list[str]:
    return [str(make_run(tmp_path / "runs", f"run{k}", f"model-{k}", seed=k)) for k in range(n)]


def test_cli_create_invite_revoke_report_export(tmp_path, capsys):
    runs = _runs(tmp_path)
    study_dir = tmp_path / "study"
    code = main(
        [
            "create",
            "--runs",
            runs[0],
            runs[1],
            runs[2],
            "--suite",
            "drawbench",
            "--images-per-side",
            "2",
            "--out",
            str(study_dir),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "admin token (shown once" in out and "?token=" in out
    study = load_study(study_dir)
    assert len(study.pairs) == 3

    assert main(["invite", str(study_dir), "--name", "ann"]) == 0
    link = capsys.readouterr().out.strip()
    token = link.split("token=")[1]
    from evalkit.human.report import open_store_for

    store = open_store_for(study, None)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    cast(svc, token, lambda a, q: "clean" if a.is_gold else "a", limit=4)

    assert main(["revoke", str(study_dir), "--name", "ann"]) == 0
    from evalkit.human.errors import AuthError

    with pytest.raises(AuthError, match="revoked"):
        svc.next_task(token)

    assert main(["report", str(study_dir), "--resamples", "200", "--min-gold-accuracy", "0.5"]) == 0
    report = json.loads((study_dir / "report" / "report.json").read_text())
    assert report["filters"]["min_gold_accuracy"] == 0.5

    target = tmp_path / "votes.csv"
    assert main(["export", str(study_dir), "--format", "csv", "--out", str(target)]) == 0
    lines = target.read_text().splitlines()
    assert lines[0].startswith("vote_id,") and len(lines) == 1 + 2 * 4


def test_cli_refuses_mismatched_runs_and_unknown_studies(tmp_path, capsys):
    good = make_run(tmp_path / "runs", "a", "m0")
    bad = make_run(tmp_path / "runs", "b", "m1", suite_version="2")
    assert (
        main(
            [
                "create",
                "--runs",
                str(good),
                "--runs",
                str(bad),
                "--images-per-side",
                "2",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "suite versions differ" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 3
    assert "unknown study" in capsys.readouterr().err
    assert main(["revoke", str(tmp_path / "missing"), "--name", "x"]) == 3


def test_every_report_csv_prefixes_cells_that_would_start_a_formula(tmp_path):
    items = [("db-000", "A cat.", "=1+1"), ("db-001", "A dog.", "@SUM(A1)"), ("db-002", "x", "-2")]
    study, store, _ = make_study(tmp_path, items=items, ratings_per_item=1, gold_tasks=0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    cast(svc, add_rater(study, store, "+cmd"), lambda a, q: "a")
    out = write_report(study.root, n_resamples=100)
    for name in ("preferences.csv", "raters.csv"):
        for row in csv.reader((out / name).open()):
            for cell in row:
                assert cell[:1] not in ("=", "+", "-", "@"), (name, cell)
    categories = {r["category"] for r in csv.DictReader((out / "preferences.csv").open())}
    assert categories == {"overall", "'=1+1", "'@SUM(A1)", "'-2"}
