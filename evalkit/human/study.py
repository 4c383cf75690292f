"""A rating study: which runs are compared, on which prompts, with which questions and gold tasks.

``create_study`` checks that the runs line up (same suite and version, same item ids and
prompt texts, same images per prompt), picks the gold tasks, writes their degraded images
under ``STUDY/gold/`` and ``STUDY/study.json``. ``load_study`` reads it back and checks that
every image still lies inside its run folder.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write_json
from evalkit.errors import InputError, UsageError
from evalkit.human.gold import write_degraded
from evalkit.human.runs import RunData, load_run
from evalkit.human.security import is_inside, new_id, resolve_inside
from evalkit.progress import log

STUDY_FORMAT = "evalkit.human.study/1"
STUDY_FILE = "study.json"
DEFAULT_DB_FILE = "votes.sqlite3"

QUESTIONS: dict[str, str] = {
    "fidelity": "Which set of images is of higher quality?",
    "alignment": "Which set of images better represents the text caption: {caption}?",
}
ANSWERS: dict[str, str] = {"A": "I prefer set A", "tie": "I am indifferent", "B": "I prefer set B"}
CHOICES = ("A", "tie", "B")
GOLD_PAIR = "gold"


def question_text(question: str, caption: str) -> str:
    """The question as a rater reads it, in the paper's wording, for ``caption``.

    A caption's own closing punctuation is not doubled: "A red vase." gives "...: A red vase?"
    and "Is it a vase?" gives "...: Is it a vase?".
    """
    text = QUESTIONS[question]
    if "{caption}" not in text:
        return text
    shown = caption.strip()
    shown = shown.rstrip(".").rstrip() or shown
    if text.endswith("{caption}?") and shown.endswith(("?", "!")):
        return text[: -len("{caption}?")] + shown
    return text.replace("{caption}", shown)


@dataclass(frozen=True)
class StudyRun:
    """A compared run: ``key`` (r0, r1, ...) is what votes record; models stay anonymous to raters."""

    key: str
    run_id: str
    model: str
    path: str
    fingerprint: str | None
    has_clip: bool


@dataclass(frozen=True)
class Pair:
    pair_id: str
    a: str
    b: str


@dataclass(frozen=True)
class StudyItem:
    item_id: str
    prompt: str
    category: str
    images: dict[str, tuple[str, ...]]  # run key -> run-relative image paths shown


@dataclass(frozen=True)
class GoldTask:
    gold_id: str
    item_id: str
    run: str
    degraded: tuple[str, ...]  # study-relative paths


@dataclass(frozen=True)
class Task:
    """One unit of work: an item under a pair (both questions), or a gold task."""

    task_id: str
    item_id: str
    category: str
    pair_id: str
    gold_id: str | None = None

    @property
    def is_gold(self) -> bool:
        return self.gold_id is not None


@dataclass
class Study:
    """A loaded study; ``root`` is the study folder."""

    root: Path
    study_id: str
    suite: str
    suite_version: str | None
    runs: dict[str, StudyRun]
    pairs: dict[str, Pair]
    items: dict[str, StudyItem]
    questions: tuple[str, ...]
    images_per_side: int
    ratings_per_item: int
    gold: dict[str, GoldTask]
    gold_every: int
    schedule: str
    undo_window_s: float
    db: str | None
    baseline: str | None
    created: str

    # ------------------------------------------------------------------ derived views
    def tasks(self) -> dict[str, Task]:
        """Every task by id: ``<pair>:<item>`` for comparisons, ``gold:<id>`` for gold tasks."""
        out: dict[str, Task] = {}
        for pair in self.pairs.values():
            for item in self.items.values():
                tid = f"{pair.pair_id}:{item.item_id}"
                out[tid] = Task(tid, item.item_id, item.category, pair.pair_id)
        for g in self.gold.values():
            tid = f"{GOLD_PAIR}:{g.gold_id}"
            out[tid] = Task(tid, g.item_id, self.items[g.item_id].category, GOLD_PAIR, g.gold_id)
        return out

    def categories(self) -> list[str]:
        return sorted({i.category for i in self.items.values()})

    def allowed_roots(self) -> list[Path]:
        """Folders images may be served from: the runs' folders and the study's gold folder."""
        return [Path(r.path) for r in self.runs.values()] + [self.root / "gold"]

    def side_paths(self, task: Task, side_source: str) -> list[Path]:
        """Absolute image paths for one side, unchecked (``side_images`` checks them)."""
        if task.gold_id is not None:
            g = self.gold[task.gold_id]
            if side_source == "degraded":
                paths = [self.root / p for p in g.degraded]
            else:
                run = self.runs[g.run]
                paths = [Path(run.path) / p for p in self.items[g.item_id].images[g.run]]
        else:
            run = self.runs[side_source]
            paths = [Path(run.path) / p for p in self.items[task.item_id].images[side_source]]
        return paths

    def side_images(self, task: Task, side_source: str) -> list[Path]:
        """Absolute image paths for one side: a run key, or 'clean'/'degraded' for gold tasks."""
        paths = self.side_paths(task, side_source)
        roots = self.allowed_roots()
        for p in paths:
            if not is_inside(p, roots):
                raise InputError(f"image {p} lies outside the study's runs; refusing to serve it")
        return paths

    def sides_of(self, task: Task) -> tuple[str, str]:
        """The two sources of a task in canonical order (pair a, pair b; or clean, degraded)."""
        if task.gold_id is not None:
            return "clean", "degraded"
        pair = self.pairs[task.pair_id]
        return pair.a, pair.b

    def target_total(self) -> int:
        return len(self.pairs) * len(self.items) * self.ratings_per_item

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> dict[str, Any]:
        return {
            "format": STUDY_FORMAT,
            "study_id": self.study_id,
            "created": self.created,
            "suite": {"name": self.suite, "version": self.suite_version},
            "runs": [vars(r) for r in self.runs.values()],
            "baseline": self.baseline,
            "pairs": [vars(p) for p in self.pairs.values()],
            "questions": list(self.questions),
            "question_text": {q: QUESTIONS[q] for q in self.questions},
            "answers": ANSWERS,
            "images_per_side": self.images_per_side,
            "ratings_per_item": self.ratings_per_item,
            "target_ratings": self.target_total(),
            "schedule": self.schedule,
            "undo_window_s": self.undo_window_s,
            "db": self.db,
            "gold": {
                "every": self.gold_every,
                "expected": "clean",
                "tasks": [{**vars(g), "degraded": list(g.degraded)} for g in self.gold.values()],
            },
            "items": [
                {
                    "item_id": i.item_id,
                    "prompt": i.prompt,
                    "category": i.category,
                    "images": {k: list(v) for k, v in i.images.items()},
                }
                for i in self.items.values()
            ],
        }

    @classmethod
    def from_json(cls, root: Path, data: dict[str, Any]) -> Study:
        if data.get("format") != STUDY_FORMAT:
            raise InputError(
                f"{root / STUDY_FILE}: not an evalkit study (format {data.get('format')!r})"
            )
        try:
            runs = {r["key"]: StudyRun(**r) for r in data["runs"]}
            pairs = {p["pair_id"]: Pair(**p) for p in data["pairs"]}
            items = {
                i["item_id"]: StudyItem(
                    i["item_id"],
                    i["prompt"],
                    i["category"],
                    {k: tuple(v) for k, v in i["images"].items()},
                )
                for i in data["items"]
            }
            gold = {
                g["gold_id"]: GoldTask(g["gold_id"], g["item_id"], g["run"], tuple(g["degraded"]))
                for g in data["gold"]["tasks"]
            }
            return cls(
                root=root,
                study_id=data["study_id"],
                suite=data["suite"]["name"],
                suite_version=data["suite"]["version"],
                runs=runs,
                pairs=pairs,
                items=items,
                questions=tuple(data["questions"]),
                images_per_side=int(data["images_per_side"]),
                ratings_per_item=int(data["ratings_per_item"]),
                gold=gold,
                gold_every=int(data["gold"]["every"]),
                schedule=data["schedule"],
                undo_window_s=float(data["undo_window_s"]),
                db=data.get("db"),
                baseline=data.get("baseline"),
                created=data["created"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{root / STUDY_FILE}: malformed study file ({exc})") from None


def load_study(study_dir: str | Path) -> Study:
    """Read STUDY/study.json and check that every image is still inside its run folder."""
    root = Path(study_dir).resolve()
    path = root / STUDY_FILE
    if not path.is_file():
        raise InputError(
            f"{study_dir}: unknown study (no {STUDY_FILE}); create one with `evalkit rate create`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    study = Study.from_json(root, data)
    for item in study.items.values():
        for key, rels in item.images.items():
            for rel in rels:
                resolve_inside(Path(study.runs[key].path), rel, f"{path}: item {item.item_id}")
    gold_root = (root / "gold").resolve()
    for g in study.gold.values():
        for rel in g.degraded:
            if not resolve_inside(root, rel, f"{path}: gold {g.gold_id}").is_relative_to(gold_root):
                raise InputError(
                    f"{path}: gold {g.gold_id}: image {rel!r} is not under {gold_root}"
                )
    return study


# ---------------------------------------------------------------------- creation


def check_runs_line_up(runs: list[RunData], suite: str, images_per_side: int) -> None:
    """Raise UsageError naming the first mismatch between runs (suite, version, prompts, images)."""
    first = runs[0]
    for run in runs:
        if run.suite != suite:
            raise UsageError(
                f"run {run.run_id} ({run.path}) is on suite {run.suite!r}, not {suite!r}"
            )
    for run in runs[1:]:
        where = f"runs {first.run_id} and {run.run_id}"
        if run.suite_version != first.suite_version:
            raise UsageError(
                f"{where}: suite versions differ ({first.suite_version!r} vs {run.suite_version!r})"
            )
        if run.images_per_prompt != first.images_per_prompt:
            raise UsageError(
                f"{where}: images_per_prompt differ ({first.images_per_prompt} vs {run.images_per_prompt})"
            )
        only_first = sorted(set(first.items) - set(run.items))
        only_run = sorted(set(run.items) - set(first.items))
        if only_first or only_run:
            raise UsageError(
                f"{where}: item ids differ (only in {first.run_id}: {only_first[:5]}; "
                f"only in {run.run_id}: {only_run[:5]})"
            )
        for item_id, item in first.items.items():
            other = run.items[item_id]
            if other.prompt != item.prompt:
                raise UsageError(
                    f"{where}: prompt text of item {item_id!r} differs ({item.prompt!r} vs {other.prompt!r})"
                )
    for run in runs:
        for item in run.items.values():
            if len(item.images) < images_per_side:
                raise UsageError(
                    f"run {run.run_id}: item {item.item_id!r} has {len(item.images)} images, "
                    f"fewer than --images-per-side {images_per_side}"
                )


def warn_if_sizes_differ(runs: dict[str, StudyRun], items: dict[str, StudyItem]) -> None:
    """Warn when runs' images differ in pixel size: raters could tell the runs apart by it."""
    from PIL import Image

    sizes: dict[str, set[tuple[int, int]]] = {k: set() for k in runs}
    for item in list(items.values())[:20]:
        for key, rels in item.images.items():
            try:
                with Image.open(Path(runs[key].path) / rels[0]) as im:
                    sizes[key].add(im.size)
            except OSError:
                continue
    distinct = {frozenset(v) for v in sizes.values() if v}
    if len(distinct) > 1:
        shown = "; ".join(
            f"{runs[k].run_id}: {', '.join(f'{w}x{h}' for w, h in sorted(v))}"
            for k, v in sizes.items()
        )
        log(
            f"warning: the runs' images differ in pixel size ({shown}); raters can tell the "
            "runs apart by it (resize them to one size for a blind study)"
        )


