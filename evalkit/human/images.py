"""Images for raters that say nothing about where they came from.

A rater must tell the two sets apart by their pixels only. A file served as it is gives
more away: its size (one model's PNGs compress better; the noisy gold images are 2-3x
larger), its modification time (``Last-Modified``, ``ETag``: one run was written minutes
before the other, gold images when the study was made), its metadata chunks. So every image
is decoded and re-encoded as an RGB PNG without metadata and without compression (zlib
level 0): its length then depends on its width and height alone. Responses carry the same
headers for every image and no validators (no ``Last-Modified``, no ``ETag``).

Costs: an uncompressed PNG is about 3 bytes per pixel (197 KB at 256 px, 3 MB at 1024 px).
What remains visible is the pixel size: runs of different resolutions are told apart by it
(``evalkit rate create`` warns). Re-encoded images are kept in memory (LRU by bytes, 1 GiB
by default, ``evalkit rate serve --image-cache-mb``), and the server says at start whether the
study's images fit: re-encoding costs 2.5 ms of CPU per 256-px image, a cache hit nothing.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import stat
import struct
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image

from evalkit.human.errors import NotFound
from evalkit.progress import log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SOURCE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
IMAGE_HEADERS = {
    "Cache-Control": "private, max-age=3600",
    "X-Content-Type-Options": "nosniff",
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_blind(image: Image.Image) -> bytes:
    """``image`` as an RGB PNG with no metadata and no compression: its length depends on its size only.

    Written directly (rows with filter 0 in zlib stored blocks): ten times faster than PIL's
    level-0 writer, which still tries a row filter per row (0.7 vs 7.4 ms at 256 px).
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width, _ = pixels.shape
    rows = np.zeros((height, 3 * width + 1), dtype=np.uint8)  # a leading 0: filter "none"
    rows[:, 1:] = pixels.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
        + _chunk(b"IEND", b"")
    )


def blinded_length(width: int, height: int) -> int:
    """The length of ``encode_blind``'s PNG of a ``width`` x ``height`` image, to within 0.1 %."""
    raw = height * (3 * width + 1)
    stored_blocks = raw // 16_000 + 1  # zlib's level 0 writes stored blocks of 16-64 KiB
    return len(PNG_SIGNATURE) + 3 * 12 + 13 + 6 + raw + 5 * stored_blocks


def _unavailable(path: Path, why: str) -> NotFound:
    log(f"image {path}: {why}")  # the admin sees why; the rater sees only 'unknown image'
    return NotFound("unknown image")


def read_inside(path: Path, roots: Iterable[Path]) -> bytes:
    """The bytes of ``path`` if it is a regular file inside one of ``roots`` (resolved folders).

    Anything else (a missing file, a symlink swapped to point elsewhere, a loop, a folder, a
    file swapped between the check and the open) is NotFound, never a crash.
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise _unavailable(path, "missing or a broken symlink") from None
    if not any(real.is_relative_to(r) for r in roots):
        raise _unavailable(path, f"resolves to {real}, outside the study's runs")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise _unavailable(path, f"cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _unavailable(path, "not a regular file")
        if info.st_size > MAX_SOURCE_BYTES:
            raise _unavailable(path, f"larger than {MAX_SOURCE_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise _unavailable(path, f"unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)


def blind_png(path: Path, roots: Iterable[Path]) -> bytes:
    """Read ``path`` (inside ``roots``, resolved folders) and re-encode it with ``encode_blind``."""
    data = read_inside(path, roots)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise _unavailable(path, f"{im.width}x{im.height} is too many pixels")
                im.load()
                return encode_blind(im)
    except NotFound:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning) as exc:
        raise _unavailable(path, f"not a readable image ({exc})") from None


def blinded_bytes(paths: Iterable[Path]) -> int:
    """What ``paths`` take re-encoded by ``encode_blind`` (pixel sizes from the files' headers;
    unreadable files count nothing: serving them fails with its own message)."""
    total = 0
    for path in paths:
        try:
            with Image.open(path) as im:
                total += blinded_length(im.width, im.height)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return total


DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024


def _exit_with_parent(parent: int) -> None:
    """In a child process: exit within a second of the server's end, even a SIGKILL."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _started() -> None:
    """A no-op job: unpickling it in a child process imports this module there."""


class BlindImageCache:
    """Re-encoded images by source path, least recently used dropped beyond ``max_bytes``.

    Size it to hold every image a study shows: raters are handed the items with the fewest
    votes first, so requests cycle through the study's images, which is the access pattern
    on which an LRU cache smaller than the working set hits nothing at all.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._stop_warming = threading.Event()

    def peek(self, path: Path) -> bytes | None:
        """``path``'s blinded bytes if they are in memory (no file is read); else None."""
        key = str(path)
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def get(self, path: Path, roots: Iterable[Path]) -> bytes:
        """The blinded bytes of ``path``; NotFound unless it is a readable image inside ``roots``
        (resolved folders)."""
        data = self.peek(path)
        if data is not None:
            return data
        key = str(path)
        data = self._reencode(path, tuple(roots))
        with self._lock:
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self._size += len(data)
                while self._size > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._size -= len(old)
        return data

    def use_processes(self, workers: int) -> None:
        """Re-encode in ``workers`` child processes from now on (until ``close``).

        A server answers votes and cached images on one event loop; re-encoding in its own
        threads holds the interpreter lock for a good part of each image (~2.5 ms at 256 px),
        and every request waits behind it. In child processes it holds none of the server's.
        """
        self.close()
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        for _ in range(workers):  # start them (and import this module there) before raters come
            self._pool.submit(_started)

    def warm(self, paths: Iterable[Path], roots: Iterable[Path]) -> None:
        """Re-encode ``paths`` in the background, one at a time, as far as the cache holds them.

        One image at a time, so a rater's request never waits behind more than one of these.
        Files that cannot be served are skipped (a rater's request for them says why).
        Runs in a daemon thread; ``close`` stops it.
        """
        todo, roots_t = list(paths), tuple(roots)

        def run() -> None:
            for path in todo:
                if self._stop_warming.is_set():
                    return
                with self._lock:
                    if self._size >= self.max_bytes:
                        return  # more would push out what was just warmed
                try:
                    self.get(path, roots_t)
                except (NotFound, RuntimeError):  # RuntimeError: the pool shut down
                    continue

        self._stop_warming.clear()
        threading.Thread(target=run, daemon=True, name="image-warm").start()

    def close(self) -> None:
        """Stop warming and the child processes (re-encoding then happens in the calling thread)."""
        self._stop_warming.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _reencode(self, path: Path, roots: tuple[Path, ...]) -> bytes:
        pool = self._pool
        if pool is None:
            return blind_png(path, roots)
        try:
            return pool.submit(blind_png, path, roots).result()
        except BrokenProcessPool:  # a child was killed (out of memory?): go on without them
            log("image re-encoding processes died; re-encoding in the server process from now on")
            self._pool = None
            return blind_png(path, roots)
