"""Per-task rating counts kept in memory, so choosing the next task does not recount the votes.

One ``TaskCounters`` per server process: it reads the database once, then follows the
process's own events (a task handed out, a vote, an undo). Events of other processes that
share a PostgreSQL database arrive with the next resync (every ``resync_s`` seconds); until
then a task may be handed out slightly beyond its target, which costs a rating, never a
wrong one. Revocations are re-read at most every ``revoked_s`` seconds, so a revoked rater's
open task goes back into circulation within that time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from evalkit.human.store import Assignment, Store
from evalkit.human.study import Study


@dataclass(frozen=True)
class _Lease:
    task_id: str
    rater_id: str
    shown_at: float


class TaskCounters:
    """Ratings per comparison task: answered (effective) plus handed out and still open."""

    def __init__(
        self,
        study: Study,
        store: Store,
        clock: Callable[[], float] = time.time,
        resync_s: float = 10.0,
        revoked_s: float = 5.0,
    ) -> None:
        self.study = study
        self.store = store
        self.clock = clock
        self.resync_s = resync_s
        self.revoked_s = revoked_s
        self._lock = threading.RLock()
        self._answered: Counter[str] = Counter()
        self._tallies: dict[str, list[float]] = {}
        self._submissions: dict[str, tuple[str, dict[str, str | None]]] = {}
        self._leases: dict[str, _Lease] = {}
        self._revoked: set[str] = set()
        self._loaded_at = float("-inf")
        self._revoked_at = float("-inf")

    # ---------------------------------------------------------------- loading
    def refresh(self, force: bool = False) -> None:
        """Re-read counts (every ``resync_s``) and revocations (every ``revoked_s``) when stale."""
        now = time.monotonic()
        with self._lock:
            if force or now - self._loaded_at >= self.resync_s:
                self._load()
                self._loaded_at = now
            if now - self._revoked_at >= self.revoked_s:
                self._revoked = self.store.revoked_raters(self.study.study_id)
                self._revoked_at = now

    def _load(self) -> None:
        state = self.store.task_state(self.study.study_id)
        prefs: dict[str, tuple[str, dict[str, str | None]]] = {}
        for v in state.votes:
            task_id, answers = prefs.setdefault(v["submission_id"], (v["task_id"], {}))
            answers[v["question"]] = v["preferred"]
        self._answered = Counter()
        self._tallies = {}
        self._submissions = {}
        for sub_id, (task_id, answers) in prefs.items():
            self._add_vote(sub_id, task_id, answers)
        self._leases = {
            r["assignment_id"]: _Lease(r["task_id"], r["rater_id"], float(r["shown_at"]))
            for r in state.open
        }

    # ---------------------------------------------------------------- reading
    def counts(self, lease_s: float) -> dict[str, int]:
        """Per task: effective answers plus open tasks shown less than ``lease_s`` seconds ago."""
        cutoff = self.clock() - lease_s
        with self._lock:
            out = dict(self._answered)
            for lease in self._leases.values():
                if lease.shown_at > cutoff and lease.rater_id not in self._revoked:
                    out[lease.task_id] = out.get(lease.task_id, 0) + 1
        return out

    def done(self) -> int:
        """Effective ratings towards the study's target (at most the target per task)."""
        target = self.study.ratings_per_item
        with self._lock:
            return sum(min(n, target) for n in self._answered.values())

    def tallies(self) -> dict[str, tuple[float, float]]:
        """Per task: (wins of the pair's run a, wins of run b), ties as half wins, questions pooled."""
        with self._lock:
            return {t: (w[0], w[1]) for t, w in self._tallies.items()}

    # ---------------------------------------------------------------- events of this process
    def handed_out(self, a: Assignment) -> None:
        """A comparison task was handed to a rater (reserve its slot)."""
        if not a.is_gold:
            with self._lock:
                self._leases[a.assignment_id] = _Lease(a.task_id, a.rater_id, a.shown_at)

    def withdrawn(self, assignment_id: str) -> None:
        """A reservation whose assignment could not be stored."""
        with self._lock:
            self._leases.pop(assignment_id, None)

    def voted(self, a: Assignment, submission_id: str, preferred: Mapping[str, str | None]) -> None:
        """A new (not repeated) answer to a task."""
        if a.is_gold:
            return
        with self._lock:
            self._leases.pop(a.assignment_id, None)
            if submission_id not in self._submissions:
                self._add_vote(submission_id, a.task_id, dict(preferred))

    def undone(self, a: Assignment, submission_id: str, at: float) -> None:
        """An answer was undone: it stops counting and the task is open again for its rater."""
        if a.is_gold:
            return
        with self._lock:
            known = self._submissions.pop(submission_id, None)
            if known is not None:
                task_id, answers = known
                self._answered[task_id] -= 1
                if self._answered[task_id] <= 0:
                    del self._answered[task_id]
                self._tally(task_id, answers, -1.0)
            self._leases[a.assignment_id] = _Lease(a.task_id, a.rater_id, at)

    def _add_vote(self, submission_id: str, task_id: str, answers: dict[str, str | None]) -> None:
        self._submissions[submission_id] = (task_id, answers)
        self._answered[task_id] += 1
        self._tally(task_id, answers, 1.0)

    def _tally(self, task_id: str, answers: Mapping[str, str | None], sign: float) -> None:
        pair = self.study.pairs.get(task_id.split(":", 1)[0])
        if pair is None:
            return
        w = self._tallies.setdefault(task_id, [0.0, 0.0])
        for preferred in answers.values():
            if preferred is None:
                w[0] += 0.5 * sign
                w[1] += 0.5 * sign
            elif preferred == pair.a:
                w[0] += sign
            else:
                w[1] += sign
