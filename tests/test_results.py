"""evalkit.results: the one reader of run folders (results.json + samples.jsonl), for every caller."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from evalkit.errors import InputError
from evalkit.results import (
    RESULTS_FILE,
    SAMPLES_FILE,
    load_results,
    locate_run,
    parse_results,
    read_results_file,
    read_run,
)

from .gate_fixtures import item_ids, results_dict, write_run


def _run(tmp: Path) -> Path:
    ids = item_ids(8)
    return write_run(tmp / "run", results_dict({"clip_score": dict.fromkeys(ids, 0.3)}))


def test_read_run_of_a_folder_and_of_its_results_json_agree(tmp_path):
    run = _run(tmp_path)
    by_folder = read_run(run)
    by_file = read_run(run / RESULTS_FILE)
    raw = (run / RESULTS_FILE).read_bytes()
    for files in (by_folder, by_file):
        assert files.raw == raw and files.results == json.loads(raw)
        assert files.folder == run and files.run_dir == run
        assert files.samples is not None and len(files.samples) == 8
    assert locate_run(run) == (run / RESULTS_FILE, run)
    assert locate_run(run / RESULTS_FILE) == (run / RESULTS_FILE, run)


def test_a_results_json_without_samples_beside_it_has_no_run_dir(tmp_path):
    run = _run(tmp_path)
    (run / SAMPLES_FILE).unlink()
    assert read_run(run / RESULTS_FILE).run_dir is None
    folder = read_run(run)
    assert folder.samples is None and folder.run_dir == run  # a folder given is the run folder


def test_errors_name_the_file_and_the_fault(tmp_path):
    with pytest.raises(InputError, match="no such results file"):
        read_run(tmp_path)
    with pytest.raises(InputError, match=r"no such results file \(expected a run folder"):
        read_run(tmp_path / "nope.json", missing_hint="expected a run folder or results.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff{")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        load_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match=r"bad.json: \(top level\): expected object, got list"):
        read_results_file(bad)
    with pytest.raises(InputError, match="record x: results.json: not valid JSON"):
        parse_results(b"{", "record x: results.json")
    with pytest.raises(InputError, match="r.json: created: missing required key"):
        parse_results(b"{}", "r.json")


def test_sample_image_paths_outside_the_run_are_refused_by_every_reader(tmp_path):
    from evalkit.gate.core import load_run as gate_load_run
    from evalkit.history import add_record

    run = _run(tmp_path)
    lines = (run / SAMPLES_FILE).read_text().splitlines()
    rec = json.loads(lines[0])
    rec["image"] = "../outside.png"
    (run / SAMPLES_FILE).write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    for read in (read_run, gate_load_run, lambda r: add_record(r, tmp_path / "history")):
        with pytest.raises(InputError, match="must be relative and inside the run folder"):
            read(run)


def test_history_records_the_bytes_read_run_read(tmp_path):
    from evalkit.history import add_record

    run = _run(tmp_path)
    outcome = add_record(run, tmp_path / "history", commit="c0", branch="main")
    sha = hashlib.sha256((run / RESULTS_FILE).read_bytes()).hexdigest()
    assert outcome.record.meta["results_sha256"] == sha
    assert outcome.record.results() == read_run(run).results


def test_a_rating_study_reads_runs_through_the_same_reader(tmp_path):
    from evalkit.human.demo import make_run
    from evalkit.human.runs import load_run

    run = make_run(tmp_path / "runs", "r0", "m0")
    data = load_run(run)
    assert data.run_id == "r0" and data.model == "m0" and len(data.items) > 0
    (run / SAMPLES_FILE).unlink()
    with pytest.raises(InputError, match="no such samples file"):
        load_run(run)
    (run / RESULTS_FILE).write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_run(run)
