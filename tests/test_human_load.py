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
