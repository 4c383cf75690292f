"""DrawBench from the shared copy (never committed) and fetch_drawbench from a local server."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.suites.drawbench import (
    CATEGORY_COUNTS,
    PUBLISHED_CONTENT_SHA256,
    cache_path,
    fetch_drawbench,
    make_drawbench_suite,
)

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared/data/drawbench/drawbench.csv"
needs_csv = pytest.mark.skipif(
    not SHARED_CSV.is_file(),
    reason=f"DrawBench CSV not found at {SHARED_CSV} (it has no licence, so it is not in the repository)",
)


def _rows() -> list[list[str]]:
    with open(SHARED_CSV, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


@needs_csv
def test_shared_copy_gives_200_items_in_the_11_protocol_categories():
    suite = make_drawbench_suite({"prompts": str(SHARED_CSV)})
    items = suite.items()
    assert len(items) == 200
    assert dict(Counter(i.category for i in items)) == CATEGORY_COUNTS
    assert suite.categories() == sorted(CATEGORY_COUNTS)
    assert suite.reference_set(256) is None


@needs_csv
def test_ids_follow_row_order_and_are_stable():
    rows = _rows()[1:]
    items = make_drawbench_suite({"prompts": str(SHARED_CSV)}).items()
    assert [i.id for i in items] == [f"drawbench-{k:03d}" for k in range(200)]
    assert items[0].prompt == rows[0][0].strip() and items[199].category == rows[199][1].strip()
    again = make_drawbench_suite({"prompts": str(SHARED_CSV)}).items()
    assert items == again


@needs_csv
def test_describe_records_csv_hash_and_matches_published_content():
    import hashlib

    d = make_drawbench_suite({"prompts": str(SHARED_CSV)}).describe()
    assert d["csv_sha256"] == hashlib.sha256(SHARED_CSV.read_bytes()).hexdigest()
    assert d["content_sha256"] == PUBLISHED_CONTENT_SHA256 and d["matches_published"] is True
    assert d["strict"] is True and d["num_prompts"] == 200 and "deviations" not in d


@needs_csv
def test_reformatted_export_keeps_the_content_hash(tmp_path):
    quoted = tmp_path / "quoted.csv"
    with open(quoted, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(_rows())
    d = make_drawbench_suite({"prompts": str(quoted)}).describe()
    assert d["matches_published"] is True


def test_missing_prompts_name_the_fetch_command_and_the_prompts_flag(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        make_drawbench_suite({"cache_dir": str(tmp_path)})
    message = str(info.value)
    assert "evalkit fetch drawbench" in message and "--prompts FILE" in message


def test_prompts_option_naming_a_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="absent.csv"):
        make_drawbench_suite({"prompts": str(tmp_path / "absent.csv")})


@needs_csv
def test_copy_with_199_rows_is_refused(tmp_path):
    rows = _rows()
    bad = _write(tmp_path / "short.csv", rows[:-1])
    with pytest.raises(InputError) as info:
        make_drawbench_suite({"prompts": str(bad)})
    message = str(info.value)
    assert "199 prompts (expected 200)" in message and "strict=false" in message


@needs_csv
def test_copy_with_a_wrong_category_is_refused_naming_the_difference(tmp_path):
    rows = _rows()
    k = next(n for n, r in enumerate(rows) if r[1] == "Colors")
    rows[k] = [rows[k][0], "Colours"]
    bad = _write(tmp_path / "cat.csv", rows)
    with pytest.raises(InputError) as info:
        make_drawbench_suite({"prompts": str(bad)})
    message = str(info.value)
    assert "'Colors': 24 prompts (expected 25)" in message and "'Colours': 1" in message


@needs_csv
def test_non_strict_accepts_an_edited_copy_and_records_it(tmp_path):
    edited = _write(tmp_path / "edited.csv", _rows()[:51])
    suite = make_drawbench_suite({"prompts": str(edited), "strict": False})
    d = suite.describe()
    assert len(suite.items()) == 50 and d["strict"] is False and d["matches_published"] is False
    assert any("50 prompts" in p for p in d["deviations"])


def test_csv_without_the_columns_is_refused(tmp_path):
    bad = _write(tmp_path / "cols.csv", [["prompt", "category"], ["a cat", "Colors"]])
    with pytest.raises(InputError, match="no 'Prompts' column"):
        make_drawbench_suite({"prompts": str(bad)})


def test_unknown_option_is_refused():
    with pytest.raises(UsageError, match="unknown option.*'prompt' → 'prompts'"):
        make_drawbench_suite({"prompt": "x.csv"})


def test_strict_must_be_a_boolean():
    # text and 0/1 were accepted before; the command line parses strict=false to False
    for value in ("false", "yes", 0, 1):
        with pytest.raises(UsageError, match=f"option strict must be true or false, got {value!r}"):
            make_drawbench_suite({"strict": value})


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    ).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@needs_csv
def test_fetch_drawbench_downloads_validates_and_caches_from_a_local_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(SHARED_CSV, served / "export.csv")
    cache = tmp_path / "cache"
    with _serve(served) as base:
        path = fetch_drawbench(cache, url=f"{base}/export.csv")
    assert path == cache_path(cache) == cache / "suites/drawbench/drawbench.csv"
    assert path.read_bytes() == SHARED_CSV.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["drawbench.csv"]
    suite = make_drawbench_suite({"cache_dir": str(cache)})
    assert len(suite.items()) == 200 and suite.describe()["source"] == "cache"
    # A second fetch finds the valid cached copy and needs no server.
    assert fetch_drawbench(cache, url="http://127.0.0.1:9/unreachable") == path


def test_fetch_drawbench_refuses_a_page_that_is_not_the_sheet(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "login.html").write_text("<html><body>Sign in</body></html>")
    cache = tmp_path / "cache"
    with _serve(served) as base, pytest.raises(InputError, match="not a DrawBench CSV"):
        fetch_drawbench(cache, url=f"{base}/login.html")
    assert not cache_path(cache).exists()
    assert list(cache_path(cache).parent.iterdir()) == []


def test_fetch_drawbench_offline_is_a_missing_weights_error(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MissingWeightsError, match="offline"):
        fetch_drawbench(tmp_path, url=f"http://127.0.0.1:{port}/export.csv")
    assert not cache_path(tmp_path).exists()
