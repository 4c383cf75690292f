"""Your own prompts from a CSV or JSONL file (the ``csv`` and ``jsonl`` suites).

Each row (CSV, with a header line) or line (JSONL, one object per line) has a
``prompt`` (aliases ``Prompts``, ``text``, ``caption``; names are case-insensitive),
and optionally an ``id`` and a ``category``. Ids default to ``<file stem>-<row:05d>``
(rows counted from 0); given ids must be unique and file-name safe (letters, digits,
``-``, ``_``, ``.``; starting with a letter or digit). Blank lines are skipped. Every
malformed input is refused with the file and line at fault.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import InputError, UsageError
from evalkit.hashing import sha256_file, sha256_json
from evalkit.options import check_known
from evalkit.suites.base import Item, Suite, validate_prompt

PROMPT_KEYS = ("prompt", "prompts", "text", "caption")
ID_KEY = "id"
CATEGORY_KEY = "category"
MAX_ID_CHARS = 128
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class _Row:
    line: int
    prompt: Any
    id: Any = None
    category: Any = None


def _keys(names: list[str], where: str) -> dict[str, str]:
    """Map the role of each column (prompt, id, category) to its name in the file."""
    by_lower: dict[str, str] = {}
    for name in names:
        low = name.strip().lower()
        if low in by_lower and low in (*PROMPT_KEYS, ID_KEY, CATEGORY_KEY):
            raise InputError(f"{where}: column {name!r} appears twice")
        by_lower.setdefault(low, name)
    prompt_names = [by_lower[k] for k in PROMPT_KEYS if k in by_lower]
    if len(prompt_names) > 1:
        raise InputError(
            f"{where}: several prompt columns {prompt_names}; keep one of {list(PROMPT_KEYS)}"
        )
    roles = {"prompt": prompt_names[0]} if prompt_names else {}
    for role in (ID_KEY, CATEGORY_KEY):
        if role in by_lower:
            roles[role] = by_lower[role]
    return roles


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"prompt file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path} is a folder, not a prompt file") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from exc


def read_csv_rows(path: Path) -> list[_Row]:
    """Rows of a CSV prompt file with a header line naming its columns."""
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[_Row] = []
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
        if header is None:
            raise InputError(
                f"{path}: empty file (expected a header line such as 'prompt,id,category')"
            )
        roles = _keys(header, f"{path}: line {reader.line_num}")
        if "prompt" not in roles:
            raise InputError(
                f"{path}: line {reader.line_num}: no header naming a prompt column (found {header}); the first "
                f"line must name the columns, e.g. 'prompt,id,category' (prompt aliases: {', '.join(PROMPT_KEYS)})"
            )
        index = {role: header.index(name) for role, name in roles.items()}
        previous = reader.line_num
        for fields in reader:
            line, previous = previous + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise InputError(
                    f"{path}: line {line}: {len(fields)} fields, but the header has {len(header)}; "
                    "quote fields that contain commas"
                )
            rows.append(
                _Row(
                    line,
                    fields[index["prompt"]],
                    *(fields[index[r]] if r in index else None for r in (ID_KEY, CATEGORY_KEY)),
                )
            )
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    return rows


def read_jsonl_rows(path: Path) -> list[_Row]:
    """Rows of a JSONL prompt file: one JSON object per non-blank line."""
    rows: list[_Row] = []
    for line, text in enumerate(_decode(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path}: line {line}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        if not isinstance(obj, Mapping):
            raise InputError(
                f'{path}: line {line}: expected a JSON object such as {{"prompt": "..."}}, got {type(obj).__name__}'
            )
        roles = _keys([str(k) for k in obj], f"{path}: line {line}")
        if "prompt" not in roles:
            raise InputError(
                f"{path}: line {line}: no prompt key (one of {', '.join(PROMPT_KEYS)}); keys are {sorted(obj)}"
            )
        rows.append(
            _Row(
                line,
                *(
                    obj.get(roles[r]) if r in roles else None
                    for r in ("prompt", ID_KEY, CATEGORY_KEY)
                ),
            )
        )
    return rows


def _stem_id(stem: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    return safe if _SAFE_ID.match(safe) else f"prompts{safe}"


def build_items(rows: list[_Row], path: Path) -> list[Item]:
    """Validate rows into items: usable prompts, safe unique ids, text categories."""
    if not rows:
        raise InputError(f"{path}: no prompts")
    stem = _stem_id(path.stem)
    seen: dict[str, int] = {}
    items = []
    for n, row in enumerate(rows):
        where = f"{path}: line {row.line}"
        prompt = validate_prompt(row.prompt, where)
        raw_id = row.id
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            item_id = f"{stem}-{n:05d}"
        elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise InputError(f"{where}: id must be text or an integer, got {raw_id!r}")
        else:
            item_id = str(raw_id).strip()
            if not _SAFE_ID.match(item_id) or len(item_id) > MAX_ID_CHARS:
                raise InputError(
                    f"{where}: id {item_id!r} is not file-name safe: use letters, digits, '-', '_' and '.', "
                    f"starting with a letter or digit, at most {MAX_ID_CHARS} characters"
                )
        if item_id in seen:
            raise InputError(
                f"{where}: id {item_id!r} already used on line {seen[item_id]}; ids must be unique"
            )
        seen[item_id] = row.line
        category = row.category
        if isinstance(category, str):
            category = category.strip() or None
        elif category is not None:
            raise InputError(f"{where}: category must be text, got {category!r}")
        items.append(Item(item_id, prompt, category))
    return items


class PromptFileSuite(Suite):
    """Prompts from one CSV or JSONL file; no reference images."""

    version = "1"

    def __init__(self, path: str | os.PathLike, fmt: str) -> None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown prompt file format {fmt!r}")
        self.name = fmt
        self.path = Path(path).expanduser()
        rows = read_csv_rows(self.path) if fmt == "csv" else read_jsonl_rows(self.path)
        self._items = build_items(rows, self.path)
        self.file_sha256 = sha256_file(self.path)

    def items(self) -> list[Item]:
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "file": self.path.name,
            "file_sha256": self.file_sha256,
            "num_prompts": len(self._items),
            "items_sha256": sha256_json([[i.id, i.prompt, i.category] for i in self._items]),
        }


def _make(options: dict[str, Any], fmt: str) -> PromptFileSuite:
    check_known(options, ("path",), f"suite {fmt!r}")
    if not options.get("path"):
        raise UsageError(
            f"suite {fmt!r} needs the option path=FILE (your {fmt.upper()} prompt file)"
        )
    return PromptFileSuite(str(options["path"]), fmt)


def make_csv_suite(options: dict[str, Any]) -> PromptFileSuite:
    """Registry factory for ``csv``: option ``path``."""
    return _make(options, "csv")


def make_jsonl_suite(options: dict[str, Any]) -> PromptFileSuite:
    """Registry factory for ``jsonl``: option ``path``."""
    return _make(options, "jsonl")
