"""End to end in a real browser: headless Debian Chromium driven by Playwright.

Skips when /usr/bin/chromium or the playwright package is missing (CI installs chromium with
scripts/ci_chromium.sh). Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from evalkit.human.demo import add_rater, make_study
from evalkit.human.security import NoRateLimit, hash_token
from evalkit.human.service import RatingService

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


def _images_shown(page) -> None:
    """Wait until the page reports every image of its task loaded (Submit is enabled then)."""
    page.wait_for_function(
        "() => { const s = window.ekImageState ? window.ekImageState() : ':0/0';"
        " const [ok, total] = s.split(':')[1].split('/'); return +total > 0 && ok === total; }",
        timeout=30_000,
    )


def _answer(page, expect, caption_before: str) -> str:
    """Wait until the previous task has been replaced; return the new caption."""
    expect(page.locator("#ek-status")).to_contain_text("Saved", timeout=20_000)
    expect(page.locator("#ek-caption .ek-caption")).not_to_have_text(caption_before, timeout=20_000)
    _images_shown(page)
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

            # With the invite link: a task with two sets of 8 images; the token leaves the
            # address bar and no later request carries it.
            urls: list[str] = []  # requests other than loading the invite link itself
            page.on("request", lambda r: None if r.is_navigation_request() else urls.append(r.url))
            page.goto(f"{server.url}/?token={token}")
            expect(page.locator("img.ek-thumb").first).to_be_visible(timeout=30_000)
            assert token not in page.url
            assert urls and [u for u in urls if token in u] == []
            _images_shown(page)
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

            # A phone: one set at a time at full width, tabs (or a swipe) switch to set B.
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.goto(f"{server.url}/?token={token}")
            expect(phone.locator("img.ek-thumb").first).to_be_visible(timeout=30_000)
            phone.screenshot(path=str(ARTIFACTS / "human_rating_app_phone.png"), full_page=True)
            thumb = phone.locator(".ek-set").nth(0).locator("img.ek-thumb").first.bounding_box()
            assert thumb["width"] >= 160, thumb
            set_b = phone.locator(".ek-set").nth(1)
            assert set_b.bounding_box()["x"] >= 380  # off screen to the right
            phone.locator(".ek-tabs button", has_text="Set B").click()
            phone.wait_for_function(
                "() => Math.abs(document.querySelectorAll('.ek-set')[1]"
                ".getBoundingClientRect().x) < 20"
            )
            phone.locator(".ek-set").nth(1).locator("img.ek-thumb").nth(2).click()
            big = phone.locator("#ek-lightbox img").bounding_box()
            assert big["width"] >= 380  # enlarged to the screen, not the image's own 32 px
            phone.keyboard.press("Escape")

            # A 1366x768 laptop: Submit on screen without scrolling, every thumbnail above it.
            laptop = browser.new_page(viewport={"width": 1366, "height": 768})
            laptop.goto(f"{server.url}/?token={token}")
            expect(laptop.locator("img.ek-thumb").first).to_be_visible(timeout=30_000)
            submit = laptop.locator("#ek-submit").bounding_box()
            assert submit["y"] + submit["height"] <= 768, submit
            bar_top = laptop.locator("#ek-answerbar").bounding_box()["y"]
            last = laptop.locator("img.ek-thumb").nth(15).bounding_box()
            assert last["y"] + last["height"] <= bar_top + 1, (last, bar_top)
            laptop.screenshot(path=str(ARTIFACTS / "human_rating_app_laptop.png"))
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


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """Eight prompts, 8 images per side, and a server with the UI."""
    root = tmp_path_factory.mktemp("browser")
    study, store, admin = make_study(
        root, gold_tasks=0, images_per_prompt=8, images_per_side=8, ratings_per_item=3
    )
    server = Server(study.root, None, root / "server.log", env={"GRADIO_TEMP_DIR": str(root / "g")})
    server.gradio_tmp = root / "g"
    yield study, store, admin, server
    server.stop()


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def test_a_rater_whose_images_fail_to_load_cannot_submit_until_they_are_retried(small_study):
    study, store, _, server = small_study
    token = add_rater(study, store, "flaky network")
    rater_id = store.rater_by_token(study.study_id, hash_token(token)).rater_id
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/img/**", lambda route: route.abort())
        page.goto(f"{server.url}/?token={token}")
        note = page.locator("#ek-imgnote .ek-imgnote")
        expect(note).to_contain_text("did not load", timeout=30_000)
        expect(page.locator("#ek-submit")).to_be_disabled()
        page.keyboard.press("1")
        page.keyboard.press("q")
        page.keyboard.press("Enter")  # refused by the page
        # Even a submit forced past the page is refused by the server. Enabled and clicked in
        # one script turn: the page's own check (every 250 ms) would disable it again between
        # two Playwright calls.
        page.evaluate(
            "() => { const b = document.getElementById('ek-submit');"
            " b.disabled = false; b.click(); }"
        )
        expect(page.locator("#ek-status")).to_contain_text("Not saved", timeout=20_000)
        assert [v for v in store.votes(study.study_id) if v["rater_id"] == rater_id] == []
        page.screenshot(path=str(ARTIFACTS / "human_rating_app_images_failed.png"))
        # The network comes back: the page retries, shows every image and lets the vote through.
        page.unroute("**/img/**")
        _images_shown(page)
        expect(page.locator("#ek-submit")).to_be_enabled()
        expect(note).to_have_text("")
        assert page.evaluate(
            "Array.from(document.querySelectorAll('img.ek-thumb')).every(i => i.naturalWidth > 0)"
        )
        page.keyboard.press("Enter")
        expect(page.locator("#ek-status")).to_contain_text("Saved", timeout=20_000)
        browser.close()
    assert len([v for v in store.votes(study.study_id) if v["rater_id"] == rater_id]) == 2


def test_the_all_done_page_offers_undo_by_button_and_key(small_study):
    study, store, _, server = small_study
    token = add_rater(study, store, "finisher")
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    for _ in range(len(study.items) - 1):  # all but the last task, straight through the service
        v = svc.next_task(token)
        svc.submit(token, v.assignment_id, {"fidelity": "A", "alignment": "A"}, v.submission_id)
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/?token={token}")
        _images_shown(page)
        caption = page.locator("#ek-caption .ek-caption").inner_text()
        page.keyboard.press("3")
        page.keyboard.press("e")
        page.keyboard.press("Enter")
        expect(page.locator("#ek-done")).to_contain_text("All done", timeout=20_000)
        expect(page.locator("#ek-done-status")).to_contain_text("undo it")
        expect(page.locator("#ek-undo-done")).to_be_visible()
        page.keyboard.press("u")  # the key the page mentions works here too
        expect(page.locator("#ek-status")).to_contain_text("undone", timeout=20_000)
        expect(page.locator("#ek-caption .ek-caption")).to_have_text(caption)
        _images_shown(page)
        page.keyboard.press("1")
        page.keyboard.press("w")
        page.keyboard.press("Enter")
        expect(page.locator("#ek-done")).to_contain_text("All done", timeout=20_000)
        page.locator("#ek-undo-done").click()  # and the button
        expect(page.locator("#ek-caption .ek-caption")).to_have_text(caption, timeout=20_000)
        browser.close()
    rater_id = store.rater_by_token(study.study_id, hash_token(token)).rater_id
    mine = [v for v in store.votes(study.study_id) if v["rater_id"] == rater_id]
    assert len(mine) == 2 * (len(study.items) - 1)  # the last task is open again


def test_admin_exports_download_through_the_admin_api_and_leave_no_file(small_study):
    study, store, admin, server = small_study
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/?token={admin}")
        expect(page.locator("#ek-admin")).to_contain_text("progress", timeout=30_000)
        assert admin not in page.url
        with page.expect_download() as download:
            page.locator("button.ek-export", has_text="CSV").click()
        path = download.value.path()
        assert Path(path).read_text().startswith("vote_id,")
        assert download.value.suggested_filename == f"{study.study_id}-votes.csv"
        browser.close()
    left = [p for p in server.gradio_tmp.rglob("*") if p.is_file()]
    assert left == [], f"the server wrote files: {left[:5]}"
