"""Load test of the rating app on loopback: N raters at once, as a browser would, nothing lost or doubled.

    python benchmarks/bench_rating_load.py                      # 50 raters x 20 tasks, UI server
    python benchmarks/bench_rating_load.py --browsers 8         # plus 8 Chromium raters in the UI
    python benchmarks/bench_rating_load.py --mode service       # the service layer alone
    EVALKIT_RATE_DB=postgresql://... python benchmarks/bench_rating_load.py

Each simulated rater asks for a task (``POST /api/v1/next``), fetches the task's images from
the same ``/img`` URLs a browser loads, six at a time (a browser's connections per host),
and votes; a share of votes is sent twice with the same submission id (a client retry),
which must not store a second vote. The server runs with the Gradio UI mounted (``--no-ui``
serves the API alone). Refused image requests (429) are retried after Retry-After, as the
page does, and counted. With ``--browsers N``, N headless Chromium pages (Debian's
/usr/bin/chromium through Playwright) rate through the real UI at the same time, by keys,
and the time from Enter to the next task shown with all its images is measured.

Prints p50/p99 of next task, vote and task images (all images of a task), the browser
figure, and the refusals; ``--server-timings`` adds each route's p50/p99 as timed inside the
server process (benchmarks/_timed_rating_server.py), without the clients' own queueing. Exit
status 1 if a vote was lost or duplicated or a request failed.
Raters pause ``--think-s`` seconds per task on average (uniform over 0.5-1.5 times it) and
arrive spread over one pause; the default 0 is a burst far beyond real raters (all at once,
no pause at all).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty

import numpy as np

from evalkit.human.demo import add_rater, make_run
from evalkit.human.security import NoRateLimit, RateLimiter
from evalkit.human.service import RatingService
from evalkit.human.store import connect
from evalkit.human.study import create_study

ANSWERS = ("A", "B", "tie")
CHROMIUM = os.environ.get("EVALKIT_CHROMIUM", "/usr/bin/chromium")


def _items(n: int) -> list[tuple[str, str, str]]:
    cats = ["Colors", "Counting", "Text", "Positional", "Rare Words"]
    return [
        (f"item-{k:04d}", f"Synthetic prompt number {k}.", cats[k % len(cats)]) for k in range(n)
    ]


def make_bench_study(root: Path, n_items: int, images: int, size: int, db: str | None):
    """Two synthetic runs and a study on them (no gold tasks: every rater gets the same work)."""
    runs = [
        make_run(
            root / "runs", f"run{k}", f"model-{k}", items=_items(n_items),
            images_per_prompt=images, size=size, seed=k,
        )
        for k in range(2)
    ]  # fmt: skip
    study = create_study(
        runs,
        root / "study",
        suite="drawbench",
        images_per_side=images,
        ratings_per_item=10,
        gold_tasks=0,
        db="postgresql" if db else "votes.sqlite3",
    )
    store = connect(db or study.root / "votes.sqlite3")
    store.register_study(study.study_id, {"root": str(study.root)})
    add_rater(study, store, "admin", role="admin")
    return study, store


class ServiceClient:
    """Calls the service layer in process (images: the blinded bytes, as served)."""

    def __init__(self, svc: RatingService, token: str) -> None:
        self.svc, self.token = svc, token

    def next(self) -> dict | None:
        view = self.svc.next_task(self.token)
        return None if view is None else view.to_json()

    def images(self, task: dict) -> tuple[int, int]:
        for url in task["set_a"] + task["set_b"]:
            _, assignment, slot = url.split("/")
            self.svc.image(assignment, slot)
        return len(task["set_a"]) * 2, 0

    def vote(self, task: dict, answers: dict) -> str:
        return self.svc.submit(
            self.token, task["assignment_id"], answers, task["submission_id"]
        ).submission_id

    def close(self) -> None:
        pass


class HttpClient:
    """The JSON API and the image URLs over loopback, keep-alive, images six at a time."""

    def __init__(self, base: str, token: str) -> None:
        import httpx

        limits = httpx.Limits(max_connections=7, max_keepalive_connections=7)
        self.http = httpx.Client(base_url=base, timeout=120, limits=limits)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.pool = ThreadPoolExecutor(6)
        self.retried = 0

    def _send(self, method: str, url: str, **kw: object):  # noqa: ANN202 - an httpx.Response
        """One request, sent again after a dropped connection (as browsers do; all are idempotent)."""
        import httpx

        for attempt in range(3):
            try:
                return self.http.request(method, url, **kw)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                self.retried += 1
        raise AssertionError("unreachable")

    def next(self) -> dict | None:
        r = self._send("POST", "/api/v1/next", json={}, headers=self.auth)
        r.raise_for_status()
        data = r.json()
        return None if data.get("done") else data

    def _image(self, url: str) -> int:
        for refused in range(60):
            r = self._send("GET", "/" + url)
            if r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n":
                return refused
            if r.status_code != 429:
                raise RuntimeError(f"image {url}: HTTP {r.status_code}")
            time.sleep(float(r.headers.get("Retry-After", "1")))
        raise RuntimeError(f"image {url}: still refused after 60 tries")

    def images(self, task: dict) -> tuple[int, int]:
        urls = task["set_a"] + task["set_b"]
        return len(urls), sum(self.pool.map(self._image, urls))

    def vote(self, task: dict, answers: dict) -> str:
        body = {
            "study_id": task["study_id"],
            "assignment_id": task["assignment_id"],
            "submission_id": task["submission_id"],
            "answers": answers,
        }
        r = self._send("POST", "/api/v1/vote", json=body, headers=self.auth)
        r.raise_for_status()
        return r.json()["submission_id"]

    def close(self) -> None:
        self.pool.shutdown()
        self.http.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TIMED_SERVER = Path(__file__).with_name("_timed_rating_server.py")


def start_server(
    study_dir: Path, db: str | None, ui: bool, timings: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """``evalkit rate serve`` in a child process; with ``timings``, the timed server writes
    each request's route and milliseconds there when it stops."""
    import httpx

    port = _free_port()
    serve = ["serve", str(study_dir), "--port", str(port)]
    if timings is None:
        cmd = [sys.executable, "-m", "evalkit.human.cli", *serve]
    else:
        cmd = [sys.executable, str(TIMED_SERVER), str(timings), *serve]
    if not ui:
        cmd.append("--no-ui")
    env = {**os.environ}
    env.pop("EVALKIT_RATE_DB", None)
    if db:
        env["EVALKIT_RATE_DB"] = db  # never on the command line
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
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


