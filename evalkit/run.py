"""``evalkit run``: suite → generator → cached images → metrics → results.json → report."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit import __version__
from evalkit.atomic import atomic_write_json, atomic_write_text
from evalkit.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    dist_info,
    init_process_group,
    rank_device,
    shutdown,
)
from evalkit.environment import environment
from evalkit.errors import UsageError
from evalkit.generate import (
    ImageCache,
    PlannedImage,
    cascade_stages,
    generate_missing,
    link_into,
    plan_images,
    plan_requests,
    shard,
)
from evalkit.generators.base import Generator, GeneratorContext
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.paths import cache_root
from evalkit.progress import log, progress_bar
from evalkit.registry import METRICS, MODELS, SUITES
from evalkit.seeding import derive_seed
from evalkit.spec import RunSpec
from evalkit.suites.base import Item, Suite

SCHEMA_VERSION = 1
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9@._-]+")
SEED_DERIVATION = "sha256('evalkit-seed-v1', run seed, item id, sample index)[:63 bits]"


@dataclass
class RunOptions:
    """How to execute a spec; none of these change the numbers."""

    out_root: Path = Path("reports")
    cache_dir: Path | None = None
    device: str = "cpu"
    batch_size: int = 16
    metric_batch_size: int = 64
    allow_random_weights: bool = False
    show_progress: bool = True
    write_report: bool = True
    per_stage: bool = False
    """Cascades: also score every intermediate stage's output and time each stage (adds
    ``results["stages"]``; the main metrics and the run id stay the same)."""


def build_suite(spec: RunSpec) -> Suite:
    """Instantiate the spec's suite."""
    return SUITES.get(spec.suite)(dict(spec.suite_options))


def select_items(suite: Suite, spec: RunSpec) -> list[Item]:
    """The suite's items, limited to ``spec.num_samples``; duplicate ids are refused."""
    items = suite.items()
    if not items:
        raise UsageError(f"suite {spec.suite!r} has no items")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"suite {spec.suite!r} has duplicate item id {dup!r}")
    if spec.num_samples is not None:
        if spec.num_samples > len(items):
            raise UsageError(
                f"--num-samples {spec.num_samples} exceeds the {len(items)} prompts of suite {spec.suite!r}"
            )
        items = items[: spec.num_samples]
    return items


def build_generator(spec: RunSpec, suite: Suite, options: RunOptions, device: str) -> Generator:
    """Instantiate the spec's model."""
    context = GeneratorContext(
        resolution=spec.resolution,
        device=device,
        suite=suite,
        allow_random_weights=options.allow_random_weights,
        cache_dir=str(options.cache_dir or cache_root()),
    )
    return MODELS.get(spec.model)(dict(spec.model_options), context)


def samples_records(planned: Sequence[PlannedImage]) -> list[dict[str, Any]]:
    """One samples.jsonl record per image."""
    return [
        {
            "item_id": p.request.item.id,
            "sample_index": p.request.sample_index,
            "seed": p.request.seed,
            "prompt": p.request.item.prompt,
            "category": p.request.item.category,
            "image": f"images/{p.file_name}",
            "key": p.key,
        }
        for p in planned
    ]


