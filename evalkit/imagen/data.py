"""Training data: (image, caption) pairs from memory, an image folder, a JSONL manifest or `datasets`.

Images may be uint8 arrays/tensors (H, W, 3) (or (3, H, W) tensors), float tensors
(3, H, W) in [−1, 1], or PIL images. :func:`to_model_image` centre-crops to a square and
resizes with antialiased bicubic to the stage resolution, in [−1, 1].
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evalkit.errors import InputError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _to_float_chw(image: Any) -> torch.Tensor:
    """Any supported image → float32 (3, H, W) in [−1, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        image = np.ascontiguousarray(image)
        image = torch.from_numpy(image if image.flags.writeable else image.copy())
    if not isinstance(image, torch.Tensor):
        raise InputError(
            f"training image of type {type(image).__name__}: expected a uint8 array, a tensor or a PIL image"
        )
    if image.ndim == 2:
        image = image.unsqueeze(-1).expand(*image.shape, 3)
    if image.ndim != 3:
        raise InputError(
            f"training image of shape {tuple(image.shape)}: expected (H, W, C) or (C, H, W)"
        )
    if image.dtype == torch.uint8:
        chw = (
            image
            if image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4)
            else image.permute(2, 0, 1)
        )
        x = chw.float() / 127.5 - 1.0
    else:
        x = image.float()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] == 4:
        x = x[:3]
    if x.shape[0] != 3:
        raise InputError(f"training image with {x.shape[0]} channels: expected 1, 3 or 4")
    return x


def to_model_image(image: Any, resolution: int) -> torch.Tensor:
    """Centre-crop to a square, resize (antialiased bicubic) to ``resolution``: float (3, R, R) in [−1, 1]."""
    x = _to_float_chw(image)
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side != resolution:
        x = F.interpolate(
            x[None],
            size=(resolution, resolution),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        )[0]
    return x.clamp(-1.0, 1.0)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, R, R) → (B, 3, size, size) with antialiased bicubic, clipped to [−1, 1]."""
    return F.interpolate(
        x, size=(size, size), mode="bicubic", antialias=True, align_corners=False
    ).clamp(-1, 1)


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read training image {path}: {exc}") from exc


class ImageFolder:
    """Images under ``root`` (recursive, sorted), each captioned by the ``.txt`` file beside it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"training image folder {self.root} does not exist")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise InputError(
                f"training image folder {self.root} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        missing = [p for p in self.paths if not p.with_suffix(".txt").is_file()]
        if missing:
            raise InputError(
                f"{len(missing)} image(s) in {self.root} have no caption file beside them, e.g. {missing[0].with_suffix('.txt')}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        p = self.paths[i]
        return _load_image(p), p.with_suffix(".txt").read_text(encoding="utf-8").strip()

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        return (self[i] for i in range(len(self)))


class JsonlManifest:
    """A JSONL file of ``{"image": path, "caption": text}`` lines (paths relative to the file)."""

    def __init__(
        self, path: str | os.PathLike, image_key: str = "image", caption_key: str = "caption"
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"training manifest {self.path} does not exist")
        self.rows: list[tuple[Path, str]] = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, caption = row[image_key], row[caption_key]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(
                    f"{self.path}:{n}: expected a JSON object with {image_key!r} and {caption_key!r} ({exc})"
                ) from exc
            self.rows.append(((self.path.parent / image).resolve(), str(caption)))
        if not self.rows:
            raise InputError(f"training manifest {self.path} is empty")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        path, caption = self.rows[i]
        return _load_image(path), caption

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        return (self[i] for i in range(len(self)))


class HFDataset:
    """A Hugging Face ``datasets`` dataset (imported only when this is built) as (image, caption) pairs."""

    def __init__(
        self,
        dataset: Any,
        split: str = "train",
        image_column: str = "image",
        caption_column: str = "text",
        **load_kwargs: Any,
    ) -> None:
        if isinstance(dataset, str):
            try:
                import datasets
            except ImportError as exc:
                raise UsageError(
                    "training from a `datasets` dataset needs: pip install 'evalkit[datasets]'"
                ) from exc
            dataset = datasets.load_dataset(dataset, split=split, **load_kwargs)
        for col in (image_column, caption_column):
            if col not in dataset.column_names:
                raise InputError(f"dataset has no column {col!r} (columns: {dataset.column_names})")
        self.dataset, self.image_column, self.caption_column = dataset, image_column, caption_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        row = self.dataset[int(i)]
        return row[self.image_column], str(row[self.caption_column])

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        return (self[i] for i in range(len(self)))
