"""DrawBench (Imagen §4.3): 200 prompts in 11 categories, fetched rather than bundled.

The prompt sheet carries no licence, so evalkit ships no copy: ``evalkit fetch
drawbench`` downloads the public sheet's CSV export once into the cache
(``<cache>/suites/drawbench/drawbench.csv``), after checking it is the benchmark
(columns ``Prompts`` and ``Category``, 200 rows, the 11 categories with their counts).
``prompts=FILE`` uses a local copy instead. Item ids are ``drawbench-000`` …
``drawbench-199`` in row order.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import InputError, MissingWeightsError
from evalkit.fetch import cache_root, download
from evalkit.hashing import sha256_file, sha256_json
from evalkit.options import as_bool, check_known
from evalkit.suites.base import Item, Suite, validate_prompt

SHEET_URL = "https://docs.google.com/spreadsheets/d/1y7nAbmR4FREi6npB1u-Bo3GFdwdOPYJc617rBOxIRHY"
EXPORT_URL = SHEET_URL + "/gviz/tq?tqx=out:csv&sheet=Sheet1"
NUM_PROMPTS = 200
CATEGORY_COUNTS: dict[str, int] = {
    "Colors": 25,
    "Conflicting": 10,
    "Counting": 19,
    "DALL-E": 20,
    "Descriptions": 20,
    "Gary Marcus et al.": 10,
    "Misspellings": 10,
    "Positional": 20,
    "Rare Words": 7,
    "Reddit": 38,
    "Text": 21,
}
# sha256_json of [[prompt, category], ...] of the published sheet, as parsed by read_drawbench.
# It does not depend on CSV quoting or line endings, so any faithful export matches it.
PUBLISHED_CONTENT_SHA256 = "352fb0780688e9053a38507d9c23e8a1bfe81a81808f4cef82b21561addf6599"
_FETCH_HINT = "`evalkit fetch drawbench`"


@dataclass(frozen=True)
class DrawBenchRows:
    """Parsed prompt rows, in file order, and how they differ from the benchmark."""

    prompts: tuple[str, ...]
    categories: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def content_sha256(self) -> str:
        return sha256_json([[p, c] for p, c in zip(self.prompts, self.categories, strict=True)])


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``fetch_drawbench`` keeps the CSV under ``cache_dir`` (default: the evalkit cache)."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return base / "suites" / "drawbench" / "drawbench.csv"


def _find_column(header: list[str], name: str, path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    if name.lower() not in lowered:
        raise InputError(
            f"{path}: no {name!r} column (header is {header}); a DrawBench CSV has columns "
            f"'Prompts' and 'Category'. Fetch it with {_FETCH_HINT}"
        )
    return lowered.index(name.lower())


def _problems(categories: list[str]) -> list[str]:
    """How the rows differ from 200 prompts in the 11 official categories."""
    problems = []
    if len(categories) != NUM_PROMPTS:
        problems.append(f"{len(categories)} prompts (expected {NUM_PROMPTS})")
    counts = Counter(categories)
    for name, expected in CATEGORY_COUNTS.items():
        if counts.get(name, 0) != expected:
            problems.append(
                f"category {name!r}: {counts.get(name, 0)} prompts (expected {expected})"
            )
    for name in sorted(set(counts) - set(CATEGORY_COUNTS)):
        problems.append(f"category {name!r}: {counts[name]} prompts (not a DrawBench category)")
    return problems


def read_drawbench(path: str | os.PathLike) -> DrawBenchRows:
    """Parse a DrawBench CSV (prompts and categories stripped; blank rows skipped)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise InputError(f"DrawBench prompts file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text ({exc}); is it a CSV export of the sheet?"
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file; fetch DrawBench with {_FETCH_HINT}")
        p_col = _find_column(header, "Prompts", path)
        c_col = _find_column(header, "Category", path)
        prompts: list[str] = []
        categories: list[str] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}: line {reader.line_num}"
            if len(row) <= max(p_col, c_col):
                raise InputError(
                    f"{where}: {len(row)} fields, expected at least {max(p_col, c_col) + 1}"
                )
            prompt = validate_prompt(row[p_col].strip(), where)
            category = row[c_col].strip()
            if not category:
                raise InputError(f"{where}: empty Category")
            prompts.append(prompt)
            categories.append(category)
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    return DrawBenchRows(tuple(prompts), tuple(categories), tuple(_problems(categories)))


