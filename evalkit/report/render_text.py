"""Plain-text renderings for the terminal: a run's metric table, and the plan of a dry run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from evalkit.results import (
    format_interval,
    format_value,
    is_uncalibrated,
    metric_direction,
    metric_n,
)

if TYPE_CHECKING:  # the runner imports this module's callers, not the other way round
    from evalkit.run import RunPlan

_ARROWS = {"lower": "↓", "higher": "↑"}


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces between them, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def metric_table_text(results: Mapping[str, Any]) -> str:
    """Every metric's value, 95% interval (where computed) and sample size, flagged when uncalibrated."""
    rows = []
    for name, entry in results["metrics"].items():
        arrow = _ARROWS.get(metric_direction(name, entry) or "", "")
        rows.append(
            [
                f"{name} {arrow}".rstrip(),
                format_value(entry["value"]),
                format_interval(entry.get("interval")),
                metric_n(entry, results),
                "UNCALIBRATED (random weights)" if entry.get("uncalibrated") else "",
            ]
        )
    m = results["manifest"]
    title = (
        f"{results['run_id']}: {m['model'].get('name', '?')} on {m['suite'].get('name', '?')}, "
        f"{m['sampling'].get('num_images', '?')} images at {m['sampling'].get('resolution', '?')} px"
    )
    header = ["metric", "value", "95% CI", "n", "flag"]
    if not any(row[-1] for row in rows):
        header, rows = header[:-1], [row[:-1] for row in rows]
    out = [title, text_table(header, rows)]
    if is_uncalibrated(results):
        out.append(
            "UNCALIBRATED: random weights were used somewhere; these numbers test plumbing only."
        )
    return "\n".join(out)


def render_plan(plan: RunPlan) -> str:
    """What a run would do and under which protocol (``evalkit run --dry-run``)."""
    spec, generator = plan.spec, plan.generator
    n = len(plan.planned)
    cached = "?" if plan.cached is None else str(plan.cached)
    settings = generator.settings()
    lines = [
        "evalkit run plan (dry run: every check passed; nothing generated or written)",
        f"  run id       {spec.run_id()} -> {plan.run_dir}",
        f"  model        {spec.model} ({generator.name}), native {generator.native_resolution} px"
        + ("; UNCALIBRATED (random weights)" if generator.uncalibrated else ""),
        f"  suite        {spec.suite}: {len(plan.items)} prompts x {spec.images_per_prompt} "
        f"image(s) = {n} images at {spec.resolution} px, seed {spec.seed}",
        f"  cache        {cached} of {n} images cached and verified, "
        f"{n - (plan.cached or 0)} to generate",
        f"  device       {plan.device}, {plan.world_size} process(es)",
        "  metrics:",
    ]
    for name, metric in plan.metrics.items():
        options = spec.metric_options.get(name) or {}
        opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"
        lines.append(f"    {name:<18} {type(metric).__name__} ({opts})")
    if settings:
        lines.append("  sampling settings:")
        lines += [f"    {k}: {v}" for k, v in sorted(settings.items())]
    if plan.stages:
        lines.append("  stages scored: " + ", ".join(name for name, _ in plan.stages))
    return "\n".join(lines)
