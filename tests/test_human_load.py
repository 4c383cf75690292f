"""A bounded run of benchmarks/bench_rating_load.py: concurrent raters lose and double nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rating_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rating_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_twenty_concurrent_raters_store_every_vote_exactly_once(tmp_path):
    result = _bench().run(
        raters=20, votes_per_rater=5, mode="service", retry_fraction=0.3, workdir=str(tmp_path)
    )
    assert result["ok"], result
    assert result["votes_acknowledged"] == result["votes_stored"] == 100
    assert result["duplicates"] == 0
    assert result["vote_p99_ms"] is not None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_server_timings_count_every_request_the_raters_made(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # its rater processes import it by name
    bench = importlib.import_module("bench_rating_load")
    result = bench.run(
        raters=3,
        votes_per_rater=2,
        mode="http",
        retry_fraction=0.0,
        workdir=str(tmp_path),
        images_per_side=2,
        image_size=64,
        ui=False,
        client_procs=1,
        server_timings=True,
    )
    assert result["ok"], result
    timed = result["server_ms"]
    assert timed["/api/v1/vote"][0] == 6
    assert timed["/api/v1/next"][0] >= 6  # and a last one per rater that finds none left
    assert timed["img"][0] == result["image_requests"] == 6 * 4
    assert all(0 < p50 <= p99 for _, p50, p99 in timed.values())
