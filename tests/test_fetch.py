"""evalkit.fetch against a local HTTP server on 127.0.0.1 (never a real remote)."""

from __future__ import annotations

import hashlib
import http.server
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalkit.errors import InputError, MissingWeightsError
from evalkit.fetch import cache_root, download, extract_zip, read_lock

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


class _Files:
    """What the test server serves, and what it saw."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.honour_range = True
        self.cut_after: int | None = None  # close the connection after this many body bytes


def _handler(files: _Files) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            body = files.content.get(self.path)
            if body is None:
                self.send_error(404)
                return
            header = self.headers.get("Range")
            files.ranges.append(header)
            start = 0
            if header and files.honour_range:
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            data = body[start:]
            if files.cut_after is not None:
                data = data[: files.cut_after]
            self.wfile.write(data)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, _Files]]:
    files = _Files()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_published_sha256_and_renames_into_place(server, tmp_path):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    dest = download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert not (tmp_path / "f.bin.sha256").exists()  # a published hash needs no lock file


def test_checksum_mismatch_is_refused_and_leaves_nothing_at_dest(server, tmp_path):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    url = f"{base}/f.bin"
    with pytest.raises(InputError) as info:
        download(url, tmp_path / "f.bin", "0" * 64, description="test file")
    message = str(info.value)
    assert url in message and "0" * 64 in message and _sha(PAYLOAD) in message
    assert list(tmp_path.iterdir()) == []


def test_partial_download_resumes_with_a_range_request(server, tmp_path):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:30_000])
    dest = download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert files.ranges == ["bytes=30000-"]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_the_part_file_and_the_next_call_resumes(server, tmp_path):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    files.cut_after = 40_000
    with pytest.raises(MissingWeightsError, match="resume"):
        download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert (tmp_path / "f.bin.part").stat().st_size == 40_000
    assert not (tmp_path / "f.bin").exists()
    files.cut_after = None
    dest = download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert files.ranges[-1] == "bytes=40000-"
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    files.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 100)
    dest = download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert dest.read_bytes() == PAYLOAD


def test_stale_part_longer_than_the_file_is_discarded(server, tmp_path):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"extra")
    dest = download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert dest.read_bytes() == PAYLOAD


def test_no_published_hash_records_a_lock_and_trusts_on_first_use(server, tmp_path, capsys):
    base, files = server
    files.content["/f.bin"] = PAYLOAD
    dest = download(f"{base}/f.bin", tmp_path / "f.bin", None, description="test file")
    assert read_lock(dest) == _sha(PAYLOAD)
    assert "first use" in capsys.readouterr().err
    # The server now serves something else: a re-download must match the recorded hash.
    dest.unlink()
    files.content["/f.bin"] = PAYLOAD[::-1]
    with pytest.raises(InputError, match="recorded on first download"):
        download(f"{base}/f.bin", tmp_path / "f.bin", None, description="test file")
    assert not dest.exists()


def test_existing_file_is_verified_instead_of_downloaded(server, tmp_path):
    base, files = server
    (tmp_path / "f.bin").write_bytes(b"not it")
    with pytest.raises(InputError, match="delete it"):
        download(f"{base}/f.bin", tmp_path / "f.bin", _sha(PAYLOAD), description="test file")
    assert files.ranges == []  # no request made


def test_http_404_raises_missing_weights_error_naming_url(server, tmp_path):
    base, _ = server
    with pytest.raises(MissingWeightsError) as info:
        download(f"{base}/absent.bin", tmp_path / "x.bin", None, description="test file")
    assert f"{base}/absent.bin" in str(info.value) and "404" in str(info.value)


def test_unreachable_server_says_offline_and_how_to_provide_the_file(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(MissingWeightsError) as info:
        download(url, tmp_path / "f.bin", None, description="test file", timeout=5)
    message = str(info.value)
    assert url in message and "offline" in message and str(tmp_path / "f.bin") in message


def test_cache_root_follows_evalkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("EVALKIT_CACHE")
    assert cache_root() == Path("~/.cache/evalkit").expanduser()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_zip_extracts_everything_into_a_new_folder(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"top/a.txt": b"a", "top/sub/b.txt": b"b"})
    out = extract_zip(archive, tmp_path / "out")
    assert (out / "top/a.txt").read_bytes() == b"a"
    assert (out / "top/sub/b.txt").read_bytes() == b"b"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "name", ["../evil.txt", "top/../../evil.txt", "/abs/evil.txt", "c:/evil.txt", "a\\..\\evil.txt"]
)
def test_zip_path_traversal_is_refused_and_nothing_is_written(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(InputError, match="refusing member"):
        extract_zip(archive, tmp_path / "out" / "inner")
    assert not (tmp_path / "out" / "inner").exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert [p for p in (tmp_path / "out").iterdir()] == []


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_zip_refuses_an_existing_folder_unless_overwrite(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"x.txt": b"new"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        extract_zip(archive, tmp_path / "out")
    extract_zip(archive, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.txt"]


def test_corrupt_zip_is_an_input_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK not really")
    with pytest.raises(InputError, match="bad.zip"):
        extract_zip(bad, tmp_path / "out")
