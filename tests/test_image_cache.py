"""The verified image cache: a replaced, truncated or unchecked cached image is never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evalkit.cli import main
from evalkit.errors import InputError
from evalkit.image_cache import ImageCache, prune_cache, verify_cache
from evalkit.run import RunOptions, execute
from tests.test_runner import results, run_images, tiny_spec


def _options(tmp_path: Path, out: str = "out") -> RunOptions:
    return RunOptions(
        out_root=tmp_path / out, cache_dir=tmp_path / "c", show_progress=False, write_report=False
    )


def _cached_pngs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "c" / "images").glob("??/*.png"))


def _reference_run(tmp_path: Path) -> Path:
    return execute(tiny_spec(), _options(tmp_path, "first"))


def test_a_cached_image_replaced_by_another_valid_png_is_regenerated_with_a_warning(
    tmp_path, capsys
):
    first = _reference_run(tmp_path)
    expected = run_images(first)  # run images are hard links into the cache: copy them first
    pngs = _cached_pngs(tmp_path)
    pngs[0].write_bytes(pngs[1].read_bytes())  # a valid PNG, the wrong image
    capsys.readouterr()
    rerun = execute(tiny_spec(), _options(tmp_path, "second"))
    timings = results(rerun)["manifest"]["timings"]
    assert timings["images_untrusted_regenerated"] == 1
    assert timings["images_generated"] == 1 and timings["images_from_cache"] == 17
    assert "untrusted cached image" in capsys.readouterr().err
    assert run_images(rerun) == expected
    assert results(rerun)["metrics"] == results(first)["metrics"]
    quarantined = list((tmp_path / "c" / "images" / "quarantine").glob("*.png"))
    assert len(quarantined) == 1


def test_a_truncated_cached_image_is_regenerated_not_an_error_forever(tmp_path):
    expected = run_images(_reference_run(tmp_path))
    png = _cached_pngs(tmp_path)[3]
    png.write_bytes(png.read_bytes()[:60])
    rerun = execute(tiny_spec(), _options(tmp_path, "second"))
    assert results(rerun)["manifest"]["timings"]["images_untrusted_regenerated"] == 1
    assert run_images(rerun) == expected


def test_a_cached_image_without_a_recorded_checksum_is_regenerated(tmp_path):
    _reference_run(tmp_path)
    png = _cached_pngs(tmp_path)[0]
    png.with_suffix(".sha256").unlink()  # as an older evalkit or an interrupted write left it
    rerun = execute(tiny_spec(), _options(tmp_path, "second"))
    assert results(rerun)["manifest"]["timings"]["images_generated"] == 1


def test_samples_record_the_sha256_of_every_image(tmp_path):
    import hashlib

    run = _reference_run(tmp_path)
    for line in (run / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        data = (run / record["image"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()


def test_load_refuses_an_image_changed_after_it_was_written(tmp_path):
    cache = ImageCache(tmp_path / "images")
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    cache.put("ab" * 32, image)
    assert (cache.load("ab" * 32) == image).all()
    other = ImageCache(tmp_path / "other")
    other.put("cd" * 32, image + 1)
    cache.path("ab" * 32).write_bytes(other.path("cd" * 32).read_bytes())
    with pytest.raises(InputError, match="does not match the checksum"):
        cache.load("ab" * 32)


def test_cache_verify_and_prune_commands(tmp_path, capsys):
    _reference_run(tmp_path)
    pngs = _cached_pngs(tmp_path)
    pngs[0].write_bytes(b"not a png")
    cache_dir = str(tmp_path / "c")
    assert main(["cache", "verify", "--cache-dir", cache_dir, "--no-move"]) == 3
    assert pngs[0].exists()
    assert main(["cache", "verify", "--cache-dir", cache_dir]) == 3
    out = capsys.readouterr().out
    assert "18 cached images checked, 1 untrusted" in out
    assert not pngs[0].exists()
    assert main(["cache", "verify", "--cache-dir", cache_dir]) == 0
    assert main(["cache", "prune", "--cache-dir", cache_dir]) == 0
    assert "removed 2 file(s)" in capsys.readouterr().out  # the quarantined PNG and its checksum
    assert not list((tmp_path / "c" / "images" / "quarantine").iterdir())


def test_prune_older_than_removes_images_no_run_used_recently(tmp_path):
    import os
    import time

    _reference_run(tmp_path)
    cache = ImageCache(tmp_path / "c" / "images")
    keys = list(cache.stored_keys())
    old = time.time() - 10 * 86400
    for key in keys[:5]:
        os.utime(cache.checksum_path(key), (old, old))
    report = prune_cache(cache, older_than_days=7, dry_run=True)
    assert len(report.files) == 10 and all(cache.has(k) for k in keys)
    prune_cache(cache, older_than_days=7)
    assert [k for k in keys if cache.has(k)] == keys[5:]
    checked, problems = verify_cache(cache)
    assert checked == len(keys) - 5 and not problems
