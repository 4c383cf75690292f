"""Limits per rater, not per address: raters behind one NAT, failed tokens, trusted proxies."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from evalkit.human.demo import add_rater, make_study

from .test_human_server import ANSWERS, Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _items(n: int) -> list[tuple[str, str, str]]:
    cats = ["Colors", "Counting", "Text", "Positional"]
    return [(f"item-{k:03d}", f"Synthetic prompt {k}.", cats[k % len(cats)]) for k in range(n)]


def _rate_like_a_browser(base: str, token: str, tasks: int) -> list[int]:
    """Next task, its images six at a time (as a browser does over HTTP/1.1), the vote."""
    statuses = []
    with httpx.Client(base_url=base, timeout=60) as http:
        auth = {"Authorization": f"Bearer {token}"}
        with ThreadPoolExecutor(6) as pool:
            for _ in range(tasks):
                r = http.post("/api/v1/next", json={}, headers=auth)
                statuses.append(r.status_code)
                if r.status_code != 200:
                    return statuses
                task = r.json()
                urls = task["set_a"] + task["set_b"]
                statuses += list(pool.map(lambda u: http.get("/" + u).status_code, urls))
                body = {
                    "assignment_id": task["assignment_id"],
                    "submission_id": task["submission_id"],
                    "answers": ANSWERS,
                }
                statuses.append(http.post("/api/v1/vote", json=body, headers=auth).status_code)
    return statuses


def test_fifty_raters_behind_one_address_are_never_refused(tmp_path):
    study, store, _ = make_study(
        tmp_path,
        items=_items(30),
        images_per_prompt=8,
        images_per_side=8,
        ratings_per_item=5,
        gold_tasks=0,
    )
    tokens = [add_rater(study, store, f"nat-{k}") for k in range(50)]
    server = Server(study.root, None, tmp_path / "server.log", ui=False)
    try:
        # Someone on the same address (the same NAT) keeps sending bad tokens ...
        bad = [server.post("/api/v1/next", "b" * 43).status_code for _ in range(40)]
        assert bad[0] == 401 and bad[-1] == 429
        # ... while 50 raters rate two tasks each, all images included, all at once.
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda t: _rate_like_a_browser(server.url, t, 2), tokens))
        refused = [s for statuses in results for s in statuses if s != 200]
        assert refused == [], f"{len(refused)} requests refused: {sorted(set(refused))}"
        assert sum(len(r) for r in results) == 50 * 2 * (1 + 16 + 1)
        assert server.post("/api/v1/next", "b" * 43).status_code in (401, 429)
    finally:
        server.stop()
    votes = store.votes(study.study_id)
    assert len({v["submission_id"] for v in votes}) == 100


def _statuses_until_throttled(send: Callable[[int], int], most: int = 200) -> list[int]:
    """Status codes of ``send(k)`` for k = 0, 1, ... up to the first 429 (at most ``most``).

    The failed-token budget (30 at once, refilled at 0.5/s) runs out after about 30 refusals;
    sending until it does keeps the test independent of how fast a loaded machine sends.
    """
    statuses: list[int] = []
    for k in range(most):
        statuses.append(send(k))
        if statuses[-1] == 429:
            break
    return statuses


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0)
    good = add_rater(study, store, "good")
    plain = Server(study.root, None, tmp_path / "plain.log", ui=False)
    try:
        # Not behind a trusted proxy: a forged X-Forwarded-For does not buy a fresh budget.
        statuses = _statuses_until_throttled(
            lambda k: (
                httpx.post(
                    plain.url + "/api/v1/next",
                    json={},
                    headers={
                        "Authorization": "Bearer " + "c" * 43,
                        "X-Forwarded-For": f"10.0.0.{k}",
                    },
                ).status_code
            )
        )
        assert statuses[0] == 401 and statuses[-1] == 429
        assert set(statuses[:-1]) == {401}
    finally:
        plain.stop()
    proxied = Server(
        study.root, None, tmp_path / "proxied.log", ui=False, args=("--trusted-proxy", "127.0.0.1")
    )
    try:

        def post(token: str, client: str) -> int:
            headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": client}
            return httpx.post(proxied.url + "/api/v1/next", json={}, headers=headers).status_code

        # Behind the proxy the admin named, each forwarded client has its own budget.
        assert _statuses_until_throttled(lambda _: post("d" * 43, "203.0.113.7"))[-1] == 429
        assert post("d" * 43, "203.0.113.8") == 401
        assert post(good, "203.0.113.7") == 200  # a valid rater on the throttled address
    finally:
        proxied.stop()
