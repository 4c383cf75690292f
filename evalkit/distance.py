"""``evalkit distance A B``: set-vs-set metrics between two image sets, with no prompts.

A and B are folders of images, evalkit run folders (their ``images/``), or for B also a
statistics file (FID only: evalkit's, pytorch-fid's or clean-fid's ``mu``/``sigma``). The
metrics are the registered ones, computed exactly as in a run: A plays the generated images,
B the reference set (FID and FD-DINOv2 are symmetric; KID, precision/recall, density/coverage
and CMMD read B as the real distribution). Images keep their own sizes unless ``resolution``
is given; each metric resizes them per its protocol.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from evalkit import __version__
from evalkit.distributed import check_device
from evalkit.environment import environment
from evalkit.errors import UsageError
from evalkit.metrics.base import MetricContext, MetricResult
from evalkit.metrics.refstats import StatsOnlyReference
from evalkit.paths import cache_root, cache_what, usable_dir
from evalkit.progress import progress_bar
from evalkit.registry import METRICS
from evalkit.suites.folder import FolderReferenceSet, ImageSetSuite

#: metrics that score prompts or pixels, not two image sets
NOT_SET_METRICS = {"clip_score", "shapes_accuracy", "is"}
DEFAULT_METRICS = ("fid", "kid")


@dataclass(frozen=True)
class DistanceOptions:
    """How to compute; none of these change the numbers except ``resolution``."""

    cache_dir: Path | None = None
    device: str = "cpu"
    batch_size: int = 64
    resolution: int | None = None
    allow_random_weights: bool = False
    show_progress: bool = True
    seed: int = 0


def image_set(path: Path, resolution: int | None, what: str) -> FolderReferenceSet:
    """A folder of images, or the ``images/`` of an evalkit run folder."""
    path = Path(path).expanduser()
    if (path / "results.json").is_file() and (path / "images").is_dir():
        path = path / "images"
    if not path.is_dir():
        raise UsageError(f"{what} {path}: not a folder of images or an evalkit run folder")
    return FolderReferenceSet(path, resolution)


def distance(
    a: Path,
    b: Path,
    metrics: tuple[str, ...],
    metric_options: dict[str, dict[str, Any]],
    options: DistanceOptions,
) -> dict[str, Any]:
    """Every metric between A (as generated) and B (as reference); a results-like dict."""
    t0 = time.perf_counter()
    if not metrics:
        raise UsageError("no metrics to compute; name at least one, e.g. --metrics fid,kid")
    for name in metrics:
        METRICS.entry(name)
        if name in NOT_SET_METRICS:
            raise UsageError(f"{name} scores prompts or single images, not two image sets")
    for name in metric_options:
        if name not in metrics:
            raise UsageError(f"--metric-opt {name}.*: {name!r} is not among --metrics")
    check_device(options.device)
    cache_dir = usable_dir(options.cache_dir or cache_root(), cache_what(options.cache_dir))
    first = image_set(a, options.resolution, "A")
    b = Path(b).expanduser()
    opts = {k: dict(v) for k, v in metric_options.items()}
    if b.is_file():
        second: Any = StatsOnlyReference(b)
        if "fid" in metrics:
            opts.setdefault("fid", {})["ref_stats"] = str(b)
    else:
        second = image_set(b, options.resolution, "B")
    context = MetricContext(
        suite=ImageSetSuite(first, second),
        resolution=options.resolution or 0,
        device=options.device,
        batch_size=options.batch_size,
        seed=options.seed,
        cache_dir=cache_dir,
        allow_random_weights=options.allow_random_weights,
        num_images=len(first),
        reference=second,
    )
    built = {name: METRICS.get(name)(opts.get(name, {}), context) for name in metrics}
    for metric in built.values():
        metric.prepare()
    items = {item.id: item for item in ImageSetSuite(first, None).items()}
    names = [p.stem for p in first.files]
    done = 0
    with progress_bar("scoring A", len(first), options.show_progress) as advance:
        for batch in first.iter_batches(options.batch_size):
            images = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
            chunk = [items[n] for n in names[done : done + len(batch)]]
            for metric in built.values():
                metric.update(images, chunk, [0] * len(chunk))
            done += len(batch)
            advance(len(batch))
    results: dict[str, MetricResult] = {name: m.compute() for name, m in built.items()}
    context.features.flush()
    return {
        "kind": "distance",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evalkit_version": __version__,
        "a": first.identity(),
        "b": second.identity(),
        "metrics": {name: r.to_dict() for name, r in results.items()},
        "uncalibrated": any(r.uncalibrated for r in results.values()),
        "environment": environment(options.device, 1),
        "total_s": round(time.perf_counter() - t0, 3),
    }


def save_reference_stats(result: dict[str, Any], target: Path) -> Path:
    """Copy the FID reference statistics of B that ``distance`` computed and cached to ``target``."""
    fid = result["metrics"].get("fid")
    if fid is None:
        raise UsageError("--save-stats needs fid among --metrics")
    stats = fid["manifest"].get("reference_stats") or {}
    if stats.get("origin") not in ("cache", "computed") or not stats.get("path"):
        raise UsageError("--save-stats: B was a statistics file already; nothing new to save")
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(stats["path"], tmp)
    tmp.replace(target)
    return target
