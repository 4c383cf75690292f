"""The CI gate on constructed pairs with known answers, and its exit codes via the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalkit.errors import InputError, MissingWeightsError, ProtocolMismatchError
from evalkit.gate.config import GateConfig, load_config, parse_config
from evalkit.gate.core import decide, load_run, resolve_baseline, run_gate
from evalkit.gate.features import load_set_features
from evalkit.gate.stats import fid_against, min_pairs, paired_bootstrap, paired_set_bootstrap
from evalkit.history import add_record

from .gate_fixtures import clip_pair, item_ids, results_dict, variant, write_run

EVALKIT = Path(sys.executable).with_name("evalkit")
WORKTREE = Path(__file__).resolve().parents[1]


def evalkit(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real console script, with this checkout first on PYTHONPATH."""
    full = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    full.update({"PYTHONPATH": str(WORKTREE), **(env or {})})
    return subprocess.run(
        [str(EVALKIT), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120
    )


def gate(a: Path, b: Path, config: GateConfig | None = None, **kw):
    return run_gate(load_run(a), load_run(b), config or GateConfig(), **kw)


def only(report, name: str = "clip_score"):
    (m,) = [m for m in report.metrics if m.metric == name]
    return m


# --------------------------------------------------------------------------- statistics


def test_min_pairs_is_the_sign_test_bound():
    assert min_pairs(0.95) == 6  # 2 / 2**6 = 0.031 < 0.05, 2 / 2**5 = 0.0625 > 0.05
    assert min_pairs(0.99) == 8
    assert 2 * 0.5 ** min_pairs(0.9) <= 0.1 < 2 * 0.5 ** (min_pairs(0.9) - 1)


def test_paired_bootstrap_of_a_constant_shift_is_that_shift_exactly():
    a = np.linspace(0.2, 0.4, 50)
    iv = paired_bootstrap(a, a - 0.01)
    assert (
        iv.delta == pytest.approx(-0.01)
        and iv.lo == pytest.approx(-0.01)
        and iv.hi == pytest.approx(-0.01)
    )


def test_paired_bootstrap_interval_covers_zero_for_pure_noise_in_most_seeds():
    misses = 0
    for s in range(40):
        rng = np.random.default_rng(s)
        a = rng.normal(0.3, 0.03, 100)
        iv = paired_bootstrap(a, a + rng.normal(0, 0.01, 100), n_resamples=1000, seed=s)
        misses += not (iv.lo <= 0 <= iv.hi)
    assert misses <= 5  # about 2 of 40 expected at 95%


def test_decide_needs_the_whole_interval_beyond_the_allowed_degradation():
    assert decide("higher", -0.02, -0.03, -0.01, 0.005)[0] == "regression"
    assert decide("higher", -0.02, -0.03, 0.001, 0.005)[0] == "warn"
    assert decide("higher", -0.003, -0.004, -0.002, 0.005)[0] == "pass"
    assert decide("higher", 0.02, 0.01, 0.03, 0.005)[0] == "improved"
    assert decide("lower", 5.0, 3.0, 7.0, 1.0)[0] == "regression"
    assert decide("lower", -5.0, -7.0, -3.0, 1.0)[0] == "improved"


def _gaussian_features(rng, n: int, d: int, shift: float = 0.0, scale: float = 1.0):
    return rng.normal(shift, scale, size=(n, d))


def test_set_bootstrap_fails_a_real_fid_shift_and_passes_a_same_distribution_resample():
    d, n = 8, 400
    rng = np.random.default_rng(0)
    ref = _gaussian_features(rng, 4000, d)
    metric = fid_against(ref.mean(axis=0), np.cov(ref, rowvar=False))
    base = _gaussian_features(rng, n, d, shift=0.1)
    rerun = _gaussian_features(rng, n, d, shift=0.1)  # same distribution, other draws
    shifted = base + 0.5  # every image moved: a real FID shift
    same = paired_set_bootstrap(base, rerun, metric, n_resamples=300, seed=1)
    worse = paired_set_bootstrap(base, shifted, metric, n_resamples=300, seed=1)
    allowed = 0.05 * metric(base)
    assert decide("lower", same.delta, same.lo, same.hi, allowed)[0] in ("pass", "improved", "warn")
    assert decide("lower", same.delta, same.lo, same.hi, allowed)[0] != "regression"
    assert worse.delta > 1.0 and worse.lo > allowed
    assert decide("lower", worse.delta, worse.lo, worse.hi, allowed)[0] == "regression"
    assert worse.delta == pytest.approx(metric(shifted) - metric(base))


def test_set_bootstrap_of_identical_features_is_exactly_zero():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(500, 4))
    f = rng.normal(size=(60, 4))
    iv = paired_set_bootstrap(
        f, f.copy(), fid_against(ref.mean(0), np.cov(ref, rowvar=False)), 100, 0
    )
    assert (iv.delta, iv.lo, iv.hi) == (0.0, 0.0, 0.0)


