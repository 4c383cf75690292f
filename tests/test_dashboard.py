"""The dashboard built from a history of twelve real runs, also opened in headless Chromium.

The browser part skips when /usr/bin/chromium or playwright is missing (CI installs chromium
with scripts/ci_chromium.sh). The screenshot goes to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from evalkit.dashboard import build_dashboard
from evalkit.history import RECORD_FILE, add_record, load

from .gate_fixtures import item_ids, results_dict, write_run
from .history_fixtures import HISTORY_PLAN, build_history
from .test_gate import evalkit

CHROMIUM = os.environ.get("EVALKIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]  # fmt: skip


@pytest.fixture(scope="module")
def real_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Twelve real shapes runs (toy, then the suite's renders, then toy, then a larger suite)."""
    root = tmp_path_factory.mktemp("real-history")
    old = os.environ.get("EVALKIT_CACHE")
    os.environ["EVALKIT_CACHE"] = str(root / "cache")
    try:
        return build_history(root)
    finally:
        if old is None:
            os.environ.pop("EVALKIT_CACHE", None)
        else:
            os.environ["EVALKIT_CACHE"] = old


def test_history_of_real_runs_has_every_run_with_thumbnails(real_history):
    hist, runs = real_history
    df = load(hist)
    assert len(df) == len(HISTORY_PLAN) >= 10
    assert list(df["commit"].str[:3]) == [f"c{i + 1:02d}" for i in range(len(HISTORY_PLAN))]
    meta = json.loads((Path(df["path"].iloc[0]) / RECORD_FILE).read_text())
    assert len(meta["thumbnails"]) == 12 and all(t["seed"] is not None for t in meta["thumbnails"])


def test_dashboard_lists_the_steps_breaks_and_gate_verdicts(real_history, tmp_path):
    hist, _ = real_history
    site = build_dashboard(hist, tmp_path / "site")
    html = site.index.read_text()
    steps = {
        (s["commit"][:3], s["verdict"]) for s in site.steps if s["metric"] == "shapes_accuracy"
    }
    assert steps == {("c05", "better"), ("c09", "worse")}  # toy -> renders -> toy
    assert "protocol change" in html  # c11: a larger suite
    assert "verdict-regression" in html  # the gate's verdict attached to c09
    assert html.count("<img class='chart trend'") == 1 and "chart categories" in html
    for rel in ("steps.json", "charts"):
        assert (tmp_path / "site" / rel).exists()
    for link in json.loads((tmp_path / "site" / "steps.json").read_text())["steps"]:
        assert (tmp_path / "site" / "records" / link["record_id"] / "report.html").is_file()
    assert "http://" not in html and "https://" not in html


def test_dashboard_escapes_user_data_and_lists_unreadable_records(tmp_path):
    hist = tmp_path / "h"
    ids = item_ids(12)
    evil = "<script>alert(1)</script>"
    for k in range(3):
        r = results_dict({"clip_score": {i: 0.3 + k * 0.01 for i in ids}}, run_id=f"r{k}",
                         created=f"2026-01-0{k + 1}T00:00:00+00:00")  # fmt: skip
        add_record(
            write_run(tmp_path / f"r{k}", r), hist, branch=evil, labels={"series": evil + "$x$"}
        )
    (hist / "junk.txt").write_text("junk")
    bad = sorted((hist / "records").iterdir())[0]
    (bad / RECORD_FILE).write_text("{")
    site = build_dashboard(hist, tmp_path / "site")
    html = site.index.read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Skipped entries (2)" in html and "junk.txt" in html and bad.name in html
    assert site.records == 2


def test_dashboard_replaces_an_old_site_as_a_whole(tmp_path):
    hist = tmp_path / "h"
    add_record(
        write_run(tmp_path / "r", results_dict({"clip_score": {i: 0.3 for i in item_ids(12)}})),
        hist,
    )
    out = tmp_path / "site"
    out.mkdir()
    (out / "stale.html").write_text("old")
    build_dashboard(hist, out)
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site")]


def test_console_dashboard_prints_the_index_path(tmp_path):
    hist = tmp_path / "h"
    add_record(
        write_run(tmp_path / "r", results_dict({"clip_score": {i: 0.3 for i in item_ids(12)}})),
        hist,
    )
    proc = evalkit("dashboard", "--history", "h", "--out", "site", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("site/index.html")


sync_api = None
with contextlib.suppress(ImportError):  # the browser test needs playwright and chromium
    from playwright import sync_api  # type: ignore[no-redef]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(sync_api is None, reason="playwright (the Python package) is not installed")
@pytest.mark.skipif(
    not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()),
    reason=f"{CHROMIUM} not found: run scripts/ci_chromium.sh",
)
def test_dashboard_renders_offline_in_headless_chromium(real_history, tmp_path):
    hist, _ = real_history
    site = build_dashboard(hist, tmp_path / "site")
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    external: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 1400})

        def route(r):
            if r.request.url.startswith("file://"):
                return r.continue_()
            external.append(r.request.url)
            return r.abort()

        context.route("**/*", route)  # the network is blocked: only file:// loads
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(site.index.resolve().as_uri())
        page.wait_for_load_state("load")
        trend = page.locator("img.chart.trend").first
        assert trend.evaluate("i => i.complete && i.naturalWidth > 0")
        box = page.locator("div.compare").first
        thumbs = box.locator("img.ek-thumb")
        assert thumbs.count() == 24  # 12 prompts, two records side by side
        page.wait_for_function(
            "() => [...document.querySelectorAll('img.ek-thumb')].every(i => i.complete && i.naturalWidth > 0)"
        )
        # choose another left record: the images change, the prompts stay
        first_src = thumbs.first.get_attribute("src")
        options = box.locator("select.ek-a option")
        box.locator("select.ek-a").select_option(options.nth(4).get_attribute("value"))
        assert box.locator("img.ek-thumb").first.get_attribute("src") != first_src
        page.locator("div.compare").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        # a record's report opens from its link, images included
        href = page.locator("a", has_text="report").first.get_attribute("href")
        page.goto((site.index.parent / href).resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.locator("img").count() > 0
        assert page.locator("img").first.evaluate("i => i.complete && i.naturalWidth > 0")
        browser.close()
    assert errors == [], errors
    assert external == [], external
