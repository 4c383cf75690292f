"""``evalkit rate serve`` with every HTTP request timed inside the server process.

    python benchmarks/_timed_rating_server.py TIMINGS.tsv serve STUDY_DIR --port 7860

Used by ``bench_rating_load.py --server-timings``: the client-side figures include the
client's own queueing (its processes share the machine with the server); these do not.
The server's app is wrapped once, outermost, so a request is timed from the moment uvicorn
hands it over to the last byte of its answer. On exit (SIGTERM or Ctrl-C, through uvicorn's
graceful shutdown, after which uvicorn re-raises the signal to the handler installed here)
one line per request goes to TIMINGS.tsv: route, then milliseconds.
"""

from __future__ import annotations

import atexit
import signal
import sys
import time
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write_text
from evalkit.human import server
from evalkit.human.cli import main as rate_main


def route_of(path: str) -> str:
    """A request's route with its ids removed: ``/api/v1/vote`` stays, ``/img/…`` is ``img``."""
    return path if path.startswith("/api/") else path.split("/")[1] or "/"


def install(out: Path) -> None:
    """Wrap ``server.build_app`` so the served app records (route, ms) of every HTTP request."""
    rows: list[tuple[str, float]] = []
    build = server.build_app

    def timed_build(*args: Any, **kwargs: Any) -> Any:
        app = build(*args, **kwargs)

        async def timed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()

            async def send_and_time(message: Any) -> None:
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    rows.append((route_of(scope["path"]), time.perf_counter() - started))

            await app(scope, receive, send_and_time)

        return timed

    server.build_app = timed_build  # type: ignore[assignment]
    atexit.register(
        lambda: atomic_write_text(out, "".join(f"{r}\t{s * 1000:.3f}\n" for r, s in rows))
    )


if __name__ == "__main__":
    install(Path(sys.argv.pop(1)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit through atexit, not killed
    sys.exit(rate_main(sys.argv[1:]))