def test_set_bootstrap_refuses_unpaired_feature_sets():
    with pytest.raises(ValueError, match="units"):
        paired_set_bootstrap(np.zeros((5, 2)), np.zeros((6, 2)), lambda f: 0.0, 100, 0)


# --------------------------------------------------------------------------- constructed pairs


def test_identical_runs_pass(tmp_path):
    a, _ = clip_pair(tmp_path)
    report = gate(a, a)
    assert report.verdict == "pass"
    m = only(report)
    assert (m.delta, m.interval) == (0.0, [0.0, 0.0]) and m.verdict == "pass"
    assert "paired bootstrap over prompts" in m.test


def test_clip_scores_all_lowered_by_a_set_amount_fail(tmp_path):
    a, b = clip_pair(tmp_path, shift=-0.01)
    report = gate(a, b)
    m = only(report)
    assert report.verdict == "regression" and m.verdict == "regression"
    assert m.delta == pytest.approx(-0.01) and m.allowed == 0.005


def test_clip_scores_lowered_by_less_than_the_allowed_amount_pass(tmp_path):
    a, b = clip_pair(tmp_path, shift=-0.003)
    assert gate(a, b).verdict == "pass"


def test_pure_noise_of_the_intervals_size_passes(tmp_path):
    # per-prompt noise whose mean has the size of the interval itself (sd 0.01 over 100 prompts)
    a, b = clip_pair(tmp_path, noise=0.01)
    report = gate(a, b)
    m = only(report)
    width = m.interval[1] - m.interval[0]
    assert abs(m.delta) < width  # the change is of the interval's size ...
    assert report.verdict == "pass"  # ... and passes


def test_pure_noise_with_no_allowance_rarely_fails(tmp_path):
    strict = parse_config({"metrics": {"clip_score": {"max_degradation": 0.0}}})
    fails = 0
    for s in range(40):
        a, b = clip_pair(tmp_path / str(s), noise=0.01, noise_seed=s)
        fails += gate(a, b, strict).verdict == "regression"
    # a one-sided 2.5% test: about 1 of 40 expected (a point-estimate rule would fail ~20)
    assert fails <= 4


def test_a_shift_with_noise_still_fails(tmp_path):
    a, b = clip_pair(tmp_path, shift=-0.012, noise=0.01)
    assert gate(a, b).verdict == "regression"


def test_a_higher_score_is_reported_improved(tmp_path):
    a, b = clip_pair(tmp_path, shift=0.02)
    report = gate(a, b)
    assert report.verdict == "pass" and only(report).verdict == "improved"


def test_per_category_check_finds_a_regression_confined_to_one_category(tmp_path):
    a, b = clip_pair(tmp_path, n=200, categories_shift={"counting": -0.012})
    overall = gate(a, b)
    assert overall.verdict == "pass"  # -0.003 on average: within the allowed 0.005
    cfg = parse_config({"metrics": {"clip_score": {"per_category": True}}})
    report = gate(a, b, cfg)
    m = only(report)
    assert report.verdict == "regression"
    assert [c.category for c in m.categories if c.verdict == "regression"] == ["counting"]
    assert all(c.confidence == pytest.approx(1 - 0.05 / 4) for c in m.categories)


def test_too_few_prompts_cannot_decide(tmp_path):
    a, b = clip_pair(tmp_path, n=5, shift=-0.1)
    report = gate(a, b)
    assert report.verdict == "cannot decide"
    assert "5 paired prompts" in only(report).reason


def test_candidate_with_fewer_items_cannot_decide_and_names_them(tmp_path):
    ids = item_ids(30)
    base = {i: 0.3 for i in ids}
    cand = {i: 0.3 for i in ids[:27]}
    a = write_run(tmp_path / "a", results_dict({"clip_score": base}))
    r = results_dict({"clip_score": cand})
    r["manifest"]["suite"]["num_items"] = 30  # same protocol, items lost
    r["manifest"]["sampling"]["num_images"] = 30
    r["spec"]["num_samples"] = 30
    b = write_run(tmp_path / "b", r)
    m = only(gate(a, b))
    assert m.verdict == "cannot decide"
    assert "27 of the baseline's 30" in m.reason and ids[27] in m.reason


def test_missing_per_item_scores_cannot_decide(tmp_path):
    ids = item_ids(20)
    a = write_run(
        tmp_path / "a", results_dict({"clip_score": {i: 0.3 for i in ids}}, per_item=False)
    )
    b = write_run(
        tmp_path / "b", results_dict({"clip_score": {i: 0.2 for i in ids}}, per_item=False)
    )
    m = only(gate(a, b))
    assert m.verdict == "cannot decide" and "no per-item scores for clip_score" in m.reason


