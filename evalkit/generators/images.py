"""``images:DIR``: score images made elsewhere (your own sampler, a cluster job, JAX) as a model.

Images are matched to the suite's items by file name, ``<item-id>.<ext>`` (sample 0) or
``<item-id>_<k>.<ext>`` (sample k; ``_000`` as evalkit's own run folders name them), or by a
JSONL manifest (``--model-opt manifest=FILE``) with one line per image: ``path`` (relative to
the folder, or absolute) and ``id`` (the item id) or ``prompt`` (the item's exact prompt),
optionally ``sample_index``.

Everything is checked before any scoring starts: a file that no request uses, a request with
no file, two files for one image, an unreadable file are errors listing the first few. Every
file's sha256 is part of its image's cache key and recorded in ``samples.jsonl`` (``source``,
``source_sha256``). Images are converted to 8-bit RGB (grayscale, palette, RGBA on white,
16-bit) and, when their size differs from the run's resolution, centre-cropped and resized
with PIL bicubic; both are counted in the manifest (``settings``). Lossy files (JPEG, WebP)
are scored as they are, with a warning recorded: re-encoding changes FID.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalkit import __version__
from evalkit.errors import InputError, UsageError
from evalkit.generators.base import GenerationRequest, Generator, GeneratorContext
from evalkit.images import center_crop_resize, load_reference
from evalkit.options import check_known

PREFIX = "images:"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}
OPTIONS = ("manifest",)
SHOW = 5
_SAMPLE = re.compile(r"^(?P<id>.+)_(?P<k>\d+)$")


@dataclass(frozen=True)
class SourceImage:
    """One file of the folder and what it stands for."""

    path: Path
    item_id: str
    sample_index: int
    sha256: str
    size: tuple[int, int]
    mode: str


def _first(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOW])
    return shown + (f" … and {len(names) - SHOW} more" if len(names) > SHOW else "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _candidates(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files directly in ``folder`` (sorted) and the names of the other files, ignored."""
    images: list[Path] = []
    others: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, [p.name for p in others]


def _by_file_name(paths: Sequence[Path], item_ids: set[str]) -> list[tuple[Path, str, int]]:
    """(path, item id, sample index) from ``<id>`` or ``<id>_<k>`` file stems."""
    out = []
    for path in paths:
        stem = path.stem
        if stem in item_ids:
            out.append((path, stem, 0))
            continue
        match = _SAMPLE.match(stem)
        if match and match["id"] in item_ids:
            out.append((path, match["id"], int(match["k"])))
        else:
            out.append((path, stem, -1))  # matches no item: reported as extra
    return out


