"""Append-only vote storage: SQLite (default) and PostgreSQL behind one interface.

Guarantees, on both back-ends:

- one transaction per submission; a submission is acknowledged only after COMMIT
  (SQLite: WAL with ``synchronous=FULL``; PostgreSQL: the server's synchronous commit);
- ``UNIQUE(study_id, submission_id, question)``: a repeated submit stores nothing new and
  returns the first receipt; ``UNIQUE(assignment_id, attempt, question)``: one answer per
  task and attempt, even under racing writers; ``UNIQUE(study_id, rater_id, task_id)``: a
  rater never gets the same task twice;
- votes, undos, assignments and revocations are never updated or deleted (triggers refuse
  it): an undo is a new row, and effective votes are votes without a matching undo.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import UsageError
from evalkit.human.errors import Conflict, Forbidden, NotFound

SCHEMA_VERSION = "1"
_AUTO_ID = "{AUTO_ID}"

_TABLES = f"""
CREATE TABLE IF NOT EXISTS rating_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rating_studies (
    study_id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rating_raters (
    rater_id TEXT PRIMARY KEY,
    study_id TEXT NOT NULL REFERENCES rating_studies (study_id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('rater', 'admin')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS rating_revocations (
    rater_id TEXT PRIMARY KEY REFERENCES rating_raters (rater_id),
    study_id TEXT NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS rating_assignments (
    assignment_id TEXT PRIMARY KEY,
    study_id TEXT NOT NULL REFERENCES rating_studies (study_id),
    rater_id TEXT NOT NULL REFERENCES rating_raters (rater_id),
    task_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    is_gold INTEGER NOT NULL,
    left_source TEXT NOT NULL,
    right_source TEXT NOT NULL,
    shown_at DOUBLE PRECISION NOT NULL,
    UNIQUE (study_id, rater_id, task_id)
);
CREATE TABLE IF NOT EXISTS rating_votes (
    vote_id {_AUTO_ID},
    study_id TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    assignment_id TEXT NOT NULL REFERENCES rating_assignments (assignment_id),
    attempt INTEGER NOT NULL,
    rater_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    is_gold INTEGER NOT NULL,
    question TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie')),
    left_source TEXT NOT NULL,
    right_source TEXT NOT NULL,
    preferred TEXT,
    shown_at DOUBLE PRECISION NOT NULL,
    answered_at DOUBLE PRECISION NOT NULL,
    UNIQUE (study_id, submission_id, question),
    UNIQUE (assignment_id, attempt, question)
);
CREATE TABLE IF NOT EXISTS rating_undos (
    undo_id {_AUTO_ID},
    study_id TEXT NOT NULL,
    assignment_id TEXT NOT NULL REFERENCES rating_assignments (assignment_id),
    attempt INTEGER NOT NULL,
    rater_id TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (assignment_id, attempt)
);
CREATE INDEX IF NOT EXISTS rating_votes_rater ON rating_votes (study_id, rater_id, vote_id);
CREATE INDEX IF NOT EXISTS rating_votes_assignment ON rating_votes (assignment_id, attempt);
CREATE INDEX IF NOT EXISTS rating_assignments_rater ON rating_assignments (study_id, rater_id);
CREATE INDEX IF NOT EXISTS rating_undos_study ON rating_undos (study_id);
"""

_APPEND_ONLY = ("rating_votes", "rating_undos", "rating_assignments", "rating_revocations")

_SQLITE_TRIGGERS = "\n".join(
    f"""CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}
BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}
BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;"""
    for t in _APPEND_ONLY
)

_PG_TRIGGERS = """
CREATE OR REPLACE FUNCTION rating_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$ LANGUAGE plpgsql;
""" + "\n".join(
    f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
    f"FOR EACH ROW EXECUTE FUNCTION rating_append_only();"
    for t in _APPEND_ONLY
)

_EFFECTIVE = (
    "NOT EXISTS (SELECT 1 FROM rating_undos u "
    "WHERE u.assignment_id = v.assignment_id AND u.attempt = v.attempt)"
)


@dataclass(frozen=True)
class Rater:
    rater_id: str
    study_id: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Assignment:
    """A task handed to one rater, with the side each source was shown on."""

    assignment_id: str
    study_id: str
    rater_id: str
    task_id: str
    item_id: str
    pair_id: str
    is_gold: bool
    left_source: str
    right_source: str
    shown_at: float


@dataclass(frozen=True)
class Submission:
    """One task's answers: question -> choice in display terms (A = left set, B = right set, tie)."""

    study_id: str
    submission_id: str
    assignment_id: str
    rater_id: str
    answers: Mapping[str, str]
    answered_at: float


@dataclass(frozen=True)
class Receipt:
    submission_id: str
    assignment_id: str
    attempt: int
    answers: dict[str, str]
    answered_at: float
    duplicate: bool = False


@dataclass(frozen=True)
class UndoReceipt:
    submission_id: str
    assignment_id: str
    attempt: int
    duplicate: bool = False


@dataclass
class Snapshot:
    """What the scheduler needs, counted by the database.

    ``counts``: comparison task -> ratings answered (effective) plus handed out after
    ``lease_cutoff`` to raters not revoked; ``mine``: tasks the rater already has;
    ``votes``: effective comparison votes (adaptive scheduling only).
    """

    counts: dict[str, int]
    mine: set[str]
    votes: list[dict[str, Any]] = field(default_factory=list)


def _preferred(choice: str, left: str, right: str) -> str | None:
    return {"A": left, "B": right}.get(choice)


class Store(ABC):
    """The storage interface; ``connect(url)`` picks the back-end."""

    backend: str = ""
    integrity_errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._local = threading.local()

    # ---------------------------------------------------------------- back-end hooks
    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _sql(self, sql: str) -> str:
        """Adapt placeholders ('?') to the back-end."""

    @abstractmethod
    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]: ...

    @abstractmethod
    def _lock_rater(self, cur: Any, rater_id: str) -> None:
        """Serialise writes of one rater (SQLite's BEGIN IMMEDIATE already serialises all)."""

    @abstractmethod
    def init_schema(self) -> None: ...

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    def _all(self, cur: Any, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cur.execute(self._sql(sql), params)
        return [dict(r) for r in cur.fetchall()]

    def _one(self, cur: Any, sql: str, params: tuple = ()) -> dict[str, Any] | None:
        rows = self._all(cur, sql, params)
        return rows[0] if rows else None

    def _run(self, cur: Any, sql: str, params: tuple = ()) -> None:
        cur.execute(self._sql(sql), params)

    # ---------------------------------------------------------------- studies and raters
    def register_study(self, study_id: str, meta: Mapping[str, Any]) -> None:
        """Record a study (idempotent)."""
        with self._transaction(write=True) as cur:
            if self._one(
                cur, "SELECT study_id FROM rating_studies WHERE study_id = ?", (study_id,)
            ):
                return
            self._run(
                cur,
                "INSERT INTO rating_studies (study_id, created_at, meta) VALUES (?, ?, ?)",
                (study_id, time.time(), json.dumps(dict(meta), sort_keys=True)),
            )

    def study_exists(self, study_id: str) -> bool:
        with self._transaction(write=False) as cur:
            return (
                self._one(cur, "SELECT 1 AS x FROM rating_studies WHERE study_id = ?", (study_id,))
                is not None
            )

    def add_rater(
        self, study_id: str, rater_id: str, name: str, token_hash: str, role: str
    ) -> Rater:
        now = time.time()
        with self._transaction(write=True) as cur:
            if not self._one(
                cur, "SELECT 1 AS x FROM rating_studies WHERE study_id = ?", (study_id,)
            ):
                raise NotFound(f"unknown study {study_id!r} in this database")
            self._run(
                cur,
                "INSERT INTO rating_raters (rater_id, study_id, name, role, token_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rater_id, study_id, name, role, token_hash, now),
            )
        return Rater(rater_id, study_id, name, role, now)

    _RATER_SQL = (
        "SELECT r.rater_id, r.study_id, r.name, r.role, r.created_at, x.revoked_at "
        "FROM rating_raters r LEFT JOIN rating_revocations x ON x.rater_id = r.rater_id "
    )

    def rater_by_token(self, study_id: str, token_hash: str) -> Rater | None:
        with self._transaction(write=False) as cur:
            row = self._one(
                cur,
                self._RATER_SQL + "WHERE r.study_id = ? AND r.token_hash = ?",
                (study_id, token_hash),
            )
        return Rater(**row) if row else None

    def raters(self, study_id: str) -> list[Rater]:
        with self._transaction(write=False) as cur:
            rows = self._all(
                cur, self._RATER_SQL + "WHERE r.study_id = ? ORDER BY r.created_at", (study_id,)
            )
        return [Rater(**r) for r in rows]

    def revoke(self, study_id: str, rater_id: str) -> bool:
        """Revoke a rater's token; False if it was already revoked."""
        with self._transaction(write=True) as cur:
            row = self._one(
                cur,
                "SELECT rater_id FROM rating_raters WHERE study_id = ? AND rater_id = ?",
                (study_id, rater_id),
            )
            if row is None:
                raise NotFound(f"no rater {rater_id!r} in study {study_id!r}")
            if self._one(
                cur, "SELECT 1 AS x FROM rating_revocations WHERE rater_id = ?", (rater_id,)
            ):
                return False
            self._run(
                cur,
                "INSERT INTO rating_revocations (rater_id, study_id, revoked_at) VALUES (?, ?, ?)",
                (rater_id, study_id, time.time()),
            )
        return True

    # ---------------------------------------------------------------- assignments
    _ASSIGNMENT_COLS = (
        "assignment_id, study_id, rater_id, task_id, item_id, pair_id, is_gold, "
        "left_source, right_source, shown_at"
    )

    @staticmethod
    def _assignment(row: Mapping[str, Any]) -> Assignment:
        return Assignment(**{**row, "is_gold": bool(row["is_gold"])})

    def assignment(self, study_id: str, assignment_id: str) -> Assignment | None:
        with self._transaction(write=False) as cur:
            row = self._one(
                cur,
                f"SELECT {self._ASSIGNMENT_COLS} FROM rating_assignments "
                "WHERE study_id = ? AND assignment_id = ?",
                (study_id, assignment_id),
            )
        return self._assignment(row) if row else None

    def create_assignment(self, a: Assignment) -> Assignment:
        """Store a new assignment; Conflict if the rater already has this task."""
        try:
            with self._transaction(write=True) as cur:
                self._run(
                    cur,
                    f"INSERT INTO rating_assignments ({self._ASSIGNMENT_COLS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        a.assignment_id,
                        a.study_id,
                        a.rater_id,
                        a.task_id,
                        a.item_id,
                        a.pair_id,
                        int(a.is_gold),
                        a.left_source,
                        a.right_source,
                        a.shown_at,
                    ),
                )
        except self.integrity_errors:
            raise Conflict(f"task {a.task_id} was already assigned to this rater") from None
        return a

    def open_assignment(self, study_id: str, rater_id: str) -> tuple[Assignment, int, float] | None:
        """The rater's oldest task not answered in its current attempt: (assignment, attempt, shown_at)."""
        with self._transaction(write=False) as cur:
            row = self._one(
                cur,
                f"SELECT {', '.join('a.' + c.strip() for c in self._ASSIGNMENT_COLS.split(','))}, "
                "(SELECT COUNT(*) FROM rating_undos u WHERE u.assignment_id = a.assignment_id) AS attempt, "
                "(SELECT MAX(u.created_at) FROM rating_undos u WHERE u.assignment_id = a.assignment_id) "
                "AS reshown_at "
                "FROM rating_assignments a WHERE a.study_id = ? AND a.rater_id = ? AND NOT EXISTS ("
                "SELECT 1 FROM rating_votes v WHERE v.assignment_id = a.assignment_id AND v.attempt = "
                "(SELECT COUNT(*) FROM rating_undos u WHERE u.assignment_id = a.assignment_id)) "
                "ORDER BY a.shown_at, a.assignment_id LIMIT 1",
                (study_id, rater_id),
            )
        if row is None:
            return None
        attempt, reshown = int(row.pop("attempt")), row.pop("reshown_at")
        a = self._assignment(row)
        return a, attempt, max(a.shown_at, reshown or 0.0)

    def snapshot(
        self, study_id: str, rater_id: str, lease_cutoff: float, with_votes: bool = False
    ) -> Snapshot:
        """Per-task rating counts, the rater's own tasks, and (optionally) effective votes."""
        answered = (
            "EXISTS (SELECT 1 FROM rating_votes v WHERE v.assignment_id = a.assignment_id "
            f"AND {_EFFECTIVE})"
        )
        with self._transaction(write=False) as cur:
            counts = self._all(
                cur,
                "SELECT a.task_id, COUNT(*) AS n FROM rating_assignments a "
                f"WHERE a.study_id = ? AND a.is_gold = 0 AND ({answered} OR (a.shown_at > ? "
                "AND a.rater_id NOT IN (SELECT x.rater_id FROM rating_revocations x "
                "WHERE x.study_id = ?))) GROUP BY a.task_id",
                (study_id, lease_cutoff, study_id),
            )
            mine = self._all(
                cur,
                "SELECT task_id FROM rating_assignments WHERE study_id = ? AND rater_id = ?",
                (study_id, rater_id),
            )
            votes = (
                self._all(
                    cur,
                    "SELECT v.task_id, v.question, v.preferred FROM rating_votes v "
                    f"WHERE v.study_id = ? AND v.is_gold = 0 AND {_EFFECTIVE}",
                    (study_id,),
                )
                if with_votes
                else []
            )
        return Snapshot(
            counts={r["task_id"]: int(r["n"]) for r in counts},
            mine={r["task_id"] for r in mine},
            votes=votes,
        )

    def answered_counts(
        self, study_id: str, rater_id: str, question: str
    ) -> tuple[dict[str, int], int]:
        """(comparison task -> effective answers, tasks answered by ``rater_id``), gold included in the latter."""
        with self._transaction(write=False) as cur:
            per_task = self._all(
                cur,
                "SELECT v.task_id, COUNT(*) AS n FROM rating_votes v WHERE v.study_id = ? "
                f"AND v.question = ? AND v.is_gold = 0 AND {_EFFECTIVE} GROUP BY v.task_id",
                (study_id, question),
            )
            mine = self._one(
                cur,
                "SELECT COUNT(*) AS n FROM rating_votes v WHERE v.study_id = ? AND v.rater_id = ? "
                f"AND v.question = ? AND {_EFFECTIVE}",
                (study_id, rater_id, question),
            )
        return {r["task_id"]: int(r["n"]) for r in per_task}, int(mine["n"]) if mine else 0

    # ---------------------------------------------------------------- votes
    def _existing_submission(self, cur: Any, sub: Submission) -> Receipt | None:
        rows = self._all(
            cur,
            "SELECT assignment_id, rater_id, attempt, question, choice, answered_at FROM rating_votes "
            "WHERE study_id = ? AND submission_id = ?",
            (sub.study_id, sub.submission_id),
        )
        if not rows:
            return None
        if rows[0]["rater_id"] != sub.rater_id or rows[0]["assignment_id"] != sub.assignment_id:
            raise Conflict("this submission id was already used for another task: reload the page")
        return Receipt(
            submission_id=sub.submission_id,
            assignment_id=sub.assignment_id,
            attempt=int(rows[0]["attempt"]),
            answers={r["question"]: r["choice"] for r in rows},
            answered_at=float(rows[0]["answered_at"]),
            duplicate=True,
        )

    def record_submission(self, sub: Submission) -> Receipt:
        """Store one task's answers in one transaction; a repeated submission returns the first receipt."""
        try:
            with self._transaction(write=True) as cur:
                self._lock_rater(cur, sub.rater_id)  # then every check below sees committed writes
                existing = self._existing_submission(cur, sub)
                if existing:
                    return existing
                row = self._one(
                    cur,
                    f"SELECT {self._ASSIGNMENT_COLS} FROM rating_assignments "
                    "WHERE study_id = ? AND assignment_id = ?",
                    (sub.study_id, sub.assignment_id),
                )
                if row is None:
                    raise NotFound(
                        "unknown task: it was not handed out in this study; reload the page"
                    )
                a = self._assignment(row)
                if a.rater_id != sub.rater_id:
                    raise Forbidden("this task belongs to another rater; nothing was stored")
                undo = self._one(
                    cur,
                    "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM rating_undos WHERE assignment_id = ?",
                    (a.assignment_id,),
                )
                attempt = int(undo["n"]) if undo else 0
                done = self._one(
                    cur,
                    "SELECT COUNT(*) AS n FROM rating_votes WHERE assignment_id = ? AND attempt = ?",
                    (a.assignment_id, attempt),
                )
                if done and done["n"]:
                    raise Conflict(
                        "this task is already answered (undo it first to change the answer)"
                    )
                shown_at = max(a.shown_at, (undo or {}).get("last") or 0.0)
                for question, choice in sub.answers.items():
                    self._run(
                        cur,
                        "INSERT INTO rating_votes (study_id, submission_id, assignment_id, attempt, rater_id, "
                        "task_id, item_id, pair_id, is_gold, question, choice, left_source, right_source, "
                        "preferred, shown_at, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            sub.study_id,
                            sub.submission_id,
                            a.assignment_id,
                            attempt,
                            sub.rater_id,
                            a.task_id,
                            a.item_id,
                            a.pair_id,
                            int(a.is_gold),
                            question,
                            choice,
                            a.left_source,
                            a.right_source,
                            _preferred(choice, a.left_source, a.right_source),
                            shown_at,
                            sub.answered_at,
                        ),
                    )
        except self.integrity_errors:
            # A racing writer committed first: the same submission (idempotent) or another answer.
            with self._transaction(write=False) as cur:
                existing = self._existing_submission(cur, sub)
            if existing:
                return existing
            raise Conflict(
                "this task is already answered (undo it first to change the answer)"
            ) from None
        return Receipt(
            sub.submission_id, sub.assignment_id, attempt, dict(sub.answers), sub.answered_at
        )

    def record_undo(
        self,
        study_id: str,
        rater_id: str,
        now: float,
        window_s: float,
        submission_id: str | None = None,
    ) -> UndoReceipt:
        """Undo the rater's most recent submission if it is younger than ``window_s`` seconds."""
        try:
            with self._transaction(write=True) as cur:
                self._lock_rater(cur, rater_id)
                last = self._one(
                    cur,
                    "SELECT submission_id, assignment_id, attempt, answered_at FROM rating_votes "
                    "WHERE study_id = ? AND rater_id = ? ORDER BY vote_id DESC LIMIT 1",
                    (study_id, rater_id),
                )
                if submission_id is not None:
                    done = self._one(
                        cur,
                        "SELECT assignment_id, attempt FROM rating_undos WHERE study_id = ? AND rater_id = ? "
                        "AND submission_id = ?",
                        (study_id, rater_id, submission_id),
                    )
                    if done:
                        return UndoReceipt(
                            submission_id, done["assignment_id"], int(done["attempt"]), True
                        )
                    if last is None or last["submission_id"] != submission_id:
                        raise Conflict("only your most recent vote can be undone")
                if last is None:
                    raise Conflict("nothing to undo")
                if self._one(
                    cur,
                    "SELECT 1 AS x FROM rating_undos WHERE assignment_id = ? AND attempt = ?",
                    (last["assignment_id"], last["attempt"]),
                ):
                    raise Conflict("your last vote is already undone")
                if now - float(last["answered_at"]) > window_s:
                    raise Conflict(f"too late to undo: a vote can be undone within {window_s:g} s")
                self._run(
                    cur,
                    "INSERT INTO rating_undos (study_id, assignment_id, attempt, rater_id, submission_id, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        study_id,
                        last["assignment_id"],
                        last["attempt"],
                        rater_id,
                        last["submission_id"],
                        now,
                    ),
                )
        except self.integrity_errors:
            raise Conflict("your last vote is already undone") from None
        return UndoReceipt(last["submission_id"], last["assignment_id"], int(last["attempt"]))

    def votes(self, study_id: str, effective_only: bool = True) -> list[dict[str, Any]]:
        """Vote rows (oldest first) with the rater's name and an ``undone`` flag."""
        where = f"AND {_EFFECTIVE}" if effective_only else ""
        with self._transaction(write=False) as cur:
            rows = self._all(
                cur,
                "SELECT v.vote_id, v.study_id, v.submission_id, v.assignment_id, v.attempt, v.rater_id, "
                "r.name AS rater_name, v.task_id, v.item_id, v.pair_id, v.is_gold, v.question, v.choice, "
                "v.left_source, v.right_source, v.preferred, v.shown_at, v.answered_at, "
                f"CASE WHEN {_EFFECTIVE} THEN 0 ELSE 1 END AS undone "
                "FROM rating_votes v JOIN rating_raters r ON r.rater_id = v.rater_id "
                f"WHERE v.study_id = ? {where} ORDER BY v.vote_id",
                (study_id,),
            )
        for r in rows:
            r["is_gold"], r["undone"] = bool(r["is_gold"]), bool(r["undone"])
        return rows

    def undos(self, study_id: str) -> list[dict[str, Any]]:
        with self._transaction(write=False) as cur:
            return self._all(
                cur, "SELECT * FROM rating_undos WHERE study_id = ? ORDER BY undo_id", (study_id,)
            )


