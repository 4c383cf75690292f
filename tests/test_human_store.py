"""Vote storage on both back-ends: idempotent submits, racing writers, append-only undo.

PostgreSQL cases run when EVALKIT_TEST_PG_URL is set (scripts/ci_postgres.sh sets it in CI).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
from pathlib import Path

import pytest

from evalkit.human.demo import add_rater, make_study
from evalkit.human.errors import Conflict
from evalkit.human.security import NoRateLimit
from evalkit.human.service import RatingService
from evalkit.human.store import connect
from evalkit.human.study import load_study

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


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _setup(tmp_path: Path, backend: str, **kw):
    db = PG_URL if backend == "postgresql" else None
    study, store, admin = make_study(tmp_path, db=db, **kw)
    return (
        study,
        store,
        admin,
        RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0)),
    )


def _rows(store, study):
    return store.votes(study.study_id, effective_only=False)


def test_repeated_submit_stores_one_vote(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)
    first = svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id)
    again = svc.submit(
        tok, view.assignment_id, {"fidelity": "B", "alignment": "B"}, view.submission_id
    )
    assert not first.duplicate and again.duplicate
    assert again.answers == ANSWERS  # the first write wins; the retry changes nothing
    rows = _rows(store, study)
    assert len(rows) == 2 and {r["question"] for r in rows} == {"fidelity", "alignment"}


def test_a_second_answer_to_an_answered_task_is_refused(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)
    svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id)
    with pytest.raises(Conflict, match="already answered"):
        svc.submit(tok, view.assignment_id, ANSWERS, "another-submission-id")
    assert len(_rows(store, study)) == 2


def test_every_vote_records_who_what_which_side_and_when(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend, gold_tasks=0)
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)
    svc.submit(tok, view.assignment_id, {"fidelity": "A", "alignment": "B"}, view.submission_id)
    rows = {r["question"]: r for r in _rows(store, study)}
    fid, ali = rows["fidelity"], rows["alignment"]
    assert fid["study_id"] == study.study_id and fid["rater_name"] == "ann"
    assert fid["pair_id"] == "p0" and fid["item_id"] in study.items
    assert {fid["left_source"], fid["right_source"]} == {"r0", "r1"}
    assert fid["preferred"] == fid["left_source"] and ali["preferred"] == ali["right_source"]
    assert fid["shown_at"] <= fid["answered_at"]


def test_racing_identical_submits_store_exactly_one_vote(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)
    receipts, errors = [], []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        try:
            receipts.append(svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(receipts) == 8
    assert sum(not r.duplicate for r in receipts) == 1
    assert len(_rows(store, study)) == 2


def test_racing_different_submits_for_one_task_store_one_answer(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)
    ok, conflicts = [], []
    barrier = threading.Barrier(6)

    def go(n):
        barrier.wait()
        try:
            ok.append(svc.submit(tok, view.assignment_id, ANSWERS, f"submission-{n:04d}"))
        except Conflict as exc:
            conflicts.append(exc)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 1 and len(conflicts) == 5
    assert len(_rows(store, study)) == 2


def _rate(svc, token, n, acked):
    for _ in range(n):
        view = svc.next_task(token)
        if view is None:
            return
        receipt = svc.submit(token, view.assignment_id, ANSWERS, view.submission_id)
        acked.append(receipt.submission_id)
        # A client retrying after a lost response must not create a second vote.
        svc.submit(token, view.assignment_id, ANSWERS, view.submission_id)


def test_concurrent_writer_threads_lose_nothing(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend, ratings_per_item=8)
    tokens = [add_rater(study, store, f"rater{k}") for k in range(6)]
    acked: list[str] = []
    threads = [threading.Thread(target=_rate, args=(svc, t, 5, acked)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _rows(store, study)
    assert len(acked) == 30
    assert sorted({r["submission_id"] for r in rows}) == sorted(acked)
    assert len(rows) == 2 * len(acked)


def _process_worker(study_dir: str, db: str, tokens: list[str], n: int, out) -> None:  # noqa: ANN001
    study = load_study(study_dir)
    svc = RatingService(study, connect(db), limiter=NoRateLimit(), rng=random.Random(0))
    acked: list[str] = []
    for tok in tokens:
        _rate(svc, tok, n, acked)
    out.put(acked)


def test_concurrent_writer_processes_lose_nothing(tmp_path, backend):
    study, store, _, _svc = _setup(tmp_path, backend, ratings_per_item=8)
    db = PG_URL if backend == "postgresql" else str(study.root / "votes.sqlite3")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = []
    for p in range(3):
        tokens = [add_rater(study, store, f"p{p}r{k}") for k in range(2)]
        procs.append(
            ctx.Process(target=_process_worker, args=(str(study.root), db, tokens, 4, out))
        )
    for p in procs:
        p.start()
    acked = [s for _ in procs for s in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    rows = _rows(store, study)
    assert len(acked) == 24
    assert sorted({r["submission_id"] for r in rows}) == sorted(acked)
    assert len(rows) == 2 * len(acked)


def test_votes_and_undos_are_append_only(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)
    svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id)
    svc.undo(tok)
    for sql in (
        "UPDATE rating_votes SET choice = 'B'",
        "DELETE FROM rating_votes",
        "DELETE FROM rating_undos",
        "UPDATE rating_assignments SET left_source = 'x'",
    ):
        with pytest.raises(Exception, match="append-only"), store._transaction(write=True) as cur:
            cur.execute(sql)
    assert len(_rows(store, study)) == 2 and len(store.undos(study.study_id)) == 1


def test_undo_is_an_event_and_effective_votes_exclude_the_undone_one(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    first = svc.next_task(tok)
    svc.submit(tok, first.assignment_id, ANSWERS, first.submission_id)
    second = svc.next_task(tok)
    svc.submit(tok, second.assignment_id, ANSWERS, second.submission_id)
    undo = svc.undo(tok)
    assert undo.submission_id == second.submission_id
    assert len(store.votes(study.study_id, effective_only=False)) == 4
    effective = store.votes(study.study_id)
    assert {r["submission_id"] for r in effective} == {first.submission_id}
    # The undone task comes back (same sides), and a new answer is attempt 1.
    again = svc.next_task(tok)
    assert again.assignment_id == second.assignment_id
    receipt = svc.submit(
        tok, again.assignment_id, {"fidelity": "B", "alignment": "B"}, again.submission_id
    )
    assert receipt.attempt == 1
    assert len(store.votes(study.study_id)) == 4


def test_undo_is_limited_to_the_latest_vote_within_the_window(tmp_path, backend):
    study, store, _, _ = _setup(tmp_path, backend)
    now = [1000.0]
    svc = RatingService(
        study, store, limiter=NoRateLimit(), clock=lambda: now[0], rng=random.Random(0)
    )
    tok = add_rater(study, store, "ann")
    with pytest.raises(Conflict, match="nothing to undo"):
        svc.undo(tok)
    a = svc.next_task(tok)
    svc.submit(tok, a.assignment_id, ANSWERS, a.submission_id)
    b = svc.next_task(tok)
    svc.submit(tok, b.assignment_id, ANSWERS, b.submission_id)
    with pytest.raises(Conflict, match="most recent"):
        svc.undo(tok, submission_id=a.submission_id)
    now[0] += study.undo_window_s + 1
    with pytest.raises(Conflict, match="too late"):
        svc.undo(tok)
    assert store.undos(study.study_id) == []


def test_repeated_undo_of_one_submission_is_idempotent(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend)
    tok = add_rater(study, store, "ann")
    v = svc.next_task(tok)
    svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    first = svc.undo(tok, submission_id=v.submission_id)
    again = svc.undo(tok, submission_id=v.submission_id)
    assert not first.duplicate and again.duplicate
    with pytest.raises(Conflict, match="already undone"):
        svc.undo(tok)
    assert len(store.undos(study.study_id)) == 1


def test_a_rater_never_gets_the_same_task_twice(tmp_path, backend):
    study, store, _, svc = _setup(tmp_path, backend, gold_tasks=1)
    tok = add_rater(study, store, "ann")
    seen = []
    while (v := svc.next_task(tok)) is not None:
        seen.append(store.assignment(study.study_id, v.assignment_id).task_id)
        svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    # every task once, except the comparison of the gold task's prompt (it would give the gold away)
    (gold,) = study.gold.values()
    assert len(seen) == len(set(seen)) == len(study.tasks()) - 1
    assert f"gold:{gold.gold_id}" in seen and f"p0:{gold.item_id}" not in seen


def test_sqlite_store_runs_in_wal_mode_with_full_sync(tmp_path):
    study, store, _, _ = _setup(tmp_path, "sqlite")
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