def _by_manifest(
    manifest: Path, folder: Path, items_by_prompt: Mapping[str, list[str]]
) -> list[tuple[Path, str, int]]:
    """(path, item id, sample index) from a JSONL manifest; errors name the line."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"images manifest {manifest}: cannot be read ({exc})") from exc
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"images manifest {manifest}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise InputError(f"{where}: needs a 'path' string")
        if isinstance(record.get("id"), str):
            item_id = record["id"]
        elif isinstance(record.get("prompt"), str):
            ids = items_by_prompt.get(record["prompt"], [])
            if len(ids) != 1:
                what = "no item of the suite" if not ids else f"{len(ids)} items ({_first(ids)})"
                raise InputError(f"{where}: prompt {record['prompt']!r} matches {what}; give 'id'")
            item_id = ids[0]
        else:
            raise InputError(f"{where}: needs 'id' or 'prompt'")
        k = record.get("sample_index", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputError(f"{where}: sample_index must be a non-negative integer, got {k!r}")
        path = Path(record["path"]).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise InputError(f"{where}: image file {path} not found")
        out.append((path, item_id, k))
    return out


class ImagesGenerator(Generator):
    """Serves existing image files as a model's output (one file per request)."""

    name = "images"

    def __init__(
        self,
        folder: Path,
        sources: Sequence[SourceImage],
        ignored: Sequence[str],
        context: GeneratorContext,
    ) -> None:
        self.folder = folder
        self.resolution = context.resolution
        self.sources = {(s.item_id, s.sample_index): s for s in sources}
        self.ignored = list(ignored)
        sizes = {s.size for s in sources}
        # the files' common side when all are square and of one size, else the run's
        self._native = (
            next(iter(sizes))[0] if len(sizes) == 1 and len(set(*sizes)) == 1 else self.resolution
        )

    @property
    def native_resolution(self) -> int:
        return self._native

    def fingerprint(self) -> dict[str, Any]:
        # the files' own hashes are in each request's identity: adding or changing one file
        # changes only its own image's cache key
        return {
            "model": "images",
            "preprocessing": "rgb8, center-crop + PIL bicubic to the run resolution",
            "evalkit": __version__,
        }

    def request_identity(self, request: GenerationRequest) -> dict[str, Any]:
        return {"source_sha256": self._source(request).sha256}

    def sample_record(self, request: GenerationRequest) -> dict[str, Any]:
        """Extra ``samples.jsonl`` fields: the file an image came from and its sha256."""
        source = self._source(request)
        return {"source": str(source.path), "source_sha256": source.sha256}

    def settings(self) -> dict[str, Any]:
        lossy = sorted({s.path.suffix.lower() for s in self.sources.values()} & LOSSY_SUFFIXES)
        notes = []
        if lossy:
            notes.append(
                f"lossy files ({', '.join(lossy)}) are scored as stored; JPEG compression moves FID"
            )
        if self.ignored:
            notes.append(f"ignored {len(self.ignored)} non-image file(s): {_first(self.ignored)}")
        digest = hashlib.sha256(
            "\n".join(
                f"{k[0]}\t{k[1]}\t{s.sha256}" for k, s in sorted(self.sources.items())
            ).encode()
        ).hexdigest()
        return {
            "folder": str(self.folder),
            "num_files": len(self.sources),
            "files_sha256": digest,
            "native_resolution": self._native,
            "resized": sum(s.size != (self.resolution,) * 2 for s in self.sources.values()),
            "resize": f"center crop, PIL bicubic to {self.resolution} (files of another size)",
            "converted_to_rgb": sum(s.mode != "RGB" for s in self.sources.values()),
            "notes": notes,
        }

    def _source(self, request: GenerationRequest) -> SourceImage:
        key = (request.item.id, request.sample_index)
        if key not in self.sources:
            raise InputError(
                f"images {self.folder}: no file for item {request.item.id!r} sample {request.sample_index}"
            )
        return self.sources[key]

    def check_requests(self, requests: Sequence[GenerationRequest]) -> None:
        """Every request has a file and every file a request; else InputError listing the first few."""
        wanted = {(r.item.id, r.sample_index) for r in requests}
        missing = sorted(wanted - set(self.sources))
        extra = sorted(set(self.sources) - wanted)
        problems = []
        if missing:
            names = [f"{i}_{k:03d}" for i, k in missing]
            problems.append(f"{len(missing)} image(s) missing: {_first(names)}")
        if extra:
            names = [self.sources[k].path.name for k in extra]
            problems.append(
                f"{len(extra)} file(s) match no requested image (check --num-samples and "
                f"--images-per-prompt): {_first(names)}"
            )
        if problems:
            raise InputError(f"images {self.folder}: " + "; ".join(problems))

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        images = []
        for r in requests:
            source = self._source(r)
            if _sha256(source.path) != source.sha256:
                raise InputError(f"image {source.path} changed while the run was reading it")
            array = load_reference(source.path)  # any mode to 8-bit RGB, errors name the file
            if array.shape[:2] != (self.resolution, self.resolution):
                array = center_crop_resize(array, self.resolution)
            images.append(array)
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def make_images_generator(options: dict[str, Any], context: GeneratorContext) -> ImagesGenerator:
    """Registry factory: option ``dir`` (the folder) and optional ``manifest`` (JSONL)."""
    options = dict(options)
    folder_opt = options.pop("dir", None)
    check_known(options, OPTIONS, "model 'images'")
    if not isinstance(folder_opt, str) or not folder_opt:
        raise UsageError("model 'images' needs a folder: --model images:DIR")
    folder = Path(folder_opt).expanduser().resolve()
    if not folder.is_dir():
        raise InputError(f"images:{folder_opt}: no such folder")
    if context.suite is None:
        raise UsageError("model 'images' needs a suite to map files to prompts")
    items = context.suite.items()
    item_ids = {i.id for i in items}
    paths, ignored = _candidates(folder)
    if options.get("manifest"):
        by_prompt: dict[str, list[str]] = {}
        for item in items:
            by_prompt.setdefault(item.prompt, []).append(item.id)
        mapped = _by_manifest(Path(str(options["manifest"])).expanduser(), folder, by_prompt)
    else:
        if not paths:
            raise InputError(
                f"images:{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        mapped = _by_file_name(paths, item_ids)
    unmatched = [p.name for p, item_id, k in mapped if k < 0 or item_id not in item_ids]
    if unmatched:
        raise InputError(
            f"images:{folder}: {len(unmatched)} file(s) name no item of suite {context.suite.name!r} "
            f"(expected <item-id>.png or <item-id>_<k>.png): {_first(unmatched)}"
        )
    seen: dict[tuple[str, int], Path] = {}
    duplicates = []
    for path, item_id, k in mapped:
        if (item_id, k) in seen:
            duplicates.append(f"{seen[(item_id, k)].name} and {path.name}")
        seen[(item_id, k)] = path
    if duplicates:
        raise InputError(f"images:{folder}: two files for one image: {_first(duplicates)}")
    sources, unreadable = [], []
    for (item_id, k), path in sorted(seen.items()):
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
                img.verify()
        except Exception as exc:  # PIL raises many types for a broken file
            unreadable.append(f"{path.name} ({type(exc).__name__})")
            continue
        sources.append(SourceImage(path, item_id, k, _sha256(path), size, mode))
    if unreadable:
        raise InputError(
            f"images:{folder}: {len(unreadable)} unreadable file(s): {_first(unreadable)}"
        )
    if ignored:
        print(
            f"warning: images:{folder}: ignoring non-image files: {_first(ignored)}",
            file=sys.stderr,
        )
    return ImagesGenerator(folder, sources, ignored, context)
