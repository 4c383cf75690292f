"""A folder of images as a reference set (``evalkit run --ref DIR``, ``evalkit distance``).

Files are read in name order, converted to 8-bit RGB (grayscale, palette, RGBA on white,
16-bit). With a ``resolution`` each is centre-cropped and resized with PIL bicubic to it (as
the COCO reference set is); without one the images keep their own sizes and every metric
resizes them per its protocol (batches then hold images of one size). The identity hashes
every file, so cached statistics follow the content, not the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evalkit.errors import InputError
from evalkit.hashing import sha256_file, sha256_json
from evalkit.images import center_crop_resize, load_reference
from evalkit.suites.base import Item, ReferenceSet, Suite

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
SHOW = 5


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, in name order; InputError when there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder of images")
    files = sorted(
        p for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip
    if not files:
        raise InputError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class FolderReferenceSet(ReferenceSet):
    """The images of one folder, checked readable when the set is made."""

    def __init__(self, folder: str | os.PathLike, resolution: int | None = None) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.files = image_files(self.folder)
        self.resolution = resolution
        unreadable, sizes = [], {}
        for path in self.files:
            try:
                with Image.open(path) as img:
                    sizes[path.name] = img.size
                    img.verify()
            except Exception as exc:  # PIL raises many types for a broken file
                unreadable.append(f"{path.name} ({type(exc).__name__})")
        if unreadable:
            shown = ", ".join(unreadable[:SHOW]) + (" …" if len(unreadable) > SHOW else "")
            raise InputError(f"{self.folder}: {len(unreadable)} unreadable image file(s): {shown}")
        self.sizes = sorted(set(sizes.values()))
        self._content: str | None = None

    def content_sha256(self) -> str:
        """sha256 over (name, sha256) of every file (read once, then kept)."""
        if self._content is None:
            self._content = sha256_json([[p.name, sha256_file(p)] for p in self.files])
        return self._content

    def identity(self) -> dict[str, Any]:
        resize = (
            f"center crop, PIL bicubic to {self.resolution}"
            if self.resolution
            else "none (each metric resizes per its protocol)"
        )
        return {
            "name": "folder",
            "path": str(self.folder),
            "count": len(self.files),
            "content_sha256": self.content_sha256(),
            "sizes": [list(s) for s in self.sizes[:10]] + (["…"] if len(self.sizes) > 10 else []),
            "resize": resize,
            "resolution": self.resolution,
        }

    def __len__(self) -> int:
        return len(self.files)

    def load(self, path: Path) -> np.ndarray:
        image = load_reference(path)
        if self.resolution and image.shape[:2] != (self.resolution, self.resolution):
            image = center_crop_resize(image, self.resolution)
        return image

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Batches in file order; a batch ends early where the image size changes."""
        batch: list[np.ndarray] = []
        for path in self.files:
            image = self.load(path)
            if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
                yield np.stack(batch)
                batch = []
            batch.append(image)
        if batch:
            yield np.stack(batch)


class ImageSetSuite(Suite):
    """Two image sets as a suite: the first as the "generated" items, the second as references.

    Used by ``evalkit distance``: every set-level metric then compares the two folders exactly
    as it compares a run's images with a suite's reference set.
    """

    name = "image-sets"
    version = "1"

    def __init__(self, first: FolderReferenceSet, second: ReferenceSet | None) -> None:
        self.first = first
        self.second = second

    def items(self) -> list[Item]:
        return [Item(id=p.stem, prompt=p.name) for p in self.first.files]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "first": self.first.identity()}

    def reference_set(self, resolution: int) -> ReferenceSet | None:
        return self.second
