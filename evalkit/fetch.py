"""Checksummed, resumable downloads and safe zip extraction.

``download`` streams a URL to ``<dest>.part`` (resuming it with an HTTP Range
request when the server allows), verifies its sha256 and renames it into place.
With no published hash it records the hash it saw in ``<dest>.sha256`` and checks
every later download against it (trust on first use). ``extract_zip`` checks every
member before writing anything and renames the finished folder into place.

Nothing here touches the network unless called; progress goes to stderr.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from evalkit.atomic import atomic_write_text
from evalkit.errors import InputError, MissingWeightsError
from evalkit.hashing import sha256_file, update_from_file
from evalkit.paths import cache_root

__all__ = ["cache_root", "download", "extract_zip", "read_lock"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """Byte counter printed to stderr at most once a second."""

    def __init__(self, description: str, done: int, total: int | None) -> None:
        self.description = description
        self.done = done
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= (1.0 if self.tty else 10.0):
            self.last = now
            self._print(end="\r" if self.tty else "\n")

    def finish(self) -> None:
        self._print(end="\n")

    def _print(self, end: str) -> None:
        mib = self.done / 2**20
        rate = mib / max(time.monotonic() - self.start, 1e-6)
        if self.total:
            text = f"{self.description}: {mib:,.1f} / {self.total / 2**20:,.1f} MiB ({100 * self.done / self.total:.0f}%)"
        else:
            text = f"{self.description}: {mib:,.1f} MiB"
        print(f"{text}, {rate:,.1f} MiB/s", end=end, file=sys.stderr, flush=True)


def _lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def read_lock(dest: Path) -> str | None:
    """The sha256 recorded beside ``dest`` by a trust-on-first-use download, if any."""
    lock = _lock_path(Path(dest))
    if not lock.is_file():
        return None
    text = lock.read_text(encoding="utf-8").split()
    if not text or len(text[0]) != 64:
        raise InputError(
            f"{lock}: malformed hash lock file (expected '<sha256>  <name>'); delete it to re-trust"
        )
    return text[0].lower()


def _write_lock(dest: Path, digest: str) -> None:
    atomic_write_text(_lock_path(dest), f"{digest}  {dest.name}\n")


def _offline_error(url: str, dest: Path, description: str, reason: object) -> MissingWeightsError:
    return MissingWeightsError(
        f"could not download {description} from {url}: {reason}. "
        "This machine may be offline or the server unreachable. To provide the file locally instead, "
        f"download it on a connected machine and copy it to {dest} (it is verified before use), "
        "then run the command again."
    )


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "evalkit"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the caller chose the URL)


def _resume_offset(response, offset: int) -> int:
    """Where the response body starts: ``offset`` for a matching 206, else 0 (a full body)."""
    if not offset:
        return 0
    status = getattr(response, "status", None)
    content_range = response.headers.get("Content-Range", "") if response.headers else ""
    if status == 206 and content_range.startswith(f"bytes {offset}-"):
        return offset
    return 0


def _fetch_to_part(url: str, part: Path, description: str, dest: Path, timeout: float) -> Any:
    """Stream ``url`` into ``part`` (resuming it if possible); return the sha256 of the whole part."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:
                raise
            # Range not satisfiable: the part is stale or complete; start over to be sure.
            part.unlink()
            offset = 0
            response = _open(url, 0, timeout)
        with response:
            start = _resume_offset(response, offset)
            h = hashlib.sha256()
            if start:
                update_from_file(h, part)
                _say(f"{description}: resuming at {start / 2**20:,.1f} MiB")
            elif offset:
                _say(f"{description}: the server does not resume downloads; starting over")
            length = response.headers.get("Content-Length") if response.headers else None
            total = start + int(length) if length and length.isdigit() else None
            progress = _Progress(description, start, total)
            with open(part, "ab" if start else "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    progress.advance(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            progress.finish()
            if total is not None and progress.done != total:
                raise _offline_error(
                    url,
                    dest,
                    description,
                    f"connection closed after {progress.done} of {total} bytes (run again to resume)",
                )
            return h
    except urllib.error.HTTPError as exc:
        raise _offline_error(url, dest, description, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _offline_error(url, dest, description, exc.reason) from exc
    except http.client.HTTPException as exc:
        raise _offline_error(url, dest, description, f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        if exc.filename or exc.errno in _LOCAL_ERRNOS:
            raise  # a local disk problem, not the network
        raise _offline_error(url, dest, description, exc) from exc


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    description: str,
    record_hash: bool = True,
    timeout: float = _TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    ``sha256`` is the published hex digest. When it is None and ``record_hash`` is
    true, the digest of the first download is recorded in ``<dest>.sha256`` and later
    downloads must match it (trust on first use). A file already at ``dest`` is
    verified the same way instead of downloaded again. A hash mismatch deletes the
    partial file and raises :class:`InputError`; network failures raise
    :class:`MissingWeightsError` and keep the partial file for resuming.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    trusted = "published"
    if expected is None and record_hash:
        expected = read_lock(dest)
        trusted = f"recorded on first download in {_lock_path(dest)}"
    if dest.exists():
        actual = sha256_file(dest)
        if expected is None:
            if record_hash:
                _write_lock(dest, actual)
                _say(
                    f"{description}: {dest} has no published sha256; trusting it on first use ({actual})"
                )
            return dest
        if actual != expected:
            raise InputError(
                f"{dest} (from {url}) has sha256 {actual}, expected {expected} ({trusted}); "
                "delete it to download it again"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _say(f"downloading {description} from {url}")
    h = _fetch_to_part(url, part, description, dest, timeout)
    actual = h.hexdigest()
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise InputError(
            f"checksum mismatch for {description} downloaded from {url}: expected sha256 {expected} "
            f"({trusted}), got {actual}. The partial file was deleted; the server may serve a different "
            "version, or the transfer was corrupted."
        )
    os.replace(part, dest)
    if expected is None and record_hash:
        _write_lock(dest, actual)
        _say(
            f"{description}: no published sha256; trusting this download on first use and recording "
            f"{actual} in {_lock_path(dest)} (later downloads must match it)"
        )
    return dest


def _member_target(root: Path, info: zipfile.ZipInfo, archive: Path) -> Path:
    """The path ``info`` extracts to under ``root``; refuses anything that would escape it."""
    name = info.filename
    if "\\" in name or "\x00" in name:
        raise InputError(f"{archive}: refusing member {name!r} (backslash or NUL in its name)")
    pure = PurePosixPath(name)
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise InputError(f"{archive}: refusing member {name!r} (absolute path)")
    if ".." in pure.parts:
        raise InputError(
            f"{archive}: refusing member {name!r} (path traversal outside the destination)"
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(f"{archive}: refusing member {name!r} (symbolic link)")
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise InputError(f"{archive}: refusing member {name!r} (resolves outside the destination)")
    return target


def extract_zip(
    zip_path: str | os.PathLike, dest_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Extract ``zip_path`` into ``dest_dir`` safely and atomically; return ``dest_dir``.

    Every member is checked first (no absolute paths, ``..``, or symlinks); the archive
    is extracted into a temporary sibling folder that is renamed to ``dest_dir`` only
    when complete. An existing ``dest_dir`` is refused unless ``overwrite``.
    """
    archive = Path(zip_path)
    dest = Path(dest_dir)
    if dest.exists() and not overwrite:
        raise InputError(
            f"{dest} already exists; remove it (or pass overwrite) to extract {archive} there"
        )
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError as exc:
        raise InputError(f"{archive}: zip file not found") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(
            f"{archive}: not a readable zip file ({exc}); delete it and fetch it again"
        ) from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        with zf:
            root = tmp.resolve()
            members = [(info, _member_target(root, info, archive)) for info in zf.infolist()]
            progress = _Progress(
                f"extracting {archive.name}", 0, sum(i.file_size for i, _ in members)
            )
            for info, target in members:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise InputError(
                        f"{archive}: member {info.filename!r} is corrupt ({exc}); fetch the archive again"
                    ) from exc
                progress.advance(info.file_size)
            progress.finish()
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, trash / "old")
            os.replace(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