def _rate(make: Callable[[str], object], tokens: list[tuple[str, int]], tasks: int,
          retry_fraction: float, think_s: float, start_at: float,
          fetch_images: bool = True) -> dict:  # fmt: skip
    """Raters in threads (one process); returns their timings and acknowledged submissions."""
    out = {"next": [], "vote": [], "images": [], "acked": [], "errors": [], "refused": 0, "n": 0}
    out["end"] = 0.0
    lock = threading.Lock()

    def rater(token: str, seed: int) -> None:
        rng = random.Random(seed)
        client = make(token)
        # with pauses, raters also arrive spread over one pause, not all in the same instant
        time.sleep(max(0.0, start_at - time.time()) + rng.uniform(0.0, think_s))
        try:
            for _ in range(tasks):
                t0 = time.perf_counter()
                task = client.next()
                t1 = time.perf_counter()
                if task is None:
                    break
                n, refused = client.images(task) if fetch_images else (0, 0)
                t2 = time.perf_counter()
                if think_s:
                    time.sleep(rng.uniform(0.5, 1.5) * think_s)
                answers = {q["id"]: rng.choice(ANSWERS) for q in task["questions"]}
                t3 = time.perf_counter()
                sub = client.vote(task, answers)
                t4 = time.perf_counter()
                if rng.random() < retry_fraction:
                    client.vote(task, answers)  # a retry: must not store a second vote
                with lock:
                    out["next"].append(1000 * (t1 - t0))
                    out["images"].append(1000 * (t2 - t1))
                    out["vote"].append(1000 * (t4 - t3))
                    out["acked"].append(sub)
                    out["refused"] += refused
                    out["n"] += n
        except Exception as exc:  # noqa: BLE001 - reported below
            with lock:
                out["errors"].append(repr(exc)[:300])
        finally:
            client.close()

    threads = [threading.Thread(target=rater, args=(tok, seed)) for tok, seed in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["end"] = time.time()
    return out


def _http_worker(base, tokens, tasks, retry_fraction, think_s, start_at, fetch, queue) -> None:  # noqa: ANN001
    make = lambda t: HttpClient(base, t)  # noqa: E731
    queue.put(_rate(make, tokens, tasks, retry_fraction, think_s, start_at, fetch))


def _browser_raters(base: str, tokens: list[str], tasks: int, out: dict) -> None:
    """Chromium pages rating through the UI by keys; Enter -> next task shown with all images."""
    from playwright.sync_api import sync_playwright

    loaded = (
        "(before) => { const c = document.querySelector('#ek-caption .ek-caption');"
        " const done = document.querySelector('#ek-done');"
        " if (done && done.offsetParent !== null && done.textContent.includes('All done')) return true;"
        " if (!c || c.textContent === before) return false;"
        " const imgs = Array.from(document.querySelectorAll('img.ek-thumb'));"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        pages = []
        for tok in tokens:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(f"{base}/?token={tok}")
            page.wait_for_function(loaded, arg="", timeout=120_000)
            pages.append(page)
        for _ in range(tasks):
            for page in pages:  # one browser process: take turns, like raters who pause
                caption = page.locator("#ek-caption .ek-caption").inner_text()
                page.wait_for_timeout(300)  # the page's image check runs every 250 ms
                page.keyboard.press("1")
                page.keyboard.press("q")
                t0 = time.perf_counter()
                page.keyboard.press("Enter")
                page.wait_for_function(loaded, arg=caption, timeout=120_000)
                out["browser"].append(1000 * (time.perf_counter() - t0))
        browser.close()


def run(
    raters: int = 50,
    votes_per_rater: int = 20,
    mode: str = "http",
    db: str | None = None,
    retry_fraction: float = 0.1,
    workdir: str | None = None,
    images_per_side: int = 8,
    image_size: int = 256,
    browsers: int = 0,
    ui: bool = True,
    think_s: float = 0.0,
    client_procs: int = 2,
    fetch_images: bool = True,
    server_timings: bool = False,
) -> dict:
    """Run the load test; returns the figures (and whether everything was stored exactly once)."""
    root = Path(workdir or tempfile.mkdtemp(prefix="evalkit-load-"))
    n_items = max(20, ((raters + browsers) * votes_per_rater) // 10 + votes_per_rater)
    study, store = make_bench_study(root, n_items, images_per_side, image_size, db)
    tokens = [add_rater(study, store, f"load-{k}") for k in range(raters)]
    browser_tokens = [add_rater(study, store, f"browser-{k}") for k in range(browsers)]
    proc = None
    start_at = time.time() + 3.0
    results: list[dict] = []
    extra: dict = {"browser": []}
    if mode == "http":
        timings = root / "server-timings.tsv" if server_timings else None
        proc, base = start_server(study.root, db, ui=ui or browsers > 0, timings=timings)
        start_at = time.time() + 3.0
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        seeded = list(zip(tokens, range(raters), strict=True))
        chunks = [seeded[k::client_procs] for k in range(client_procs)]
        procs = [
            ctx.Process(
                target=_http_worker,
                args=(
                    base,
                    chunk,
                    votes_per_rater,
                    retry_fraction,
                    think_s,
                    start_at,
                    fetch_images,
                    queue,
                ),
            )
            for chunk in chunks
            if chunk
        ]
        for p in procs:
            p.start()
        browser_thread = None
        if browser_tokens:

            def browsers_safely() -> None:
                try:
                    _browser_raters(base, browser_tokens, votes_per_rater, extra)
                except Exception as exc:  # noqa: BLE001 - reported with the others
                    extra["errors"] = [f"browser: {exc!r}"[:300]]

            browser_thread = threading.Thread(target=browsers_safely)
            browser_thread.start()
        results = []
        while len(results) < len(procs):  # a worker that died says so instead of hanging
            try:
                results.append(queue.get(timeout=5))
            except Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a rater process failed (see above)") from None
        for p in procs:
            p.join(timeout=60)
        if browser_thread is not None:
            browser_thread.join()
    elif mode == "service":
        svc = RatingService(study, store, limiter=RateLimiter(), image_limiter=NoRateLimit())
        results = [
            _rate(
                lambda tok: ServiceClient(svc, tok),
                list(zip(tokens, range(raters), strict=True)),
                votes_per_rater,
                retry_fraction,
                think_s,
                start_at,
                fetch_images,
            )
        ]
    else:
        raise SystemExit(f"--mode must be http or service, not {mode!r}")
    wall = max(r["end"] for r in results) - start_at if results else 0.0
    server_ms: dict[str, list[float]] = {}
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
        if server_timings:
            for line in (root / "server-timings.tsv").read_text().splitlines():
                route, ms = line.split("\t")
                server_ms.setdefault(route, []).append(float(ms))

    merged: dict = {k: [] for k in ("next", "vote", "images", "acked", "errors")}
    refused = n_images = 0
    for r in results:
        for k in merged:
            merged[k] += r[k]
        refused += r["refused"]
        n_images += r["n"]
    rows = store.votes(study.study_id, effective_only=False)
    load_ids = {r.rater_id for r in store.raters(study.study_id) if r.name.startswith("load-")}
    stored = [
        r["submission_id"]
        for r in rows
        if r["question"] == "fidelity" and r["rater_id"] in load_ids
    ]
    acked = merged["acked"]
    browser_votes = sum(
        1 for r in rows if r["question"] == "fidelity" and r["rater_id"] not in load_ids
    )
    merged["errors"] += extra.get("errors", [])
    ok = (
        not merged["errors"]
        and len(acked) == raters * votes_per_rater
        and sorted(stored) == sorted(acked)
        and len(set(stored)) == len(stored)
        and browser_votes == len(extra["browser"])
    )

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    return {
        "mode": mode,
        "backend": store.backend,
        "raters": raters,
        "browsers": browsers,
        "images_per_task": 2 * images_per_side,
        "image_size": image_size,
        "votes_acknowledged": len(acked),
        "votes_stored": len(stored),
        "duplicates": len(stored) - len(set(stored)),
        "errors": merged["errors"][:5],
        "wall_s": wall,
        "votes_per_s": len(acked) / wall if wall else 0.0,
        "vote_p50_ms": pct(merged["vote"], 50),
        "vote_p99_ms": pct(merged["vote"], 99),
        "next_p50_ms": pct(merged["next"], 50),
        "next_p99_ms": pct(merged["next"], 99),
        "images_p50_ms": pct(merged["images"], 50),
        "images_p99_ms": pct(merged["images"], 99),
        "image_requests": n_images,
        "image_refusals": refused,
        "browser_tasks": len(extra["browser"]),
        "browser_p50_ms": pct(extra["browser"], 50),
        "browser_p90_ms": pct(extra["browser"], 90),
        "server_ms": {
            route: (len(v), pct(v, 50), pct(v, 99)) for route, v in sorted(server_ms.items())
        },
        "ok": ok,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--raters", type=int, default=50)
    ap.add_argument("--votes-per-rater", type=int, default=20)
    ap.add_argument("--mode", choices=["http", "service"], default="http")
    ap.add_argument("--no-ui", action="store_true", help="serve the API and images only")
    ap.add_argument("--images-per-side", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256, help="pixels (square synthetic images)")
    ap.add_argument("--browsers", type=int, default=0, help="Chromium raters in the UI as well")
    ap.add_argument("--think-s", type=float, default=0.0, help="mean pause per task (seconds)")
    ap.add_argument("--client-procs", type=int, default=2, help="processes running the raters")
    ap.add_argument("--retry-fraction", type=float, default=0.1)
    ap.add_argument(
        "--skip-images", action="store_true", help="API only, as this benchmark was before"
    )
    ap.add_argument(
        "--server-timings",
        action="store_true",
        help="also time each request inside the server (benchmarks/_timed_rating_server.py)",
    )
    args = ap.parse_args()
    r = run(
        args.raters,
        args.votes_per_rater,
        args.mode,
        os.environ.get("EVALKIT_RATE_DB"),
        args.retry_fraction,
        images_per_side=args.images_per_side,
        image_size=args.image_size,
        browsers=args.browsers,
        ui=not args.no_ui,
        think_s=args.think_s,
        client_procs=args.client_procs,
        fetch_images=not args.skip_images,
        server_timings=args.server_timings,
    )

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f} ms"

    print(
        f"{r['mode']} / {r['backend']}: {r['raters']} raters (+{r['browsers']} browsers), "
        f"{r['votes_acknowledged']} votes acknowledged, {r['votes_stored']} stored, "
        f"{r['duplicates']} duplicated, {r['wall_s']:.1f} s ({r['votes_per_s']:.0f} votes/s)"
    )
    print(f"next task:   p50 {ms(r['next_p50_ms'])}, p99 {ms(r['next_p99_ms'])}")
    print(f"vote:        p50 {ms(r['vote_p50_ms'])}, p99 {ms(r['vote_p99_ms'])}")
    if r["image_requests"]:
        print(
            f"task images ({r['images_per_task']} x {r['image_size']} px, 6 at a time): "
            f"p50 {ms(r['images_p50_ms'])}, p99 {ms(r['images_p99_ms'])}; "
            f"{r['image_requests']} images, {r['image_refusals']} answers 429 (retried)"
        )
    if r["browsers"]:
        print(
            f"browser, Enter to next task shown with all images: p50 {ms(r['browser_p50_ms'])}, "
            f"p90 {ms(r['browser_p90_ms'])} over {r['browser_tasks']} tasks"
        )
    for route, (n, p50, p99) in r["server_ms"].items():
        print(f"server-side {route}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {n} requests")
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
