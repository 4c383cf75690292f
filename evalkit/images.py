"""Reading and writing images losslessly, with errors that name the file.

Generated images are stored as 8-bit RGB PNG (lossless: JPEG changes FID a lot).
``load_generated`` is strict (the store only ever holds 8-bit RGB of the run's size);
``load_reference`` converts what real datasets contain (grayscale, palette, RGBA,
16-bit) to 8-bit RGB, and refuses what it cannot read.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from evalkit.atomic import atomic_write_bytes
from evalkit.errors import InputError


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) array (deterministic: no timestamps)."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) array as PNG, atomically."""
    return atomic_write_bytes(path, encode_png(array))


def _open(path: Path, source: str | os.PathLike | IO[bytes] | None = None) -> Image.Image:
    """Decode ``source`` (default: the file ``path``); errors name ``path``."""
    try:
        img = Image.open(path if source is None else source)
        img.load()
    except FileNotFoundError as exc:
        raise InputError(f"image {path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image {path}: corrupt or truncated ({exc})") from exc
    return img


def load_generated(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Read a stored generated image: must be 8-bit RGB (and ``size``×``size`` if given)."""
    return decode_generated(None, path, size)


def decode_generated(
    source: IO[bytes] | None, path: str | os.PathLike, size: int | None = None
) -> np.ndarray:
    """Decode a generated image from ``source`` (or the file ``path``); errors name ``path``."""
    path = Path(path)
    img = _open(path, source)
    if img.mode != "RGB":
        raise InputError(f"image {path}: mode {img.mode!r}, expected 8-bit RGB")
    if size is not None and img.size != (size, size):
        raise InputError(f"image {path}: size {img.size[0]}x{img.size[1]}, expected {size}x{size}")
    return np.asarray(img, dtype=np.uint8).copy()


def pil_to_rgb(img: Image.Image, where: str = "image") -> np.ndarray:
    """8-bit RGB (H, W, 3) of a decoded PIL image: grayscale, palette, RGBA and 16-bit converted.

    Transparency is composited on white, as viewers show it; a transparent image has no
    single "right" RGB.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr8, mode="L")
    elif img.mode == "F":
        raise InputError(f"{where}: floating-point image mode 'F' is not supported")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise InputError(f"{where}: unexpected shape {arr.shape}")
    return arr.copy()


def load_reference(path: str | os.PathLike) -> np.ndarray:
    """Read a real image as 8-bit RGB (H, W, 3), converting grayscale, palette, RGBA and 16-bit."""
    path = Path(path)
    return pil_to_rgb(_open(path), f"image {path}")


def center_crop_resize(
    array: np.ndarray, size: int, crop: str = "center", resample: str = "bicubic"
) -> np.ndarray:
    """Center-crop to a square (``crop="center"``) or not (``"none"``), then PIL-resize to ``size``.

    PIL's antialiased filters are the resizes clean-fid shows to be safe for FID.
    """
    filters = {
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
        "bilinear": Image.Resampling.BILINEAR,
        "box": Image.Resampling.BOX,
    }
    if resample not in filters:
        raise ValueError(f"unknown resample filter {resample!r}; choose from {sorted(filters)}")
    if crop not in ("center", "none"):
        raise ValueError(f"unknown crop {crop!r}; choose 'center' or 'none'")
    h, w = array.shape[:2]
    if crop == "center" and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        array = array[top : top + s, left : left + s]
    if array.shape[0] == size and array.shape[1] == size:
        return np.ascontiguousarray(array)
    img = Image.fromarray(np.ascontiguousarray(array), mode="RGB").resize(
        (size, size), filters[resample]
    )
    return np.asarray(img, dtype=np.uint8).copy()
