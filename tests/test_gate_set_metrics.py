"""The gate on FID and KID of real runs: per-image Inception features exported by the run
(and carried by a history record) let it bootstrap set-level metrics instead of saying
"cannot decide"."""

# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_fid are used as arguments)

from __future__ import annotations

import json

import numpy as np
import pytest

from evalkit.features.store import REFERENCE_STATS
from evalkit.gate.config import GateConfig, parse_config
from evalkit.gate.core import load_run, run_gate
from evalkit.gate.features import load_set_features
from evalkit.history import add_record
from tests.fixtures_fid import shared_weights, weights_cache  # noqa: F401
from tests.history_fixtures import real_run

pytestmark = pytest.mark.slow

N = 40
SET_METRICS = ("fid", "kid")
KID = {"kid": {"subset_size": 20, "subsets": 10}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_weights):  # noqa: F811
    """Baseline (toy), the same run again, and toy with heavy pixel noise: real FID and KID."""
    root = tmp_path_factory.mktemp("gate-set")
    cache = root / "cache"
    cache.mkdir()
    (cache / "weights").symlink_to(shared_weights.path.parent, target_is_directory=True)

    def one(name: str, **model_options) -> object:
        return real_run(
            root / name, num_items=N, metrics=SET_METRICS, metric_options=KID,
            model_options=model_options, cache_dir=cache,
        )  # fmt: skip

    return {"base": one("base"), "same": one("same"), "noisy": one("noisy", noise=40.0)}


def _verdicts(a, b, config: GateConfig | None = None) -> dict[str, object]:
    report = run_gate(load_run(a), load_run(b), config or GateConfig())
    return {m.metric: m for m in report.metrics}


def test_the_gate_features_reproduce_the_runs_fid_and_export_the_reference(runs):
    base = runs["base"]
    fid = load_set_features(load_run(base), "fid")
    assert fid is not None and fid.features.shape[0] == N
    recorded = json.loads((base / "results.json").read_text())["metrics"]["fid"]["value"]
    assert fid.metric_fn(np.asarray(fid.features)) == pytest.approx(recorded, rel=1e-6)
    key = json.loads((base / "results.json").read_text())["metrics"]["fid"]["manifest"]
    folder = base / "features" / key["features"]["extractor_key"]
    assert (folder / REFERENCE_STATS).is_file() or any(folder.glob("reference.*.npy"))


def test_identical_runs_pass_fid_and_kid(runs):
    verdicts = _verdicts(runs["base"], runs["same"])
    for name in SET_METRICS:
        assert verdicts[name].verdict == "pass", verdicts[name].reason
        assert verdicts[name].delta == 0.0 and verdicts[name].interval == [0.0, 0.0]


def test_heavy_noise_is_a_fid_and_kid_regression_with_an_interval_above_zero(runs):
    # FID rises by about 30 (interval about 23 to 41) against the default 5 % allowance; KID by
    # about 4 %, inside its default 10 %, so KID is checked with no allowance
    strict_kid = parse_config({"metrics": {"kid": {"max_degradation": 0.0}}})
    verdicts = _verdicts(runs["base"], runs["noisy"], strict_kid)
    for name in SET_METRICS:
        v = verdicts[name]
        assert v.verdict == "regression", (name, v.reason)
        assert v.interval[0] > 0 and v.n == N
    assert _verdicts(runs["base"], runs["noisy"])["kid"].verdict == "pass"


def test_a_history_record_carries_the_features_the_gate_needs(runs, tmp_path):
    history = tmp_path / "history"
    record = add_record(runs["base"], history, commit="a" * 40, branch="main").record
    assert (record.path / "features").is_dir()
    verdicts = _verdicts(record.path, runs["noisy"])
    assert verdicts["fid"].verdict == "regression"
    assert _verdicts(record.path, runs["same"])["fid"].verdict == "pass"
