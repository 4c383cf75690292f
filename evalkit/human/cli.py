"""``evalkit rate ...``: create a study, invite and revoke raters, serve the app, report, export.

Mounted by the main CLI with ``app.add_typer(rate_app, name="rate")``; also runnable on
its own as ``python -m evalkit.human.cli``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from evalkit.console import run_console
from evalkit.errors import UsageError
from evalkit.progress import log

rate_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Human pairwise rating studies (DrawBench protocol): create, invite, serve, report.",
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Vote store: a SQLite path, or a postgresql:// URL without a password (the command "
        "line is visible in `ps`: put a URL with a password in $EVALKIT_RATE_DB or --db-file, or "
        "the password in ~/.pgpass). Default: $EVALKIT_RATE_DB, else the study's SQLite file.",
    ),
]
DbFileOption = Annotated[
    Path | None,
    typer.Option(
        "--db-file",
        help="A file (mode 0600) holding the vote store URL on its first line.",
    ),
]


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


def _db_url(db: str | None, db_file: Path | None) -> str | None:
    """The vote store URL from --db, --db-file or $EVALKIT_RATE_DB (in that order); None: the default."""
    from evalkit.human.store import redact_url

    if db and db_file:
        raise UsageError("--db and --db-file: give one of them")
    if db:
        if redact_url(db) != db:
            raise UsageError(
                "--db: the URL holds a password, which `ps` would show to every user of this "
                "machine; put it in $EVALKIT_RATE_DB or in a file given with --db-file "
                "(or the password in ~/.pgpass)"
            )
        return db
    if db_file:
        try:
            text = db_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise UsageError(f"--db-file {db_file}: unreadable ({exc.strerror})") from None
        if not text or not text[0].strip():
            raise UsageError(f"--db-file {db_file}: empty (expected a database URL)")
        if db_file.stat().st_mode & 0o077:
            log(f"warning: {db_file} is readable by other users; chmod 600 it")
        return text[0].strip()
    return os.environ.get("EVALKIT_RATE_DB") or None


def _store(study, db: str | None, db_file: Path | None = None):  # noqa: ANN001, ANN202
    from evalkit.human.report import open_store_for

    return open_store_for(study, _db_url(db, db_file))


def _link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/?token={token}"


@rate_app.command()
def create(
    runs: Annotated[
        list[str], typer.Option("--runs", help="Run folders (reports/<run-id>); two or more.")
    ],
    out: Annotated[Path, typer.Option("--out", help="New study folder.")],
    more_runs: Annotated[
        list[str] | None,
        typer.Argument(help="More run folders (after --runs A B C).", show_default=False),
    ] = None,
    suite: Annotated[str, typer.Option(help="Suite every run must be on.")] = "drawbench",
    images_per_side: Annotated[int, typer.Option(help="Images per set shown (Imagen: 8).")] = 8,
    questions: Annotated[
        str, typer.Option(help="Comma-separated: fidelity,alignment.")
    ] = "fidelity,alignment",
    ratings_per_item: Annotated[int, typer.Option(help="Target ratings per prompt and pair.")] = 5,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Compare this run (folder or run id) against each other run instead of all pairs."
        ),
    ] = None,
    gold_tasks: Annotated[
        int | None,
        typer.Option(
            help="Number of gold (attention-check) tasks; default 5% of prompts, at least 4."
        ),
    ] = None,
    gold_every: Annotated[
        int, typer.Option(help="One gold task in every N tasks of a rater.")
    ] = 10,
    schedule: Annotated[
        str, typer.Option(help="balanced, or adaptive (most uncertain outcome first).")
    ] = "balanced",
    undo_window: Annotated[
        float, typer.Option(help="Seconds within which a vote can be undone.")
    ] = 60.0,
    base_url: Annotated[
        str, typer.Option(help="Base URL printed in the admin link.")
    ] = "http://127.0.0.1:7860",
    seed: Annotated[int, typer.Option(help="Seed for choosing gold tasks.")] = 0,
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """Create a study from finished runs on the same suite; prints the admin token once."""
    from evalkit.human.security import hash_token, new_id, new_token
    from evalkit.human.study import DEFAULT_DB_FILE, create_study

    all_runs = _split(runs) + list(more_runs or [])
    db_url = _db_url(db, db_file)
    pg = bool(db_url and db_url.startswith(("postgresql://", "postgres://")))
    study = create_study(
        all_runs,
        out,
        suite=suite,
        images_per_side=images_per_side,
        questions=_split([questions]),
        ratings_per_item=ratings_per_item,
        baseline=baseline,
        gold_tasks=gold_tasks,
        gold_every=gold_every,
        schedule=schedule,
        undo_window_s=undo_window,
        db="postgresql"
        if pg
        else (
            str(Path(db_url.removeprefix("sqlite:///")).resolve()) if db_url else DEFAULT_DB_FILE
        ),
        seed=seed,
    )
    from evalkit.human.report import open_store_for

    store = open_store_for(study, db_url)
    store.register_study(
        study.study_id, {"root": str(study.root), "runs": [r.run_id for r in study.runs.values()]}
    )
    admin = new_token()
    store.add_rater(study.study_id, new_id(), "admin", hash_token(admin), "admin")
    log(
        f"study {study.study_id}: {len(study.items)} prompts x {len(study.pairs)} pairs, {len(study.gold)} gold tasks"
    )
    typer.echo(f"study: {study.root}")
    typer.echo(f"admin token (shown once, keep it safe): {admin}")
    typer.echo(f"admin view: {_link(base_url, admin)}")


@rate_app.command()
def invite(
    study_dir: Annotated[Path, typer.Argument(help="Study folder.")],
    name: Annotated[str, typer.Option("--name", help="Rater's name (shown to the admin only).")],
    base_url: Annotated[
        str, typer.Option(help="Base URL the app is reached at.")
    ] = "http://127.0.0.1:7860",
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """Create a rater and print their personal link (the token is not stored, only its hash).

    Names are unique in a study (compared without case) and "admin" is reserved; the rater's
    id is printed on stderr (revoke and report take it).
    """
    from evalkit.human.security import check_name, hash_token, new_id, new_token
    from evalkit.human.study import load_study

    study = load_study(study_dir)
    store = _store(study, db, db_file)
    token = new_token()
    rater = store.add_rater(study.study_id, new_id(), check_name(name), hash_token(token), "rater")
    log(f"invited {rater.name} (rater id {rater.rater_id})")
    typer.echo(_link(base_url, token))


@rate_app.command()
def revoke(
    study_dir: Annotated[Path, typer.Argument(help="Study folder.")],
    name: Annotated[str | None, typer.Option("--name", help="Rater to revoke, by name.")] = None,
    rater_id: Annotated[
        str | None, typer.Option("--id", help="Rater to revoke, by id (see `rate raters`).")
    ] = None,
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """Revoke one rater's token: the link and its images stop working; their votes stay
    recorded and are flagged in reports (``report --exclude-revoked`` drops them)."""
    from evalkit.human.security import name_key
    from evalkit.human.study import load_study

    if (name is None) == (rater_id is None):
        raise UsageError("revoke: give --name NAME or --id RATER_ID")
    study = load_study(study_dir)
    store = _store(study, db, db_file)
    raters = [r for r in store.raters(study.study_id) if r.role == "rater"]
    if rater_id is not None:
        matches = [r for r in raters if r.rater_id == rater_id]
        if not matches:
            raise UsageError(f"no rater with id {rater_id!r} in study {study.study_id}")
    else:
        matches = [r for r in raters if name_key(r.name) == name_key(name or "")]
        if not matches:
            raise UsageError(f"no rater named {name!r} in study {study.study_id}")
        if len(matches) > 1:
            ids = ", ".join(r.rater_id for r in matches)
            raise UsageError(
                f"{len(matches)} raters are named {name!r} (ids {ids}): revoke one with --id"
            )
    (r,) = matches
    changed = store.revoke(study.study_id, r.rater_id)
    typer.echo(f"{'revoked' if changed else 'already revoked'}: {r.name} ({r.rater_id})")


@rate_app.command()
def raters(
    study_dir: Annotated[Path, typer.Argument(help="Study folder.")],
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """List raters (name, role, status, id)."""
    from evalkit.human.study import load_study

    study = load_study(study_dir)
    for r in _store(study, db, db_file).raters(study.study_id):
        typer.echo(f"{r.name}\t{r.role}\t{'active' if r.active else 'revoked'}\t{r.rater_id}")


@rate_app.command()
def serve(
    study_dir: Annotated[Path, typer.Argument(help="Study folder.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    no_ui: Annotated[
        bool,
        typer.Option("--no-ui", help="JSON API and images only (scripted raters, load tests)."),
    ] = False,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            help="A reverse proxy (IP or network) whose X-Forwarded-For is believed; repeatable. "
            "Without it the client address is the TCP peer.",
        ),
    ] = None,
    image_cache_mb: Annotated[
        int,
        typer.Option(
            min=0,
            help="Memory for re-encoded images (MiB). Give it what the study's images need "
            "(the server says so at start): a smaller cache re-encodes nearly every image.",
        ),
    ] = 1024,
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """Serve the rating app (Gradio UI, images by opaque id, JSON API)."""
    from evalkit.human.security import parse_trusted_proxies
    from evalkit.human.server import serve as run_server
    from evalkit.human.service import RatingService
    from evalkit.human.study import load_study

    proxies = parse_trusted_proxies(_split(trusted_proxy))
    study = load_study(study_dir)
    service = RatingService(
        study, _store(study, db, db_file), image_cache_bytes=image_cache_mb << 20
    )
    need_mb = -(-service.shown_images_bytes() // (1 << 20))
    log(f"images: {need_mb} MiB re-encoded for raters; image cache {image_cache_mb} MiB")
    if need_mb > image_cache_mb:
        log(
            f"warning: the image cache ({image_cache_mb} MiB) cannot hold the study's images "
            f"({need_mb} MiB): most image requests will decode and re-encode a file, which "
            f"slows every rater's tasks; give it --image-cache-mb {need_mb} if memory allows"
        )
    log(f"serving study {study.study_id} on http://{host}:{port}/ (Ctrl-C stops)")
    with _reraise_sigint():
        run_server(service, host=host, port=port, ui=not no_ui, trusted_proxies=proxies)


@contextlib.contextmanager
def _reraise_sigint() -> Iterator[None]:
    """Make a Ctrl-C that the server swallows (uvicorn stops gracefully) end the command as one.

    The server returns normally after SIGINT; this raises KeyboardInterrupt afterwards so the
    console wrapper exits 130 like every other interrupted evalkit command.
    """
    seen: list[int] = []

    def handler(sig: int, frame: object) -> None:
        seen.append(sig)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen:
        raise KeyboardInterrupt


@rate_app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="Study folder.")],
    min_gold_accuracy: Annotated[
        float | None, typer.Option(help="Exclude raters whose gold accuracy is below this (0-1).")
    ] = None,
    exclude_rater: Annotated[
        list[str] | None,
        typer.Option(help="Exclude a rater by id or (unique) name; repeatable."),
    ] = None,
    exclude_revoked: Annotated[
        bool, typer.Option(help="Drop the votes of revoked raters (flagged either way).")
    ] = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """Write STUDY/report/: report.json, preferences.csv, raters.csv, report.md, plots (PNG, SVG)."""
    from evalkit.human.report import write_report

    if resamples < 100:
        raise UsageError("--resamples must be at least 100")
    out = write_report(
        study_dir,
        db_url=_db_url(db, db_file),
        min_gold_accuracy=min_gold_accuracy,
        exclude_raters=exclude_rater or [],
        exclude_revoked=exclude_revoked,
        n_resamples=resamples,
        seed=seed,
    )
    typer.echo(str(out))


@rate_app.command()
def export(
    study_dir: Annotated[Path, typer.Argument(help="Study folder.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: stdout).")
    ] = None,
    db: DbOption = None,
    db_file: DbFileOption = None,
) -> None:
    """Export every vote event (undone ones flagged) with model names resolved."""
    from evalkit.atomic import atomic_write_text
    from evalkit.human.export import export_votes
    from evalkit.human.study import load_study

    study = load_study(study_dir)
    _name, text = export_votes(study, _store(study, db, db_file), fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
        log(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m evalkit.human.cli``): exit codes as ``evalkit``'s."""
    return run_console(rate_app, argv)


if __name__ == "__main__":
    sys.exit(main())
