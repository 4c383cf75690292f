"""A built wheel, installed outside the checkout, runs the main job and finds the bundled cards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    proc = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel built from a copy of the sources.

    The wheel's dependencies come from this test environment's site-packages through a
    ``.pth`` line (no download), which adds the folder but not its ``.pth`` files, so the
    editable install of the checkout is not visible there.
    """
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "evalkit", src / "evalkit", ignore=shutil.ignore_patterns("__pycache__"))
    dist = root / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(src)],
        cwd=root,
    )  # fmt: skip
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root
    ).stdout.strip()
    Path(purelib, "evalkit-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("evalkit-*.whl"))
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)],
        cwd=root,
    )  # fmt: skip
    return venv


@pytest.mark.slow
def test_wheel_lists_the_bundled_cards_and_runs_the_main_job_from_another_folder(
    installed_wheel, tmp_path
):
    evalkit = installed_wheel / "bin" / "evalkit"
    env = {"EVALKIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = _run(
        [str(installed_wheel / "bin" / "python"), "-c", "import evalkit; print(evalkit.__file__)"],
        cwd=tmp_path,
        env=env,
    ).stdout
    assert str(installed_wheel) in where and str(REPO) not in where
    listed = _run([str(evalkit), "list", "models"], cwd=tmp_path, env=env).stdout
    assert "imagen-shapes" in listed and "sd-v1-5" in listed
    run = _run(
        [str(evalkit), "run", "--model", "imagen", "--suite", "shapes", "--num-samples", "2",
         "--metrics", "shapes_accuracy", "--model-opt", "steps=2,2", "--quiet", "--no-report"],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    results = tmp_path / run.stdout.strip().splitlines()[-1]
    assert results.is_file() and "imagen-shapes" in results.read_text()
    card = tmp_path / "my-card.toml"
    card.write_text(
        'name = "my-toy"\nadapter = "toy"\n[options]\nnum_blobs = 1\n', encoding="utf-8"
    )
    run = _run(
        [str(evalkit), "run", "--model", str(card), "--suite", "shapes", "--num-samples", "2",
         "--metrics", "shapes_accuracy", "--quiet", "--no-report"],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert (tmp_path / run.stdout.strip().splitlines()[-1]).is_file()
