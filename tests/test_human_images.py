"""Blinded images for raters: what the server answers from memory, and how much memory that takes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from evalkit.human.demo import add_rater, make_study
from evalkit.human.errors import AuthError
from evalkit.human.images import BlindImageCache, blinded_length, encode_blind
from evalkit.human.security import NoRateLimit, hash_token
from evalkit.human.server import build_app
from evalkit.human.service import REVOKED_TTL_S, RatingService


class CountingLimit(NoRateLimit):
    """Never refuses; counts what was spent per key."""

    def __init__(self) -> None:
        super().__init__()
        self.spent: dict[str, int] = {}

    def take(self, key: str, cost: float = 1.0) -> None:
        self.spent[key] = self.spent.get(key, 0) + 1


@pytest.fixture
def env(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0, images_per_prompt=4, images_per_side=4)
    images = CountingLimit()
    svc = RatingService(
        study, store, limiter=NoRateLimit(), image_limiter=images, rng=random.Random(0)
    )
    token = add_rater(study, store, "ann")
    return study, store, svc, images, token


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (255, 3), (256, 256), (300, 200), (1024, 768)])
def test_blinded_length_predicts_the_encoded_png_within_a_tenth_of_a_percent(size):
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    actual = len(encode_blind(Image.fromarray(pixels)))
    assert abs(blinded_length(*size) - actual) <= max(1, actual // 1000)


def test_an_image_comes_from_memory_only_once_it_was_read_and_each_answer_spends_one_unit(env):
    study, store, svc, images, token = env
    view = svc.next_task(token)
    rater = store.rater_by_token(study.study_id, hash_token(token))
    assert svc.image_in_memory(view.assignment_id, "a0") is None  # not read yet
    assert images.spent.get(rater.rater_id, 0) == 0  # and nothing spent for it
    read = svc.image(view.assignment_id, "a0")
    assert images.spent[rater.rater_id] == 1
    assert svc.image_in_memory(view.assignment_id, "a0") == read
    assert images.spent[rater.rater_id] == 2
    assert svc.image_in_memory(view.assignment_id, "b0") is None  # its neighbour was not read


def test_the_memory_path_refuses_a_revoked_raters_images_like_the_file_path(env):
    study, store, svc, _, token = env
    view = svc.next_task(token)
    svc.image(view.assignment_id, "a1")
    rater = store.rater_by_token(study.study_id, hash_token(token))
    store.revoke(study.study_id, rater.rater_id)
    time.sleep(REVOKED_TTL_S + 0.1)
    # The revocation list is due for a re-read: the memory path leaves that to a worker thread.
    assert svc.image_in_memory(view.assignment_id, "a1") is None
    with pytest.raises(AuthError, match="revoked"):
        svc.image(view.assignment_id, "a1")
    with pytest.raises(AuthError, match="revoked"):  # now re-read: refused from memory too
        svc.image_in_memory(view.assignment_id, "a1")


def test_the_memory_path_never_waits_behind_a_slow_revocation_read(env):
    """A worker thread re-reading revocations from a restarting database holds their lock; the
    event loop's memory path must answer (or defer) without waiting for it."""
    _, _, svc, _, token = env
    view = svc.next_task(token)
    data = svc.image(view.assignment_id, "a2")  # revocations read just now: fresh for 1 s
    answers: list[bytes | None] = []
    with svc._revoked_lock:  # the slow reader
        asker = threading.Thread(
            target=lambda: answers.append(svc.image_in_memory(view.assignment_id, "a2"))
        )
        asker.start()
        asker.join(timeout=REVOKED_TTL_S / 2)
        # answered from memory, or (on a machine slow enough for the list to go stale) deferred
        # to a worker thread: either way without waiting for the lock
        assert answers in ([data], [None])


def test_shown_images_bytes_counts_every_image_the_study_can_show_re_encoded(env):
    study, _, svc, _, _ = env
    shown = {
        p for t in study.tasks().values() for s in study.sides_of(t) for p in study.side_paths(t, s)
    }
    exact = 0
    for p in shown:
        with Image.open(p) as im:
            exact += len(encode_blind(im))
    assert len(shown) == 2 * len(study.items) * 4
    assert abs(svc.shown_images_bytes() - exact) <= exact // 1000


def test_an_lru_cache_smaller_than_the_images_cycled_through_hits_nothing(tmp_path):
    """Why the cache must hold the study: raters cycle through the images (fewest votes first)."""
    paths = []
    for k in range(10):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (16, 16), (k, 0, 0)).save(paths[-1])
    one = len(encode_blind(Image.new("RGB", (16, 16))))
    roots = [tmp_path.resolve()]
    for capacity, expected_hits in ((9, 0), (10, 20)):
        cache = BlindImageCache(max_bytes=capacity * one)
        hits = 0
        for _ in range(3):  # three rounds over the same ten images
            for p in paths:
                hits += cache.peek(p) is not None
                cache.get(p, roots)
        assert hits == expected_hits, capacity


def test_own_routes_answer_405_with_allow_and_404_as_json(env):
    study, _, svc, _, token = env
    client = TestClient(build_app(svc, ui=False), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {token}"}
    r = client.get("/api/v1/vote", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    task = client.post("/api/v1/next", json={}, headers=auth).json()
    r = client.post("/" + task["set_a"][0])
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    for path in ("/api/v1/nope", "/img/only-one-part", "/api/v1/next/extra", "/ek/other.js"):
        r = client.get(path)
        assert r.status_code == 404 and r.json() == {"error": "not found"}, path
    r = client.get("/" + task["set_a"][0])
    assert r.status_code == 200 and r.headers["cache-control"] == "private, max-age=3600"
    assert client.get("/healthz").json() == {"ok": True, "study_id": study.study_id}


@pytest.mark.timeout(120)
def test_serve_warns_when_the_image_cache_cannot_hold_the_studys_images(tmp_path):
    study, _, _ = make_study(tmp_path, gold_tasks=0)
    env = {k: v for k, v in os.environ.items() if k != "EVALKIT_RATE_DB"}
    for cache_mb, warned in (("0", True), ("64", False)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "evalkit.human.cli", "serve", str(study.root), "--no-ui",
             "--port", "0", "--image-cache-mb", cache_mb],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
        )  # fmt: skip
        lines = []
        try:
            for line in proc.stderr:  # the server logs what it needs before it listens
                lines.append(line)
                if line.startswith("serving study"):
                    break
        finally:
            proc.kill()
            proc.wait(timeout=30)
        text = "".join(lines)
        assert "image cache" in text, text
        assert ("--image-cache-mb 1" in text) is warned, text


def test_the_image_cache_option_refuses_a_negative_size(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "evalkit.human.cli", "serve", str(Path(tmp_path)), "--image-cache-mb", "-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "image-cache-mb" in r.stderr
