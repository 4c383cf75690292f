"""Exit codes and error messages through the real ``evalkit`` console script (a subprocess).

Every documented exit code (README "Exit codes") is produced by the installed console script,
and every bad input gets a one-line ``error:`` message, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EVALKIT = Path(sys.executable).with_name("evalkit")
QUICK = ["--model", "toy", "--suite", "shapes", "--num-samples", "4", "--quiet"]


def evalkit(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``tmp_path`` with its own cache; returns the finished process."""
    full_env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache"), **(env or {})}
    return subprocess.run(
        [str(EVALKIT), *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit ``code``, no traceback, and every needle in stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


def start_interruptible(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``args`` in the background with SIGINT at its default, output captured."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell may start background jobs with SIGINT ignored; the tests need the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_console_script_is_installed():
    assert EVALKIT.is_file(), f"{EVALKIT} missing: install evalkit (make install)"


def test_a_run_exits_0_and_prints_the_metric_table_then_the_results_path(tmp_path):
    proc = evalkit("run", *QUICK, "--metrics", "shapes_accuracy", "--no-report", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    results = json.loads((tmp_path / lines[-1]).read_text())
    assert results["metrics"]["shapes_accuracy"]["value"] >= 0
    table = "\n".join(lines[:-1])
    assert "shapes_accuracy" in table and "95% CI" in table and "4 prompts" in table


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--batch-size", "0"], ["--batch-size"]),
        (["--metric-batch-size", "0"], ["--metric-batch-size"]),
        (["--device", "tpu"], ["error: --device 'tpu'"]),
        (["--metric-opt", "fdi.resize=clean", "--metrics", "fid"], ["'fdi'", "Did you mean 'fid'"]),
        (["--metrics", ""], ["error: no metrics"]),
        (["--metrics", "fid", "--metric-opt", "fid.bogus=1"], ["unknown option(s) bogus"]),
        (["--metrics", "fid", "--metric-opt", "fid.resize=nonsense"], ["resize must be one of"]),
        (["--model", "imagen", "--model-opt", "steps=abc"], ["option steps must be an integer"]),
        (
            ["--model", "imagen", "--model-opt", "guidance=abc"],
            ["option guidance must be a number"],
        ),
        (["--model", "no/such/card.toml"], ["no such model card file"]),
    ],
)
def test_bad_run_arguments_exit_2_with_one_message_before_any_image(tmp_path, args, needles):
    base = ["run", "--suite", "shapes", "--num-samples", "4", "--quiet"]
    if "--model" not in args:
        base += ["--model", "toy"]
    if "--metrics" not in args:
        base += ["--metrics", "shapes_accuracy"]
    proc = evalkit(*base, *args, tmp_path=tmp_path)
    assert_clean_error(proc, 2, *needles)
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_exits_2(tmp_path):
    proc = evalkit("run", *QUICK, "--device", "cuda", tmp_path=tmp_path)
    assert_clean_error(proc, 2, "no CUDA GPU is visible")


def test_output_or_cache_folder_that_is_a_file_exits_2_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = evalkit("run", *QUICK, "--out", str(blocker), tmp_path=tmp_path)
    assert_clean_error(proc, 2, f"output folder (--out) {blocker} is a file")
    proc = evalkit("run", *QUICK, tmp_path=tmp_path, env={"EVALKIT_CACHE": str(blocker)})
    assert_clean_error(proc, 2, "cache folder ($EVALKIT_CACHE)", "is a file")


def test_corrupt_clip_weights_exit_3_and_fetch_refuses_them(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    proc = evalkit(
        "run",
        *QUICK,
        "--metrics",
        "clip_score",
        "--metric-opt",
        "clip_score.model=ViT-B-32-quickgelu",
        "--metric-opt",
        f"clip_score.weights_path={junk}",
        tmp_path=tmp_path,
    )
    assert_clean_error(proc, 3, "could not load weights", str(junk))
    assert not list(tmp_path.rglob("*.png"))
    proc = evalkit(
        "fetch", "clip", "--model", "ViT-B-32-quickgelu", "--weights", str(junk), tmp_path=tmp_path
    )
    assert_clean_error(proc, 3, "could not load weights")
    assert not (tmp_path / "cache" / "weights" / "clip").exists()


def test_missing_clip_weights_exit_4_before_any_image_is_generated(tmp_path):
    proc = evalkit("run", *QUICK, "--metrics", "shapes_accuracy,clip_score", tmp_path=tmp_path)
    assert_clean_error(proc, 4, "evalkit fetch clip")
    assert not list(tmp_path.rglob("*.png"))


def test_malformed_results_exit_3(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{not json")
    assert_clean_error(evalkit("report", str(run), tmp_path=tmp_path), 3, "not valid JSON")


def test_protocol_mismatch_exits_5(tmp_path):
    a = evalkit("run", *QUICK, "--metrics", "shapes_accuracy", "--no-report", tmp_path=tmp_path)
    b = evalkit(
        "run", *QUICK, "--metrics", "shapes_accuracy", "--resolution", "32", "--no-report",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    paths = [tmp_path / p.stdout.strip().splitlines()[-1] for p in (a, b)]
    proc = evalkit("compare", *map(str, paths), tmp_path=tmp_path)
    assert_clean_error(proc, 5, "different protocols", "resolution")


def _nan_plugin(folder: Path) -> dict[str, str]:
    """A third-party model (registered by entry point) whose images are NaN."""
    folder.mkdir()
    (folder / "nanplugin.py").write_text(
        "import torch\n"
        "from evalkit.generators.base import Generator, float_to_uint8\n"
        "class NaNGenerator(Generator):\n"
        "    name = 'nan-test'\n"
        "    def __init__(self, context):\n"
        "        self.r = context.resolution\n"
        "    @property\n"
        "    def native_resolution(self):\n"
        "        return self.r\n"
        "    def fingerprint(self):\n"
        "        return {'model': 'nan-test'}\n"
        "    def generate(self, requests):\n"
        "        return float_to_uint8(torch.full((len(requests), 3, self.r, self.r), float('nan')))\n"
        "def make(options, context):\n"
        "    return NaNGenerator(context)\n"
    )
    info = folder / "nanplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nanplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[evalkit.models]\nnan-test = nanplugin:make\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def test_invalid_generator_output_exits_6_and_writes_no_result(tmp_path):
    env = _nan_plugin(tmp_path / "plugin")
    proc = evalkit(
        "run", "--model", "nan-test", "--suite", "shapes", "--num-samples", "2", "--quiet",
        "--metrics", "shapes_accuracy", tmp_path=tmp_path, env=env,
    )  # fmt: skip
    assert_clean_error(proc, 6, "NaN")
    assert not list(tmp_path.rglob("results.json"))


def test_sigint_exits_130_with_the_resume_hint_and_the_rerun_resumes(tmp_path):
    args = [
        str(EVALKIT), "run", "--model", "toy", "--suite", "shapes", "--num-samples", "40",
        "--batch-size", "2", "--metrics", "shapes_accuracy", "--quiet", "--no-report",
    ]  # fmt: skip
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache")}
    proc = start_interruptible([*args, "--model-opt", "delay_s=0.3"], tmp_path, env)
    images = tmp_path / "cache" / "images"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(images.rglob("*.png"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("results.json"))
    done = len(list(images.rglob("*.png")))
    assert 4 <= done < 40
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    results = json.loads((tmp_path / rerun.stdout.strip().splitlines()[-1]).read_text())
    assert results["manifest"]["timings"]["images_generated"] == 40 - done


def test_rate_errors_exit_with_evalkit_codes_and_one_line(tmp_path):
    missing = tmp_path / "no-study"
    assert_clean_error(evalkit("rate", "serve", str(missing), tmp_path=tmp_path), 3, "error: ")
    proc = evalkit("rate", "report", str(missing), "--bogus", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_rate_serve_sigint_exits_130_without_a_traceback(tmp_path):
    from evalkit.human.demo import make_study

    study, _, _ = make_study(tmp_path / "study", gold_tasks=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache")}
    env.pop("EVALKIT_RATE_DB", None)
    args = [str(EVALKIT), "rate", "serve", str(study.root), "--no-ui", "--port", str(port)]
    proc = start_interruptible(args, tmp_path, env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err


def test_sigint_on_rate_serve_exits_130_without_the_generation_resume_hint(tmp_path):
    from evalkit.human.demo import make_study

    study, _, _ = make_study(tmp_path, gold_tasks=0)
    env = {k: v for k, v in os.environ.items() if k != "EVALKIT_RATE_DB"}
    args = [str(EVALKIT), "rate", "serve", str(study.root), "--no-ui", "--port", "0"]
    proc = start_interruptible(args, tmp_path, env)
    seen = []
    for line in proc.stderr:  # wait until it serves
        seen.append(line)
        if line.startswith("serving study"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "rerun the same command" not in err, err
    assert "Traceback" not in err
