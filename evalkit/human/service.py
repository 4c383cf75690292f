"""The vote-acceptance layer: every front end (Gradio handlers, the HTTP API, scripts) calls this.

It authenticates tokens, rate-limits them per rater, validates every field, hands out tasks
with randomised sides, stores answers through the store, and maps opaque image references
to blinded images inside the study's runs. Nothing is stored unless a request passes every
check.

Randomness: the side each run is shown on comes from ``rng``, a cryptographic source
(``random.SystemRandom``) unless a caller passes its own (tests pass a seeded
``random.Random``). Ids and tokens always come from ``secrets``.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.human import export as export_mod
from evalkit.human.counters import TaskCounters
from evalkit.human.errors import (
    AuthError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
)
from evalkit.human.gold import gold_outcomes
from evalkit.human.images import DEFAULT_CACHE_BYTES, BlindImageCache, blinded_bytes
from evalkit.human.schedule import DEFAULT_LEASE_S, pick_task
from evalkit.human.security import (
    RateLimiter,
    check_id,
    check_token_format,
    hash_token,
    new_id,
)
from evalkit.human.store import (
    Assignment,
    Rater,
    Receipt,
    Store,
    Submission,
    UndoReceipt,
    redact_url,
)
from evalkit.human.study import ANSWERS, CHOICES, Study, question_text

MAX_PAYLOAD_BYTES = 4096
REVOKED_TTL_S = 1.0  # images of a revoked rater stop answering within this time
_SLOT_RE = re.compile(r"^([ab])([0-9]{1,2})$")


@dataclass(frozen=True)
class TaskView:
    """What a rater sees: no model names, no gold flag; images by opaque URL."""

    study_id: str
    assignment_id: str
    submission_id: str
    caption: str
    questions: list[tuple[str, str]]  # (question id, full question text)
    answers: dict[str, str]
    left_images: list[str]
    right_images: list[str]
    rated_by_you: int
    study_done: int
    study_target: int

    def to_json(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id,
            "assignment_id": self.assignment_id,
            "submission_id": self.submission_id,
            "caption": self.caption,
            "questions": [{"id": q, "text": t} for q, t in self.questions],
            "answers": self.answers,
            "set_a": self.left_images,
            "set_b": self.right_images,
            "progress": {
                "rated_by_you": self.rated_by_you,
                "study_done": self.study_done,
                "study_target": self.study_target,
            },
        }


def check_payload_size(body: bytes | str) -> None:
    """Refuse request bodies above MAX_PAYLOAD_BYTES."""
    size = len(body.encode() if isinstance(body, str) else body)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"request too large ({size} bytes; at most {MAX_PAYLOAD_BYTES})")


class RatingService:
    """One study's rating service over a store.

    ``limiter`` spends one unit per authenticated request of a rater (keyed by rater id);
    ``image_limiter`` one unit per image (also keyed by the rater the image was handed to).
    """

    def __init__(
        self,
        study: Study,
        store: Store,
        *,
        limiter: RateLimiter | None = None,
        image_limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        lease_s: float = DEFAULT_LEASE_S,
        image_base: str = "img",
        rng: random.Random | None = None,
        resync_s: float = 10.0,
        image_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if not store.study_exists(study.study_id):
            raise NotFound(
                f"unknown study {study.study_id!r} in {redact_url(store.url) or 'this database'}: "
                "was it created with this database?"
            )
        self.study = study
        self.store = store
        self.tasks = study.tasks()
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.image_limiter = (
            image_limiter if image_limiter is not None else RateLimiter(capacity=200, rate=20)
        )
        self.clock = clock
        self.lease_s = lease_s
        self.image_base = image_base.rstrip("/")
        self.rng = rng if rng is not None else random.SystemRandom()
        self.counters = TaskCounters(study, store, clock=clock, resync_s=resync_s)
        self.images = BlindImageCache(image_cache_bytes)
        # every (task, side) -> its image paths, built once: the image route is the hot path
        self._side_paths = {
            (task.task_id, source): tuple(study.side_paths(task, source))
            for task in self.tasks.values()
            for source in study.sides_of(task)
        }
        self._roots = [r.resolve() for r in study.allowed_roots()]
        self._revoked_lock = threading.Lock()
        self._revoked_ids: set[str] = set()
        self._revoked_read = float("-inf")
        self._assignments: dict[str, Assignment] = {}
        self._schedule_lock = threading.Lock()
        self._rng_lock = threading.Lock()

    # ---------------------------------------------------------------- auth
    def _lookup(self, token: object) -> Rater:
        token = check_token_format(token)
        rater = self.store.rater_by_token(self.study.study_id, hash_token(token))
        if rater is None:
            raise AuthError("unknown access token: use the personal link the study admin sent you")
        if not rater.active:
            raise AuthError("this access token was revoked: ask the study admin for a new link")
        return rater

    def authenticate(self, token: object, role: str = "rater") -> Rater:
        """The rater behind ``token``; AuthError if unknown or revoked, Forbidden for the wrong role.

        Every authenticated call spends one unit of the rater's rate-limit bucket.
        """
        rater = self._lookup(token)
        if rater.role != role:
            if role == "admin":
                raise Forbidden("this view needs the study's admin token")
            raise Forbidden("the admin token opens the progress view, not rating tasks")
        self.limiter.take(rater.rater_id)
        return rater

    def role_of(self, token: object) -> str:
        """'rater' or 'admin' for a valid token; AuthError otherwise."""
        return self._lookup(token).role

    def _check_study(self, study_id: object) -> None:
        if study_id is not None and study_id != self.study.study_id:
            raise NotFound(
                f"unknown study {str(study_id)[:40]!r}: this server runs {self.study.study_id}"
            )

    # ---------------------------------------------------------------- tasks
    def next_task(self, token: object, study_id: object = None) -> TaskView | None:
        """The rater's open task, or a newly scheduled one; None when nothing is left for them."""
        self._check_study(study_id)
        rater = self.authenticate(token)
        opened = self.store.open_assignment(self.study.study_id, rater.rater_id)
        if opened is None:
            opened = self._assign(rater)
            if opened is None:
                return None
        return self._view(rater, opened[0])

    def _assign(self, rater: Rater) -> tuple[Assignment, int, float] | None:
        for _ in range(3):  # a clash with the rater's own concurrent request: look again
            mine = self.store.rater_tasks(self.study.study_id, rater.rater_id)
            now = self.clock()
            with self._schedule_lock:  # one process: no two raters race for the last slot
                self.counters.refresh()
                task = pick_task(
                    self.study,
                    self.tasks,
                    self.counters.counts(self.lease_s),
                    mine,
                    rater.rater_id,
                    self.counters.tallies() if self.study.schedule == "adaptive" else None,
                )
                if task is None:
                    return None
                first, second = self.study.sides_of(task)
                with self._rng_lock:
                    swap = self.rng.random() >= 0.5
                left, right = (second, first) if swap else (first, second)
                a = Assignment(
                    assignment_id=new_id(16),
                    study_id=self.study.study_id,
                    rater_id=rater.rater_id,
                    task_id=task.task_id,
                    item_id=task.item_id,
                    pair_id=task.pair_id,
                    is_gold=task.is_gold,
                    left_source=left,
                    right_source=right,
                    shown_at=now,
                )
                self.counters.handed_out(a)
            try:
                self.store.create_assignment(a)
            except Conflict:
                self.counters.withdrawn(a.assignment_id)
                continue
            except BaseException:
                self.counters.withdrawn(a.assignment_id)
                raise
            self._remember(a)
            return a, 0, now
        return None

    def _remember(self, a: Assignment) -> None:
        if len(self._assignments) > 50_000:
            self._assignments.clear()
        self._assignments[a.assignment_id] = a

    def _assignment(self, assignment_id: str) -> Assignment | None:
        a = self._assignments.get(assignment_id)
        if a is None:
            a = self.store.assignment(self.study.study_id, assignment_id)
            if a is not None:
                self._remember(a)
        return a

    def _view(self, rater: Rater, a: Assignment) -> TaskView:
        item = self.study.items[a.item_id]
        n = self.study.images_per_side
        url = f"{self.image_base}/{a.assignment_id}"
        return TaskView(
            study_id=self.study.study_id,
            assignment_id=a.assignment_id,
            submission_id=new_id(16),
            caption=item.prompt,
            questions=[(q, question_text(q, item.prompt)) for q in self.study.questions],
            answers=dict(ANSWERS),
            left_images=[f"{url}/a{i}" for i in range(n)],
            right_images=[f"{url}/b{i}" for i in range(n)],
            rated_by_you=self.store.rater_answered(
                self.study.study_id, rater.rater_id, self.study.questions[0]
            ),
            study_done=self.counters.done(),
            study_target=self.study.target_total(),
        )

    # ---------------------------------------------------------------- votes
    def submit(
        self,
        token: object,
        assignment_id: object,
        answers: object,
        submission_id: object,
        study_id: object = None,
    ) -> Receipt:
        """Validate and store one task's answers (choices 'A', 'B' or 'tie' per question).

        A repeat of a stored submission returns its receipt with ``duplicate=True``; a repeat
        of a submission that was undone since is refused (Conflict): it no longer counts.
        """
        self._check_study(study_id)
        assignment_id = check_id(assignment_id, "task id")
        submission_id = check_id(submission_id, "submission id")
        clean = self._check_answers(answers)
        rater = self.authenticate(token)
        receipt = self.store.record_submission(
            Submission(
                study_id=self.study.study_id,
                submission_id=submission_id,
                assignment_id=assignment_id,
                rater_id=rater.rater_id,
                answers=clean,
                answered_at=self.clock(),
            )
        )
        if not receipt.duplicate:
            a = self._assignment(assignment_id)
            if a is not None:
                preferred = {
                    q: {"A": a.left_source, "B": a.right_source}.get(c) for q, c in clean.items()
                }
                self.counters.voted(a, submission_id, preferred)
        return receipt

    def _check_answers(self, answers: object) -> dict[str, str]:
        wanted = self.study.questions
        if not isinstance(answers, Mapping):
            raise BadRequest("answers must map each question to A, B or tie")
        extra = [str(k)[:40] for k in answers if k not in wanted]
        if extra:
            raise BadRequest(f"unknown question(s) {extra}: this study asks {list(wanted)}")
        missing = [q for q in wanted if q not in answers or answers[q] in (None, "")]
        if missing:
            raise BadRequest(f"please answer every question (missing: {', '.join(missing)})")
        out = {}
        for q in wanted:
            choice = answers[q]
            if choice not in CHOICES:
                shown = str(choice)[:40]
                raise BadRequest(f"answer to {q!r} must be one of A, B or tie (got {shown!r})")
            out[q] = choice
        return out

    def undo(
        self, token: object, submission_id: object = None, study_id: object = None
    ) -> UndoReceipt:
        """Undo the rater's most recent vote within the study's undo window."""
        self._check_study(study_id)
        if submission_id is not None:
            submission_id = check_id(submission_id, "submission id")
        rater = self.authenticate(token)
        now = self.clock()
        receipt = self.store.record_undo(
            self.study.study_id, rater.rater_id, now, self.study.undo_window_s, submission_id
        )
        if not receipt.duplicate:
            a = self._assignment(receipt.assignment_id)
            if a is not None:
                self.counters.undone(a, receipt.submission_id, now)
        return receipt

    # ---------------------------------------------------------------- images
    def _image_source(
        self, assignment_id: object, slot: object, memory_only: bool = False
    ) -> tuple[Path, str] | None:
        """(source file, rater id) of an image reference, after every check; with
        ``memory_only``, None where answering would need a database read."""
        assignment_id = check_id(assignment_id, "image reference")
        m = _SLOT_RE.match(slot) if isinstance(slot, str) else None
        if m is None or int(m.group(2)) >= self.study.images_per_side:
            raise NotFound("unknown image")
        a = self._assignments.get(assignment_id)
        if a is None:
            if memory_only:
                return None
            a = self._assignment(assignment_id)
            if a is None:
                raise NotFound("unknown image")
        revoked = self._revoked(memory_only)
        if revoked is None:
            return None
        if a.rater_id in revoked:
            raise AuthError("this access token was revoked: its images are no longer shown")
        source = a.left_source if m.group(1) == "a" else a.right_source
        return self._side_paths[(a.task_id, source)][int(m.group(2))], a.rater_id

    def _revoked(self, memory_only: bool = False) -> set[str] | None:
        """The study's revoked raters, re-read at most every REVOKED_TTL_S seconds (with
        ``memory_only``, None when that read is due).

        ``memory_only`` never waits for the lock: a worker thread may hold it through a slow
        database read (a PostgreSQL restart), and the event loop must not stall behind it.
        The set is replaced, never changed, and its time is written after it.
        """
        if memory_only:
            fresh = time.monotonic() - self._revoked_read <= REVOKED_TTL_S
            return self._revoked_ids if fresh else None
        with self._revoked_lock:
            now = time.monotonic()
            if now - self._revoked_read > REVOKED_TTL_S:
                self._revoked_ids = self.store.revoked_raters(self.study.study_id)
                self._revoked_read = now
            return self._revoked_ids

    def _spend_image(self, assignment_id: object, slot: object) -> Path:
        """The source file of an image reference, after one unit of its rater's image bucket."""
        found = self._image_source(assignment_id, slot)
        if found is None:  # only memory_only answers None
            raise NotFound("unknown image")
        self.image_limiter.take(found[1])
        return found[0]

    def image_file(self, assignment_id: object, slot: object) -> Path:
        """The file behind an opaque image reference ``/img/<assignment>/<a|b><index>``.

        Unknown references are NotFound, images of revoked raters AuthError (within
        REVOKED_TTL_S of the revocation); every image request spends one unit of the rater's
        image bucket.
        """
        path = self._spend_image(assignment_id, slot)
        try:
            inside = any(path.resolve().is_relative_to(r) for r in self._roots)
        except (OSError, RuntimeError):  # a symlink loop swapped in under the running server
            inside = False
        if not inside:
            raise NotFound("unknown image")
        return path

    def image(self, assignment_id: object, slot: object) -> bytes:
        """The blinded PNG behind an image reference (see ``evalkit.human.images``)."""
        return self.images.get(self._spend_image(assignment_id, slot), self._roots)

    def shown_images(self) -> list[Path]:
        """Every image the study can show, each once, in task order."""
        return list(dict.fromkeys(p for paths in self._side_paths.values() for p in paths))

    def shown_images_bytes(self) -> int:
        """What every image the study can show takes re-encoded (what the cache must hold)."""
        return blinded_bytes(self.shown_images())

    def warm_images(self) -> None:
        """Start re-encoding the study's images in the background (see ``BlindImageCache.warm``)."""
        self.images.warm(self.shown_images(), self._roots)

    def image_in_memory(self, assignment_id: object, slot: object) -> bytes | None:
        """``image`` if it needs no file or database read; else None, and nothing is spent.

        The server tries this on its event loop and falls back to ``image`` in a worker thread.
        """
        found = self._image_source(assignment_id, slot, memory_only=True)
        if found is None:
            return None
        path, rater_id = found
        data = self.images.peek(path)
        if data is not None:
            self.image_limiter.take(rater_id)
        return data

    # ---------------------------------------------------------------- admin
    def progress(self, admin_token: object) -> dict[str, Any]:
        """Votes per item, per rater, per category and the ETA to the target (admin only)."""
        self.authenticate(admin_token, role="admin")
        return progress_report(self.study, self.store, self.clock())

    def export(self, admin_token: object, fmt: str) -> tuple[str, str]:
        """(file name, content) of every vote event as CSV or JSON (admin only)."""
        self.authenticate(admin_token, role="admin")
        return export_mod.export_votes(self.study, self.store, fmt)


