"""End to end in a real browser: headless Debian Chromium driven by Playwright.

Skips when /usr/bin/chromium or the playwright package is missing (CI installs chromium with
scripts/ci_chromium.sh). Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from evalkit.human.demo import add_rater, make_study

from .test_human_server import Server

CHROMIUM = os.environ.get("EVALKIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright (the Python package) is not installed: pip install playwright",
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()),
        reason=f"{CHROMIUM} not found: run scripts/ci_chromium.sh (installs Debian's chromium)",
    ),
]


def _answer(page, expect, caption_before: str) -> str:
    """Wait until the previous task has been replaced; return the new caption."""
    expect(page.locator("#ek-status")).to_contain_text("Saved", timeout=20_000)
    expect(page.locator("#ek-caption .ek-caption")).not_to_have_text(caption_before, timeout=20_000)
    return page.locator("#ek-caption .ek-caption").inner_text()


def test_rater_answers_three_tasks_with_clicks_and_keys_and_undoes_one(tmp_path):
    study, store, admin = make_study(tmp_path, gold_tasks=0, images_per_prompt=8, images_per_side=8)
    token = add_rater(study, store, "Browser <b>Rater</b>")
    server = Server(study.root, None, tmp_path / "server.log")
    ARTIFACTS.mkdir(exist_ok=True)
    external: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on(
                "request",
                lambda r: (
                    external.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                    else None
                ),
            )
            expect = sync_api.expect

            # Without a token: the gate, no task, no image.
            page.goto(server.url + "/")
            expect(page.locator("#ek-gate")).to_contain_text("by invitation", timeout=30_000)
            assert page.locator("img.ek-thumb").count() == 0
            assert not page.locator("#ek-caption .ek-caption").is_visible()

            # With the invite link: a task with two sets of 8 images.
            page.goto(f"{server.url}/?token={token}")
            expect(page.locator("img.ek-thumb").first).to_be_visible(timeout=30_000)
            assert page.locator("img.ek-thumb").count() == 16
            captions = [page.locator("#ek-caption .ek-caption").inner_text()]

            # Enlarge an image, close it with Escape.
            page.locator("img.ek-thumb").nth(3).click()
            expect(page.locator("#ek-lightbox img")).to_be_visible()
            page.keyboard.press("Escape")
            expect(page.locator("#ek-lightbox")).to_have_count(0)

            # Task 1 by mouse: set A on quality, indifferent on the caption.
            page.locator("#ek-q0").get_by_text("I prefer set A").click()
            page.locator("#ek-q1").get_by_text("I am indifferent").click()
            page.locator("#ek-submit").click()
            captions.append(_answer(page, expect, captions[-1]))

            # Task 2 by keys: 3 = set B on quality, q = set A on the caption, Enter.
            page.keyboard.press("3")
            page.keyboard.press("q")
            page.keyboard.press("Enter")
            captions.append(_answer(page, expect, captions[-1]))
            page.screenshot(path=str(ARTIFACTS / "human_rating_app.png"), full_page=True)

            # Task 3 by keys (2 = indifferent, e = set B), then u undoes it: it comes back.
            page.keyboard.press("2")
            page.keyboard.press("e")
            page.keyboard.press("Enter")
            _answer(page, expect, captions[-1])
            page.keyboard.press("u")
            expect(page.locator("#ek-status")).to_contain_text("undone", timeout=20_000)
            expect(page.locator("#ek-caption .ek-caption")).to_have_text(captions[2])

            # A phone-sized screen still shows the whole task (sets stacked).
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.goto(f"{server.url}/?token={token}")
            expect(phone.locator("img.ek-thumb").first).to_be_visible(timeout=30_000)
            phone.screenshot(path=str(ARTIFACTS / "human_rating_app_phone.png"), full_page=True)
            boxes = [phone.locator(".ek-set").nth(k).bounding_box() for k in range(2)]
            assert (
                boxes[1]["y"] > boxes[0]["y"] + boxes[0]["height"] - 1
            )  # stacked, not side by side
            browser.close()
    finally:
        server.stop()

    prompts = [c.removeprefix("Caption: ").strip() for c in captions]
    effective = store.votes(study.study_id)
    got = {(study.items[v["item_id"]].prompt, v["question"], v["choice"]) for v in effective}
    assert got == {
        (prompts[0], "fidelity", "A"),
        (prompts[0], "alignment", "tie"),
        (prompts[1], "fidelity", "B"),
        (prompts[1], "alignment", "A"),
    }
    everything = store.votes(study.study_id, effective_only=False)
    undone = {
        (study.items[v["item_id"]].prompt, v["question"], v["choice"])
        for v in everything
        if v["undone"]
    }
    assert undone == {(prompts[2], "fidelity", "tie"), (prompts[2], "alignment", "B")}
    assert len(everything) == 6 and len(store.undos(study.study_id)) == 1
    assert external == [], f"the page reached outside the server: {external[:5]}"
