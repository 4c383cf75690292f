"""Raters by id: unique and reserved names, revoke and exclude by id, revoked votes flagged;
private study files; no database password on the command line."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import stat

import pytest

from evalkit.human.cli import main
from evalkit.human.demo import add_rater, make_run, make_study
from evalkit.human.errors import BadRequest, Conflict
from evalkit.human.export import export_votes
from evalkit.human.report import compute_report, open_store_for
from evalkit.human.security import NoRateLimit, hash_token, new_id
from evalkit.human.service import RatingService
from evalkit.human.study import load_study

from .test_human_report import cast


def test_rater_names_are_unique_per_study_and_reserved_names_are_refused(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0)
    add_rater(study, store, "Alice")
    for clash in ("Alice", "alice", "  ALICE ", "Ａｌｉｃｅ"):  # case, spaces, full-width letters
        with pytest.raises(Conflict, match="already exists"):
            add_rater(study, store, clash)
    for reserved in ("admin", "Admin", "ADMINISTRATOR", "root"):
        with pytest.raises(BadRequest, match="reserved"):
            add_rater(study, store, reserved)
    add_rater(study, store, "Alice B")
    names = sorted(r.name for r in store.raters(study.study_id))
    assert names == ["Alice", "Alice B", "admin"]  # the admin row, created with the study


def test_cli_invite_refuses_a_taken_name_and_revoke_takes_an_id(tmp_path, capsys):
    runs = [str(make_run(tmp_path / "runs", f"run{k}", f"m{k}", seed=k)) for k in range(2)]
    study_dir = tmp_path / "study"
    args = ["create", "--runs", *runs, "--images-per-side", "2", "--out", str(study_dir)]
    assert main(args) == 0
    assert main(["invite", str(study_dir), "--name", "Alice"]) == 0
    assert main(["invite", str(study_dir), "--name", "alice"]) == 3
    assert "already exists" in capsys.readouterr().err
    assert main(["invite", str(study_dir), "--name", "admin"]) == 3
    assert "reserved" in capsys.readouterr().err
    study = load_study(study_dir)
    store = open_store_for(study, None)
    # A study made before names were unique may hold two raters of one name.
    with store._transaction(write=True) as cur:
        for rid in ("legacy-alice-1", "legacy-alice-2"):
            cur.execute(
                "INSERT INTO rating_raters (rater_id, study_id, name, role, token_hash, created_at)"
                " VALUES (?, ?, 'Bob', 'rater', ?, 0)",
                (rid, study.study_id, hash_token(new_id())),
            )
    assert main(["revoke", str(study_dir), "--name", "Bob"]) == 2
    assert "revoke one with --id" in capsys.readouterr().err
    assert main(["revoke", str(study_dir), "--id", "legacy-alice-2"]) == 0
    revoked = {r.rater_id for r in store.raters(study.study_id) if not r.active}
    assert revoked == {"legacy-alice-2"}


def test_revoked_raters_votes_are_flagged_and_can_be_excluded(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0, ratings_per_item=3)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    keep, drop = add_rater(study, store, "keep"), add_rater(study, store, "drop")
    cast(svc, keep, lambda a, q: "a", limit=4)
    cast(svc, drop, lambda a, q: "b", limit=4)
    dropped = store.rater_by_token(study.study_id, hash_token(drop))
    store.revoke(study.study_id, dropped.rater_id)

    report = compute_report(study, store, n_resamples=100)
    rows = {r["name"]: r for r in report["rater_quality"]["per_rater"]}
    assert rows["drop"]["revoked"] and not rows["keep"]["revoked"]
    assert rows["drop"]["rater_id"] == dropped.rater_id
    assert report["counts"]["revoked_raters_with_votes"] == 1
    assert report["counts"]["votes_from_revoked_raters_used"] == 8  # 4 tasks x 2 questions

    strict = compute_report(study, store, exclude_revoked=True, n_resamples=100)
    assert strict["counts"]["raters_used"] == 1
    assert strict["filters"]["excluded"] == [
        {"rater": "drop", "rater_id": dropped.rater_id, "reason": "revoked"}
    ]
    assert strict["preferences"][0]["overall"]["p_a"] == 1.0
    by_id = compute_report(study, store, exclude_raters=[dropped.rater_id], n_resamples=100)
    assert by_id["counts"]["raters_used"] == 1
    # by name, compared as invite and revoke compare names (case, spaces)
    by_name = compute_report(study, store, exclude_raters=["  DROP "], n_resamples=100)
    assert by_name["filters"]["excluded"][0]["rater_id"] == dropped.rater_id

    _, text = export_votes(study, store, "csv")
    flags = {(r["rater_name"], r["rater_revoked"]) for r in csv.DictReader(io.StringIO(text))}
    assert flags == {("keep", "False"), ("drop", "True")}


def test_study_folder_files_and_database_are_private(tmp_path):
    runs = [str(make_run(tmp_path / "runs", f"run{k}", f"m{k}", seed=k)) for k in range(2)]
    study_dir = tmp_path / "study"
    args = ["create", "--runs", *runs, "--images-per-side", "2", "--gold-tasks", "1"]
    assert main([*args, "--out", str(study_dir)]) == 0
    assert main(["invite", str(study_dir), "--name", "ann"]) == 0
    study = load_study(study_dir)
    store = open_store_for(study, None)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    cast(svc, add_rater(study, store, "bea"), lambda a, q: "a", limit=1)  # writes the WAL
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in study_dir.rglob("*")}
    assert stat.S_IMODE(study_dir.stat().st_mode) == 0o700
    assert mode["gold"] == 0o700
    for name in ("study.json", "votes.sqlite3", "votes.sqlite3-wal", "votes.sqlite3-shm", "0.png"):
        assert mode[name] == 0o600, (name, oct(mode[name]))


def test_a_database_password_is_refused_on_the_command_line(tmp_path, capsys, monkeypatch):
    study, _, _ = make_study(tmp_path, gold_tasks=0)
    monkeypatch.delenv("EVALKIT_RATE_DB", raising=False)
    secret_url = "postgresql://rater:s3cret@127.0.0.1:1/votes"
    assert main(["raters", str(study.root), "--db", secret_url]) == 2
    err = capsys.readouterr().err
    assert "EVALKIT_RATE_DB" in err and "--db-file" in err and "s3cret" not in err
    # The same URL from a file or the environment is taken (here: a SQLite file).
    url_file = tmp_path / "db-url"
    url_file.write_text(f"sqlite:///{study.root / 'votes.sqlite3'}\n")
    os.chmod(url_file, 0o600)
    assert main(["raters", str(study.root), "--db-file", str(url_file)]) == 0
    assert "admin" in capsys.readouterr().out
    monkeypatch.setenv("EVALKIT_RATE_DB", f"sqlite:///{study.root / 'votes.sqlite3'}")
    assert main(["raters", str(study.root)]) == 0
    # An unreachable PostgreSQL is named without its password.
    monkeypatch.setenv("EVALKIT_RATE_DB", secret_url)
    assert main(["raters", str(study.root)]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err and "s3cret" not in err and "***" in err


def test_report_json_names_revoked_raters_by_id(tmp_path):
    study, store, _ = make_study(tmp_path, gold_tasks=0, ratings_per_item=2)
    svc = RatingService(study, store, limiter=NoRateLimit(), rng=random.Random(0))
    token = add_rater(study, store, "=cmd|' /C calc'!A0")
    cast(svc, token, lambda a, q: "a", limit=2)
    from evalkit.human.report import write_report

    out = write_report(study.root, n_resamples=100)
    report = json.loads((out / "report.json").read_text())
    (row,) = report["rater_quality"]["per_rater"]
    assert row["rater_id"] and row["revoked"] is False
    raters = list(csv.DictReader((out / "raters.csv").open()))
    assert raters[0]["name"].startswith("'=")
