"""Zero-shot COCO FID-30K, the Imagen protocol (arXiv 2205.11487, §3 and Table 1).

N distinct images are drawn from COCO val (2014 by default) with a fixed, published
seed, and one of each image's captions becomes the prompt (the DM-GAN/LAFITE/GigaGAN
convention). Generated images are compared with the *full* validation set, center-
cropped and resized the same way as every reference image.

Sampling (``pcg64-fisher-yates/v1``), reimplementable from this description alone:
the images with at least one non-empty caption are ordered by image id; a
``numpy.random.PCG64(caption_seed)`` bit generator yields raw 64-bit words; step
``i`` of a partial Fisher–Yates shuffle swaps position ``i`` with ``i + below(M - i)``
and then picks caption ``below(k)`` of that image's ``k`` non-empty captions
(ordered by annotation id), where ``below(n)`` draws words until one is under
``2**64 - 2**64 % n`` and returns it modulo ``n``. Items keep draw order, so the
first 5,000 items of an N=30,000 run are exactly the items of an N=5,000 run. Only
the bit generator's raw stream is used: it is fixed across NumPy versions, unlike
``Generator.choice``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.fetch import cache_root, download, extract_zip
from evalkit.hashing import sha256_file, sha256_json
from evalkit.images import center_crop_resize, load_reference, pil_to_rgb
from evalkit.options import as_choice, as_int, check_known
from evalkit.suites.base import Item, ReferenceSet, Suite, validate_prompt

DEFAULT_CAPTION_SEED = 2205  # the Imagen arXiv id, 2205.11487
DEFAULT_NUM_SAMPLES = 30_000
SAMPLING = "pcg64-fisher-yates/v1"
CROPS = ("center", "none")
RESIZES = ("bicubic", "lanczos", "bilinear", "box")
VERIFY = ("listing", "full")
#: how option errors name this suite
WHERE = "suite 'coco'"


@dataclass(frozen=True)
class CocoRelease:
    """Where one COCO year's val captions and images live, and what they must hash to."""

    year: int
    annotations_url: str
    annotations_sha256: str
    images_url: str
    images_sha256: str
    num_images: int

    @property
    def split(self) -> str:
        return f"val{self.year}"

    @property
    def captions_file(self) -> str:
        return f"annotations/captions_val{self.year}.json"


# sha256 digests as listed in TensorFlow Datasets' url_checksums/coco.txt (sizes:
# 252,872,794 / 6,645,013,297 bytes for 2014; 252,907,541 / 815,585,330 for 2017).
RELEASES: dict[int, CocoRelease] = {
    2014: CocoRelease(
        2014,
        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
        "http://images.cocodataset.org/zips/val2014.zip",
        "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
        40_504,
    ),
    2017: CocoRelease(
        2017,
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
        "http://images.cocodataset.org/zips/val2017.zip",
        "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
        5_000,
    ),
}


def default_root() -> Path:
    """Where ``evalkit fetch coco`` puts COCO when no ``--dest`` is given."""
    return cache_root() / "datasets" / "coco"


def _fetch_hint(root: Path | None, year: int) -> str:
    year_flag = "" if year == 2014 else f" --year {year}"
    dest = f" --dest {root}" if root is not None else " --dest DIR"
    return f"`evalkit fetch coco{dest}{year_flag}`"


