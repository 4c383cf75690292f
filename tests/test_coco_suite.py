"""The COCO suite on a synthetic COCO-format folder made in tmp_path."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.suites import coco
from evalkit.suites.coco import CocoImage, CocoSuite, fetch_coco, make_coco_suite, sample_images

NUM_IMAGES = 30
GRAY_ID = 1007  # image 1 (grayscale)
WIDE_ID = 1014  # image 2 (48 x 20)
EMPTY_FIRST_ID = 1021  # image 3: two blank captions, one real one


def _caption_sets(k: int, image_id: int) -> list[str]:
    if image_id == EMPTY_FIRST_ID:
        return ["   ", "\n", "  A   cat  sitting\non a\tmat.  "]
    return [f"caption {c} of image {image_id}" for c in range(2 + k % 4)]


def make_coco(root: Path, year: int = 2014, n: int = NUM_IMAGES) -> dict[int, list[str]]:
    """Write annotations/captions_valYYYY.json and valYYYY/*.jpg; return captions by image id."""
    split = f"val{year}"
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    rng = np.random.default_rng(0)
    images, annotations, captions = [], [], {}
    ann_id = 5000
    for k in range(n):
        image_id = 1000 + 7 * k
        name = f"COCO_{split}_{image_id:012d}.jpg"
        w, h = (48, 20) if image_id == WIDE_ID else (16 + k % 3, 16 + k % 2)
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        if image_id == GRAY_ID:
            img = img.convert("L")
        img.save(root / split / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        captions[image_id] = _caption_sets(k, image_id)
        for text in captions[image_id]:
            annotations.append({"id": ann_id, "image_id": image_id, "caption": text})
            ann_id += 1
    data = {"info": {}, "images": images, "annotations": annotations}
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    return captions


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_coco(root)
    return root


def _norm(texts: list[str]) -> set[str]:
    return {" ".join(t.split()) for t in texts if t.strip()}


def test_same_seed_gives_same_items_and_other_seed_differs(coco_root):
    a = CocoSuite(root=coco_root, num_samples=10).items()
    b = CocoSuite(root=coco_root, num_samples=10).items()
    c = CocoSuite(root=coco_root, num_samples=10, caption_seed=1).items()
    assert [(i.id, i.prompt) for i in a] == [(i.id, i.prompt) for i in b]
    assert [(i.id, i.prompt) for i in a] != [(i.id, i.prompt) for i in c]


def test_items_are_distinct_images_with_one_of_their_own_captions(coco_root):
    captions = json.loads((coco_root / "annotations/captions_val2014.json").read_text())
    by_image: dict[int, list[str]] = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    items = CocoSuite(root=coco_root, num_samples=20).items()
    assert len(items) == 20 and len({i.id for i in items}) == 20
    for item in items:
        image_id = int(item.id.removeprefix("coco2014-"))
        assert item.prompt in _norm(by_image[image_id])
        assert item.category is None
        assert item.reference == str(coco_root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
        assert item.spec["image_id"] == image_id


def test_quick_run_items_are_a_prefix_of_a_larger_run(coco_root):
    small = CocoSuite(root=coco_root, num_samples=5).items()
    large = CocoSuite(root=coco_root, num_samples=25).items()
    assert small == large[:5]


def test_blank_captions_are_skipped_and_whitespace_normalised(coco_root):
    items = {i.id: i for i in CocoSuite(root=coco_root, num_samples=NUM_IMAGES).items()}
    assert items[f"coco2014-{EMPTY_FIRST_ID}"].prompt == "A cat sitting on a mat."


def test_sampling_algorithm_is_pinned():
    """The published protocol: changing the draw would silently change every COCO result."""
    images = [CocoImage(i, str(i), ((1, "a"), (2, "b"))) for i in range(10)]
    assert sample_images(images, 5, 2205) == [
        (4, 1, "a"),
        (1, 1, "a"),
        (8, 1, "a"),
        (0, 2, "b"),
        (6, 2, "b"),
    ]


def test_num_samples_above_the_image_count_is_refused(coco_root):
    with pytest.raises(UsageError, match="num_samples=31 exceeds the 30"):
        CocoSuite(root=coco_root, num_samples=31)


def test_reference_set_covers_every_image_at_256_by_default_resolution(coco_root):
    suite = CocoSuite(root=coco_root, num_samples=5)
    ref = suite.reference_set(256)
    assert len(ref) == NUM_IMAGES
    batches = list(ref.iter_batches(8))
    assert [b.shape for b in batches] == [(8, 256, 256, 3)] * 3 + [(6, 256, 256, 3)]
    assert all(b.dtype == np.uint8 for b in batches)


def test_reference_set_at_small_resolution_matches_reference_image(coco_root):
    suite = CocoSuite(root=coco_root, num_samples=NUM_IMAGES)
    stacked = np.concatenate(list(suite.reference_set(8).iter_batches(7)))
    assert stacked.shape == (NUM_IMAGES, 8, 8, 3)
    order = sorted(suite.items(), key=lambda i: i.spec["image_id"])  # the set is in image-id order
    for k in (0, 1, 2, 17):
        assert np.array_equal(suite.reference_image(order[k], 8), stacked[k])


def test_grayscale_and_non_square_references_become_square_rgb(coco_root):
    suite = CocoSuite(root=coco_root, num_samples=NUM_IMAGES)
    items = {i.id: i for i in suite.items()}
    gray = suite.reference_image(items[f"coco2014-{GRAY_ID}"], 16)
    assert gray.shape == (16, 16, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1])
    wide = suite.reference_image(items[f"coco2014-{WIDE_ID}"], 10)
    assert wide.shape == (10, 10, 3)
    squashed = CocoSuite(root=coco_root, num_samples=NUM_IMAGES, crop="none")
    assert not np.array_equal(squashed.reference_image(items[f"coco2014-{WIDE_ID}"], 10), wide)


def test_reference_set_identity_changes_with_crop_resize_and_resolution(coco_root):
    def ident(**kw):
        res = kw.pop("resolution", 256)
        return CocoSuite(root=coco_root, num_samples=5, **kw).reference_set(res).identity()

    base = ident()
    assert base == ident()
    assert base["count"] == NUM_IMAGES and base["split"] == "val2014"
    assert base["crop"] == "center" and base["resize"] == "bicubic" and base["resolution"] == 256
    for other in (ident(crop="none"), ident(resize="lanczos"), ident(resolution=64)):
        assert other != base
    assert ident(caption_seed=7) == base  # the reference set does not depend on the sampled prompts


def test_full_verification_sees_content_changes_the_listing_hash_misses(tmp_path):
    make_coco(tmp_path)
    before_fast = CocoSuite(root=tmp_path, num_samples=5).reference_set(8).identity()
    before_full = CocoSuite(root=tmp_path, num_samples=5, verify="full").reference_set(8).identity()
    victim = next((tmp_path / "val2014").iterdir())
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same size, different bytes
    victim.write_bytes(bytes(data))
    after_fast = CocoSuite(root=tmp_path, num_samples=5).reference_set(8).identity()
    after_full = CocoSuite(root=tmp_path, num_samples=5, verify="full").reference_set(8).identity()
    assert before_fast == after_fast
    assert before_full["content_sha256"] != after_full["content_sha256"]


def test_describe_records_the_protocol(coco_root):
    d = CocoSuite(root=coco_root, num_samples=5).describe()
    ann = coco_root / "annotations/captions_val2014.json"
    assert d["year"] == 2014 and d["num_samples"] == 5 and d["caption_seed"] == 2205
    assert d["crop"] == "center" and d["resize"] == "bicubic" and d["sampling"]
    assert d["annotation_sha256"] == hashlib.sha256(ann.read_bytes()).hexdigest()
    assert len(d["items_sha256"]) == 64
    assert (
        d["items_sha256"]
        != CocoSuite(root=coco_root, num_samples=5, caption_seed=3).describe()["items_sha256"]
    )


def test_missing_annotation_file_names_path_and_fetch_command(tmp_path):
    with pytest.raises(InputError) as info:
        CocoSuite(root=tmp_path, num_samples=5)
    assert "captions_val2014.json" in str(info.value) and "evalkit fetch coco --dest" in str(
        info.value
    )


def test_missing_image_folder_is_an_input_error(tmp_path):
    make_coco(tmp_path)
    (tmp_path / "val2014").rename(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=r"val2014 is missing.*evalkit fetch coco"):
        CocoSuite(root=tmp_path, num_samples=5)


def test_missing_images_are_counted_and_named(tmp_path):
    make_coco(tmp_path)
    gone = sorted((tmp_path / "val2014").iterdir())[:4]
    for p in gone:
        p.unlink()
    with pytest.raises(InputError) as info:
        CocoSuite(root=tmp_path, num_samples=5)
    message = str(info.value)
    assert (
        "4 of the 30 images" in message
        and gone[0].name in message
        and "evalkit fetch coco" in message
    )


def test_malformed_annotation_json_is_an_input_error(tmp_path):
    make_coco(tmp_path)
    (tmp_path / "annotations/captions_val2014.json").write_text('{"images": [')
    with pytest.raises(InputError, match=r"captions_val2014.json: malformed JSON"):
        CocoSuite(root=tmp_path, num_samples=5)


def test_year_2017_uses_2017_names(tmp_path):
    make_coco(tmp_path, year=2017, n=6)
    suite = make_coco_suite({"root": str(tmp_path), "year": 2017, "num_samples": 3})
    assert all(i.id.startswith("coco2017-") for i in suite.items())
    assert suite.describe()["split"] == "val2017"


def test_factory_refuses_unknown_and_bad_options(coco_root):
    with pytest.raises(UsageError, match="unknown option"):
        make_coco_suite({"root": str(coco_root), "nums": 5})
    with pytest.raises(UsageError, match="crop"):
        make_coco_suite({"root": str(coco_root), "num_samples": 5, "crop": "random"})
    with pytest.raises(UsageError, match="year must be one of 2014, 2017, got 2015"):
        make_coco_suite({"root": str(coco_root), "year": 2015})
    with pytest.raises(UsageError, match="Did you mean: 'num_sample' → 'num_samples'"):
        make_coco_suite({"root": str(coco_root), "num_sample": 5})
    # numbers as text are refused (the command line parses 3 to an int before it gets here)
    with pytest.raises(UsageError, match="num_samples must be an integer ≥ 1, got '3'"):
        make_coco_suite({"root": str(coco_root), "num_samples": "3"})
    with pytest.raises(UsageError, match="caption_seed must be an integer ≥ 0, got True"):
        make_coco_suite({"root": str(coco_root), "num_samples": 5, "caption_seed": True})


def test_default_root_absent_asks_for_a_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="evalkit fetch coco"):
        make_coco_suite({"num_samples": 5})


def test_hf_dataset_source_reads_a_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)) for _ in range(6)]
    captions = [[f"  a photo   number {k}", f"picture {k}", ""] for k in range(6)]
    ds = datasets.Dataset.from_dict(
        {"image": images, "captions": captions, "cocoid": [10 + k for k in range(6)]}
    )
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    suite = make_coco_suite({"hf_dataset": str(tmp_path / "ds"), "num_samples": 4})
    items = suite.items()
    assert len({i.id for i in items}) == 4
    for item in items:
        k = int(item.id.removeprefix("coco2014-")) - 10
        assert item.prompt in {f"a photo number {k}", f"picture {k}"}
        assert suite.reference_image(item, 8).shape == (8, 8, 3)
    ref = suite.reference_set(8)
    assert len(ref) == 6 and sum(b.shape[0] for b in ref.iter_batches(4)) == 6
    assert ref.identity()["source"] == "hf_dataset" and suite.describe()["hf_fingerprint"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        self.requests.append(self.path)


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    ).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_coco_downloads_extracts_and_counts_from_a_local_server(tmp_path, monkeypatch):
    made = tmp_path / "made"
    make_coco(made)
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "annotations_trainval2014.zip", "w") as zf:
        zf.write(made / "annotations/captions_val2014.json", "annotations/captions_val2014.json")
        zf.writestr("annotations/instances_val2014.json", "{}")
    with zipfile.ZipFile(served / "val2014.zip", "w") as zf:
        for p in sorted((made / "val2014").iterdir()):
            zf.write(p, f"val2014/{p.name}")
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in served.iterdir()}
    with _serve(served) as base:
        release = dataclasses.replace(
            coco.RELEASES[2014],
            annotations_url=f"{base}/annotations_trainval2014.zip",
            annotations_sha256=sha["annotations_trainval2014.zip"],
            images_url=f"{base}/val2014.zip",
            images_sha256=sha["val2014.zip"],
            num_images=NUM_IMAGES,
        )
        monkeypatch.setitem(coco.RELEASES, 2014, release)
        dest = fetch_coco(tmp_path / "dest")
        assert (dest / "annotations/instances_val2014.json").is_file()
        assert not (dest / "downloads").exists()
        assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []
        assert len(CocoSuite(root=dest, num_samples=5).reference_set(8)) == NUM_IMAGES
        count = len(_QuietHandler.requests)
        fetch_coco(tmp_path / "dest")  # already in place: no network
        assert len(_QuietHandler.requests) == count


def test_fetch_coco_refuses_a_tampered_archive(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ann.zip", "w") as zf:
        zf.writestr("annotations/captions_val2014.json", "{}")
    with _serve(served) as base:
        release = dataclasses.replace(coco.RELEASES[2014], annotations_url=f"{base}/ann.zip")
        monkeypatch.setitem(coco.RELEASES, 2014, release)
        with pytest.raises(InputError, match="checksum mismatch"):
            fetch_coco(tmp_path / "dest")
    assert not (tmp_path / "dest" / "annotations").exists()
