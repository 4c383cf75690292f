"""Progress bars with ETA on stderr (stdout stays machine-readable)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True, highlight=False)


def log(message: str) -> None:
    """A status line on stderr."""
    stderr_console.print(message, markup=False, soft_wrap=True, highlight=False)


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n)``; draws a bar with count, elapsed time and ETA on stderr."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr_console,
        transient=not sys.stderr.isatty(),
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