def normalize_caption(text: str) -> str:
    """Strip and collapse runs of whitespace (newlines, tabs, double spaces) to one space."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------
# Annotations and sampling


@dataclass(frozen=True)
class CocoImage:
    """One val image: its id, file (or dataset row) and non-empty captions."""

    image_id: int
    key: str  # file name for a folder, row index for a `datasets` source
    captions: tuple[tuple[int, str], ...]  # (annotation id, normalised caption), by annotation id


def read_captions(path: Path, fix: str) -> list[CocoImage]:
    """Parse a ``captions_val*.json``: every image (sorted by id) with its non-empty captions."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise InputError(f"COCO caption annotations not found at {path}; run {fix}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: malformed JSON ({exc}); the file is damaged, run {fix} again"
        ) from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise InputError(
            f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists); run {fix}"
        )
    files: dict[int, str] = {}
    for n, img in enumerate(data["images"]):
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("id"), int)
            or not isinstance(img.get("file_name"), str)
        ):
            raise InputError(f"{path}: images[{n}] lacks an integer 'id' or a 'file_name'")
        name = img["file_name"]
        if PurePosixPath(name).name != name or name in ("", ".", ".."):
            raise InputError(f"{path}: images[{n}] has an unsafe file_name {name!r}")
        if img["id"] in files:
            raise InputError(f"{path}: images[{n}] repeats image id {img['id']}")
        files[img["id"]] = name
    captions: dict[int, list[tuple[int, str]]] = {i: [] for i in files}
    for n, ann in enumerate(data["annotations"]):
        if (
            not isinstance(ann, dict)
            or not isinstance(ann.get("image_id"), int)
            or not isinstance(ann.get("caption"), str)
        ):
            raise InputError(f"{path}: annotations[{n}] lacks an integer 'image_id' or a 'caption'")
        if ann["image_id"] not in captions:
            raise InputError(
                f"{path}: annotations[{n}] refers to image {ann['image_id']}, which is not in 'images'"
            )
        text = normalize_caption(ann["caption"])
        if text:
            ann_id = ann["id"] if isinstance(ann.get("id"), int) else n
            captions[ann["image_id"]].append((ann_id, text))
    return [CocoImage(i, files[i], tuple(sorted(captions[i]))) for i in sorted(files)]


