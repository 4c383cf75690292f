"""Write the ``shapes`` suite's default prompts to ``prompts/shapes-v<version>.jsonl``.

The suite itself is procedural (it needs no file); the export is there to read, to diff
between suite versions, and to score any model on the same prompts through the ``jsonl``
suite. ``tests/test_shapes_suite.py`` checks that the committed file matches the suite.

    .venv/bin/python scripts/export_shapes_prompts.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evalkit.atomic import atomic_write_text
from evalkit.suites.shapes import SUITE_VERSION, make_shapes_suite

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


def shapes_prompts_jsonl() -> str:
    """The default ``shapes`` items as JSONL lines: id, prompt, category."""
    items = make_shapes_suite({}).items()
    lines = [
        json.dumps({"id": it.id, "prompt": it.prompt, "category": it.category}) for it in items
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    path = PROMPTS_DIR / f"shapes-v{SUITE_VERSION}.jsonl"
    atomic_write_text(path, shapes_prompts_jsonl())
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
