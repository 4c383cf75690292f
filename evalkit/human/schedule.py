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
- A rater never gets the same task twice, and never both a gold task and a comparison task
  of the same prompt (the clean gold set is one side of that comparison: seeing both would
  give the gold task away). A rater's next gold task is the one whose prompt needs the fewest
  further ratings (the prompts a rater is kept from cost the study least), and that prompt is
  kept out of the rater's comparison tasks until then, unless nothing else is left; among
  equally rated tasks, the prompts of the rater's later gold tasks come last.

The counts come from ``counters.TaskCounters`` (kept in memory), the rater's own tasks from
the database.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Set

from evalkit.human.study import Study, Task

DEFAULT_LEASE_S = 15 * 60.0


def _order(scope: str, task_id: str) -> int:
    """A pseudo-random rank of a task within ``scope`` (a rater or a study), stable across calls."""
    return int.from_bytes(hashlib.sha256(f"{scope}\x00{task_id}".encode()).digest()[:8], "big")


def gold_offset(rater_id: str, every: int) -> int:
    """Position (mod ``every``) of a rater's gold tasks; never 0, so the first task is a real one."""
    return 1 + _order(rater_id, "gold-offset") % (every - 1)


def outcome_sd(tallies: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Posterior sd of P(pair side a wins) per task from (wins of a, wins of b), ties as half wins."""
    out = {}
    for task_id, (a, b) in tallies.items():
        alpha, beta = 1.0 + a, 1.0 + b
        n = alpha + beta
        out[task_id] = math.sqrt(alpha * beta / (n * n * (n + 1.0)))
    return out


def pick_task(
    study: Study,
    tasks: Mapping[str, Task],
    counts: Mapping[str, int],
    mine: Set[str],
    rater_id: str,
    tallies: Mapping[str, tuple[float, float]] | None = None,
) -> Task | None:
    """The next task for ``rater_id``, or None when nothing is left for them.

    ``counts``: ratings per comparison task (answered, plus handed out within the lease);
    ``mine``: the task ids the rater already has; ``tallies``: per-task wins (adaptive only).
    """
    target = study.ratings_per_item
    regular_items = {tasks[t].item_id for t in mine if t in tasks and not tasks[t].is_gold}
    gold_items = {tasks[t].item_id for t in mine if t in tasks and tasks[t].is_gold}
    golds = [
        t
        for t in tasks.values()
        if t.is_gold and t.task_id not in mine and t.item_id not in regular_items
    ]

    def still_needed(item_id: str) -> int:
        return sum(max(0, target - counts.get(f"{p}:{item_id}", 0)) for p in study.pairs)

    # The gold task this rater gets next: the one whose prompt the study needs least.
    next_gold = min(
        golds, key=lambda t: (still_needed(t.item_id), _order(rater_id, t.task_id)), default=None
    )
    if next_gold is not None and len(mine) % study.gold_every == gold_offset(
        rater_id, study.gold_every
    ):
        return next_gold
    open_tasks = [
        t
        for t in tasks.values()
        if not t.is_gold
        and t.task_id not in mine
        and t.item_id not in gold_items
        and counts.get(t.task_id, 0) < target
    ]
    # Keep the prompt of the rater's next gold task for that task, unless nothing else is left;
    # among equally rated tasks, prompts of the rater's later gold tasks come last.
    candidates = [t for t in open_tasks if next_gold is None or t.item_id != next_gold.item_id]
    candidates = candidates or open_tasks
    later_gold = {t.item_id for t in golds}
    if not candidates:
        return None
    size: Counter[str] = Counter(t.category for t in tasks.values() if not t.is_gold)
    filled: Counter[str] = Counter()
    for t in tasks.values():
        if not t.is_gold:
            filled[t.category] += min(counts.get(t.task_id, 0), target)
    fill = {c: filled[c] / (size[c] * target) for c in size}
    if study.schedule == "adaptive":
        sd = outcome_sd(tallies or {})
        prior = math.sqrt(1.0 / 12.0)  # Beta(1, 1)
        return min(
            candidates,
            key=lambda t: (
                -round(sd.get(t.task_id, prior), 9),
                counts.get(t.task_id, 0),
                t.item_id in later_gold,
                fill[t.category],
                _order(rater_id, t.task_id),
            ),
        )
    return min(
        candidates,
        key=lambda t: (
            counts.get(t.task_id, 0),
            t.item_id in later_gold,
            fill[t.category],
            _order(study.study_id, t.task_id),
        ),
    )