def test_set_level_metric_without_features_cannot_decide(tmp_path):
    ids = item_ids(20)
    a = write_run(
        tmp_path / "a",
        results_dict({"clip_score": {i: 0.3 for i in ids}}, set_metrics={"fid": 30.0}),
    )
    b = write_run(
        tmp_path / "b",
        results_dict({"clip_score": {i: 0.3 for i in ids}}, set_metrics={"fid": 30.0}),
    )
    assert load_set_features(load_run(a), "fid") is None
    report = gate(a, b)
    m = only(report, "fid")
    assert report.verdict == "cannot decide" and m.verdict == "cannot decide"
    assert "no per-image features for fid in" in m.reason and "feature store absent" in m.reason


def test_set_level_metric_is_decided_once_features_plug_into_the_seam(tmp_path, monkeypatch):
    from evalkit.gate import core
    from evalkit.gate.features import SetFeatures

    ids = item_ids(50)
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 4))
    metric = fid_against(ref.mean(0), np.cov(ref, rowvar=False))
    fa = rng.normal(size=(50, 4))
    feats = {"a": fa, "b": fa + 1.0}
    a = write_run(
        tmp_path / "a",
        results_dict({"clip_score": {i: 0.3 for i in ids}}, set_metrics={"fid": metric(fa)}),
    )
    b = write_run(
        tmp_path / "b",
        results_dict({"clip_score": {i: 0.3 for i in ids}}, set_metrics={"fid": metric(fa + 1.0)}),
    )

    def fake(run, name):
        f = feats[run.path.name]
        return SetFeatures([(i, 0) for i in ids], f, metric, "test")

    monkeypatch.setattr(core, "load_set_features", fake)
    m = only(gate(a, b), "fid")
    assert m.verdict == "regression" and m.kind == "set" and m.n == 50


def test_protocol_mismatch_is_refused_and_forced_gating_warns(tmp_path):
    a, _ = clip_pair(tmp_path)
    r = json.loads((a / "results.json").read_text())
    b = write_run(tmp_path / "other", variant(r, manifest__suite__version="2"))
    with pytest.raises(ProtocolMismatchError, match="manifest.suite.version"):
        gate(a, b)
    report = gate(a, b, force=True)
    assert report.warnings and report.verdict == "pass"


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text("[metrics.clip_score]\nmax_degradaton = 0.1\n")
    with pytest.raises(InputError, match="max_degradaton"):
        load_config(bad)
    with pytest.raises(InputError, match="confidence"):
        parse_config({"defaults": {"confidence": 1.5}})
    with pytest.raises(InputError, match="not both"):
        parse_config({"metrics": {"x": {"max_degradation": 1, "max_relative_degradation": 0.1}}})


def test_config_rules_follow_defaults_then_metric_tables():
    cfg = parse_config(
        {"defaults": {"confidence": 0.9}, "metrics": {"fid": {"max_degradation": 2.0}}}
    )
    assert cfg.rule("fid").allowed_kind == "abs" and cfg.rule("fid").allowed == 2.0
    assert cfg.rule("fid").confidence == 0.9
    assert cfg.rule("kid").allowed_kind == "rel" and cfg.rule("kid").allowed == 0.10
    assert GateConfig().rule("clip_score").allowed == 0.005


def test_gate_disabled_metric_is_reported_as_skipped(tmp_path):
    a, b = clip_pair(tmp_path, shift=-0.1)
    report = gate(a, b, parse_config({"metrics": {"clip_score": {"gate": False}}}))
    assert report.verdict == "pass" and only(report).verdict == "skipped"


# --------------------------------------------------------------------------- history baselines


