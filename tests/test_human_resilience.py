"""The app under trouble: a restarted or locked database, files swapped under it, odd bodies.

Each answer is a success or a clean 4xx/503 with a message, never a 500, and no
acknowledged vote is lost.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from evalkit.human.demo import add_rater, make_study
from evalkit.human.security import NoRateLimit
from evalkit.human.server import build_app
from evalkit.human.service import RatingService
from evalkit.human.store import connect

from .test_human_server import ANSWERS, PG_URL, Server

PG_DIR = os.environ.get("EVALKIT_TEST_PG_DIR")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _vote_body(task: dict) -> dict:
    return {
        "assignment_id": task["assignment_id"],
        "submission_id": task["submission_id"],
        "answers": ANSWERS,
    }


def test_a_symlink_swapped_in_and_a_deeply_nested_body_get_a_clean_4xx(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0, images_per_prompt=6, images_per_side=6)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    client = TestClient(build_app(svc, ui=False), raise_server_exceptions=False)
    token = add_rater(study, store, "ann")
    task = client.post("/api/v1/next", json={}, headers=_auth(token)).json()
    a = store.assignment(study.study_id, task["assignment_id"])
    paths = study.side_paths(study.tasks()[a.task_id], a.left_source)
    assert client.get("/" + task["set_a"][5]).status_code == 200  # served while intact
    outside = tmp_path / "secret.png"
    shutil.copy(paths[5], outside)
    swaps = [
        lambda p: p.symlink_to(outside),  # a symlink leading outside the runs
        lambda p: p.symlink_to(p),  # a symlink loop
        lambda p: p.symlink_to(p.parent / "missing.png"),  # a dangling symlink
        lambda p: p.mkdir(),  # a folder
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n broken"),  # not an image any more
    ]
    for k, swap in enumerate(swaps):
        paths[k].unlink()
        swap(paths[k])
        r = client.get("/" + task["set_a"][k])
        assert r.status_code == 404, (k, r.status_code, r.text[:200])
        assert r.json() == {"error": "unknown image"}
    for depth in (9, 1500):
        nested = b'{"answers": ' + b"[" * depth + b"]" * depth + b"}"
        assert len(nested) <= 4096
        r = client.post("/api/v1/vote", content=nested, headers=_auth(token))
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
    assert (
        client.post("/api/v1/vote", json=_vote_body(task), headers=_auth(token)).status_code == 200
    )


@pytest.mark.timeout(60)
def test_a_sqlite_file_locked_by_another_process_delays_then_answers_503_not_500(tmp_path):
    study, _, _ = make_study(tmp_path, gold_tasks=0)
    store = connect(study.root / "votes.sqlite3", retry_s=3.0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    client = TestClient(build_app(svc, ui=False), raise_server_exceptions=False)
    tokens = [add_rater(study, store, f"r{k}") for k in range(3)]
    other = sqlite3.connect(
        study.root / "votes.sqlite3", isolation_level=None, check_same_thread=False
    )

    def hold(seconds: float) -> threading.Thread:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        t = threading.Thread(target=lambda: (time.sleep(seconds), other.execute("COMMIT")))
        t.start()
        return t

    # Locked for less than the retry window: the request waits and succeeds.
    task = client.post("/api/v1/next", json={}, headers=_auth(tokens[0])).json()
    releaser = hold(0.5)
    r = client.post("/api/v1/vote", json=_vote_body(task), headers=_auth(tokens[0]))
    releaser.join()
    assert r.status_code == 200, r.text
    # Locked for longer: a clean 503 with Retry-After, nothing half-stored ...
    task = client.post("/api/v1/next", json={}, headers=_auth(tokens[1])).json()
    releaser = hold(6.0)
    r = client.post("/api/v1/vote", json=_vote_body(task), headers=_auth(tokens[1]))
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert "unavailable" in r.json()["error"]
    releaser.join()
    # ... and once the lock is gone the same submission goes through.
    r = client.post("/api/v1/vote", json=_vote_body(task), headers=_auth(tokens[1]))
    assert r.status_code == 200 and not r.json()["duplicate"]
    assert len({v["submission_id"] for v in store.votes(study.study_id)}) == 2
    other.close()


def _pg_ctl() -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return str(found[-1]) if found else shutil.which("pg_ctl")


def _restart_postgres() -> None:
    """``pg_ctl restart`` of the CI cluster (scripts/ci_postgres.sh), as the cluster's owner."""
    data = Path(PG_DIR) / "data"
    cmd = [_pg_ctl(), "-D", str(data), "-m", "fast", "-w", "-t", "60", "restart"]
    owner = data.owner()
    if os.geteuid() == 0 and owner != "root":
        cmd = ["runuser", "-u", owner, "--", *cmd]
    log = Path(PG_DIR) / "server.log"
    with log.open("ab") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=out, timeout=90)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(
    not (PG_URL and PG_DIR and _pg_ctl()),
    reason='needs the CI PostgreSQL cluster (eval "$(bash scripts/ci_postgres.sh)")',
)
def test_a_postgresql_restart_under_a_running_app_recovers_within_seconds(tmp_path):
    items = [(f"pg-{k:03d}", f"Prompt {k}.", "Colors") for k in range(200)]
    study, store, _ = make_study(tmp_path, db=PG_URL, items=items, gold_tasks=0)
    tokens = [add_rater(study, store, f"pg{k}") for k in range(4)]
    server = Server(study.root, PG_URL, tmp_path / "server.log", ui=False)
    acked: list[str] = []
    acked_at: list[float] = []
    statuses: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def rater(token: str) -> None:
        with httpx.Client(base_url=server.url, headers=_auth(token), timeout=60) as http:
            while not stop.is_set():
                r = http.post("/api/v1/next", json={})
                with lock:
                    statuses.append(r.status_code)
                if r.status_code != 200:
                    time.sleep(0.2)
                    continue
                task = r.json()
                if task.get("done"):
                    return
                while not stop.is_set():  # retry this vote until it is acknowledged
                    v = http.post("/api/v1/vote", json=_vote_body(task))
                    with lock:
                        statuses.append(v.status_code)
                    if v.status_code == 200:
                        with lock:
                            acked.append(v.json()["submission_id"])
                            acked_at.append(time.monotonic())
                        break
                    time.sleep(0.2)
                time.sleep(0.05)

    threads = [threading.Thread(target=rater, args=(t,)) for t in tokens]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = len(acked)
        _restart_postgres()
        restarted = time.monotonic()
        while not any(t > restarted for t in acked_at) and time.monotonic() - restarted < 30:
            time.sleep(0.05)
        recovered_s = time.monotonic() - restarted
        time.sleep(1.0)  # and it goes on
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server.stop()
    assert before > 0, "no vote went through before the restart"
    assert recovered_s < 15, f"votes resumed only {recovered_s:.1f} s after the restart"
    assert set(statuses) <= {200, 503}, f"unexpected statuses: {sorted(set(statuses))}"
    stored = [
        v["submission_id"] for v in store.votes(study.study_id) if v["question"] == "fidelity"
    ]
    assert sorted(stored) == sorted(acked)  # every acknowledged vote, exactly once