def make_pairs(keys: list[str], baseline: str | None) -> dict[str, Pair]:
    """All pairs of runs, or the baseline against each other run (baseline is side a)."""
    if baseline is None:
        combos = list(combinations(keys, 2))
    else:
        combos = [(baseline, k) for k in keys if k != baseline]
    return {f"p{i}": Pair(f"p{i}", a, b) for i, (a, b) in enumerate(combos)}


def create_study(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    suite: str,
    images_per_side: int = 8,
    questions: list[str] | None = None,
    ratings_per_item: int = 5,
    baseline: str | Path | None = None,
    gold_tasks: int | None = None,
    gold_every: int = 10,
    schedule: str = "balanced",
    undo_window_s: float = 60.0,
    db: str | None = DEFAULT_DB_FILE,
    seed: int = 0,
) -> Study:
    """Build a study folder from finished runs; returns the loaded study."""
    if len(run_dirs) < 2:
        raise UsageError("--runs: a study compares at least two runs")
    questions = questions or list(QUESTIONS)
    unknown = [q for q in questions if q not in QUESTIONS]
    if unknown or not questions or len(set(questions)) != len(questions):
        raise UsageError(f"--questions: choose from {', '.join(QUESTIONS)} (got {questions})")
    if images_per_side < 1:
        raise UsageError("--images-per-side must be at least 1")
    if ratings_per_item < 1:
        raise UsageError("--ratings-per-item must be at least 1")
    if gold_every < 2:
        raise UsageError("--gold-every must be at least 2 (one gold task every N tasks)")
    if schedule not in ("balanced", "adaptive"):
        raise UsageError("--schedule: balanced or adaptive")
    root = Path(out).resolve()
    if (root / STUDY_FILE).exists():
        raise UsageError(f"{root / STUDY_FILE} exists: choose a new --out folder")
    runs = [load_run(d) for d in run_dirs]
    resolved = [r.path for r in runs]
    if len(set(resolved)) != len(resolved):
        raise UsageError("--runs: the same run folder is listed twice")
    if len({r.run_id for r in runs}) != len(runs):
        raise UsageError("--runs: two folders hold the same run id")
    check_runs_line_up(runs, suite, images_per_side)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # the study holds the vote database and which model is which

    study_runs = {
        f"r{i}": StudyRun(
            key=f"r{i}",
            run_id=r.run_id,
            model=r.model,
            path=str(r.path),
            fingerprint=r.fingerprint,
            has_clip=r.clip_per_item is not None,
        )
        for i, r in enumerate(runs)
    }
    base_key = None
    if baseline is not None:
        matches = [
            k
            for k, r in study_runs.items()
            if r.run_id == str(baseline) or Path(r.path) == Path(baseline).resolve()
        ]
        if not matches:
            raise UsageError(
                f"--baseline {baseline}: not one of the --runs (give its folder or run id)"
            )
        base_key = matches[0]
    pairs = make_pairs(list(study_runs), base_key)

    items: dict[str, StudyItem] = {}
    for item_id in sorted(runs[0].items):
        first = runs[0].items[item_id]
        images = {}
        for key, run in zip(study_runs, runs, strict=True):
            by_index = run.items[item_id].images
            images[key] = tuple(by_index[i] for i in sorted(by_index)[:images_per_side])
        items[item_id] = StudyItem(item_id, first.prompt, first.category or "uncategorised", images)

    study_id = "st_" + new_id(9)
    n_gold = (
        gold_tasks if gold_tasks is not None else min(len(items), max(4, round(0.05 * len(items))))
    )
    if n_gold < 0 or n_gold > len(items):
        raise UsageError(f"--gold-tasks must be between 0 and the number of items ({len(items)})")
    rng = random.Random(f"{seed}:{study_id}")
    gold_items = rng.sample(sorted(items), n_gold)
    keys = list(study_runs)
    gold: dict[str, GoldTask] = {}
    for n, item_id in enumerate(gold_items):
        gold_id = f"g{n}"
        run_key = keys[n % len(keys)]
        degraded = []
        for k, rel in enumerate(items[item_id].images[run_key]):
            target = f"gold/{gold_id}/{k}.png"
            write_degraded(
                Path(study_runs[run_key].path) / rel, root / target, seed=seed * 1000 + n * 31 + k
            )
            degraded.append(target)
        gold[gold_id] = GoldTask(gold_id, item_id, run_key, tuple(degraded))
    if n_gold:
        os.chmod(root / "gold", 0o700)
        log(f"wrote {n_gold} gold tasks under {root / 'gold'}")
    warn_if_sizes_differ(study_runs, items)

    study = Study(
        root=root,
        study_id=study_id,
        suite=suite,
        suite_version=runs[0].suite_version,
        runs=study_runs,
        pairs=pairs,
        items=items,
        questions=tuple(questions),
        images_per_side=images_per_side,
        ratings_per_item=ratings_per_item,
        gold=gold,
        gold_every=gold_every,
        schedule=schedule,
        undo_window_s=float(undo_window_s),
        db=db,
        baseline=base_key,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(root / STUDY_FILE, study.to_json())
    return study
