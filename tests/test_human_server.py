"""The served app over HTTP: a SIGKILLed server keeps every acknowledged vote; bad requests are refused."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from evalkit.human.demo import add_rater, make_study
from evalkit.human.security import hash_token

PG_URL = os.environ.get("EVALKIT_TEST_PG_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL,
            reason='EVALKIT_TEST_PG_URL is unset (run `eval "$(bash scripts/ci_postgres.sh)"`)',
        ),
    ),
]
ANSWERS = {"fidelity": "A", "alignment": "tie"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``evalkit rate serve`` in a child process (the database URL goes in by environment)."""

    def __init__(
        self,
        study_dir: Path,
        db: str | None,
        log: Path,
        ui: bool = True,
        cwd: Path | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "evalkit.human.cli",
            "serve",
            str(study_dir),
            "--port",
            str(self.port),
            *args,
        ]
        if not ui:
            cmd.append("--no-ui")
        environ = {**os.environ, **(env or {})}
        environ.pop("EVALKIT_RATE_DB", None)
        if db:
            environ["EVALKIT_RATE_DB"] = db
        self.log = log
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=cwd, env=environ
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")

    def post(
        self, path: str, token: str | None, body: dict | bytes | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(body, bytes):
            return httpx.post(
                self.url + path,
                content=body,
                headers={**headers, "Content-Type": "application/json"},
            )
        return httpx.post(self.url + path, json=body or {}, headers=headers, timeout=30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def vote(server: Server, token: str, study_id: str) -> str:
    task = server.post("/api/v1/next", token, {"study_id": study_id}).json()
    body = {
        "study_id": study_id,
        "assignment_id": task["assignment_id"],
        "submission_id": task["submission_id"],
        "answers": ANSWERS,
    }
    r = server.post("/api/v1/vote", token, body)
    assert r.status_code == 200, r.text
    return r.json()["submission_id"]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", BACKENDS)
def test_server_killed_between_votes_keeps_every_acknowledged_vote(tmp_path, backend):
    # SQLite: the full server (Gradio UI mounted); PostgreSQL: the same service without the UI
    # (the guarantee lives in the store; this keeps the test fast).
    db = PG_URL if backend == "postgresql" else None
    ui = backend == "sqlite"
    study, store, _ = make_study(tmp_path, db=db, ratings_per_item=4)
    tokens = [add_rater(study, store, f"r{k}") for k in range(3)]
    server = Server(study.root, db, tmp_path / "server.log", ui=ui)
    acked = []
    try:
        for k in range(9):
            acked.append(vote(server, tokens[k % 3], study.study_id))
        server.kill()  # no shutdown hook runs
        server = Server(study.root, db, tmp_path / "server.log", ui=ui)
        stored = {v["submission_id"] for v in store.votes(study.study_id)}
        assert set(acked) <= stored and len(stored) == len(acked)
        acked.append(vote(server, tokens[0], study.study_id))  # and it goes on working
        assert len({v["submission_id"] for v in store.votes(study.study_id)}) == len(acked)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    study, store, admin = make_study(root, gold_tasks=0)
    tokens = {name: add_rater(study, store, name) for name in ("ann", "bob")}
    gradio_tmp = root / "gradio-tmp"
    server = Server(
        study.root,
        None,
        root / "server.log",
        cwd=root,  # runs below the cwd
        env={"GRADIO_TEMP_DIR": str(gradio_tmp)},
    )
    server.gradio_tmp = gradio_tmp
    yield study, store, admin, tokens, server
    server.stop()


@pytest.mark.slow
def test_http_api_refuses_bad_requests_and_stores_nothing(served):
    study, store, _, tokens, server = served
    before = len(store.votes(study.study_id, effective_only=False))
    task = server.post("/api/v1/next", tokens["ann"]).json()
    good = {
        "study_id": study.study_id,
        "assignment_id": task["assignment_id"],
        "submission_id": task["submission_id"],
        "answers": ANSWERS,
    }
    cases = [
        (None, good, 400, "missing access token"),
        ("x" * 43, good, 401, "unknown access token"),
        (tokens["bob"], good, 403, "another rater"),
        (tokens["ann"], {**good, "study_id": "st_nope"}, 404, "unknown study"),
        (tokens["ann"], {**good, "assignment_id": "../../x"}, 400, "malformed task id"),
        (tokens["ann"], {**good, "assignment_id": "Z" * 22}, 404, "unknown task"),
        (
            tokens["ann"],
            {**good, "answers": {"fidelity": "X", "alignment": "A"}},
            400,
            "one of A, B or tie",
        ),
        (tokens["ann"], b"{not json", 400, "not valid JSON"),
        (tokens["ann"], b'{"pad": "' + b"x" * 10_000 + b'"}', 413, "too large"),
    ]
    for token, body, status, message in cases:
        r = server.post("/api/v1/vote", token, body)
        assert r.status_code == status, (message, r.text)
        assert message in r.json()["error"]
    assert len(store.votes(study.study_id, effective_only=False)) == before


@pytest.mark.slow
def test_images_are_served_by_opaque_id_and_run_folders_are_not_reachable(served):
    study, store, _, tokens, server = served
    task = server.post("/api/v1/next", tokens["ann"]).json()
    url = f"{server.url}/{task['set_a'][0]}"
    r = httpx.get(url)
    a = store.assignment(study.study_id, task["assignment_id"])
    expected = (
        Path(study.runs[a.left_source].path) / study.items[a.item_id].images[a.left_source][0]
    )
    assert r.status_code == 200
    with Image.open(io.BytesIO(r.content)) as shown, Image.open(expected) as source:
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(source.convert("RGB")))
    assert (
        r.headers["content-type"] == "image/png"
        and r.headers["x-content-type-options"] == "nosniff"
    )
    run_file = Path(study.runs["r0"].path) / "results.json"
    for path in (
        f"/img/{task['assignment_id']}/a9",
        f"/img/{task['assignment_id']}/..%2f..%2fresults.json",
        "/img/..%2f..%2fetc/passwd",
        f"/gradio_api/file={run_file}",
        f"/file={run_file}",
        f"/gradio_api/file={study.root / 'votes.sqlite3'}",
        "/gradio_api/file=runs/run0/results.json",
        "/gradio_api/file=study/study.json",
    ):
        r = httpx.get(server.url + path)
        assert r.status_code in (400, 403, 404, 405), (path, r.status_code)
        assert b"run_id" not in r.content


@pytest.mark.slow
def test_pages_carry_security_headers_and_show_no_task_without_a_token(served):
    study, _, _, _, server = served
    r = httpx.get(server.url + "/")
    assert r.status_code == 200
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"
    for item in study.items.values():
        assert item.prompt not in r.text


@pytest.mark.slow
def test_admin_endpoints_need_the_admin_token(served):
    study, _, admin, tokens, server = served
    assert (
        httpx.get(
            server.url + "/api/v1/progress", headers={"Authorization": f"Bearer {tokens['ann']}"}
        ).status_code
        == 403
    )
    r = httpx.get(server.url + "/api/v1/progress", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["study_id"] == study.study_id
    r = httpx.get(
        server.url + "/api/v1/export?format=csv", headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200 and r.text.startswith("vote_id,")


@pytest.mark.slow
def test_repeated_failed_tokens_from_one_client_are_throttled_but_valid_tokens_still_work(served):
    _, _, _, tokens, server = served
    # The budget is 30 failures (earlier tests on this server spent some), refilled at 0.5
    # per second. Eight clients at once, so that even slow requests (a loaded machine, a proxy)
    # outrun the refill; the 401s answered must stay within what the elapsed time allows.
    bad = {"Authorization": "Bearer " + "y" * 43}
    statuses: list[int] = []
    started = time.monotonic()

    def client_until_refused() -> None:
        with httpx.Client(base_url=server.url, headers=bad, timeout=30, trust_env=False) as c:
            while 429 not in statuses and len(statuses) < 400:
                statuses.append(c.post("/api/v1/next", json={}).status_code)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client_until_refused(), range(8)))
    elapsed = time.monotonic() - started
    why = f"{len(statuses)} requests in {elapsed:.1f} s: {statuses}"
    assert 429 in statuses and statuses[0] == 401, why
    assert set(statuses) == {401, 429}, why
    assert statuses.count(401) <= 30 + 0.5 * elapsed + 8, why  # 8: answered while in flight
    r = server.post("/api/v1/next", "y" * 43)
    assert "Retry-After" in r.headers and "wait" in r.json()["error"]
    assert server.post("/api/v1/next", tokens["bob"]).status_code == 200  # same address


@pytest.mark.slow
def test_gradio_upload_file_and_api_routes_are_closed_to_everyone(served):
    study, _, admin, tokens, server = served
    payload = b"x" * 1_000_000
    for token in (None, tokens["ann"], admin):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for path in ("/gradio_api/upload", "/upload", "/gradio_api/upload?upload_id=abc"):
            r = httpx.post(
                server.url + path, files={"files": ("a.bin", payload)}, headers=headers, timeout=30
            )
            assert r.status_code == 404, (path, r.status_code)
    for method, path in (
        ("POST", "/gradio_api/run/predict"),
        ("POST", "/gradio_api/call/on_load"),
        ("POST", "/gradio_api/api/predict"),
        ("POST", "/gradio_api/reset"),
        ("POST", "/gradio_api/component_server"),
        ("POST", "/gradio_api/process_recording"),
        ("GET", "/gradio_api/info"),
        ("GET", "/gradio_api/openapi.json"),
        ("GET", f"/gradio_api/file={study.root / 'study.json'}"),
        ("GET", "/gradio_api/upload_progress?upload_id=abc"),
        ("GET", "/monitoring"),
    ):
        r = httpx.request(method, server.url + path, timeout=30)
        assert r.status_code == 404, (path, r.status_code)
    stored = [p for p in server.gradio_tmp.rglob("*") if p.is_file()]
    assert stored == [], f"the server wrote files: {stored[:5]}"


@pytest.mark.slow
def test_pages_carry_a_content_security_policy_with_a_fresh_nonce(served):
    _, _, _, tokens, server = served
    first, second = httpx.get(server.url + "/"), httpx.get(server.url + "/")
    csp = first.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    nonce = re.search(r"'nonce-([A-Za-z0-9_-]+)'", directives["script-src"]).group(1)
    assert "'unsafe-inline'" not in directives["script-src"]
    assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
    assert directives["object-src"] == "'none'" and "http" not in csp
    tags = re.findall(r"<script\b[^>]*>", first.text)
    assert tags and all(f'nonce="{nonce}"' in t for t in tags)
    assert nonce not in second.headers["content-security-policy"]
    api = server.post("/api/v1/next", tokens["bob"])
    assert api.headers["content-security-policy"].startswith("default-src 'none'")


# ---------------------------------------------------------------------- blinding


@pytest.fixture(scope="module")
def blinded(tmp_path_factory):
    """A study whose files give the runs and gold tasks away (size, time); the API only."""
    root = tmp_path_factory.mktemp("blinded")
    study, store, _ = make_study(root, gold_tasks=4, gold_every=2, ratings_per_item=3)
    old = time.time() - 3600
    for path in (Path(study.runs["r0"].path) / "images").glob("*.png"):
        Image.new("RGB", (32, 32), (200, 30, 30)).save(path)  # compresses far better
        os.utime(path, (old, old))  # and written an hour before the other run
    server = Server(study.root, None, root / "server.log", ui=False)
    yield study, store, server
    server.stop()


@pytest.mark.slow
def test_image_headers_do_not_tell_the_sides_or_gold_tasks_apart(blinded):
    study, store, server = blinded
    files = {
        kind: study.side_images(task, source)[0]
        for kind, task, source in (
            ("r0", study.tasks()["p0:db-000"], "r0"),
            ("r1", study.tasks()["p0:db-000"], "r1"),
            ("degraded", study.tasks()["gold:g0"], "degraded"),
        )
    }
    stats = {k: p.stat() for k, p in files.items()}
    assert len({s.st_size for s in stats.values()}) == 3  # the files do differ
    assert len({int(s.st_mtime) for s in stats.values()}) >= 2
    token = add_rater(study, store, "devtools")
    seen: dict[tuple, set[str]] = {}
    kinds = set()
    for _ in range(6):
        task = server.post("/api/v1/next", token).json()
        a = store.assignment(study.study_id, task["assignment_id"])
        for side, urls in (("left", task["set_a"]), ("right", task["set_b"])):
            source = a.left_source if side == "left" else a.right_source
            for url in urls:
                r = httpx.get(f"{server.url}/{url}")
                assert r.status_code == 200
                headers = tuple(sorted((k, v) for k, v in r.headers.items() if k != "date"))
                seen.setdefault(headers, set()).add(source)
                kinds.add(source)
        server.post(
            "/api/v1/vote",
            token,
            {
                "assignment_id": task["assignment_id"],
                "submission_id": task["submission_id"],
                "answers": ANSWERS,
            },
        )
    assert {"r0", "r1", "clean", "degraded"} <= kinds  # both runs and gold tasks were served
    assert len(seen) == 1, f"headers differ by source: {list(seen.values())}"
    (headers,) = seen
    names = {k for k, _ in headers}
    assert not names & {"last-modified", "etag", "content-disposition", "accept-ranges"}


@pytest.mark.slow
def test_a_revoked_raters_images_stop_answering(blinded):
    study, store, server = blinded
    token = add_rater(study, store, "carol")
    task = server.post("/api/v1/next", token).json()
    url = f"{server.url}/{task['set_b'][1]}"
    assert httpx.get(url).status_code == 200
    rater = store.rater_by_token(study.study_id, hash_token(token))
    store.revoke(study.study_id, rater.rater_id)
    deadline = time.monotonic() + 5  # the server re-reads revocations every second
    while (r := httpx.get(url)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    assert server.post("/api/v1/next", token).status_code == 401