def _refusal(path: Path, rows: DrawBenchRows) -> InputError:
    return InputError(
        f"{path} is not the DrawBench benchmark: {'; '.join(rows.problems)}. Use the published sheet "
        f"({_FETCH_HINT}), or pass the suite option strict=false to evaluate an edited copy "
        "(recorded in the results)."
    )


def fetch_drawbench(
    cache_dir: str | os.PathLike | None = None, *, url: str = EXPORT_URL, force: bool = False
) -> Path:
    """Download the DrawBench CSV, validate it and cache it atomically; return the cached path.

    An already-cached valid copy is returned without network access unless ``force``.
    A download that is not the benchmark is refused and leaves the cache untouched.
    """
    final = cache_path(cache_dir)
    if final.is_file() and not force:
        rows = read_drawbench(final)
        if not rows.problems:
            print(f"DrawBench prompts already cached at {final}", file=sys.stderr, flush=True)
            return final
        print(
            f"cached DrawBench copy {final} is invalid; downloading again",
            file=sys.stderr,
            flush=True,
        )
    staging = final.with_name(".drawbench.csv.download")
    for stale in (staging, staging.with_name(staging.name + ".part")):
        stale.unlink(missing_ok=True)
    download(url, staging, None, description="DrawBench prompts", record_hash=False)
    try:
        try:
            rows = read_drawbench(staging)
        except InputError as exc:
            raise InputError(
                f"the file downloaded from {url} is not a DrawBench CSV: {exc}"
            ) from exc
        if rows.problems:
            raise InputError(
                f"the file downloaded from {url} is not the DrawBench benchmark: {'; '.join(rows.problems)}"
            )
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, final)
    same = "matches" if rows.content_sha256 == PUBLISHED_CONTENT_SHA256 else "differs from"
    print(
        f"DrawBench: {len(rows.prompts)} prompts in {len(CATEGORY_COUNTS)} categories cached at {final} "
        f"(sha256 {sha256_file(final)}; no published checksum, content {same} the copy evalkit was tested with)",
        file=sys.stderr,
        flush=True,
    )
    return final


class DrawBenchSuite(Suite):
    """The 200 DrawBench prompts; no reference images."""

    name = "drawbench"
    version = "1"

    def __init__(
        self, path: str | os.PathLike, *, strict: bool = True, source: str = "prompts"
    ) -> None:
        self.path = Path(path)
        self.strict = strict
        self.source = source
        self.rows = read_drawbench(self.path)
        if self.rows.problems and strict:
            raise _refusal(self.path, self.rows)
        self.csv_sha256 = sha256_file(self.path)
        width = max(3, len(str(len(self.rows.prompts) - 1)))
        self._items = [
            Item(f"drawbench-{i:0{width}d}", p, c)
            for i, (p, c) in enumerate(zip(self.rows.prompts, self.rows.categories, strict=True))
        ]

    def items(self) -> list[Item]:
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "file": self.path.name,
            "csv_sha256": self.csv_sha256,
            "content_sha256": self.rows.content_sha256,
            "matches_published": self.rows.content_sha256 == PUBLISHED_CONTENT_SHA256,
            "strict": self.strict,
            "num_prompts": len(self._items),
            "category_counts": dict(sorted(Counter(self.rows.categories).items())),
        }
        if self.rows.problems:
            out["deviations"] = list(self.rows.problems)
        return out


_OPTIONS = ("prompts", "strict", "cache_dir")
#: how option errors name this suite
WHERE = "suite 'drawbench'"


def make_drawbench_suite(options: dict[str, Any]) -> DrawBenchSuite:
    """Registry factory for ``drawbench``: ``prompts`` (local CSV), ``strict``, ``cache_dir``."""
    check_known(options, _OPTIONS, WHERE)
    strict = as_bool(options.get("strict", True), "strict", WHERE)
    if options.get("prompts") is not None:
        path = Path(str(options["prompts"])).expanduser()
        if not path.is_file():
            raise InputError(f"DrawBench prompts file not found: {path} (the prompts option)")
        return DrawBenchSuite(path, strict=strict, source="prompts")
    cached = cache_path(options.get("cache_dir"))
    if cached.is_file():
        return DrawBenchSuite(cached, strict=strict, source="cache")
    raise MissingWeightsError(
        f"DrawBench prompts are not available locally (no cached copy at {cached}). Run "
        f"{_FETCH_HINT} to download them from the public sheet ({SHEET_URL}), or pass --prompts FILE "
        "(suite option prompts=FILE) with a CSV export that has the columns Prompts and Category."
    )
