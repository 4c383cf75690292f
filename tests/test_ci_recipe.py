"""The example CI workflows are valid YAML, and their evalkit commands work as written.

The GitHub workflow's steps named ``evalkit: ...`` are run here with bash, in order, as a push
to main, a pull request and a second push would run them, on a tiny suite (the workflow's
``EVAL_ARGS`` replaced), with the real console script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / "docs" / "ci" / "github-actions.yml"
GITLAB = ROOT / "docs" / "ci" / "gitlab-ci.yml"
TINY = "--model toy --suite shapes --num-samples 60 --metrics shapes_accuracy --quiet"


def _workflow() -> dict:
    return yaml.safe_load(GITHUB.read_text())


def test_github_workflow_is_valid_yaml_with_the_gate_and_history_steps():
    wf = _workflow()
    assert set(wf[True]) == {"pull_request", "push"}  # YAML 1.1 reads the key `on` as True
    steps = wf["jobs"]["evaluate"]["steps"]
    names = [s.get("name", "") for s in steps]
    assert names.count("evalkit: run the suite") == 1
    assert any("gate against main" in n for n in names)
    assert any("record the run" in n for n in names)
    for step in steps:
        if step.get("name", "").startswith("evalkit:"):
            assert "${{" not in step["run"], step["name"]  # plain shell: runnable here
    assert "deploy-pages" in json.dumps(wf["jobs"]["dashboard"])


def test_gitlab_pipeline_is_valid_yaml_with_the_same_commands():
    ci = yaml.safe_load(GITLAB.read_text())
    assert {"evalkit-gate", "evalkit-record", "pages"} <= set(ci)
    gate = "\n".join(ci["evalkit-gate"]["script"])
    record = "\n".join(ci["evalkit-record"]["script"])
    assert 'evalkit gate --baseline "history:$EVALKIT_HISTORY@main"' in gate
    assert "evalkit history add" in record and "evalkit dashboard" in record


def _runs_on(step: dict, event: str) -> bool:
    cond = step.get("if")
    if cond is None:
        return True
    found = re.findall(r"github\.event_name == '(\w+)'", cond)
    return event in found


def _run_steps(event: str, cwd: Path, env: dict[str, str]) -> dict[str, int]:
    codes = {}
    for step in _workflow()["jobs"]["evaluate"]["steps"]:
        name = step.get("name", "")
        if not name.startswith("evalkit:") or not _runs_on(step, event):
            continue
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        codes[name] = proc.returncode
        (cwd / f"{event}-{len(codes)}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return codes | {"_stderr": proc.stderr[-2000:]}  # type: ignore[dict-item]
    return codes


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_workflow_commands_run_locally_push_pr_push(tmp_path):
    wf = _workflow()
    shutil.copy(ROOT / "docs" / "ci" / "evalkit-gate.toml", tmp_path / "evalkit-gate.toml")
    bin_dir = str(Path(sys.executable).parent)
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_"))},
        **{k: str(v) for k, v in wf["env"].items()},
        "EVAL_ARGS": TINY,
        "EVALKIT_CACHE": str(tmp_path / "cache"),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }
    push1 = {**base_env, "GITHUB_SHA": "1" * 40, "GITHUB_REF_NAME": "main"}
    codes = _run_steps("push", tmp_path, push1)
    assert all(c == 0 for c in codes.values()) and len(codes) == 2, codes
    assert (tmp_path / "site" / "index.html").is_file()

    pr = {
        **base_env,
        "GITHUB_SHA": "2" * 40,
        "GITHUB_REF_NAME": "7/merge",
        "GITHUB_HEAD_REF": "feature",
    }
    codes = _run_steps("pull_request", tmp_path, pr)
    assert codes == {"evalkit: run the suite": 0, "evalkit: gate against main": 0}, codes
    md = (tmp_path / "gate.md").read_text()
    assert "evalkit gate: ✅ PASS" in md and "shapes_accuracy" in md
    assert md in (tmp_path / "summary.md").read_text()
    assert "history record" in json.loads((tmp_path / "gate.json").read_text())["baseline"]["label"]

    (tmp_path / "gate.json").unlink()
    push2 = {**base_env, "GITHUB_SHA": "3" * 40, "GITHUB_REF_NAME": "main"}
    codes = _run_steps("push", tmp_path, push2)
    assert all(c == 0 for c in codes.values()), codes

    from evalkit.history import load

    df = load(tmp_path / "evalkit-history")
    assert list(df["branch"]) == ["main", "main"]  # pull requests are gated, not recorded
    assert list(df["commit"]) == ["1" * 40, "3" * 40]
    assert list(df["gate"].fillna("none")) == ["none", "pass"]
    html = (tmp_path / "site" / "index.html").read_text()
    assert "2 records" in html