def test_history_baseline_is_the_latest_comparable_record_of_the_branch(tmp_path):
    ids = item_ids(20)
    hist = tmp_path / "h"
    old = write_run(
        tmp_path / "old",
        results_dict(
            {"clip_score": {i: 0.1 for i in ids}}, run_id="old", created="2026-01-01T00:00:00+00:00"
        ),
    )
    new = write_run(
        tmp_path / "new",
        results_dict(
            {"clip_score": {i: 0.3 for i in ids}}, run_id="new", created="2026-01-02T00:00:00+00:00"
        ),
    )
    other = write_run(
        tmp_path / "oth",
        results_dict(
            {"clip_score": {i: 0.9 for i in ids}},
            run_id="oth",
            suite_version="2",
            created="2026-01-03T00:00:00+00:00",
        ),
    )
    pr = write_run(
        tmp_path / "pr",
        results_dict(
            {"clip_score": {i: 0.5 for i in ids}}, run_id="pr", created="2026-01-04T00:00:00+00:00"
        ),
    )
    for run, branch in ((old, "main"), (new, "main"), (other, "main"), (pr, "feature")):
        add_record(run, hist, branch=branch, commit=run.name)
    cand = load_run(tmp_path / "new")
    base, notes = resolve_baseline(f"history:{hist}@main", load_run(old))
    assert base.results["run_id"] == "new"  # "oth" is later but of another protocol
    base, _ = resolve_baseline(f"history:{hist}@feature", cand)
    assert base.results["run_id"] == "pr"
    with pytest.raises(MissingWeightsError, match="no record on branch 'nope'"):
        resolve_baseline(f"history:{hist}@nope", cand)
    v2 = load_run(
        write_run(
            tmp_path / "v3", results_dict({"clip_score": {i: 0.3 for i in ids}}, suite_version="3")
        )
    )
    with pytest.raises(ProtocolMismatchError, match="no record on branch 'main'"):
        resolve_baseline(f"history:{hist}@main", v2)


# --------------------------------------------------------------------------- the console script


def test_console_exit_codes_of_the_gate(tmp_path):
    a, b = clip_pair(tmp_path / "reg", shift=-0.01)
    proc = evalkit("gate", "--baseline", str(a), "--candidate", str(a), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "evalkit gate: PASS" in proc.stdout and "clip_score" in proc.stdout

    proc = evalkit("gate", "--baseline", str(a), "--candidate", str(b), cwd=tmp_path)
    assert proc.returncode == 10, proc.stderr
    assert "regression" in proc.stdout and "error: gate: regression in clip_score" in proc.stderr
    assert "Traceback" not in proc.stderr

    r = json.loads((a / "results.json").read_text())
    other = write_run(tmp_path / "proto", variant(r, spec__num_samples=99))
    proc = evalkit("gate", "--baseline", str(a), "--candidate", str(other), cwd=tmp_path)
    assert proc.returncode == 5 and "spec.num_samples" in proc.stderr

    few_a, few_b = clip_pair(tmp_path / "few", n=5)
    proc = evalkit("gate", "--baseline", str(few_a), "--candidate", str(few_b), cwd=tmp_path)
    assert proc.returncode == 11 and "cannot decide" in proc.stderr

    proc = evalkit(
        "gate", "--baseline", str(tmp_path / "nope"), "--candidate", str(a), cwd=tmp_path
    )
    assert proc.returncode == 3 and "no such results file" in proc.stderr

    proc = evalkit(
        "gate",
        "--baseline",
        f"history:{tmp_path / 'none'}@main",
        "--candidate",
        str(a),
        cwd=tmp_path,
    )
    assert proc.returncode == 4 and "does not exist" in proc.stderr


def test_console_gate_never_passes_on_nan_values(tmp_path):
    a, _ = clip_pair(tmp_path)
    text = (a / "results.json").read_text()
    bad = tmp_path / "nan"
    bad.mkdir()
    r = json.loads(text)
    first = next(iter(r["metrics"]["clip_score"]["per_item"]))
    r["metrics"]["clip_score"]["per_item"][first] = float("nan")
    (bad / "results.json").write_text(json.dumps(r))  # Python writes the NaN token
    proc = evalkit("gate", "--baseline", str(a), "--candidate", str(bad), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert f"per_item.{first}" in proc.stderr and "nan" in proc.stderr.lower()


def test_console_gate_writes_markdown_json_and_the_step_summary(tmp_path):
    a, b = clip_pair(tmp_path, shift=-0.01)
    summary = tmp_path / "summary.md"
    summary.write_text("previous step\n")
    proc = evalkit(
        "gate", "--baseline", str(a), "--candidate", str(b), "--markdown", "gate.md", "--json", "gate.json",
        cwd=tmp_path, env={"GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    assert proc.returncode == 10
    md = (tmp_path / "gate.md").read_text()
    assert "## evalkit gate: ❌ REGRESSION" in md and "| clip_score ↑ |" in md
    assert summary.read_text().startswith("previous step\n") and md in summary.read_text()
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["verdict"] == "regression" and report["metrics"][0]["metric"] == "clip_score"
    assert report["metrics"][0]["delta"] == pytest.approx(-0.01)


def test_console_gate_reads_evalkit_gate_toml_from_the_working_directory(tmp_path):
    a, b = clip_pair(tmp_path, shift=-0.01)
    (tmp_path / "evalkit-gate.toml").write_text("[metrics.clip_score]\nmax_degradation = 0.02\n")
    proc = evalkit("gate", "--baseline", str(a), "--candidate", str(b), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "evalkit-gate.toml" in proc.stdout
