"""``report.md``: a compact GitHub-markdown summary of one run, for pull-request comments."""

from __future__ import annotations

import json
from typing import Any

from evalkit.results import (
    format_interval,
    format_value,
    is_uncalibrated,
    metric_direction,
    metric_n,
    metric_protocol_facts,
    short_hash,
    stage_metric_names,
)
from evalkit.textsafe import md_cell, md_code

_ARROWS = {"lower": " ↓", "higher": " ↑"}


def _values_text(entry: dict[str, Any]) -> str:
    vals = entry.get("values") or {}
    return ", ".join(f"{k} = {format_value(v)}" for k, v in sorted(vals.items()))


def metric_table_md(results: dict[str, Any]) -> list[str]:
    """The metric table: value, 95% interval, n, secondary values, protocol facts."""
    lines = [
        "| metric | value | 95% CI | n | also | protocol |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results["metrics"].items():
        arrow = _ARROWS.get(metric_direction(name, entry) or "", "")
        facts = "; ".join(f"{k}: {v}" for k, v in metric_protocol_facts(entry))
        flag = " (random weights)" if entry.get("uncalibrated") else ""
        lines.append(
            f"| {md_cell(name)}{arrow}{flag} | **{format_value(entry['value'])}** "
            f"| {format_interval(entry.get('interval'))} | {md_cell(metric_n(entry, results))} "
            f"| {md_cell(_values_text(entry)) or '—'} | {md_cell(facts) or '—'} |"
        )
    return lines


def per_category_table_md(results: dict[str, Any]) -> list[str]:
    """Categories as rows, metrics with per-category results as columns."""
    names = [n for n, e in results["metrics"].items() if e.get("per_category")]
    if not names:
        return []
    cats = sorted({c for n in names for c in results["metrics"][n]["per_category"]})
    lines = [
        "| category | " + " | ".join(md_cell(n) for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for cat in cats:
        cells = []
        for n in names:
            r = results["metrics"][n]["per_category"].get(cat)
            if r is None:
                cells.append("—")
                continue
            count = f" (n={r['n']})" if r.get("n") is not None else ""
            cells.append(f"{format_value(r['value'])} {format_interval(r.get('interval'))}{count}")
        lines.append(f"| {md_cell(cat)} | " + " | ".join(cells) + " |")
    return lines


def per_stage_table_md(results: dict[str, Any]) -> list[str]:
    """Cascade stages as rows (``--per-stage`` runs): resolution, latency, every metric."""
    stages = results.get("stages") or []
    if not stages:
        return []
    names = stage_metric_names(results)
    header = "".join(
        f" {md_cell(n)}{_ARROWS.get(metric_direction(n, results['metrics'].get(n)) or '', '')} |"
        for n in names
    )
    lines = [
        "| stage | resolution | latency (s/image) |" + header,
        "|---|---|---|" + "---|" * len(names),
    ]
    for stage in stages:
        latency = stage.get("latency_s_per_image")
        cells = []
        for n in names:
            entry = stage["metrics"].get(n)
            cells.append(
                "—"
                if entry is None
                else f"{format_value(entry['value'])} {format_interval(entry.get('interval'))}"
            )
        lines.append(
            f"| {md_cell(stage['name'])} | {stage['native_resolution']} px "
            f"| {format_value(latency) if latency is not None else '— (cached)'} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _compact(obj: Any, limit: int = 200) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def manifest_essentials_md(results: dict[str, Any]) -> list[str]:
    """Bullet list of the protocol facts a reviewer needs."""
    m = results["manifest"]
    suite, model, sampling = m["suite"], m["model"], m["sampling"]
    env = m.get("environment") or {}
    hw = env.get("hardware") or {}
    lines = [
        f"- **suite**: {md_cell(suite['name'])} v{md_cell(suite['version'])}, "
        f"{suite.get('num_items', '?')} prompts"
        + (
            f" (num_samples={results['spec'].get('num_samples')})"
            if results["spec"].get("num_samples")
            else ""
        ),
        f"- **model**: {md_cell(model['name'])}, native {model.get('native_resolution', '?')} px, "
        f"settings {md_code(_compact(model.get('settings') or {}))}",
        f"- **sampling**: {sampling['num_images']} images, {sampling['images_per_prompt']} per prompt, "
        f"{sampling['resolution']} px, {md_cell(sampling.get('image_format', '?'))}, seed {sampling['seed']}"
        + (f" ({md_cell(sampling['seed_derivation'])})" if sampling.get("seed_derivation") else ""),
    ]
    if env:
        commit = env.get("git_commit")
        commit_text = short_hash(commit, 10) if commit else "unknown"
        if env.get("git_dirty"):
            commit_text += " (dirty)"
        lines.append(
            f"- **environment**: evalkit {md_cell(results.get('evalkit_version', '?'))}, "
            f"commit {md_cell(commit_text)}, python {md_cell(env.get('python', '?'))}, "
            f"device {md_cell(hw.get('device', '?'))} × {hw.get('world_size', 1)}"
        )
    for name, entry in results["metrics"].items():
        facts = "; ".join(f"{k}: {v}" for k, v in metric_protocol_facts(entry))
        if facts:
            lines.append(f"- **{md_cell(name)}**: {md_cell(facts)}")
    t = m.get("timings") or {}
    if t:
        lines.append(
            f"- **timings**: generate {format_value(t.get('generate_s'))} s, "
            f"total {format_value(t.get('total_s'))} s, "
            f"{t.get('images_generated', '?')} generated / {t.get('images_from_cache', '?')} from cache"
        )
    return lines


def render_report_md(results: dict[str, Any]) -> str:
    """The whole ``report.md``."""
    m = results["manifest"]
    out = [
        f"## evalkit: {md_cell(m['model']['name'])} on {md_cell(m['suite']['name'])}",
        "",
        f"Run {md_code(results['run_id'])} · {m['sampling']['num_images']} images · "
        f"{m['sampling']['resolution']} px · {md_cell(results.get('created', ''))}",
        "",
    ]
    if is_uncalibrated(results):
        out += [
            "> [!WARNING]",
            "> **UNCALIBRATED**: this run used random weights (model or metric networks). "
            "The numbers test plumbing only and must not be compared or published.",
            "",
        ]
    out += ["### Metrics", "", *metric_table_md(results), ""]
    stages = per_stage_table_md(results)
    if stages:
        res = m["sampling"]["resolution"]
        out += [
            "### Per stage",
            "",
            f"Each stage's output resized to {res} px and scored like the final images "
            "(value [95% CI]); the last row is the final output.",
            "",
            *stages,
            "",
        ]
    cat = per_category_table_md(results)
    if cat:
        out += ["### Per category", "", *cat, ""]
    out += ["### Protocol", "", *manifest_essentials_md(results), ""]
    return "\n".join(out)
