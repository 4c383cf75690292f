"""Content hashes used for cache keys, run ids and weight checksums."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from evalkit.atomic import canonical_json

_CHUNK = 1 << 20


def update_from_file(h: Any, path: str | os.PathLike) -> Any:
    """Feed a file's bytes into the hash object ``h`` in 1 MiB chunks; returns ``h``."""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    return update_from_file(hashlib.sha256(), path).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON form of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
