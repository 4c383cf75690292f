"""The vote-acceptance layer: bad input is refused with a clear message and nothing is stored."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from evalkit.human.demo import DEMO_ITEMS, add_rater, make_study
from evalkit.human.errors import (
    AuthError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from evalkit.human.pages import render_admin, render_caption, render_question, render_sets
from evalkit.human.schedule import gold_offset
from evalkit.human.security import NoRateLimit, RateLimiter, hash_token
from evalkit.human.service import RatingService, check_payload_size, progress_report
from evalkit.human.study import load_study

ANSWERS = {"fidelity": "A", "alignment": "B"}


@pytest.fixture
def env(tmp_path):
    study, store, admin = make_study(tmp_path, gold_tasks=2, gold_every=4)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    ann, bob = add_rater(study, store, "ann"), add_rater(study, store, "bob")
    return study, store, admin, svc, ann, bob


def _nothing_stored(store, study):
    return store.votes(study.study_id, effective_only=False) == []


def test_no_token_or_unknown_token_shows_and_accepts_nothing(env):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    for bad in (None, "", "short", "x" * 43):
        with pytest.raises((AuthError, BadRequest), match="token"):
            svc.next_task(bad)
        with pytest.raises((AuthError, BadRequest), match="token"):
            svc.submit(bad, view.assignment_id, ANSWERS, view.submission_id)
    assert _nothing_stored(store, study)


def test_tokens_are_stored_only_as_hashes(env):
    study, store, _, _, ann, _ = env
    with store._transaction(write=False) as cur:
        hashes = [r["token_hash"] for r in store._all(cur, "SELECT token_hash FROM rating_raters")]
    assert ann not in hashes and hash_token(ann) in hashes
    assert len(ann) >= 43  # secrets.token_urlsafe(32)


def test_revoked_token_is_refused(env):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    rater = store.rater_by_token(study.study_id, hash_token(ann))
    assert store.revoke(study.study_id, rater.rater_id)
    with pytest.raises(AuthError, match="revoked"):
        svc.submit(ann, view.assignment_id, ANSWERS, view.submission_id)
    assert _nothing_stored(store, study)


def test_unknown_study_is_refused(env, tmp_path):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    with pytest.raises(NotFound, match="unknown study"):
        svc.submit(ann, view.assignment_id, ANSWERS, view.submission_id, study_id="st_someoneelse")
    other, _, _ = make_study(tmp_path / "other")
    with pytest.raises(NotFound, match="unknown study"):
        RatingService(other, store)  # a study never registered in this database
    assert _nothing_stored(store, study)


def test_tampered_task_ids_are_refused(env):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    for bad, err in [
        ("../../etc/passwd", BadRequest),
        ("p0:db-000", BadRequest),
        ("A" * 22, NotFound),
        (view.assignment_id[:-1] + ("x" if view.assignment_id[-1] != "x" else "y"), NotFound),
        (None, BadRequest),
        (12345, BadRequest),
    ]:
        with pytest.raises(err):
            svc.submit(ann, bad, ANSWERS, view.submission_id)
    assert _nothing_stored(store, study)


@pytest.mark.parametrize(
    "answers",
    [
        {"fidelity": "C", "alignment": "A"},
        {"fidelity": "left", "alignment": "A"},
        {"fidelity": "I prefer set A", "alignment": "A"},
        {"fidelity": "a", "alignment": "A"},
        {"fidelity": "A"},
        {"fidelity": "A", "alignment": "B", "beauty": "A"},
        {"fidelity": ["A"], "alignment": "A"},
        "A",
        None,
    ],
)
def test_choices_outside_a_b_tie_are_refused(env, answers):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    with pytest.raises(BadRequest):
        svc.submit(ann, view.assignment_id, answers, view.submission_id)
    assert _nothing_stored(store, study)


def test_a_vote_for_another_raters_task_is_refused(env):
    study, store, _, svc, ann, bob = env
    view = svc.next_task(ann)
    with pytest.raises(Forbidden, match="another rater"):
        svc.submit(bob, view.assignment_id, ANSWERS, "bob-submission-1")
    assert _nothing_stored(store, study)


def test_oversized_payloads_and_fields_are_refused(env):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    with pytest.raises(PayloadTooLarge):
        check_payload_size(b"x" * 5000)
    with pytest.raises(BadRequest):
        svc.submit(ann, view.assignment_id, ANSWERS, "s" * 10_000)
    with pytest.raises(BadRequest):
        svc.submit(
            ann,
            view.assignment_id,
            {"fidelity": "A" * 10_000, "alignment": "B"},
            view.submission_id,
        )
    with pytest.raises(BadRequest):
        svc.next_task("t" * 100_000)
    assert _nothing_stored(store, study)


def test_admin_views_need_the_admin_token_and_raters_need_a_rater_token(env):
    study, store, admin, svc, ann, _ = env
    with pytest.raises(Forbidden, match="admin token"):
        svc.progress(ann)
    with pytest.raises(Forbidden, match="admin token"):
        svc.export(ann, "csv")
    with pytest.raises(Forbidden, match="not rating tasks"):
        svc.next_task(admin)
    assert svc.progress(admin)["target"] == study.target_total()


def test_rate_limit_refuses_with_a_clear_message_and_stores_nothing(tmp_path):
    study, store, _ = make_study(tmp_path)
    clock = [0.0]
    svc = RatingService(
        study,
        store,
        limiter=RateLimiter(capacity=3, rate=1.0, clock=lambda: clock[0]),
        rng=random.Random(0),
    )
    tok = add_rater(study, store, "ann")
    view = svc.next_task(tok)  # 1
    svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id)  # 2
    view = svc.next_task(tok)  # 3
    with pytest.raises(RateLimited, match="too many requests.*try again in 1 s") as info:
        svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id)
    assert info.value.retry_after > 0
    assert len(store.votes(study.study_id)) == 2
    clock[0] += 1.0
    svc.submit(tok, view.assignment_id, ANSWERS, view.submission_id)
    assert len(store.votes(study.study_id)) == 4


def test_images_are_served_only_by_opaque_reference_inside_the_runs(env):
    study, store, _, svc, ann, _ = env
    view = svc.next_task(ann)
    a = store.assignment(study.study_id, view.assignment_id)
    path = svc.image_file(view.assignment_id, "a0")
    assert path.is_file() and str(path).startswith(study.runs[a.left_source].path)
    assert all(study.runs[k].model not in u for u in view.left_images for k in study.runs)
    for ref, slot in [
        (view.assignment_id, "a99"),
        (view.assignment_id, "../../etc/passwd"),
        (view.assignment_id, "c0"),
        ("A" * 22, "a0"),
    ]:
        with pytest.raises((NotFound, BadRequest)):
            svc.image_file(ref, slot)
    with pytest.raises(BadRequest):
        svc.image_file("../../../../etc", "a0")


def test_sides_are_randomised_per_task(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=8, gold_tasks=0)
    # a seeded source: the share below is then fixed, not a 1-in-600 coin toss
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(20261203))
    lefts = Counter()
    for k in range(8):
        tok = add_rater(study, store, f"r{k}")
        while (v := svc.next_task(tok)) is not None:
            lefts[store.assignment(study.study_id, v.assignment_id).left_source] += 1
            svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    n = sum(lefts.values())
    assert n == len(DEMO_ITEMS) * 8
    assert 0.3 < lefts["r0"] / n < 0.7


def test_task_order_differs_between_raters(env):
    study, store, _, svc, ann, bob = env
    order = {}
    for name, tok in (("ann", ann), ("bob", bob)):
        seq = []
        for _ in range(3):
            v = svc.next_task(tok)
            seq.append(store.assignment(study.study_id, v.assignment_id).task_id)
            svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
        order[name] = seq
    assert order["ann"] != order["bob"]


def test_schedule_spreads_ratings_evenly_and_stops_at_the_target(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=3, gold_tasks=0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    tokens = [add_rater(study, store, f"r{k}") for k in range(5)]
    per_rater = Counter()
    progress = True
    while progress:  # raters take turns, one task at a time
        progress = False
        for k, tok in enumerate(tokens):
            v = svc.next_task(tok)
            if v is not None:
                svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
                per_rater[k] += 1
                progress = True
    counts = Counter(
        v["task_id"] for v in store.votes(study.study_id) if v["question"] == "fidelity"
    )
    assert set(counts.values()) == {3} and len(counts) == len(DEMO_ITEMS)
    assert max(per_rater.values()) - min(per_rater.values()) <= 1


def test_first_ratings_cover_every_category_before_any_item_gets_a_second(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=3, gold_tasks=0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    tok = add_rater(study, store, "ann")
    cats = []
    for _ in range(4):
        v = svc.next_task(tok)
        cats.append(study.items[store.assignment(study.study_id, v.assignment_id).item_id].category)
        svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    assert len(set(cats)) == 4  # four categories, one task each


def test_gold_tasks_are_mixed_in_at_the_configured_rate(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=2, gold_every=4, ratings_per_item=5)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    tok = add_rater(study, store, "ann")
    kinds = []
    for _ in range(8):
        v = svc.next_task(tok)
        kinds.append(store.assignment(study.study_id, v.assignment_id).is_gold)
        assert "gold" not in repr(v.to_json()).lower()  # nothing tells the rater
        svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    rater_id = store.rater_by_token(study.study_id, hash_token(tok)).rater_id
    offset = gold_offset(rater_id, 4)
    assert [i for i, g in enumerate(kinds) if g] == [offset, offset + 4]


def test_adaptive_schedule_prefers_the_most_uncertain_outcome(tmp_path):
    study, store, _ = make_study(tmp_path, ratings_per_item=4, gold_tasks=0, schedule="adaptive")
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    # Two raters agree on most items and split on db-003.
    for name in ("x", "y"):
        tok = add_rater(study, store, name)
        while (v := svc.next_task(tok)) is not None:
            a = store.assignment(study.study_id, v.assignment_id)
            if a.item_id == "db-003":
                pick = "A" if (a.left_source == "r0") == (name == "x") else "B"
            else:
                pick = "A" if a.left_source == "r0" else "B"
            svc.submit(tok, v.assignment_id, {"fidelity": pick, "alignment": pick}, v.submission_id)
            if len(store.votes(study.study_id)) >= 2 * len(DEMO_ITEMS) * 2:
                break
    tok = add_rater(study, store, "z")
    v = svc.next_task(tok)
    assert store.assignment(study.study_id, v.assignment_id).item_id == "db-003"


def test_progress_counts_votes_per_item_rater_and_category(env):
    study, store, admin, svc, ann, bob = env
    for tok in (ann, bob):
        for _ in range(2):
            v = svc.next_task(tok)
            svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    p = progress_report(study, store, now=10**10)
    assert p["submissions"] == 4
    assert sum(r["tasks"] for r in p["per_rater"]) == 4
    assert sum(c["done"] for c in p["per_category"].values()) == p["done"]
    assert sum(i["done"] for i in p["per_item"].values()) == p["done"]
    assert p["target"] == len(DEMO_ITEMS) * study.ratings_per_item


def test_prompts_and_rater_names_are_escaped_in_html(tmp_path):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    items = [("db-000", evil, "Colors"), ("db-001", "A cat.", "Animals")]
    study, store, admin = make_study(tmp_path, items=items, gold_tasks=0)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    tok = add_rater(study, store, evil)
    while (v := svc.next_task(tok)).caption != evil:
        svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    shown = render_caption(v) + render_sets(v) + "".join(render_question(t) for _, t in v.questions)
    assert "<script" not in shown and "<img src=x" not in shown
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in shown
    svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
    page = render_admin(svc.progress(admin))
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert (
        load_study(study.root).items["db-000"].prompt == evil
    )  # stored as given, escaped when shown


# ---------------------------------------------------------------------- issue 9 defects


def test_the_default_side_source_is_cryptographic_and_tests_can_seed_it(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0)
    assert isinstance(RatingService(study, store).rng, random.SystemRandom)
    sides = []
    for run in range(2):
        svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(7))
        tok = add_rater(study, store, f"seeded{run}")
        seq = []
        while (v := svc.next_task(tok)) is not None:
            seq.append(store.assignment(study.study_id, v.assignment_id).left_source)
            svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
        sides.append(seq)
    assert sides[0] == sides[1] and len(set(sides[0])) == 2  # same seed, same sides


def test_gold_accuracy_counts_gold_tasks_not_questions(tmp_path):
    study, store, admin = make_study(tmp_path, gold_tasks=2, gold_every=2, ratings_per_item=3)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    tok = add_rater(study, store, "ann")
    golds = 0
    while (v := svc.next_task(tok)) is not None:
        a = store.assignment(study.study_id, v.assignment_id)
        if a.is_gold:
            clean = "A" if a.left_source == "clean" else "B"
            wrong = "B" if clean == "A" else "A"
            # first gold: clean on both questions (passed); second: clean on one only (failed)
            answers = {"fidelity": clean, "alignment": clean if golds == 0 else wrong}
            golds += 1
        else:
            answers = ANSWERS
        svc.submit(tok, v.assignment_id, answers, v.submission_id)
    assert golds == 2
    row = next(r for r in svc.progress(admin)["per_rater"] if r["name"] == "ann")
    assert (row["gold_tasks"], row["gold_passed"], row["gold_accuracy"]) == (2, 1, 0.5)
    assert "50% of 2 task(s)" in render_admin(svc.progress(admin))
    from evalkit.human.report import compute_report

    report = compute_report(study, store, n_resamples=100)
    (q,) = report["rater_quality"]["per_rater"]
    assert (q["gold_tasks"], q["gold_accuracy"]) == (2, 0.5)
    assert report["rater_quality"]["gold_tasks"] == 2


def test_no_rater_gets_a_gold_task_and_a_comparison_of_the_same_prompt(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=4, gold_every=2, ratings_per_item=8)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    tasks = study.tasks()
    golds_given = 0
    for k in range(8):
        tok = add_rater(study, store, f"r{k}")
        seen = []
        while (v := svc.next_task(tok)) is not None:
            seen.append(tasks[store.assignment(study.study_id, v.assignment_id).task_id])
            svc.submit(tok, v.assignment_id, ANSWERS, v.submission_id)
        gold_items = {t.item_id for t in seen if t.is_gold}
        regular_items = {t.item_id for t in seen if not t.is_gold}
        assert not gold_items & regular_items, (k, gold_items & regular_items)
        golds_given += len(gold_items)
    assert golds_given >= 8  # gold checks still happen (at least one per rater on average)


def test_resending_an_undone_submission_is_refused_not_reported_as_counted(env):
    study, store, _, svc, ann, _ = env
    v = svc.next_task(ann)
    first = svc.submit(ann, v.assignment_id, ANSWERS, v.submission_id)
    assert not first.duplicate
    assert svc.submit(ann, v.assignment_id, ANSWERS, v.submission_id).duplicate  # a plain retry
    svc.undo(ann)
    with pytest.raises(Conflict, match="undone"):
        svc.submit(ann, v.assignment_id, ANSWERS, v.submission_id)
    assert store.votes(study.study_id) == []  # nothing counts


@pytest.mark.parametrize(
    ("caption", "question"),
    [
        ("A red vase.", "Which set of images better represents the text caption: A red vase?"),
        ("A red vase", "Which set of images better represents the text caption: A red vase?"),
        ("Is it a vase?", "Which set of images better represents the text caption: Is it a vase?"),
        ("Wow!", "Which set of images better represents the text caption: Wow!"),
        ("...", "Which set of images better represents the text caption: ...?"),
    ],
)
def test_the_alignment_question_does_not_double_the_captions_punctuation(caption, question):
    from evalkit.human.study import question_text

    assert question_text("alignment", caption) == question
    assert question_text("fidelity", caption) == "Which set of images is of higher quality?"