class SQLiteStore(Store):
    """SQLite in WAL mode with ``synchronous=FULL``; one connection per thread and process."""

    backend = "sqlite"
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def _sql(self, sql: str) -> str:
        return sql

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Cursor]:
        conn = self._conn()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()

    def _lock_rater(self, cur: Any, rater_id: str) -> None:
        return None

    def init_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        conn.executescript(
            "BEGIN IMMEDIATE;"
            + _TABLES.replace(_AUTO_ID, "INTEGER PRIMARY KEY AUTOINCREMENT")
            + _SQLITE_TRIGGERS
            + f"INSERT OR IGNORE INTO rating_meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');"
            + "COMMIT;"
        )


class PostgresStore(Store):
    """PostgreSQL through psycopg 3; one connection per thread and process, autocommit between transactions."""

    backend = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UsageError(
                "PostgreSQL storage needs psycopg: pip install 'psycopg[binary]'"
            ) from exc
        self._psycopg = psycopg
        self.integrity_errors = (psycopg.errors.IntegrityError,)
        self.url = url

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        try:
            return self._psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except self._psycopg.OperationalError as exc:
            raise UsageError(f"cannot connect to PostgreSQL: {exc}".strip()) from None

    def _sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def _lock_rater(self, cur: Any, rater_id: str) -> None:
        cur.execute(
            "SELECT rater_id FROM rating_raters WHERE rater_id = %s FOR NO KEY UPDATE", (rater_id,)
        )

    def init_schema(self) -> None:
        with self._transaction(write=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(724311)")  # concurrent first starts
            cur.execute(
                _TABLES.replace(_AUTO_ID, "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
            )
            cur.execute(_PG_TRIGGERS)
            cur.execute(
                "INSERT INTO rating_meta (key, value) VALUES ('schema_version', %s) ON CONFLICT DO NOTHING",
                (SCHEMA_VERSION,),
            )


def connect(url: str | Path, *, init: bool = True) -> Store:
    """Open a store: ``postgresql://...`` or ``sqlite:///path`` or a plain file path."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        store: Store = PostgresStore(text)
    elif text.startswith("sqlite:///"):
        store = SQLiteStore(text[len("sqlite:///") :])  # sqlite:///rel.db or sqlite:////abs.db
    elif "://" in text:
        raise UsageError(f"--db {text!r}: use postgresql://... or sqlite:///path or a file path")
    else:
        store = SQLiteStore(text)
    if init:
        store.init_schema()
    return store