class _Words:
    """Raw 64-bit words of PCG64 and unbiased draws below ``n`` from them."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def below(self, n: int) -> int:
        if n < 1:
            raise ValueError(f"cannot draw below {n}")
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            word = int(self._bits.random_raw())
            if word < limit:
                return word % n


def sample_images(images: Sequence[CocoImage], n: int, seed: int) -> list[tuple[int, int, str]]:
    """Draw ``n`` distinct images with one caption each: ``(index in images, annotation id, caption)``.

    ``images`` must hold only images with captions, in image-id order (see module docstring).
    """
    if n > len(images):
        raise UsageError(f"cannot draw {n} distinct images from {len(images)}")
    words = _Words(seed)
    order = list(range(len(images)))
    out = []
    for i in range(n):
        j = i + words.below(len(order) - i)
        order[i], order[j] = order[j], order[i]
        captions = images[order[i]].captions
        ann_id, caption = captions[words.below(len(captions))]
        out.append((order[i], ann_id, caption))
    return out


# ---------------------------------------------------------------------------------------
# Image sources: a COCO folder, or a `datasets` dataset


class _FolderSource:
    """``root/annotations/captions_valYYYY.json`` and ``root/valYYYY/*.jpg``."""

    kind = "folder"

    def __init__(self, root: Path, release: CocoRelease, explicit_root: bool) -> None:
        fix = _fetch_hint(root, release.year)
        ann = root / release.captions_file
        folder = root / release.split
        if not ann.is_file():
            message = (
                f"COCO {release.year} caption annotations not found: {ann} is missing; run {fix}"
            )
            if not explicit_root:
                raise MissingWeightsError(
                    message
                    + f" or pass the suite option root=DIR (a folder with annotations/ and {release.split}/)"
                )
            raise InputError(message)
        self.images = read_captions(ann, fix)
        if not folder.is_dir():
            raise InputError(
                f"COCO {release.year} image folder not found: {folder} is missing; run {fix}"
            )
        sizes: dict[str, int] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file():
                    sizes[entry.name] = entry.stat().st_size
        missing = [im.key for im in self.images if im.key not in sizes]
        if missing:
            raise InputError(
                f"{folder}: {len(missing)} of the {len(self.images)} images listed in {ann} are missing "
                f"(e.g. {', '.join(missing[:3])}); the folder is incomplete: run {fix}"
            )
        self.folder = folder
        self.annotations = ann
        self.annotation_sha256 = sha256_file(ann)
        self.listing = sorted((im.key, sizes[im.key]) for im in self.images)

    def path(self, index: int) -> Path:
        return self.folder / self.images[index].key

    def reference(self, index: int) -> str | None:
        return str(self.path(index))

    def load(self, index: int) -> np.ndarray:
        return load_reference(self.path(index))

    def identity(self) -> dict[str, Any]:
        return {
            "annotation_sha256": self.annotation_sha256,
            "files_sha256": sha256_json(self.listing),
        }

    def content_sha256(self) -> str:
        """sha256 over the sha256 of every image file, in file-name order (reads every byte)."""
        digests = []
        for n, (name, _) in enumerate(self.listing):
            digests.append([name, sha256_file(self.folder / name)])
            if n % 5000 == 4999:
                print(
                    f"hashing COCO images: {n + 1}/{len(self.listing)}", file=sys.stderr, flush=True
                )
        return sha256_json(digests)


_IMAGE_COLUMNS = ("image",)
_CAPTION_COLUMNS = ("captions", "caption", "sentences", "sentences_raw", "text")
_ID_COLUMNS = ("image_id", "cocoid", "imgid", "id")


def _pick_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, where: str
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise InputError(
                f"{where}: no column {wanted!r} (the {what}); columns are {list(columns)}"
            )
        return wanted
    return next((c for c in candidates if c in columns), None)


def _caption_texts(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, Sequence):
        texts = []
        for v in value:
            if isinstance(v, Mapping):
                v = next(
                    (v[k] for k in ("raw", "caption", "text") if isinstance(v.get(k), str)), None
                )
            if not isinstance(v, str):
                raise InputError(
                    f"{where}: captions must be text or lists of text, got {type(v).__name__}"
                )
            texts.append(v)
        return texts
    raise InputError(f"{where}: captions must be text or lists of text, got {type(value).__name__}")


class _DatasetSource:
    """A COCO-captions dataset read through `datasets` (``load_from_disk`` or the local cache).

    Columns: an ``image`` column (a `datasets` Image feature); captions in ``captions``,
    ``caption``, ``sentences``, ``sentences_raw`` or ``text`` (a string, a list of strings,
    or a list of dicts with ``raw``/``caption``/``text``); optionally an image id in
    ``image_id``, ``cocoid``, ``imgid`` or ``id``; rows sharing an id are one image.
    """

    kind = "hf_dataset"

    def __init__(self, ref: str, split: str | None, columns: Mapping[str, str | None]) -> None:
        try:
            import datasets
        except ImportError as exc:
            raise UsageError(
                "the hf_dataset option needs the `datasets` package: pip install 'evalkit[datasets]'"
            ) from exc
        self.ref = ref
        ds = self._load(datasets, ref, split)
        where = f"hf_dataset {ref!r}"
        names = list(ds.column_names)
        image_col = _pick_column(names, columns.get("image"), _IMAGE_COLUMNS, "images", where)
        caption_col = _pick_column(
            names, columns.get("caption"), _CAPTION_COLUMNS, "captions", where
        )
        id_col = _pick_column(names, columns.get("id"), _ID_COLUMNS, "image ids", where)
        if image_col is None or caption_col is None:
            raise InputError(
                f"{where}: needs an image column ({', '.join(_IMAGE_COLUMNS)}) and a caption column "
                f"({', '.join(_CAPTION_COLUMNS)}); columns are {names}. Name them with the suite options "
                "hf_image_column= and hf_caption_column="
            )
        self.fingerprint = str(getattr(ds, "_fingerprint", ""))
        self.columns = {"image": image_col, "caption": caption_col, "id": id_col}
        ids = ds[id_col] if id_col else list(range(len(ds)))
        captions = ds[caption_col]
        grouped: dict[Any, tuple[int, list[str]]] = {}
        for row, (key, value) in enumerate(zip(ids, captions, strict=True)):
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                raise InputError(
                    f"{where}: row {row}: image id must be an integer or text, got {key!r}"
                )
            _first, texts = grouped.setdefault(key, (row, []))
            texts.extend(_caption_texts(value, f"{where}: row {row}"))
        self.images = []
        for key, (row, texts) in sorted(
            grouped.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])
        ):
            kept = [(n, c) for n, c in enumerate(normalize_caption(t) for t in texts) if c]
            image_id = key if isinstance(key, int) else row
            self.images.append(CocoImage(image_id, str(row), tuple(kept)))
        self._dataset = ds.select_columns([image_col])
        self.captions_sha256 = sha256_json(
            [[im.image_id, im.key, im.captions] for im in self.images]
        )

    @staticmethod
    def _load(datasets: Any, ref: str, split: str | None) -> Any:
        path = Path(ref).expanduser()
        try:
            if path.exists():
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(ref, split=split or "validation")
        except FileNotFoundError as exc:
            raise InputError(
                f"hf_dataset {ref!r}: not a dataset saved with save_to_disk ({exc})"
            ) from exc
        except (
            Exception
        ) as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError ...)
            raise MissingWeightsError(
                f"hf_dataset {ref!r} could not be loaded ({type(exc).__name__}: {exc}). Pass a folder written by "
                "Dataset.save_to_disk, or a dataset already in the local `datasets` cache (set "
                "HF_DATASETS_OFFLINE=1 on machines without internet); or use the COCO folder with "
                "`evalkit fetch coco --dest DIR` and root=DIR"
            ) from exc
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                split = (
                    "validation"
                    if "validation" in ds
                    else (next(iter(ds)) if len(ds) == 1 else None)
                )
            if split not in ds:
                raise UsageError(
                    f"hf_dataset {ref!r} has splits {sorted(ds)}; choose one with hf_split="
                )
            ds = ds[split]
        return ds

    def reference(self, index: int) -> str | None:
        return None

    def load(self, index: int) -> np.ndarray:
        row = int(self.images[index].key)
        value = self._dataset[row][self.columns["image"]]
        if isinstance(value, dict) and value.get("bytes"):
            value = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            return load_reference(value["path"])
        if not isinstance(value, Image.Image):
            raise InputError(f"hf_dataset {self.ref!r}: row {row} holds no decodable image")
        return pil_to_rgb(value, f"dataset {self.ref!r}")

    def identity(self) -> dict[str, Any]:
        return {"hf_fingerprint": self.fingerprint, "captions_sha256": self.captions_sha256}

    def content_sha256(self) -> str:
        files = sorted(f["filename"] for f in self._dataset.cache_files)
        return sha256_json([[Path(f).name, sha256_file(f)] for f in files])


# ---------------------------------------------------------------------------------------
# Suite and reference set


class CocoReferenceSet(ReferenceSet):
    """Every val image, cropped and resized like the items' references, streamed from disk."""

    def __init__(self, suite: CocoSuite, resolution: int) -> None:
        self.suite = suite
        self.resolution = resolution
        self._content: str | None = None

    def identity(self) -> dict[str, Any]:
        s = self.suite
        out = {
            "name": f"coco{s.year}-val",
            "split": f"val{s.year}",
            "count": len(self),
            "source": s.source.kind,
            **s.source.identity(),
            "crop": s.crop,
            "resize": s.resize,
            "resolution": self.resolution,
            "verify": s.verify,
        }
        if s.verify == "full":
            if self._content is None:
                self._content = s.source.content_sha256()
            out["content_sha256"] = self._content
        return out

    def __len__(self) -> int:
        return len(self.suite.source.images)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Batches in image-id order; decoding runs in a few threads, one batch ahead."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        load = self.suite._preprocessed
        pool = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="coco-ref"
        )
        try:
            pending = None
            for start in range(0, n, batch_size):
                futures = [
                    pool.submit(load, i, self.resolution)
                    for i in range(start, min(start + batch_size, n))
                ]
                if pending is not None:
                    yield np.stack([f.result() for f in pending])
                pending = futures
            if pending:
                yield np.stack([f.result() for f in pending])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class CocoSuite(Suite):
    """The Imagen zero-shot COCO protocol: N images of val, one caption each."""

    name = "coco"
    version = "1"

    def __init__(
        self,
        *,
        root: str | os.PathLike | None = None,
        year: int = 2014,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        caption_seed: int = DEFAULT_CAPTION_SEED,
        crop: str = "center",
        resize: str = "bicubic",
        verify: str = "listing",
        hf_dataset: str | None = None,
        hf_split: str | None = None,
        hf_columns: Mapping[str, str | None] | None = None,
    ) -> None:
        year = _year(year, WHERE)
        num_samples = as_int(num_samples, "num_samples", WHERE, minimum=1)
        caption_seed = as_int(caption_seed, "caption_seed", WHERE, minimum=0)
        crop = as_choice(crop, CROPS, "crop", WHERE)
        resize = as_choice(resize, RESIZES, "resize", WHERE)
        verify = as_choice(verify, VERIFY, "verify", WHERE)
        self.year, self.num_samples, self.caption_seed = year, num_samples, caption_seed
        self.crop, self.resize, self.verify = crop, resize, verify
        if hf_dataset is not None and root is not None:
            raise UsageError(f"{WHERE}: give either root (a COCO folder) or hf_dataset, not both")
        if hf_dataset is not None:
            self.source: _FolderSource | _DatasetSource = _DatasetSource(
                str(hf_dataset), hf_split, hf_columns or {}
            )
        else:
            explicit = root is not None
            self.source = _FolderSource(
                Path(root).expanduser() if root is not None else default_root(),
                RELEASES[year],
                explicit,
            )
        self._eligible = [i for i, im in enumerate(self.source.images) if im.captions]
        if num_samples > len(self._eligible):
            raise UsageError(
                f"{WHERE}: num_samples={num_samples} exceeds the {len(self._eligible)} val{year} images with a caption; "
                "use 30000 (the protocol) or 1000/5000/10000 for quick runs"
            )
        self._items: list[Item] | None = None
        self._index: dict[str, int] = {}

    def items(self) -> list[Item]:
        if self._items is None:
            pool = [self.source.images[i] for i in self._eligible]
            items = []
            for drawn, ann_id, caption in sample_images(pool, self.num_samples, self.caption_seed):
                index = self._eligible[drawn]
                image = pool[drawn]
                item_id = f"coco{self.year}-{image.image_id}"
                validate_prompt(
                    caption, f"coco val{self.year} image {image.image_id} caption {ann_id}"
                )
                spec = {"image_id": image.image_id, "annotation_id": ann_id, "key": image.key}
                items.append(Item(item_id, caption, None, spec, self.source.reference(index)))
                self._index[item_id] = index
            self._items = items
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "year": self.year,
            "split": f"val{self.year}",
            "num_samples": self.num_samples,
            "caption_seed": self.caption_seed,
            "sampling": SAMPLING,
            "captions_per_image": 1,
            "crop": self.crop,
            "resize": self.resize,
            "source": self.source.kind,
            **self.source.identity(),
            "num_images": len(self.source.images),
            "items_sha256": sha256_json([[i.id, i.prompt] for i in self.items()]),
        }

    def _preprocessed(self, index: int, resolution: int) -> np.ndarray:
        return center_crop_resize(self.source.load(index), resolution, self.crop, self.resize)

    def reference_image(self, item: Item, resolution: int) -> np.ndarray:
        self.items()
        if item.id not in self._index:
            raise InputError(f"item {item.id!r} is not one of this COCO suite's items")
        return self._preprocessed(self._index[item.id], _resolution(resolution))

    def reference_set(self, resolution: int) -> CocoReferenceSet:
        return CocoReferenceSet(self, _resolution(resolution))


def _resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    return resolution


# ---------------------------------------------------------------------------------------
# Options and fetching


def _year(value: Any, where: str) -> int:
    """``value`` as one of the supported COCO release years, else UsageError."""
    year = as_int(value, "year", where)
    if year not in RELEASES:
        raise UsageError(
            f"{where}: option year must be one of {', '.join(map(str, sorted(RELEASES)))}, "
            f"got {value!r}"
        )
    return year


_OPTIONS = (
    "root", "year", "num_samples", "caption_seed", "crop", "resize", "verify",
    "hf_dataset", "hf_split", "hf_image_column", "hf_caption_column", "hf_id_column",
)  # fmt: skip


def make_coco_suite(options: dict[str, Any]) -> CocoSuite:
    """Registry factory for ``coco`` (options: see docs/suites.md)."""
    check_known(options, _OPTIONS, WHERE)
    hf_columns = {k: options.get(f"hf_{k}_column") for k in ("image", "caption", "id")}
    return CocoSuite(
        root=options.get("root"),
        year=options.get("year", 2014),
        num_samples=options.get("num_samples", DEFAULT_NUM_SAMPLES),
        caption_seed=options.get("caption_seed", DEFAULT_CAPTION_SEED),
        crop=options.get("crop", "center"),
        resize=options.get("resize", "bicubic"),
        verify=options.get("verify", "listing"),
        hf_dataset=options.get("hf_dataset"),
        hf_split=options.get("hf_split"),
        hf_columns=hf_columns,
    )


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.is_file() and e.name.lower().endswith(".jpg"))


def _download_and_stage(url: str, sha256: str, root: Path, description: str) -> tuple[Path, Path]:
    """Download a zip into ``root/downloads`` and extract it to a hidden staging folder."""
    name = url.rsplit("/", 1)[-1]
    archive = download(url, root / "downloads" / name, sha256, description=description)
    return archive, extract_zip(archive, root / f".stage-{Path(name).stem}", overwrite=True)


def fetch_coco(
    dest: str | os.PathLike | None = None, year: int = 2014, *, keep_zips: bool = False
) -> Path:
    """Download and extract COCO ``year`` val captions and images into ``dest``; return ``dest``.

    Leaves ``dest/annotations/captions_valYYYY.json`` (and the other annotation files of
    the official zip) and ``dest/valYYYY/``. Archives are checked against their published
    sha256, extracted atomically and the image count verified; a run that finds the data
    already in place downloads nothing. Zips are deleted afterwards unless ``keep_zips``.
    """
    year = _year(year, "fetch coco")
    release = RELEASES[year]
    root = Path(dest).expanduser() if dest is not None else default_root()
    captions = root / release.captions_file
    images = root / release.split
    downloads = root / "downloads"
    zips: list[Path] = []
    for stale in [*root.glob(".stage-*"), *root.glob("..stage-*.extracting")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a fetch that was killed mid-extraction
    if not captions.is_file():
        archive, stage = _download_and_stage(
            release.annotations_url, release.annotations_sha256, root, f"COCO {year} annotations"
        )
        zips.append(archive)
        try:
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            for f in sorted((stage / "annotations").glob("*")):
                os.replace(f, root / "annotations" / f.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if not captions.is_file():
            raise InputError(
                f"{archive} did not contain {release.captions_file}; delete it and fetch again"
            )
    count = _count_images(images)
    if count != release.num_images:
        if images.exists():
            raise InputError(
                f"{images} exists but holds {count} of the {release.num_images} val{year} images; "
                "remove it and run the fetch again"
            )
        archive, stage = _download_and_stage(
            release.images_url, release.images_sha256, root, f"COCO {year} val images"
        )
        zips.append(archive)
        try:
            if not (stage / release.split).is_dir():
                raise InputError(
                    f"{archive} has no {release.split}/ folder; delete it and fetch again"
                )
            os.replace(stage / release.split, images)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        count = _count_images(images)
        if count != release.num_images:
            raise InputError(
                f"{images}: holds {count} images after extraction, expected {release.num_images}"
            )
    if not keep_zips:
        for z in zips:
            z.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    print(
        f"COCO {year} val ready in {root}: {count} images, {captions.name}",
        file=sys.stderr,
        flush=True,
    )
    return root
