"""The image plan of a run: which images it needs, their cache keys, and filling the gaps.

The planner (model adapters live in :mod:`evalkit.generators`): per-image seeds, a
content-addressed image cache, resume, sharding, and generating only the missing images.

Every image is identified by its request (item, sample index, derived seed) and
stored in the cache under a key made of the model fingerprint, the request's
pixel-determining fields and the resolution. A PNG is renamed into place only when
complete, so a killed run resumes by generating exactly the images the cache lacks:
nothing is lost, nothing duplicated, and nothing is generated twice across runs.

With per-stage evaluation a cascade's intermediate stages are cached too, under the
same key material plus ``{"stage": name}``; the final image keeps its ordinary key,
so runs with and without per-stage evaluation share it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit.distributed import DistInfo
from evalkit.errors import GenerationError, UsageError
from evalkit.generators.base import (
    GenerationRequest,
    Generator,
    StagedGenerator,
    check_output,
)
from evalkit.hashing import sha256_json
from evalkit.image_cache import CacheProblem, ImageCache
from evalkit.progress import log, progress_bar
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
    """A request with its cache key (and, for per-stage runs, its intermediate stages' keys)."""

    request: GenerationRequest
    key: str
    #: cache keys of the cascade's intermediate stages' images, in cascade order (final excluded)
    stage_keys: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"{self.request.item.id}_{self.request.sample_index:03d}.png"

    def all_keys(self) -> tuple[str, ...]:
        """Every key this image fills: intermediate stages, then the final image."""
        return (*self.stage_keys, self.key)

    def at_stage(self, index: int) -> PlannedImage:
        """The same request keyed by intermediate stage ``index`` (for scoring that stage)."""
        return PlannedImage(self.request, self.stage_keys[index])


def plan_images(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    resolution: int,
    stages: Sequence[str] = (),
) -> list[PlannedImage]:
    """Attach cache keys to requests; ``stages`` names intermediate stages to key as well.

    The final image's key never depends on ``stages``.
    """
    fingerprint = generator.fingerprint()
    planned = []
    for r in requests:
        identity = request_identity(generator, r)
        stage_keys = tuple(
            cache_key(fingerprint, {**identity, "stage": name}, resolution) for name in stages
        )
        planned.append(PlannedImage(r, cache_key(fingerprint, identity, resolution), stage_keys))
    return planned


def cascade_stages(generator: Generator, model: str) -> list[tuple[str, int]]:
    """(name, native resolution) of every stage of a cascade, final last.

    UsageError naming ``model`` when the generator has no per-stage outputs.
    """
    if not isinstance(generator, StagedGenerator):
        raise UsageError(
            f"--per-stage: model {model!r} ({generator.name}) has no per-stage outputs "
            "(no generate_stages); drop --per-stage or use a cascade such as imagen"
        )
    names, resolutions = list(generator.stage_names()), list(generator.stage_resolutions())
    if not names or len(set(names)) != len(names) or len(resolutions) != len(names):
        raise GenerationError(
            f"model {model!r}: stage names must be unique, non-empty and match the stage "
            f"resolutions, got {names} and {resolutions}"
        )
    return list(zip(names, (int(r) for r in resolutions), strict=True))


def shard(planned: Sequence[PlannedImage], info: DistInfo) -> list[PlannedImage]:
    """This rank's share: every ``world_size``-th image starting at ``rank``."""
    return list(planned[info.rank :: info.world_size])


@dataclass
class GenerationStats:
    """What :func:`generate_missing` did."""

    generated: int
    """Images generated (a staged image counts once, however many stages it filled)."""
    cached: int
    """Planned images found complete and verified in the cache (or duplicates of another planned image)."""
    untrusted: list[CacheProblem] = field(default_factory=list)
    """Cached images that failed verification: moved to the cache's quarantine and regenerated."""
    stage_latency_s: list[float] = field(default_factory=list)
    """Per-stage seconds summed over the generated images (staged generation only)."""


def generate_missing(
    generator: Generator,
    planned: Sequence[PlannedImage],
    cache: ImageCache,
    *,
    resolution: int,
    batch_size: int,
    show_progress: bool = True,
    per_stage: bool = False,
) -> GenerationStats:
    """Generate the planned images the cache lacks.

    With ``per_stage`` the images come from ``generator.generate_stages`` (every stage in one
    cascade pass, each timed), filling ``stage_keys`` as well as ``key``; an image is
    regenerated when any of its keys is missing.
    """
    staged: StagedGenerator | None = None
    if per_stage:
        if not isinstance(generator, StagedGenerator):
            raise UsageError(
                f"per-stage generation: model {generator.name!r} has no generate_stages"
            )
        staged = generator
    missing, untrusted = find_missing(planned, cache)
    stats = GenerationStats(
        generated=len(missing), cached=len(planned) - len(missing), untrusted=untrusted
    )
    with progress_bar(f"generating ({generator.name})", len(missing), show_progress) as advance:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            requests = [p.request for p in batch]
            if staged is not None:
                outputs = _staged_output(staged, requests, len(batch[0].all_keys()), resolution)
                if not stats.stage_latency_s:
                    stats.stage_latency_s = [0.0] * len(outputs)
                for k, (images, seconds) in enumerate(outputs):
                    stats.stage_latency_s[k] += seconds
                    for p, image in zip(batch, images, strict=True):
                        cache.put(p.all_keys()[k], image)
            else:
                generated = check_output(
                    generator.generate(requests), len(batch), resolution, generator.name
                )
                for p, image in zip(batch, _to_hwc(generated), strict=True):
                    cache.put(p.key, image)
            advance(len(batch))
    return stats


def find_missing(
    planned: Sequence[PlannedImage], cache: ImageCache, *, quarantine: bool = True
) -> tuple[list[PlannedImage], list[CacheProblem]]:
    """The planned images to generate, and the cached files that failed verification.

    Every cached file is checked against the sha256 recorded when it was written; one that
    fails is moved to the cache's quarantine (with a warning on stderr) and its image is
    generated again, so a replaced, truncated or unreadable file is never trusted.
    ``quarantine=False`` (dry runs) only counts: nothing is moved or logged.
    """
    missing: list[PlannedImage] = []
    untrusted: list[CacheProblem] = []
    seen: set[str] = set()
    for p in planned:
        if p.key in seen:
            continue
        seen.add(p.key)
        complete = True
        for key in p.all_keys():
            problem = cache.verify(key, quarantine=quarantine)
            if problem is not None:
                untrusted.append(problem)
            if problem is not None or not cache.has(key):
                complete = False
        if not complete:
            missing.append(p)
    if not quarantine:
        return missing, untrusted
    for problem in untrusted[:5]:
        log(f"warning: untrusted cached image {problem.describe()}; regenerating it")
    if len(untrusted) > 5:
        log(
            f"warning: {len(untrusted) - 5} more untrusted cached images moved aside and regenerated"
        )
    return missing, untrusted


def _to_hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def _staged_output(
    generator: StagedGenerator,
    requests: Sequence[GenerationRequest],
    n_stages: int,
    resolution: int,
) -> list[tuple[np.ndarray, float]]:
    """(HWC uint8 images, seconds) per stage from ``generate_stages``, validated."""
    stages = generator.generate_stages(requests)
    if len(stages) != n_stages:
        raise GenerationError(
            f"model {generator.name!r} returned {len(stages)} stages, expected {n_stages}"
        )
    out = []
    for stage in stages:
        images = check_output(
            stage.images, len(requests), resolution, f"{generator.name} ({stage.name})"
        )
        out.append((_to_hwc(images), float(stage.latency_s)))
    return out


def link_into(run_images: Path, planned: Sequence[PlannedImage], cache: ImageCache) -> None:
    """Make ``run_images/<item>_<k>.png`` point at the cached files (hard link, else copy)."""
    run_images.mkdir(parents=True, exist_ok=True)
    for p in planned:
        target = run_images / p.file_name
        source = cache.path(p.key)
        cache.touch(p.key)
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
