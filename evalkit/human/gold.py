"""Gold (attention-check) tasks: a clean set against the same set heavily degraded.

A gold task is passed when every question of it prefers the clean set; accuracy is counted
per task (one task asks two questions, and is still one check).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from evalkit.atomic import atomic_write


def degrade(image: Image.Image, seed: int) -> Image.Image:
    """Heavy, unmistakable degradation: 1/8 down-and-up sampling, Gaussian blur, noise (sd 60)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    small = rgb.resize((max(1, w // 8), max(1, h // 8)), Image.Resampling.BILINEAR)
    blurred = small.resize((w, h), Image.Resampling.BILINEAR).filter(
        ImageFilter.GaussianBlur(radius=max(2.0, min(w, h) / 40))
    )
    rng = np.random.Generator(np.random.PCG64(seed))
    noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0.0, 60.0, size=(h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_degraded(source: Path, target: Path, seed: int) -> Path:
    """Degrade the image at ``source`` and write it as PNG to ``target`` atomically."""
    with Image.open(source) as im:
        out = degrade(im, seed)
    return atomic_write(target, lambda f: out.save(f, format="PNG"))


def gold_outcomes(votes: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, bool]]:
    """Per answered gold task (by submission id): (rater id, passed), from effective votes."""
    out: dict[str, tuple[str, bool]] = {}
    for v in votes:
        if not v["is_gold"]:
            continue
        rater, passed = out.get(v["submission_id"], (v["rater_id"], True))
        out[v["submission_id"]] = (rater, passed and v["preferred"] == "clean")
    return out