def progress_report(study: Study, store: Store, now: float) -> dict[str, Any]:
    """Progress of a study towards its target number of ratings."""
    target = study.ratings_per_item
    votes = store.votes(study.study_id, effective_only=True)
    submissions: dict[str, dict[str, Any]] = {}
    for v in votes:
        submissions.setdefault(v["submission_id"], v)
    by_task: Counter[str] = Counter()
    per_rater: dict[str, dict[str, Any]] = {}
    for r in store.raters(study.study_id):
        per_rater[r.rater_id] = {
            "rater_id": r.rater_id,
            "name": r.name,
            "role": r.role,
            "revoked": not r.active,
            "tasks": 0,
            "gold_tasks": 0,
            "gold_passed": 0,
            "last_active": None,
        }
    for s in submissions.values():
        row = per_rater[s["rater_id"]]
        row["tasks"] += 1
        row["last_active"] = max(row["last_active"] or 0.0, s["answered_at"])
        if not s["is_gold"]:
            by_task[s["task_id"]] += 1
    for rater_id, passed in gold_outcomes(votes).values():
        row = per_rater[rater_id]
        row["gold_tasks"] += 1
        row["gold_passed"] += int(passed)
    for row in per_rater.values():
        row["gold_accuracy"] = row["gold_passed"] / row["gold_tasks"] if row["gold_tasks"] else None
    per_item: dict[str, dict[str, Any]] = {}
    per_category: dict[str, dict[str, int]] = defaultdict(lambda: {"done": 0, "target": 0})
    for item in study.items.values():
        by_pair = {p: by_task[f"{p}:{item.item_id}"] for p in study.pairs}
        done = sum(min(c, target) for c in by_pair.values())
        per_item[item.item_id] = {
            "category": item.category,
            "done": done,
            "target": target * len(study.pairs),
            "by_pair": by_pair,
        }
        per_category[item.category]["done"] += done
        per_category[item.category]["target"] += target * len(study.pairs)
    done = sum(r["done"] for r in per_item.values())
    total = study.target_total()
    regular = sorted(s["answered_at"] for s in submissions.values() if not s["is_gold"])
    # Rate over the last 30 minutes (or since the first vote, if sooner; at least one minute).
    window = max(60.0, min(1800.0, now - regular[0])) if regular else 0.0
    recent = [t for t in regular if now - t <= window]
    rate = len(recent) / window if recent else 0.0
    remaining = max(0, total - done)
    return {
        "study_id": study.study_id,
        "done": done,
        "target": total,
        "fraction": done / total if total else 1.0,
        "submissions": len(submissions),
        "rate_per_hour": rate * 3600.0,
        "eta_seconds": (remaining / rate)
        if rate > 0 and remaining
        else (0.0 if not remaining else None),
        "per_category": dict(sorted(per_category.items())),
        "per_item": per_item,
        "per_rater": sorted(per_rater.values(), key=lambda r: (r["role"], r["name"])),
        "generated_at": now,
    }


def progress_json(progress: Mapping[str, Any]) -> str:
    return json.dumps(progress, indent=2, sort_keys=True)
