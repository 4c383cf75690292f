"""The command line: exit codes, listing, option parsing, end-to-end on the toy model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.conftest  # noqa: F401
from evalkit.cli import main
from evalkit.errors import UsageError
from evalkit.spec import parse_options, parse_value


def test_list_prints_registered_names(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "toy" in out
    assert main(["list", "metrics"]) == 0
    assert "fid" in capsys.readouterr().out


def test_unknown_names_exit_2_with_a_suggestion(capsys):
    assert main(["list", "modles"]) == 2
    assert "Did you mean 'models'" in capsys.readouterr().err
    assert (
        main(["run", "--model", "tyo", "--suite", "test-tiny", "--metrics", "test-pixel-mean"]) == 2
    )
    assert "Did you mean: toy" in capsys.readouterr().err
    assert main(["run", "--bogus-flag"]) == 2


def test_option_values_are_parsed_to_types():
    assert parse_options(["a=1", "b=1.5", "c=true", "d=x=y", "e=none"], "--x") == {
        "a": 1,
        "b": 1.5,
        "c": True,
        "d": "x=y",
        "e": None,
    }
    assert parse_value("1e-3") == 0.001
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_options(["novalue"], "--model-opt")


def test_run_writes_results_and_prints_their_path(tmp_path, capsys):
    code = main(
        [
            "run",
            "--model",
            "toy",
            "--suite",
            "test-tiny",
            "--suite-opt",
            "n=4",
            "--resolution",
            "16",
            "--metrics",
            "test-pixel-mean",
            "--quiet",
            "--no-report",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(Path(path).read_text())
    assert res["spec"]["model"] == "toy" and "test-pixel-mean" in res["metrics"]
    assert res["manifest"]["sampling"]["resolution"] == 16


def test_bad_option_values_exit_2(tmp_path, capsys):
    assert (
        main(["run", "--model", "toy", "--suite", "test-tiny", "-k", "0", "--out", str(tmp_path)])
        == 2
    )
    assert "images-per-prompt" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--model",
                "toy",
                "--suite",
                "test-tiny",
                "--sweep",
                "guidance=1",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "run",
                "--model",
                "toy",
                "--suite",
                "test-tiny",
                "--model-opt",
                "bogus=1",
                "--metrics",
                "test-pixel-mean",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "unknown option" in capsys.readouterr().err


def test_num_samples_on_shapes_keeps_every_category(tmp_path, capsys):
    code = main(
        [
            "run",
            "--model",
            "toy",
            "--suite",
            "shapes",
            "--num-samples",
            "10",
            "--resolution",
            "16",
            "--metrics",
            "test-pixel-mean",
            "--quiet",
            "--no-report",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    assert {r["category"] for r in rows} == {
        "single",
        "colors",
        "counting",
        "positional",
        "composition",
    }
