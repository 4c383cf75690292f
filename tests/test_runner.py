"""The runner: seeds, batching, sharding, cache, resume, bad generator output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evalkit.errors import GenerationError, UsageError
from evalkit.generators.toy import ToyGenerator
from evalkit.run import RunOptions, execute
from evalkit.seeding import derive_seed
from evalkit.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "cli_with_test_entries.py"


def tiny_spec(**kw) -> RunSpec:
    base = dict(
        model="toy",
        suite="test-tiny",
        suite_options={"n": 9},
        images_per_prompt=2,
        seed=3,
        resolution=32,
        metrics=("test-pixel-mean",),
    )
    base.update(kw)
    return RunSpec(**base)


def run_images(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "images").glob("*.png"))}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_derived_seeds_depend_only_on_identity():
    assert derive_seed(0, "a", 0) == derive_seed(0, "a", 0)
    assert (
        len(
            {
                derive_seed(0, "a", 0),
                derive_seed(1, "a", 0),
                derive_seed(0, "b", 0),
                derive_seed(0, "a", 1),
            }
        )
        == 4
    )
    assert 0 <= derive_seed(2**40, "x" * 100, 7) < 2**63


def test_images_and_metrics_identical_across_batch_sizes(tmp_path):
    a = execute(
        tiny_spec(),
        RunOptions(
            out_root=tmp_path / "a",
            cache_dir=tmp_path / "ca",
            batch_size=1,
            metric_batch_size=1,
            show_progress=False,
            write_report=False,
        ),
    )
    b = execute(
        tiny_spec(),
        RunOptions(
            out_root=tmp_path / "b",
            cache_dir=tmp_path / "cb",
            batch_size=7,
            metric_batch_size=5,
            show_progress=False,
            write_report=False,
        ),
    )
    assert run_images(a) == run_images(b)
    assert len(run_images(a)) == 18
    ra, rb = results(a), results(b)
    assert ra["metrics"] == rb["metrics"]
    assert ra["run_id"] == rb["run_id"] == a.name


def test_second_run_takes_every_image_from_the_cache(tmp_path):
    opts = RunOptions(
        out_root=tmp_path / "out", cache_dir=tmp_path / "c", show_progress=False, write_report=False
    )
    execute(tiny_spec(), opts)
    run_dir = execute(tiny_spec(metrics=("test-pixel-mean",), seed=3), opts)
    timings = results(run_dir)["manifest"]["timings"]
    assert timings["images_generated"] == 0 and timings["images_from_cache"] == 18


def test_run_interrupted_by_an_exception_resumes_to_the_same_result(tmp_path, monkeypatch):
    opts = RunOptions(
        out_root=tmp_path / "out",
        cache_dir=tmp_path / "c",
        batch_size=4,
        show_progress=False,
        write_report=False,
    )
    reference = execute(
        tiny_spec(),
        RunOptions(
            out_root=tmp_path / "ref",
            cache_dir=tmp_path / "cref",
            show_progress=False,
            write_report=False,
        ),
    )
    original = ToyGenerator.generate
    calls = {"n": 0}

    def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return original(self, requests)

    monkeypatch.setattr(ToyGenerator, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_spec(), opts)
    run_dir = tmp_path / "out" / tiny_spec().run_id()
    assert not (run_dir / "results.json").exists()
    cached = list((tmp_path / "c" / "images").rglob("*.png"))
    assert len(cached) == 8  # two complete batches of 4
    monkeypatch.setattr(ToyGenerator, "generate", original)
    resumed = execute(tiny_spec(), opts)
    assert results(resumed)["manifest"]["timings"]["images_generated"] == 10
    assert run_images(resumed) == run_images(reference)
    assert results(resumed)["metrics"] == results(reference)["metrics"]


def test_run_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path):
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache")}
    args = [
        sys.executable,
        str(DRIVER),
        "run",
        "--model",
        "toy",
        "--suite",
        "test-tiny",
        "--suite-opt",
        "n=30",
        "--resolution",
        "32",
        "--metrics",
        "test-pixel-mean",
        "--batch-size",
        "2",
        "--quiet",
        "--no-report",
        "--out",
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(
        [*args, "--model-opt", "delay_s=0.15"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    images = tmp_path / "cache" / "images"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(images.rglob("*.png"))) < 6:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(images.rglob("*.png")))
    assert 6 <= done_before < 30
    assert not list(images.rglob("*.tmp")) or all(
        p.name.startswith(".") for p in images.rglob("*.tmp")
    )
    # delay_s is not a pixel setting: the resumed run (without it) reuses the cached images.
    out = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(Path(out.stdout.strip().splitlines()[-1]).read_text())
    assert res["manifest"]["timings"]["images_generated"] == 30 - done_before
    assert len(list(images.rglob("*.png"))) == 30
    lines = (
        (Path(out.stdout.strip().splitlines()[-1]).parent / "samples.jsonl")
        .read_text()
        .splitlines()
    )
    assert len(lines) == 30 and len({json.loads(line)["key"] for line in lines}) == 30


@pytest.mark.torchrun
def test_two_processes_with_torchrun_equal_one_process(tmp_path):
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache2"), "OMP_NUM_THREADS": "1"}
    common = [
        "run",
        "--model",
        "toy",
        "--suite",
        "test-tiny",
        "--suite-opt",
        "n=10",
        "--resolution",
        "32",
        "-k",
        "2",
        "--metrics",
        "test-pixel-mean",
        "--quiet",
        "--no-report",
    ]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(DRIVER),
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    env1 = {**env, "EVALKIT_CACHE": str(tmp_path / "cache1")}
    one = subprocess.run(
        [sys.executable, str(DRIVER), *common, "--out", str(tmp_path / "one")],
        env=env1,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    run_one = Path(one.stdout.strip().splitlines()[-1]).parent
    run_two = tmp_path / "two" / run_one.name
    assert run_images(run_one) == run_images(run_two)
    r1, r2 = results(run_one), results(run_two)
    assert r1["metrics"] == r2["metrics"]
    assert r2["manifest"]["environment"]["hardware"]["world_size"] == 2


class NaNGenerator(ToyGenerator):
    def generate(self, requests):
        from evalkit.generators.base import float_to_uint8

        x = torch.zeros(len(requests), 3, self.resolution, self.resolution)
        x[0, 0, 0, 0] = float("nan")
        return float_to_uint8(x)


def test_nan_generator_output_is_an_error_and_no_result_is_written(tmp_path, monkeypatch):
    from evalkit.registry import MODELS

    monkeypatch.setitem(
        MODELS._entries,
        "test-nan",
        MODELS._entries["toy"].__class__("test-nan", lambda options, ctx: NaNGenerator(ctx)),
    )
    with pytest.raises(GenerationError, match="NaN"):
        execute(
            tiny_spec(model="test-nan"),
            RunOptions(
                out_root=tmp_path, cache_dir=tmp_path / "c", show_progress=False, write_report=False
            ),
        )
    assert not list(tmp_path.rglob("results.json"))
    assert not list((tmp_path / "c").rglob("*.png"))


def test_generator_returning_wrong_shape_or_dtype_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(
        ToyGenerator,
        "generate",
        lambda self, reqs: torch.zeros(len(reqs), 3, 8, 8, dtype=torch.uint8),
    )
    with pytest.raises(GenerationError, match="shape"):
        execute(
            tiny_spec(),
            RunOptions(
                out_root=tmp_path, cache_dir=tmp_path / "c", show_progress=False, write_report=False
            ),
        )
    monkeypatch.setattr(
        ToyGenerator, "generate", lambda self, reqs: torch.zeros(len(reqs), 3, 32, 32)
    )
    with pytest.raises(GenerationError, match="dtype"):
        execute(
            tiny_spec(),
            RunOptions(
                out_root=tmp_path, cache_dir=tmp_path / "c", show_progress=False, write_report=False
            ),
        )


def test_out_of_range_float_output_is_refused():
    from evalkit.generators.base import float_to_uint8

    with pytest.raises(GenerationError, match="outside"):
        float_to_uint8(torch.full((1, 3, 4, 4), 3.0))
    assert float_to_uint8(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)).flatten().tolist() == [
        0,
        128,
        255,
    ]


def test_num_samples_beyond_the_suite_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="exceeds"):
        execute(
            tiny_spec(num_samples=100),
            RunOptions(out_root=tmp_path, show_progress=False, write_report=False),
        )


def test_unknown_metric_fails_before_generating_anything(tmp_path):
    with pytest.raises(UsageError, match="Did you mean"):
        execute(
            tiny_spec(metrics=("test-pixel-maen",)),
            RunOptions(
                out_root=tmp_path, cache_dir=tmp_path / "c", show_progress=False, write_report=False
            ),
        )
    assert not (tmp_path / "c").exists()
