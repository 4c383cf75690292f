"""The generation runner: per-image seeds, a content-addressed image cache, resume, sharding.

Every image is identified by its request (item, sample index, derived seed) and
stored in the cache under a key made of the model fingerprint, the request's
pixel-determining fields and the resolution. A PNG is renamed into place only when
complete, so a killed run resumes by generating exactly the images the cache lacks:
nothing is lost, nothing duplicated, and nothing is generated twice across runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.distributed import DistInfo
from evalkit.generators.base import GenerationRequest, Generator, check_output
from evalkit.hashing import sha256_json
from evalkit.images import load_generated, save_png
from evalkit.progress import progress_bar
from evalkit.seeding import derive_seed
from evalkit.suites.base import Item

CACHE_KEY_VERSION = 1


def plan_requests(
    items: Sequence[Item], images_per_prompt: int, run_seed: int
) -> list[GenerationRequest]:
    """All requests of a run, item-major: (item 0, sample 0..K-1), (item 1, ...)."""
    return [
        GenerationRequest(item=item, sample_index=k, seed=derive_seed(run_seed, item.id, k))
        for item in items
        for k in range(images_per_prompt)
    ]


def request_identity(generator: Generator, request: GenerationRequest) -> dict[str, Any]:
    """The fields of a request that determine its pixels (a generator may add its own)."""
    custom = getattr(generator, "request_identity", None)
    if callable(custom):
        return custom(request)
    return {"prompt": request.prompt, "seed": request.seed}


def cache_key(fingerprint: dict[str, Any], identity: dict[str, Any], resolution: int) -> str:
    """Content address of one image."""
    return sha256_json(
        {
            "v": CACHE_KEY_VERSION,
            "model": fingerprint,
            "request": identity,
            "resolution": resolution,
        }
    )


@dataclass(frozen=True)
class PlannedImage:
    """A request with its cache key."""

    request: GenerationRequest
    key: str

    @property
    def file_name(self) -> str:
        return f"{self.request.item.id}_{self.request.sample_index:03d}.png"


class ImageCache:
    """PNG files addressed by key under ``root/<key[:2]>/<key>.png``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, image_hwc: np.ndarray) -> Path:
        return save_png(self.path(key), image_hwc)

    def load(self, key: str, size: int | None = None) -> np.ndarray:
        return load_generated(self.path(key), size)


def plan_images(
    generator: Generator, requests: Sequence[GenerationRequest], resolution: int
) -> list[PlannedImage]:
    """Attach cache keys to requests."""
    fingerprint = generator.fingerprint()
    return [
        PlannedImage(r, cache_key(fingerprint, request_identity(generator, r), resolution))
        for r in requests
    ]


def shard(planned: Sequence[PlannedImage], info: DistInfo) -> list[PlannedImage]:
    """This rank's share: every ``world_size``-th image starting at ``rank``."""
    return list(planned[info.rank :: info.world_size])


def generate_missing(
    generator: Generator,
    planned: Sequence[PlannedImage],
    cache: ImageCache,
    *,
    resolution: int,
    batch_size: int,
    show_progress: bool = True,
) -> tuple[int, int]:
    """Generate the planned images the cache lacks; returns (generated, already cached)."""
    missing: list[PlannedImage] = []
    seen: set[str] = set()
    for p in planned:
        if p.key in seen or cache.has(p.key):
            continue
        seen.add(p.key)
        missing.append(p)
    cached = len(planned) - len(missing)
    with progress_bar(f"generating ({generator.name})", len(missing), show_progress) as advance:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            images = generator.generate([p.request for p in batch])
            images = check_output(images, len(batch), resolution, generator.name)
            array = images.permute(0, 2, 3, 1).contiguous().numpy()
            for p, image in zip(batch, array, strict=False):
                cache.put(p.key, image)
            advance(len(batch))
    return len(missing), cached


def link_into(run_images: Path, planned: Sequence[PlannedImage], cache: ImageCache) -> None:
    """Make ``run_images/<item>_<k>.png`` point at the cached files (hard link, else copy)."""
    run_images.mkdir(parents=True, exist_ok=True)
    for p in planned:
        target = run_images / p.file_name
        source = cache.path(p.key)
        if target.exists():
            if os.path.samefile(target, source):
                continue
            target.unlink()
        tmp = target.with_name(f".{target.name}.tmp")
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
