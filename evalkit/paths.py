"""Default locations: the cache root (weights, reference statistics, images)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EVALKIT_CACHE`` or ``~/.cache/evalkit``."""
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/evalkit").expanduser()
