"""Running a Typer app as a console command: evalkit's errors, Ctrl-C and usage errors to exit codes.

Exit codes (documented in the README): 0 success, 1 unexpected failure (with a traceback),
2 usage error, 3 bad input data, 4 missing weights or data, 5 protocol mismatch, 6 invalid
generator output, 130 interrupted (Ctrl-C / SIGINT). Every evalkit error prints one line
``error: <message>`` on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from evalkit.errors import EvalkitError

INTERRUPTED = 130
DEFAULT_INTERRUPT_HINT = "interrupted"


def run_console(
    app: typer.Typer,
    argv: Sequence[str] | None = None,
    *,
    interrupt_hint: str = DEFAULT_INTERRUPT_HINT,
) -> int:
    """Run ``app`` on ``argv`` and return the process exit code (see the module docstring).

    ``interrupt_hint`` is printed on stderr when the command is interrupted.
    """
    try:
        code = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors found by the parser (typer's own click)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    # Typer turns Ctrl-C into Exit(130) and, without standalone mode, returns the code.
    code = int(code) if isinstance(code, int) and not isinstance(code, bool) else 0
    if code == INTERRUPTED:
        print(interrupt_hint, file=sys.stderr)
    return code
