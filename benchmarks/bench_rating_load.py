"""Load test of the rating service on loopback: N raters voting at once, nothing lost or doubled.

    python benchmarks/bench_rating_load.py                      # 50 raters x 20 votes over HTTP
    python benchmarks/bench_rating_load.py --mode service       # same through the service layer
    python benchmarks/bench_rating_load.py --db postgresql://...

Each simulated rater (one thread, one keep-alive HTTP client) asks for a task and votes, a
fixed number of times; a share of votes is sent twice with the same submission id (a client
retry), which must not store a second vote. At the end the store must hold exactly the
acknowledged votes. Prints p50/p99 latency of the vote request and of the next-task request.
Exit status 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from evalkit.human.demo import add_rater, make_study
from evalkit.human.security import RateLimiter
from evalkit.human.service import RatingService

ANSWERS = ("A", "B", "tie")


def _items(n: int) -> list[tuple[str, str, str]]:
    cats = ["Colors", "Counting", "Text", "Positional", "Rare Words"]
    return [
        (f"item-{k:04d}", f"Synthetic prompt number {k}.", cats[k % len(cats)]) for k in range(n)
    ]


class ServiceClient:
    """Calls the service layer in process."""

    def __init__(self, svc: RatingService, token: str) -> None:
        self.svc, self.token = svc, token

    def next(self) -> dict | None:
        view = self.svc.next_task(self.token)
        return None if view is None else view.to_json()

    def vote(self, task: dict, answers: dict) -> str:
        return self.svc.submit(
            self.token, task["assignment_id"], answers, task["submission_id"]
        ).submission_id


class HttpClient:
    """Calls the JSON API over loopback with one keep-alive connection."""

    def __init__(self, base: str, token: str) -> None:
        import httpx

        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def next(self) -> dict | None:
        r = self.http.post("/api/v1/next", json={})
        r.raise_for_status()
        data = r.json()
        return None if data.get("done") else data

    def vote(self, task: dict, answers: dict) -> str:
        body = {
            "study_id": task["study_id"],
            "assignment_id": task["assignment_id"],
            "submission_id": task["submission_id"],
            "answers": answers,
        }
        r = self.http.post("/api/v1/vote", json=body)
        r.raise_for_status()
        return r.json()["submission_id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(study_dir: Path, db: str | None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "evalkit.human.cli",
        "serve",
        str(study_dir),
        "--port",
        str(port),
        "--no-ui",
    ]
    if db:
        cmd += ["--db", db]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def run(
    raters: int = 50,
    votes_per_rater: int = 20,
    mode: str = "http",
    db: str | None = None,
    retry_fraction: float = 0.1,
    workdir: str | None = None,
) -> dict:
    """Run the load test; returns the figures (and whether everything was stored exactly once)."""
    root = Path(workdir or tempfile.mkdtemp(prefix="evalkit-load-"))
    n_items = max(20, (raters * votes_per_rater) // 10 + votes_per_rater)
    study, store, _ = make_study(
        root,
        db=db,
        items=_items(n_items),
        images_per_prompt=2,
        images_per_side=2,
        ratings_per_item=10,
        gold_tasks=0,
    )
    tokens = [add_rater(study, store, f"load-{k}") for k in range(raters)]
    proc = None
    if mode == "http":
        proc, base = start_server(study.root, db)
        make: Callable[[str], object] = lambda tok: HttpClient(base, tok)  # noqa: E731
    elif mode == "service":
        svc = RatingService(study, store, limiter=RateLimiter())
        make = lambda tok: ServiceClient(svc, tok)  # noqa: E731
    else:
        raise SystemExit(f"--mode must be http or service, not {mode!r}")

    vote_ms: list[float] = []
    next_ms: list[float] = []
    acked: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(raters)

    def rater(token: str, seed: int) -> None:
        rng = random.Random(seed)
        client = make(token)
        start.wait()
        try:
            for _ in range(votes_per_rater):
                t0 = time.perf_counter()
                task = client.next()
                t1 = time.perf_counter()
                if task is None:
                    break
                answers = {q["id"]: rng.choice(ANSWERS) for q in task["questions"]}
                sub = client.vote(task, answers)
                t2 = time.perf_counter()
                if rng.random() < retry_fraction:
                    client.vote(task, answers)  # a retry: must not store a second vote
                with lock:
                    next_ms.append(1000 * (t1 - t0))
                    vote_ms.append(1000 * (t2 - t1))
                    acked.append(sub)
        except Exception as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=rater, args=(tok, k)) for k, tok in enumerate(tokens)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)

    rows = store.votes(study.study_id, effective_only=False)
    stored = [r["submission_id"] for r in rows if r["question"] == "fidelity"]
    ok = (
        not errors
        and len(acked) == raters * votes_per_rater
        and sorted(stored) == sorted(acked)
        and len(set(stored)) == len(stored)
        and len(rows) == len(acked) * len(study.questions)
    )
    return {
        "mode": mode,
        "backend": store.backend,
        "raters": raters,
        "votes_acknowledged": len(acked),
        "votes_stored": len(stored),
        "duplicates": len(stored) - len(set(stored)),
        "errors": errors[:5],
        "wall_s": wall,
        "votes_per_s": len(acked) / wall if wall else 0.0,
        "vote_p50_ms": float(np.percentile(vote_ms, 50)) if vote_ms else None,
        "vote_p99_ms": float(np.percentile(vote_ms, 99)) if vote_ms else None,
        "next_p50_ms": float(np.percentile(next_ms, 50)) if next_ms else None,
        "next_p99_ms": float(np.percentile(next_ms, 99)) if next_ms else None,
        "ok": ok,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--raters", type=int, default=50)
    ap.add_argument("--votes-per-rater", type=int, default=20)
    ap.add_argument("--mode", choices=["http", "service"], default="http")
    ap.add_argument(
        "--db", default=os.environ.get("EVALKIT_RATE_DB"), help="store URL (default: SQLite)"
    )
    ap.add_argument("--retry-fraction", type=float, default=0.1)
    args = ap.parse_args()
    r = run(args.raters, args.votes_per_rater, args.mode, args.db, args.retry_fraction)
    print(
        f"{r['mode']} / {r['backend']}: {r['raters']} raters, {r['votes_acknowledged']} votes acknowledged, "
        f"{r['votes_stored']} stored, {r['duplicates']} duplicated, {r['wall_s']:.1f} s "
        f"({r['votes_per_s']:.0f} votes/s)"
    )
    print(f"vote latency: p50 {r['vote_p50_ms']:.1f} ms, p99 {r['vote_p99_ms']:.1f} ms")
    print(f"next-task latency: p50 {r['next_p50_ms']:.1f} ms, p99 {r['next_p99_ms']:.1f} ms")
    if not r["ok"]:
        print(
            f"FAILED: {r['errors'] or 'stored votes do not match acknowledged votes'}",
            file=sys.stderr,
        )
        return 1
    print("ok: every acknowledged vote stored exactly once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
