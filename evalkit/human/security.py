"""Tokens, rate limiting, input validation and path checks for the rating service."""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
import math
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from evalkit.errors import UsageError
from evalkit.human.errors import BadRequest, RateLimited

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits
MAX_TOKEN_CHARS = 128
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 100
MAX_JSON_DEPTH = 8
RESERVED_NAMES = frozenset({"admin", "administrator", "root", "evalkit"})
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


def new_token() -> str:
    """An unguessable access token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_id(nbytes: int = 16) -> str:
    """An opaque random identifier (assignment ids, rater ids)."""
    return secrets.token_urlsafe(nbytes)


def hash_token(token: str) -> str:
    """The stored form of a token: hex sha256. Tokens themselves are never stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def check_token_format(token: object) -> str:
    """Return ``token`` if it looks like one of ours; raise BadRequest otherwise."""
    if not isinstance(token, str) or not token:
        raise BadRequest("missing access token: open the personal link you were sent")
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_RE.match(token):
        raise BadRequest("malformed access token: open the personal link you were sent")
    return token


def check_id(value: object, what: str) -> str:
    """Return an opaque id if well formed (8-64 URL-safe characters); raise BadRequest otherwise."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise BadRequest(f"malformed {what} {shown!r}: expected 8-64 letters, digits, '-' or '_'")
    return value


def name_key(name: str) -> str:
    """The form in which two rater names are compared: NFKC, case-folded, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def check_name(name: object, reserved_ok: bool = False) -> str:
    """A rater's display name: 1-100 printable characters, not a reserved name such as "admin"."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("a rater name must not be empty")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadRequest(f"a rater name must be at most {MAX_NAME_CHARS} printable characters")
    if not reserved_ok and name_key(name) in RESERVED_NAMES:
        raise BadRequest(f"the rater name {name!r} is reserved: choose another name")
    return name


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, nested at most MAX_JSON_DEPTH levels; BadRequest otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest(
            f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, dict | list))
    return data


def csv_safe(value: Any) -> Any:
    """Neutralise spreadsheet formulas in a text cell (prompts, names, categories come from outside)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def parse_trusted_proxies(values: Iterable[str]) -> list[str]:
    """Proxy addresses or networks (``10.0.0.5``, ``10.0.0.0/8``) whose X-Forwarded-For is believed."""
    out = []
    for v in values:
        text = v.strip()
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise UsageError(
                f"--trusted-proxy {v!r}: expected an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
        out.append(text)
    return out


def escape(text: object) -> str:
    """HTML-escape any value (quotes included) for text and attribute positions."""
    return html.escape(str(text), quote=True)


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """Resolve ``root/relative``; refuse absolute paths, '..' and anything leading outside ``root``."""
    if (
        not isinstance(relative, str)
        or not relative
        or "\x00" in relative
        or "\\" in relative
        or relative.startswith("/")
        or ".." in Path(relative).parts
    ):
        raise BadRequest(f"{where}: path {relative!r} must be relative and inside {root}")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise BadRequest(f"{where}: path {relative!r} leads outside {root}")
    return target


def is_inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` (resolved, symlinks followed) lies inside one of ``roots``."""
    real = path.resolve()
    return any(real.is_relative_to(r.resolve()) for r in roots)


class RateLimiter:
    """Token buckets per key: ``capacity`` requests at once, refilled at ``rate`` per second.

    ``take(key)`` raises RateLimited with a retry hint when the bucket is empty.
    Thread-safe; state is per process (each server process limits its own clients).
    """

    def __init__(
        self,
        capacity: float = 60.0,
        rate: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError("capacity and rate must be positive")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, cost: float = 1.0) -> None:
        """Spend ``cost`` from ``key``'s bucket or raise RateLimited."""
        now = self._clock()
        with self._lock:
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            if level < cost:
                self._buckets[key] = (level, now)
                wait = (cost - level) / self.rate
                raise RateLimited(
                    f"too many requests: please slow down and try again in {math.ceil(wait)} s",
                    retry_after=wait,
                )
            if len(self._buckets) >= self._max_keys and key not in self._buckets:
                self._buckets.clear()  # bounded memory; a reset only ever helps clients
            self._buckets[key] = (level - cost, now)

    def check(self, key: str) -> None:
        """Raise RateLimited if ``key`` could not spend one unit now (spends nothing)."""
        now = self._clock()
        with self._lock:
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
        if level < 1.0:
            wait = (1.0 - level) / self.rate
            raise RateLimited(
                f"too many failed requests: please wait {math.ceil(wait)} s", retry_after=wait
            )


class NoRateLimit(RateLimiter):
    """A limiter that never refuses (benchmarks, offline tools)."""

    def __init__(self) -> None:
        super().__init__()

    def take(self, key: str, cost: float = 1.0) -> None:  # noqa: D102 - never refuses
        return None

    def check(self, key: str) -> None:  # noqa: D102 - never refuses
        return None