def write_samples(run_dir: Path, planned: Sequence[PlannedImage]) -> Path:
    """Write samples.jsonl atomically."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in samples_records(planned)]
    return atomic_write_text(run_dir / "samples.jsonl", "\n".join(lines) + "\n")


def compute_metrics(
    metrics: dict[str, Metric],
    planned: Sequence[PlannedImage],
    cache: ImageCache,
    resolution: int,
    batch_size: int,
    show_progress: bool,
    stage: str | None = None,
) -> tuple[dict[str, MetricResult], dict[str, float]]:
    """Stream the run's images once through every metric; returns results and seconds per metric.

    ``stage`` only labels progress and log lines (scoring a cascade stage's images).
    """
    seconds = dict.fromkeys(metrics, 0.0)
    suffix = f" (stage {stage})" if stage else ""
    with progress_bar(f"scoring{suffix}", len(planned), show_progress) as advance:
        for start in range(0, len(planned), batch_size):
            batch = planned[start : start + batch_size]
            arrays = [cache.load(p.key, resolution) for p in batch]
            images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            items = [p.request.item for p in batch]
            indices = [p.request.sample_index for p in batch]
            for name, metric in metrics.items():
                t0 = time.perf_counter()
                metric.update(images, items, indices)
                seconds[name] += time.perf_counter() - t0
            advance(len(batch))
    results: dict[str, MetricResult] = {}
    for name, metric in metrics.items():
        t0 = time.perf_counter()
        log(f"computing {name}{suffix} ...")
        results[name] = metric.compute()
        seconds[name] += time.perf_counter() - t0
    return results, seconds


def execute(spec: RunSpec, options: RunOptions) -> Path | None:
    """Run a spec end to end; returns the run folder on rank 0 (None on other ranks)."""
    t_start = time.perf_counter()
    info: DistInfo = dist_info()
    device = rank_device(options.device, info)
    cache_dir = Path(options.cache_dir or cache_root())
    init_process_group(info, device)
    try:
        for name in spec.metrics:
            METRICS.entry(name)  # unknown metric names fail before any work
        suite = build_suite(spec)
        items = select_items(suite, spec)
        generator = build_generator(spec, suite, options, device)
        stages = cascade_stages(generator, spec.model) if options.per_stage else []
        planned = plan_images(
            generator,
            plan_requests(items, spec.images_per_prompt, spec.seed),
            spec.resolution,
            stages=[name for name, _ in stages[:-1]],
        )
        run_dir = Path(options.out_root) / spec.run_id()
        cache = ImageCache(cache_dir / "images")
        if info.is_main:
            log(
                f"run {run_dir} · {len(items)} prompts × {spec.images_per_prompt} images · {info.world_size} process(es)"
            )

        t_gen = time.perf_counter()
        gen_stats = generate_missing(
            generator,
            shard(planned, info),
            cache,
            resolution=spec.resolution,
            batch_size=options.batch_size,
            show_progress=options.show_progress and info.is_main,
            per_stage=bool(stages),
        )
        generate_s = time.perf_counter() - t_gen
        latency_per_image: list[float | None] = []
        if stages:  # every rank's stage seconds and image count, for the per-image mean
            own = gen_stats.stage_latency_s or [0.0] * len(stages)
            total = all_reduce_sum([float(gen_stats.generated), *own], info, device)
            n = total[0]
            latency_per_image = [round(t / n, 6) if n else None for t in total[1:]]
        barrier(info)
        if not info.is_main:
            return None

        (run_dir / "results.json").unlink(
            missing_ok=True
        )  # never leave a stale result beside new images
        atomic_write_json(run_dir / "spec.json", spec.to_dict())
        link_into(run_dir / "images", planned, cache)
        for k, (name, _) in enumerate(stages[:-1]):
            link_into(stage_images_dir(run_dir, name), [p.at_stage(k) for p in planned], cache)
        write_samples(run_dir, planned)

        metric_context = MetricContext(
            suite=suite,
            resolution=spec.resolution,
            device=device,
            batch_size=options.metric_batch_size,
            seed=derive_seed(spec.seed, "metrics", 0),
            cache_dir=cache_dir,
            allow_random_weights=options.allow_random_weights,
            num_images=len(planned),
        )

        def fresh_metrics() -> dict[str, Metric]:
            return {
                name: METRICS.get(name)(dict(spec.metric_options.get(name, {})), metric_context)
                for name in spec.metrics
            }

        metric_results, metric_seconds = compute_metrics(
            fresh_metrics(),
            planned,
            cache,
            spec.resolution,
            options.metric_batch_size,
            options.show_progress,
        )
        stage_entries = None
        if stages:
            stage_entries = []
            for k, (name, native) in enumerate(stages[:-1]):
                stage_results, stage_seconds = compute_metrics(
                    fresh_metrics(),
                    [p.at_stage(k) for p in planned],
                    cache,
                    spec.resolution,
                    options.metric_batch_size,
                    options.show_progress,
                    stage=name,
                )
                folder = stage_images_dir(run_dir, name).relative_to(run_dir).as_posix()
                stage_entries.append(
                    stage_entry(
                        name, native, latency_per_image[k], stage_results, stage_seconds, folder
                    )
                )
            name, native = stages[-1]  # the final stage's images are the run's images
            stage_entries.append(
                stage_entry(
                    name, native, latency_per_image[-1], metric_results, metric_seconds, "images"
                )
            )
        results = assemble_results(
            spec,
            suite,
            generator,
            items,
            planned,
            metric_results,
            timings={
                "generate_s": round(generate_s, 3),
                "metrics_s": {k: round(v, 3) for k, v in metric_seconds.items()},
                "total_s": round(time.perf_counter() - t_start, 3),
                "images_generated": gen_stats.generated,
                "images_from_cache": gen_stats.cached,
            },
            device=device,
            world_size=info.world_size,
            stages=stage_entries,
        )
        atomic_write_json(run_dir / "results.json", results)
        if options.write_report:
            from evalkit.report.build import build_report

            build_report(run_dir)
        log(f"results: {run_dir / 'results.json'}")
        return run_dir
    finally:
        shutdown(info)


def assemble_results(
    spec: RunSpec,
    suite: Suite,
    generator: Generator,
    items: Sequence[Item],
    planned: Sequence[PlannedImage],
    metric_results: dict[str, MetricResult],
    *,
    timings: dict[str, Any],
    device: str,
    world_size: int,
    stages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The results.json document (schema: docs/results-schema.md); ``stages`` when per-stage."""
    uncalibrated = (
        bool(generator.uncalibrated)
        or any(r.uncalibrated for r in metric_results.values())
        or any(m.get("uncalibrated") for st in stages or [] for m in st["metrics"].values())
    )
    results = {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evalkit_version": __version__,
        "spec": spec.to_dict(),
        "manifest": {
            "suite": {**suite.describe(), "name": spec.suite, "num_items": len(items)},
            "model": {
                "name": spec.model,
                "fingerprint": generator.fingerprint(),
                "settings": generator.settings(),
                "native_resolution": generator.native_resolution,
                "uncalibrated": bool(generator.uncalibrated),
            },
            "sampling": {
                "num_images": len(planned),
                "images_per_prompt": spec.images_per_prompt,
                "seed": spec.seed,
                "resolution": spec.resolution,
                "image_format": "png",
                "seed_derivation": SEED_DERIVATION,
            },
            "environment": environment(device, world_size),
            "timings": timings,
        },
        "metrics": {name: r.to_dict() for name, r in metric_results.items()},
        "uncalibrated": uncalibrated,
    }
    if stages is not None:
        results["stages"] = stages
    return results


def stage_images_dir(run_dir: Path, stage: str) -> Path:
    """Where an intermediate stage's images are linked: ``images/stages/<stage>/``."""
    return run_dir / "images" / "stages" / (_UNSAFE_NAME.sub("-", stage).strip(".-") or "stage")


def stage_entry(
    name: str,
    native_resolution: int,
    latency_s_per_image: float | None,
    metric_results: dict[str, MetricResult],
    metric_seconds: dict[str, float],
    images: str,
) -> dict[str, Any]:
    """One ``results["stages"]`` entry (schema: docs/results-schema.md#stages)."""
    return {
        "name": name,
        "native_resolution": native_resolution,
        "latency_s_per_image": latency_s_per_image,
        "metrics": {n: r.to_dict() for n, r in metric_results.items()},
        "metrics_s": {n: round(v, 3) for n, v in metric_seconds.items()},
        "images": images,
    }
