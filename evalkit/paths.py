"""Default locations: the cache root (weights, reference statistics, images)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from evalkit.errors import UsageError


def cache_root() -> Path:
    """``$EVALKIT_CACHE`` or ``~/.cache/evalkit``."""
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/evalkit").expanduser()


def cache_what(explicit: str | os.PathLike | None) -> str:
    """How to name the cache folder in an error: the flag or the environment variable that chose it."""
    if explicit is not None:
        return "cache folder (--cache-dir)"
    if os.environ.get("EVALKIT_CACHE"):
        return "cache folder ($EVALKIT_CACHE)"
    return "cache folder (~/.cache/evalkit)"


def usable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder that exists and is writable (created if needed), else UsageError naming ``what``."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"{what} {folder} cannot be created or written ({reason})") from exc
    return folder
