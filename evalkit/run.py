"""``evalkit run``: suite → generator → cached images → metrics → results.json → report."""

from __future__ import annotations

import difflib
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
    check_device,
    dist_info,
    init_process_group,
    rank_device,
    shutdown,
)
from evalkit.environment import environment
from evalkit.errors import EvalkitError, UsageError
from evalkit.features.store import RunFeatures, export_reference_data
from evalkit.generators.base import Generator, GeneratorContext
from evalkit.image_cache import ImageCache
from evalkit.image_plan import (
    PlannedImage,
    cascade_stages,
    find_missing,
    generate_missing,
    link_into,
    plan_images,
    plan_requests,
    shard,
)
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.refstats import StatsOnlyReference
from evalkit.paths import cache_root, cache_what, usable_dir
from evalkit.progress import log, progress_bar
from evalkit.registry import METRICS, MODELS, SUITES
from evalkit.report.build import remove_outputs, write_outputs
from evalkit.seeding import derive_seed
from evalkit.spec import RunSpec
from evalkit.suites.base import Item, ReferenceSet, Suite
from evalkit.suites.folder import FolderReferenceSet

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
    dry_run: bool = False
    """Check everything a run needs and return its :class:`RunPlan`; generate and write nothing."""

    def __post_init__(self) -> None:
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--metric-batch-size", self.metric_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value!r}")


@dataclass
class RunPlan:
    """What a run will do, established (and checked) before any image is generated."""

    spec: RunSpec
    run_dir: Path
    suite: Suite
    items: list[Item]
    generator: Generator
    planned: list[PlannedImage]
    stages: list[tuple[str, int]]
    metric_context: MetricContext
    #: the metrics, built (weights loaded); on rank 0 also prepared (reference statistics ready)
    metrics: dict[str, Metric]
    device: str
    world_size: int
    #: planned images already in the cache and verified (counted in dry runs only)
    cached: int | None = None


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


