"""Human pairwise rating studies: study set-up, the rating app, vote storage and statistics.

The pieces, each in its own module:

- ``study`` (with ``runs`` and ``gold``): build and load a study from finished runs.
- ``store``: append-only vote storage (SQLite by default, PostgreSQL by URL).
- ``schedule``: which task a rater sees next.
- ``service``: the vote-acceptance layer every front end (Gradio, HTTP, scripts) calls.
- ``security``: tokens, rate limiting, input and path checks.
- ``stats``, ``agreement``, ``bradley_terry``: the statistics; ``report`` and ``plots`` write them.
- ``pages``, ``app`` and ``server``: HTML, the Gradio app and the HTTP server; ``cli``: ``evalkit rate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["preference_summary"]


def preference_summary(study_dir: str | Path, db_url: str | None = None) -> dict[str, Any]:
    """Compact preference statistics of a study (see ``evalkit.human.report.preference_summary``)."""
    from evalkit.human.report import preference_summary as _summary

    return _summary(study_dir, db_url=db_url)
