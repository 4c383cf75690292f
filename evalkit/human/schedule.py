"""Which task a rater gets next.

- Gold tasks are interleaved: one in every ``gold_every`` tasks of a rater, at a per-rater offset.
- Comparison tasks under their target come first by fewest ratings (answered plus handed out
  within the lease), then by the least-filled category, then in one random order per study
  (a hash of study and task), so ratings spread evenly across items, categories and raters.
  A shared order is what keeps raters even: with a per-rater order, raters drawing at random
  among equally-rated tasks collide near the end, and one is left with nothing while another
  still has tasks (simulated: 5 raters, 8 items, 3 ratings each, per-rater order left the
  raters' counts more than one apart in ~5% of random rater-id draws, the shared order never).
  Each rater still sees their own sequence, since every pick depends on what others have done.
- ``adaptive`` mode puts the most uncertain outcome first: the largest posterior standard
  deviation of the tie-as-half win rate (Beta(1, 1) prior, both questions pooled).
- A rater never gets the same task twice.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Mapping

from evalkit.human.store import Snapshot
from evalkit.human.study import Study, Task

DEFAULT_LEASE_S = 15 * 60.0


def _order(scope: str, task_id: str) -> int:
    """A pseudo-random rank of a task within ``scope`` (a rater or a study), stable across calls."""
    return int.from_bytes(hashlib.sha256(f"{scope}\x00{task_id}".encode()).digest()[:8], "big")


def gold_offset(rater_id: str, every: int) -> int:
    """Position (mod ``every``) of a rater's gold tasks; never 0, so the first task is a real one."""
    return 1 + _order(rater_id, "gold-offset") % (every - 1)


def outcome_sd(study: Study, snapshot: Snapshot) -> dict[str, float]:
    """Posterior sd of P(pair side a wins) per task from effective votes (ties as half wins)."""
    wins: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for v in snapshot.votes:
        pair_id = v["task_id"].split(":", 1)[0]
        pair = study.pairs.get(pair_id)
        if pair is None:
            continue
        w = wins[v["task_id"]]
        if v["preferred"] is None:
            w[0] += 0.5
            w[1] += 0.5
        elif v["preferred"] == pair.a:
            w[0] += 1.0
        else:
            w[1] += 1.0
    out = {}
    for task_id, (a, b) in wins.items():
        alpha, beta = 1.0 + a, 1.0 + b
        n = alpha + beta
        out[task_id] = math.sqrt(alpha * beta / (n * n * (n + 1.0)))
    return out


def pick_task(
    study: Study, tasks: Mapping[str, Task], snapshot: Snapshot, rater_id: str
) -> Task | None:
    """The next task for ``rater_id``, or None when nothing is left for them.

    ``snapshot`` counts ratings per task (answered, plus handed out within the lease).
    """
    mine = snapshot.mine
    if study.gold and len(mine) % study.gold_every == gold_offset(rater_id, study.gold_every):
        golds = [t for t in tasks.values() if t.is_gold and t.task_id not in mine]
        if golds:
            return min(golds, key=lambda t: _order(rater_id, t.task_id))
    counts: Counter[str] = Counter(snapshot.counts)
    target = study.ratings_per_item
    candidates = [
        t
        for t in tasks.values()
        if not t.is_gold and t.task_id not in mine and counts[t.task_id] < target
    ]
    if not candidates:
        return None
    size: Counter[str] = Counter(t.category for t in tasks.values() if not t.is_gold)
    filled: Counter[str] = Counter()
    for t in tasks.values():
        if not t.is_gold:
            filled[t.category] += min(counts[t.task_id], target)
    fill = {c: filled[c] / (size[c] * target) for c in size}
    if study.schedule == "adaptive":
        sd = outcome_sd(study, snapshot)
        prior = math.sqrt(1.0 / 12.0)  # Beta(1, 1)
        return min(
            candidates,
            key=lambda t: (
                -round(sd.get(t.task_id, prior), 9),
                counts[t.task_id],
                fill[t.category],
                _order(rater_id, t.task_id),
            ),
        )
    return min(
        candidates,
        key=lambda t: (counts[t.task_id], fill[t.category], _order(study.study_id, t.task_id)),
    )
