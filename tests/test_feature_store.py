"""The feature store: one network pass per image across metrics and runs, safe chunks, torchrun."""

# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_fid are used as arguments)

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.features.base import FeatureExtractor, image_ids
from evalkit.features.store import FeatureProvider, FeatureStore, load_run_features
from evalkit.metrics.fid import make_fid
from evalkit.metrics.kid import make_kid
from evalkit.run import RunOptions, execute
from evalkit.spec import RunSpec
from tests.fixtures_fid import (  # noqa: F401 (pytest fixtures used by name)
    ArrayReferenceSet,
    ArraySuite,
    context,
    one_thread,
    run,
    shared_weights,
    smooth_images,
    weights_cache,
)
from tests.test_runner import DRIVER, REPO


class CountingExtractor(FeatureExtractor):
    """Mean colour per image; counts the images it was run on."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    @property
    def layers(self) -> dict[str, int]:
        return {"rgb": 3}

    def fingerprint(self) -> dict:
        return {"extractor": "counting", "v": 1}

    def extract(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        self.calls += len(images)
        return {"rgb": images.float().mean(dim=(2, 3)).numpy()}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def test_provider_runs_the_network_once_per_image_across_metrics_batches_and_providers(tmp_path):
    store = FeatureStore(tmp_path / "features")
    extractor = CountingExtractor()
    provider = FeatureProvider(store)
    images = _images(10)
    first = provider.extract(extractor, images)
    again = provider.extract(CountingExtractor(), images)  # a second metric, same batch
    assert extractor.calls == 10 and again is first
    provider.extract(extractor, torch.cat([images[:4], _images(3, seed=1)]))  # 4 known, 3 new
    assert extractor.calls == 13
    provider.flush()
    fresh = FeatureProvider(FeatureStore(tmp_path / "features"))
    other = CountingExtractor()
    out = fresh.extract(other, images)
    assert other.calls == 0 and np.array_equal(out["rgb"], first["rgb"])
    assert fresh.counts[other.key()].from_store == 10


def test_an_interrupted_or_foreign_chunk_is_never_read(tmp_path, capsys):
    store = FeatureStore(tmp_path / "features")
    extractor = CountingExtractor()
    images = _images(4)
    ids = image_ids(images)
    folder = tmp_path / "features" / extractor.key()
    (folder / ".half-written.tmp").mkdir(parents=True)  # a killed writer's leftovers
    (folder / ".half-written.tmp" / "rgb.npy").write_bytes(b"partial")
    broken = folder / "broken"
    broken.mkdir()
    (broken / "index.json").write_text(
        json.dumps({"format": "evalkit-features-v1", "ids": ids, "layers": {"rgb": [4, 3]}})
    )
    np.save(broken / "rgb.npy", np.zeros((2, 3), dtype=np.float32))  # fewer rows than ids
    found, _ = store.lookup(extractor.key(), ids, ["rgb"])
    assert not found.any()
    assert "unreadable" in capsys.readouterr().err
    provider = FeatureProvider(store)
    provider.extract(extractor, images)
    assert extractor.calls == 4


def test_concurrent_writers_add_chunks_side_by_side(tmp_path):
    code = (
        "import sys, torch; sys.path.insert(0, {repo!r});"
        "from tests.test_feature_store import CountingExtractor, _images;"
        "from evalkit.features.store import FeatureProvider, FeatureStore;"
        "p = FeatureProvider(FeatureStore({root!r}), flush_rows=3);"
        "p.extract(CountingExtractor(), _images(20, seed=int(sys.argv[1]))); p.flush()"
    ).format(repo=str(REPO), root=str(tmp_path / "features"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(s)]) for s in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    store = FeatureStore(tmp_path / "features")
    extractor = CountingExtractor()
    ids = [i for s in range(4) for i in image_ids(_images(20, seed=s))]
    found, rows = store.lookup(extractor.key(), ids, ["rgb"])
    assert found.all()
    expected = np.concatenate(
        [_images(20, seed=s).float().mean(dim=(2, 3)).numpy() for s in range(4)]
    )
    assert np.array_equal(np.stack(rows["rgb"]), expected)


def test_fid_and_kid_share_one_inception_pass_and_equal_separate_runs(weights_cache):
    reference = smooth_images(12, seed=0)
    generated = smooth_images(12, seed=5)
    together = context(ArraySuite(ArrayReferenceSet(reference)), weights_cache)
    fid, kid = make_fid({}, together), make_kid({"subset_size": 6}, together)
    for metric in (fid, kid):
        metric.prepare()
    images = torch.from_numpy(generated).permute(0, 3, 1, 2).contiguous()
    for metric in (fid, kid):
        metric.update(images, [], [])
    key = fid.extractor.key()
    assert kid.extractor is fid.extractor
    assert together.features.counts[key].computed == 24  # 12 reference + 12 generated, once each
    fid_value, kid_value = fid.compute().value, kid.compute().value
    alone = tmp_cache = weights_cache.parent / "alone"
    tmp_cache.mkdir()
    (tmp_cache / "weights").symlink_to(
        (weights_cache / "weights").resolve(), target_is_directory=True
    )
    del alone
    separate = run(
        make_fid({}, context(ArraySuite(ArrayReferenceSet(reference)), tmp_cache)), generated
    )
    assert separate.value == fid_value
    assert (
        kid_value
        == run(
            make_kid(
                {"subset_size": 6}, context(ArraySuite(ArrayReferenceSet(reference)), tmp_cache)
            ),
            generated,
        ).value
    )


def _spec(**kw) -> RunSpec:
    base = dict(model="toy", suite="test-tiny", suite_options={"n": 10}, resolution=32,
                metrics=("fid",), images_per_prompt=1)  # fmt: skip
    base.update(kw)
    return RunSpec(**base)


def test_a_new_metric_on_an_old_run_extracts_nothing_and_run_features_are_recorded(
    tmp_path, weights_cache
):
    options = RunOptions(
        out_root=tmp_path / "out", cache_dir=weights_cache, show_progress=False, write_report=False
    )
    first = execute(_spec(), options)
    counts = json.loads((first / "results.json").read_text())["manifest"]["features"]
    assert [c["computed"] for c in counts.values()] == [20]  # 10 reference + 10 generated
    second = execute(
        _spec(metrics=("fid", "kid"), metric_options={"kid": {"subset_size": 5}}), options
    )
    counts = json.loads((second / "results.json").read_text())["manifest"]["features"]
    assert [c["computed"] for c in counts.values()] == [0]
    (key,) = counts
    features, meta = load_run_features(second, key, "2048")
    samples = (second / "samples.jsonl").read_text().splitlines()
    assert features.shape == (10, 2048) and len(meta["ids"]) == len(samples)


@pytest.mark.torchrun
def test_two_ranks_extract_their_shards_and_equal_one_process(tmp_path, weights_cache):
    common = ["run", "--model", "toy", "--suite", "test-tiny", "--suite-opt", "n=8", "--resolution",
              "32", "--metrics", "fid,kid", "--metric-opt", "kid.subset_size=4", "--quiet", "--no-report"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    caches = {}
    for name in ("one", "two"):
        cache = tmp_path / f"cache-{name}"
        cache.mkdir()
        (cache / "weights").symlink_to(
            (weights_cache / "weights").resolve(), target_is_directory=True
        )
        caches[name] = cache
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(DRIVER), *common, "--out", str(tmp_path / "two")],
        env={**env, "EVALKIT_CACHE": str(caches["two"])}, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, str(DRIVER), *common, "--out", str(tmp_path / "one")],
        env={**env, "EVALKIT_CACHE": str(caches["one"])}, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    r1 = json.loads(Path(one.stdout.strip().splitlines()[-1]).read_text())
    run_two = tmp_path / "two" / Path(one.stdout.strip().splitlines()[-1]).parent.name
    r2 = json.loads((run_two / "results.json").read_text())
    for name in ("fid", "kid"):
        assert r1["metrics"][name]["value"] == r2["metrics"][name]["value"]
    # rank 0 ran the network on the 8 references and its own 4 images only: rank 1 did the rest
    (counts,) = r2["manifest"]["features"].values()
    assert counts["computed"] == 8 + 4
    (counts_one,) = r1["manifest"]["features"].values()
    assert counts_one["computed"] == 8 + 8


def test_clip_score_image_embeddings_come_from_the_store_on_a_rerun(tmp_path):
    options = RunOptions(
        out_root=tmp_path / "out", cache_dir=tmp_path / "cache", show_progress=False,
        write_report=False, allow_random_weights=True,
    )  # fmt: skip
    spec = _spec(metrics=("clip_score",), metric_options={"clip_score": {"model": "tiny-random"}})
    first = json.loads((execute(spec, options) / "results.json").read_text())
    second = json.loads(
        (
            execute(
                _spec(**{**spec.__dict__, "seed": 0, "metrics": ("clip_score", "test-pixel-mean")}),
                options,
            )
            / "results.json"
        ).read_text()
    )
    (key,) = first["manifest"]["features"]
    assert first["manifest"]["features"][key] == {"computed": 10, "from_store": 0}
    assert second["manifest"]["features"][key] == {"computed": 0, "from_store": 10}
    assert second["metrics"]["clip_score"]["per_item"] == first["metrics"]["clip_score"]["per_item"]