def check_metric_names(spec: RunSpec) -> None:
    """Every metric is registered, there is at least one, and every ``--metric-opt`` names one of them."""
    if not spec.metrics:
        raise UsageError(
            "no metrics to compute (--metrics is empty); name at least one, e.g. --metrics fid "
            "(see `evalkit list metrics`)"
        )
    for name in spec.metrics:
        METRICS.entry(name)  # unknown names raise UsageError with the nearest names
    for name, opts in spec.metric_options.items():
        if name not in spec.metrics:
            close = difflib.get_close_matches(name, list(spec.metrics), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            keys = ", ".join(f"{name}.{k}" for k in opts)
            raise UsageError(
                f"--metric-opt {keys}: {name!r} is not one of this run's metrics "
                f"({', '.join(spec.metrics)}), so the option would do nothing.{hint}"
            )


def build_metrics(spec: RunSpec, context: MetricContext) -> dict[str, Metric]:
    """The spec's metrics, built from their options (weights resolved and loaded)."""
    return {
        name: METRICS.get(name)(dict(spec.metric_options.get(name, {})), context)
        for name in spec.metrics
    }


def samples_records(
    planned: Sequence[PlannedImage], cache: ImageCache, generator: Generator | None = None
) -> list[dict[str, Any]]:
    """One samples.jsonl record per image (with the sha256 of its PNG, and whatever the
    generator's optional ``sample_record(request)`` adds, e.g. the source file of ``images:``)."""
    extra = getattr(generator, "sample_record", None)
    return [
        {
            **(extra(p.request) if callable(extra) else {}),
            "item_id": p.request.item.id,
            "sample_index": p.request.sample_index,
            "seed": p.request.seed,
            "prompt": p.request.item.prompt,
            "category": p.request.item.category,
            "image": f"images/{p.file_name}",
            "key": p.key,
            "sha256": cache.recorded_sha256(p.key),
        }
        for p in planned
    ]


def write_samples(
    run_dir: Path,
    planned: Sequence[PlannedImage],
    cache: ImageCache,
    generator: Generator | None = None,
) -> Path:
    """Write samples.jsonl atomically."""
    records = samples_records(planned, cache, generator)
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records]
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

    Every image is verified against its recorded checksum as it is read. ``stage`` only
    labels progress and log lines (scoring a cascade stage's images).
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


def extract_features(
    plan: RunPlan, planned: Sequence[PlannedImage], cache: ImageCache, options: RunOptions
) -> None:
    """Run every extractor the metrics need over ``planned`` into the feature store (no scoring)."""
    extractors = [e for metric in plan.metrics.values() for e in metric.extractors()]
    if not extractors:
        return
    provider = plan.metric_context.features
    size = options.metric_batch_size
    for start in range(0, len(planned), size):
        batch = planned[start : start + size]
        arrays = [cache.load(p.key, plan.spec.resolution) for p in batch]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        for extractor in extractors:
            provider.extract(extractor, images)
    provider.flush()


def custom_reference(spec: RunSpec) -> tuple[ReferenceSet | None, RunSpec]:
    """``--ref``: a folder becomes the reference set (centre-cropped and resized to the run's
    resolution, like COCO's); a statistics file becomes fid's ``ref_stats`` and any other metric
    needing references is refused. Returns the reference set and the spec the metrics are built from.
    """
    if spec.reference is None:
        return None, spec
    path = Path(spec.reference).expanduser()
    if path.is_dir():
        return FolderReferenceSet(path, spec.resolution), spec
    if not path.is_file():
        raise UsageError(f"--ref {path}: no such folder of images or statistics file")
    fid_options = {**spec.metric_options.get("fid", {}), "ref_stats": str(path)}
    options = (
        {**spec.metric_options, "fid": fid_options}
        if "fid" in spec.metrics
        else spec.metric_options
    )
    return StatsOnlyReference(path), RunSpec.from_dict(
        {**spec.to_dict(), "metric_options": options}
    )


def plan_run(spec: RunSpec, options: RunOptions, info: DistInfo, device: str) -> RunPlan:
    """Check everything that can be checked before generation, and plan the run.

    Metric names and options, the suite, the model and its weights, the output and cache
    folders, and (on rank 0) every metric with its weights and reference statistics: an
    error here costs seconds, not a whole generation pass.
    """
    check_metric_names(spec)
    out_root = usable_dir(options.out_root, "output folder (--out)")
    cache_dir = usable_dir(options.cache_dir or cache_root(), cache_what(options.cache_dir))
    suite = build_suite(spec)
    items = select_items(suite, spec)
    generator = build_generator(spec, suite, options, device)
    stages = cascade_stages(generator, spec.model) if options.per_stage else []
    requests = plan_requests(items, spec.images_per_prompt, spec.seed)
    check_requests = getattr(generator, "check_requests", None)
    if callable(check_requests):  # e.g. images: every requested image has a file, and vice versa
        check_requests(requests)
    planned = plan_images(
        generator, requests, spec.resolution, stages=[name for name, _ in stages[:-1]]
    )
    reference, spec_for_metrics = custom_reference(spec)
    metric_context = MetricContext(
        suite=suite,
        resolution=spec.resolution,
        device=device,
        batch_size=options.metric_batch_size,
        seed=derive_seed(spec.seed, "metrics", 0),
        cache_dir=cache_dir,
        allow_random_weights=options.allow_random_weights,
        num_images=len(planned),
        reference=reference,
    )
    metrics = build_metrics(
        spec_for_metrics, metric_context
    )  # every rank: ranks extract their own features
    if info.is_main:
        for metric in metrics.values():
            metric.prepare()
    return RunPlan(
        spec=spec,
        run_dir=out_root / spec.run_id(),
        suite=suite,
        items=items,
        generator=generator,
        planned=planned,
        stages=stages,
        metric_context=metric_context,
        metrics=metrics,
        device=device,
        world_size=info.world_size,
    )


def _agree(info: DistInfo, device: str, error: Exception | None) -> None:
    """Every rank learns whether any rank failed its checks (a failing rank then raises its own error)."""
    failures = all_reduce_sum([1.0 if error is not None else 0.0], info, device)[0]
    if failures and error is None:
        raise EvalkitError(
            "another process of this torchrun job failed its checks (its error is printed above); "
            "nothing was generated"
        )


def execute(spec: RunSpec, options: RunOptions) -> Path | RunPlan | None:
    """Run a spec end to end; returns the run folder on rank 0 (None on other ranks).

    With ``options.dry_run`` nothing is generated or written: every check runs and the
    :class:`RunPlan` comes back (on rank 0).
    """
    t_start = time.perf_counter()
    info: DistInfo = dist_info()
    device = rank_device(options.device, info)
    check_device(device)
    init_process_group(info, device)
    try:
        try:
            plan = plan_run(spec, options, info, device)
        except Exception as exc:  # every rank must hear of it before anyone generates
            _agree(info, device, exc)
            raise
        _agree(info, device, None)
        cache = ImageCache(plan.metric_context.cache_dir / "images")
        run_dir = plan.run_dir
        if options.dry_run:
            missing, _ = find_missing(plan.planned, cache, quarantine=False)
            plan.cached = len(plan.planned) - len(missing)
            return plan if info.is_main else None
        if info.is_main:
            remove_outputs(run_dir)  # never leave a stale result or report beside new images
            log(
                f"run {run_dir} · {len(plan.items)} prompts × {spec.images_per_prompt} images · "
                f"{info.world_size} process(es)"
            )

        t_gen = time.perf_counter()
        gen_stats = generate_missing(
            plan.generator,
            shard(plan.planned, info),
            cache,
            resolution=spec.resolution,
            batch_size=options.batch_size,
            show_progress=options.show_progress and info.is_main,
            per_stage=bool(plan.stages),
        )
        generate_s = time.perf_counter() - t_gen
        if info.enabled:  # each rank extracts its own shard's features into the shared store
            extract_features(plan, shard(plan.planned, info), cache, options)
        own = gen_stats.stage_latency_s or [0.0] * len(plan.stages)
        totals = all_reduce_sum(
            [float(gen_stats.generated), float(len(gen_stats.untrusted)), *own], info, device
        )
        n_generated, n_untrusted = int(totals[0]), int(totals[1])
        latency_per_image = [round(t / n_generated, 6) if n_generated else None for t in totals[2:]]
        barrier(info)
        if not info.is_main:
            return None
        return _score_and_write(
            plan,
            options,
            cache,
            timings={
                "generate_s": round(generate_s, 3),
                "images_generated": n_generated,
                "images_from_cache": len(plan.planned) - n_generated,
                "images_untrusted_regenerated": n_untrusted,
            },
            latency_per_image=latency_per_image,
            t_start=t_start,
        )
    finally:
        shutdown(info)


def _score_and_write(
    plan: RunPlan,
    options: RunOptions,
    cache: ImageCache,
    *,
    timings: dict[str, Any],
    latency_per_image: list[float | None],
    t_start: float,
) -> Path:
    """Rank 0, after generation: link the images, score them, write results and report together."""
    spec, run_dir, planned = plan.spec, plan.run_dir, plan.planned
    atomic_write_json(run_dir / "spec.json", spec.to_dict())
    link_into(run_dir / "images", planned, cache)
    for k, (name, _) in enumerate(plan.stages[:-1]):
        link_into(stage_images_dir(run_dir, name), [p.at_stage(k) for p in planned], cache)
    write_samples(run_dir, planned, cache, plan.generator)

    provider = plan.metric_context.features
    recorder = RunFeatures(run_dir / "features")
    provider.record(recorder)
    metric_results, metric_seconds = compute_metrics(
        plan.metrics,
        planned,
        cache,
        spec.resolution,
        options.metric_batch_size,
        options.show_progress,
    )
    provider.record(None)
    provider.flush()
    recorder.write()
    features = {
        key: {"computed": c.computed, "from_store": c.from_store}
        for key, c in provider.counts.items()
    }
    stage_entries = None
    if plan.stages:
        stage_entries = []
        for k, (name, native) in enumerate(plan.stages[:-1]):
            stage_results, stage_seconds = compute_metrics(
                build_metrics(spec, plan.metric_context),
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
        name, native = plan.stages[-1]  # the final stage's images are the run's images
        stage_entries.append(
            stage_entry(
                name, native, latency_per_image[-1], metric_results, metric_seconds, "images"
            )
        )
    results = assemble_results(
        spec,
        plan.suite,
        plan.generator,
        plan.items,
        planned,
        metric_results,
        timings={
            **timings,
            "metrics_s": {k: round(v, 3) for k, v in metric_seconds.items()},
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        device=plan.device,
        world_size=plan.world_size,
        stages=stage_entries,
    )
    results["manifest"]["features"] = features
    export_reference_data(run_dir, results["metrics"])
    write_outputs(run_dir, results, write_report=options.write_report)
    return run_dir


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
