"""The content-addressed image cache, with a checksum for every image.

Layout under the cache root (``$EVALKIT_CACHE/images``)::

    <key[:2]>/<key>.png        the image (8-bit RGB PNG)
    <key[:2]>/<key>.sha256     sha256 of the PNG's bytes, written when the image was written
    quarantine/                images that failed verification, moved aside (never deleted silently)

The checksum file is written (atomically) *before* the PNG is renamed into place, so a
PNG that exists always has its checksum; a checksum without a PNG is an interrupted
write and the image counts as missing. Every read verifies the PNG's bytes against the
checksum: an image overwritten by another valid PNG, truncated, or unreadable is never
trusted. :meth:`ImageCache.verify` reports such an image (moving it to ``quarantine/``)
so the runner regenerates it; :meth:`ImageCache.load` refuses it with an error naming
the file and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.atomic import atomic_write_bytes, atomic_write_text
from evalkit.errors import InputError
from evalkit.images import decode_generated, encode_png

CHECKSUM_SUFFIX = ".sha256"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class CacheProblem:
    """One cached image that cannot be trusted."""

    key: str
    path: Path
    reason: str
    moved_to: Path | None = None

    def describe(self) -> str:
        where = f"; moved to {self.moved_to}" if self.moved_to else ""
        return f"{self.path}: {self.reason}{where}"


class ImageCache:
    """PNG files addressed by key, each verified against the sha256 recorded when it was written."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths

    def path(self, key: str) -> Path:
        """Where the image of ``key`` lives."""
        return self.root / key[:2] / f"{key}.png"

    def checksum_path(self, key: str) -> Path:
        """Where the sha256 of the image of ``key`` is recorded."""
        return self.root / key[:2] / f"{key}{CHECKSUM_SUFFIX}"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE

    # ------------------------------------------------------------------ writing

    def put(self, key: str, image_hwc: np.ndarray) -> str:
        """Store a uint8 (H, W, 3) image under ``key``; returns the sha256 of the PNG written."""
        data = encode_png(image_hwc)
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_text(self.checksum_path(key), digest + "\n")
        atomic_write_bytes(self.path(key), data)
        return digest

    # ------------------------------------------------------------------ reading

    def has(self, key: str) -> bool:
        """True when the image file exists (not verified: see :meth:`verify`)."""
        return self.path(key).is_file()

    def recorded_sha256(self, key: str) -> str | None:
        """The sha256 recorded when ``key`` was written, or None when there is no valid record."""
        try:
            text = self.checksum_path(key).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            return None
        return text

    def problem(self, key: str) -> str | None:
        """Why the cached image of ``key`` cannot be trusted, or None when it verifies."""
        path = self.path(key)
        expected = self.recorded_sha256(key)
        if expected is None:
            return (
                "no valid checksum was recorded for it (an older evalkit, or an interrupted write)"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            return f"sha256 {actual[:12]}… differs from the {expected[:12]}… recorded when it was written"
        return None

    def verify(self, key: str, *, quarantine: bool = True) -> CacheProblem | None:
        """Check one cached image; an untrusted one is moved to ``quarantine/`` (if asked) and reported.

        A missing image is not a problem (it is simply not cached).
        """
        if not self.has(key):
            return None
        reason = self.problem(key)
        if reason is None:
            return None
        moved = self._quarantine(key) if quarantine else None
        return CacheProblem(key, self.path(key), reason, moved)

    def load_bytes(self, key: str) -> tuple[bytes, str]:
        """The verified PNG bytes of ``key`` and their sha256; InputError naming the file otherwise."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InputError(
                f"cached image {path} is missing (removed during the run?); rerun the command to regenerate it"
            ) from exc
        except OSError as exc:
            raise InputError(f"cached image {path} cannot be read ({exc})") from exc
        expected = self.recorded_sha256(key)
        actual = hashlib.sha256(data).hexdigest()
        if expected != actual:
            raise InputError(
                f"cached image {path} does not match the checksum recorded when it was written "
                f"(changed since, or no checksum); run `evalkit cache verify` to move untrusted "
                "images aside, then rerun the command to regenerate them"
            )
        return data, actual

    def load(self, key: str, size: int | None = None) -> np.ndarray:
        """The verified image of ``key`` as uint8 (H, W, 3) (``size``×``size`` when given)."""
        data, _ = self.load_bytes(key)
        return decode_generated(io.BytesIO(data), self.path(key), size)

    # ------------------------------------------------------------------ maintenance

    def stored_keys(self) -> Iterator[str]:
        """Every key with an image file in the cache."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.name == QUARANTINE or not shard.is_dir():
                continue
            for png in sorted(shard.glob("*.png")):
                yield png.stem

    def _quarantine(self, key: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.quarantine_dir / f"{key}.{stamp}.{os.getpid()}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(key), target)
        checksum = self.checksum_path(key)
        if checksum.exists():
            os.replace(checksum, target.with_suffix(CHECKSUM_SUFFIX))
        return target

    def touch(self, key: str) -> None:
        """Mark ``key`` as used now (its checksum file's mtime), for ``evalkit cache prune --older-than``."""
        with contextlib.suppress(OSError):  # a missing checksum is caught when the image is read
            os.utime(self.checksum_path(key))


@dataclass
class PruneReport:
    """What :func:`prune_cache` removed (or would remove, in a dry run)."""

    files: list[Path]
    bytes: int


#: temporary and orphaned files younger than this may belong to a write in progress
_GRACE_S = 3600.0


def verify_cache(cache: ImageCache, *, quarantine: bool = True) -> tuple[int, list[CacheProblem]]:
    """Check every image of the cache; returns (images checked, problems found)."""
    checked = 0
    problems: list[CacheProblem] = []
    for key in cache.stored_keys():
        checked += 1
        problem = cache.verify(key, quarantine=quarantine)
        if problem is not None:
            problems.append(problem)
    return checked, problems


def prune_cache(
    cache: ImageCache, *, older_than_days: float | None = None, dry_run: bool = False
) -> PruneReport:
    """Remove what the cache does not need: quarantined images, interrupted writes, images
    without a valid checksum, and (with ``older_than_days``) images not used for that long.

    Temporary and orphaned files younger than an hour are kept (a run may be writing them).
    """
    now = time.time()
    doomed: list[Path] = []
    if cache.quarantine_dir.is_dir():
        doomed += sorted(p for p in cache.quarantine_dir.iterdir() if p.is_file())
    if cache.root.is_dir():
        for shard in sorted(cache.root.iterdir()):
            if shard.name == QUARANTINE or not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                age = now - path.stat().st_mtime
                if path.name.startswith("."):  # an interrupted atomic write
                    if age > _GRACE_S:
                        doomed.append(path)
                elif path.suffix == CHECKSUM_SUFFIX:
                    if not cache.has(path.stem) and age > _GRACE_S:
                        doomed.append(path)
                elif path.suffix == ".png":
                    key = path.stem
                    stale = older_than_days is not None and (
                        now - _last_used(cache, key) > older_than_days * 86400.0
                    )
                    if stale or cache.recorded_sha256(key) is None:
                        doomed.append(path)
                        if cache.checksum_path(key).exists():
                            doomed.append(cache.checksum_path(key))
    size = sum(p.stat().st_size for p in doomed if p.exists())
    if not dry_run:
        for path in doomed:
            path.unlink(missing_ok=True)
    return PruneReport(doomed, size)


def _last_used(cache: ImageCache, key: str) -> float:
    """When ``key`` was last written or linked into a run (its checksum file's mtime)."""
    try:
        return cache.checksum_path(key).stat().st_mtime
    except OSError:
        return cache.path(key).stat().st_mtime
