"""``report.html``: one self-contained page per run (inline CSS, images linked relatively).

Every string taken from data (prompts, categories, model names, reasons, manifest
values) goes through :func:`esc`; image sources come only from validated, run-relative
paths (see :func:`evalkit.results.safe_image_path`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalkit.results import (
    format_interval,
    format_value,
    is_uncalibrated,
    metric_direction,
    metric_n,
    metric_protocol_facts,
    safe_image_path,
    stage_metric_names,
)
from evalkit.textsafe import html_text, html_url

PROMPTS_PER_CATEGORY = 4
IMAGES_PER_PROMPT = 4

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.facts{color:#555;margin:.2em 0 1em}.facts span{margin-right:1.2em;white-space:nowrap}
.banner-uncal{background:#b00020;color:#fff;font-size:1.3em;font-weight:bold;padding:.8em 1em;
border:4px dashed #fff;outline:4px solid #b00020;margin:1em 0;text-align:center}
table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.value{font-weight:bold;font-size:1.1em}.flag{color:#b00020;font-weight:bold}
ul.proto{margin:0;padding-left:1.1em;font-size:.9em}
table.grid td{border:none;padding:.2em;text-align:center;width:170px}
table.grid td.caption{text-align:left;border-bottom:1px solid #ddd;padding-bottom:.8em;font-size:.95em}
table.grid img{width:160px;height:160px;object-fit:contain;background:#eee;image-rendering:auto}
.sub{font-size:.8em;color:#666}.ok{color:#1b7f1b}.bad{color:#b00020}
.missing{width:160px;height:160px;display:flex;align-items:center;justify-content:center;
background:#eee;color:#888}
figure{margin:0}figure.plot img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""


def _header(results: dict[str, Any]) -> str:
    m = results["manifest"]
    suite, sampling = m["suite"], m["sampling"]
    facts = [
        ("model", m["model"]["name"]),
        ("suite", f"{suite['name']} v{suite['version']}"),
        (
            "samples",
            f"{sampling['num_images']} images ({suite.get('num_items', '?')} prompts × "
            f"{sampling['images_per_prompt']})",
        ),
        ("resolution", f"{sampling['resolution']} px"),
        ("run", results["run_id"]),
        ("created", results.get("created", "?")),
        ("evalkit", results.get("evalkit_version", "?")),
    ]
    spans = "".join(f"<span><b>{html_text(k)}</b> {html_text(v)}</span>" for k, v in facts)
    out = [
        f"<h1>{html_text(m['model']['name'])} on {html_text(suite['name'])}</h1>",
        f'<div class="facts">{spans}</div>',
    ]
    if is_uncalibrated(results):
        out.append(
            '<div class="banner-uncal" role="alert">⚠ UNCALIBRATED ⚠<br>'
            '<span style="font-size:.7em;font-weight:normal">This run used random weights '
            "(model or metric networks). The numbers test the plumbing only: do not compare or "
            "publish them.</span></div>"
        )
    return "\n".join(out)


def _metric_table(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["metrics"].items():
        direction = metric_direction(name, entry)
        arrow = {"lower": " ↓", "higher": " ↑"}.get(direction or "", "")
        flag = ' <span class="flag">random weights</span>' if entry.get("uncalibrated") else ""
        also = "<br>".join(
            f"{html_text(k)} = {html_text(format_value(v))}"
            for k, v in sorted((entry.get("values") or {}).items())
        )
        facts = "".join(
            f"<li>{html_text(k)}: {html_text(v)}</li>" for k, v in metric_protocol_facts(entry)
        )
        rows.append(
            f"<tr><td>{html_text(name)}{html_text(arrow)}{flag}</td>"
            f'<td class="num value">{html_text(format_value(entry["value"]))}</td>'
            f'<td class="num">{html_text(format_interval(entry.get("interval")))}</td>'
            f'<td class="num">{html_text(metric_n(entry, results))}</td>'
            f"<td>{also or '—'}</td>"
            f'<td><ul class="proto">{facts}</ul></td></tr>'
        )
    sampling = results["manifest"]["sampling"]
    return (
        "<h2>Metrics</h2>\n<table><tr><th>metric</th><th>value</th><th>95% interval</th><th>n</th>"
        "<th>also</th><th>protocol</th></tr>\n"
        + "\n".join(rows)
        + "</table>\n"
        + f'<p class="sub">Images evaluated at {html_text(sampling["resolution"])} px, stored as '
        f"{html_text(sampling.get('image_format', '?'))}; ↓ lower is better, ↑ higher is better.</p>"
    )


def _per_stage(results: dict[str, Any]) -> str:
    """Cascade stages as rows (``--per-stage`` runs): resolution, latency, every metric."""
    stages = results.get("stages") or []
    if not stages:
        return ""
    names = stage_metric_names(results)
    arrows = {"lower": " ↓", "higher": " ↑"}
    head = "".join(
        f"<th>{html_text(n)}"
        f"{html_text(arrows.get(metric_direction(n, results['metrics'].get(n)) or '', ''))}</th>"
        for n in names
    )
    rows = []
    for stage in stages:
        latency = stage.get("latency_s_per_image")
        cells = []
        for n in names:
            entry = stage["metrics"].get(n)
            if entry is None:
                cells.append("<td>—</td>")
                continue
            cells.append(
                f'<td class="num"><span class="value">{html_text(format_value(entry["value"]))}</span> '
                f'<span class="sub">{html_text(format_interval(entry.get("interval")))}</span></td>'
            )
        rows.append(
            f"<tr><td>{html_text(stage['name'])}</td>"
            f'<td class="num">{html_text(stage["native_resolution"])} px</td>'
            f'<td class="num">'
            f"{html_text(format_value(latency) if latency is not None else '— (cached)')}</td>"
            + "".join(cells)
            + "</tr>"
        )
    resolution = results["manifest"]["sampling"]["resolution"]
    return (
        "<h2>Per stage</h2>\n<table><tr><th>stage</th><th>resolution</th>"
        f"<th>latency (s/image)</th>{head}</tr>\n"
        + "\n".join(rows)
        + "</table>\n"
        + f'<p class="sub">Each stage\'s output is resized to {html_text(resolution)} px and scored like '
        "the final images (value and 95% interval); the last row is the final output.</p>"
    )


def _per_category(results: dict[str, Any], plots: dict[str, list[str]]) -> str:
    parts = []
    for name, entry in results["metrics"].items():
        per_cat = entry.get("per_category")
        if not per_cat:
            continue
        parts.append(f"<h3>{html_text(name)}</h3>")
        files = plots.get(name, [])
        svg = next((f for f in files if f.endswith(".svg")), None)
        png = next((f for f in files if f.endswith(".png")), None)
        img = png or svg
        if img:
            parts.append(
                f'<figure class="plot"><img src="{html_url(img)}" '
                f'alt="{html_text(name)} per category">'
                + (
                    f'<figcaption class="sub"><a href="{html_url(svg)}">SVG</a></figcaption>'
                    if svg
                    else ""
                )
                + "</figure>"
            )
        rows = "".join(
            f"<tr><td>{html_text(cat)}</td><td class='num'>{html_text(format_value(r['value']))}</td>"
            f"<td class='num'>{html_text(format_interval(r.get('interval')))}</td>"
            f"<td class='num'>{html_text(r.get('n', '—'))}</td></tr>"
            for cat, r in sorted(per_cat.items())
        )
        parts.append(
            "<table><tr><th>category</th><th>value</th><th>95% interval</th><th>n</th></tr>"
            f"{rows}</table>"
        )
    if not parts:
        return ""
    return "<h2>Per category</h2>\n" + "\n".join(parts)


def _verdicts(results: dict[str, Any]) -> dict[tuple[str, int], list[tuple[str, Any, str]]]:
    """(item_id, sample_index) -> [(metric, correct, reason)] from every metric's details."""
    out: dict[tuple[str, int], list[tuple[str, Any, str]]] = defaultdict(list)
    for name, entry in results["metrics"].items():
        for v in (entry.get("details") or {}).get("verdicts") or []:
            if isinstance(v, dict) and "item_id" in v:
                key = (str(v["item_id"]), int(v.get("sample_index", 0)))
                out[key].append((name, v.get("correct"), str(v.get("reason", ""))))
    return out


def _image_cell(
    sample: Mapping[str, Any], run_dir: Path | None, verdicts: list[tuple[str, Any, str]]
) -> str:
    rel = sample["image"]
    exists = True
    if run_dir is not None:
        exists = safe_image_path(run_dir, rel, "samples.jsonl").is_file()
    if exists:
        pic = f'<img src="{html_url(rel)}" alt="{html_text(sample["prompt"])}" loading="lazy">'
    else:
        pic = '<div class="missing">image missing</div>'
    sub = f"#{html_text(sample['sample_index'])}"
    if sample.get("seed") is not None:
        sub += f" · seed {html_text(sample['seed'])}"
    lines = [f'<div class="sub">{sub}</div>']
    for metric, correct, reason in verdicts:
        cls, mark = ("ok", "✓") if correct else ("bad", "✗")
        lines.append(
            f'<div class="sub"><span class="{cls}">{mark}</span> {html_text(metric)}: {html_text(reason)}</div>'
        )
    return f"<td><figure>{pic}<figcaption>{''.join(lines)}</figcaption></figure></td>"


def _grids(
    results: dict[str, Any],
    samples: Sequence[Mapping[str, Any]],
    run_dir: Path | None,
    prompts_per_category: int,
    images_per_prompt: int,
) -> str:
    if not samples:
        return "<h2>Samples</h2><p>No samples.jsonl found.</p>"
    by_item: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    item_cat: dict[str, str] = {}
    for s in samples:
        by_item[s["item_id"]].append(s)
        item_cat.setdefault(s["item_id"], s.get("category") or "(no category)")
    cats: dict[str, list[str]] = defaultdict(list)
    for item_id, cat in item_cat.items():
        cats[cat].append(item_id)
    verdicts = _verdicts(results)
    per_item_metrics = {
        n: e["per_item"] for n, e in results["metrics"].items() if e.get("per_item")
    }
    parts = [
        "<h2>Samples</h2>",
        f'<p class="sub">Up to {prompts_per_category} prompts per category, '
        f"up to {images_per_prompt} images each, in suite order (not cherry-picked).</p>",
    ]
    for cat in sorted(cats):
        items = cats[cat]
        count = f"{len(items)} prompt{'s' if len(items) != 1 else ''}"
        parts.append(f"<h3>{html_text(cat)} <span class='sub'>({count})</span></h3>")
        parts.append('<table class="grid">')
        for item_id in items[:prompts_per_category]:
            shots = sorted(by_item[item_id], key=lambda s: s["sample_index"])[:images_per_prompt]
            cells = "".join(
                _image_cell(s, run_dir, verdicts.get((item_id, s["sample_index"]), []))
                for s in shots
            )
            scores = ", ".join(
                f"{html_text(n)} {html_text(format_value(pi[item_id]))}"
                for n, pi in per_item_metrics.items()
                if item_id in pi
            )
            caption = f"{html_text(shots[0]['prompt'])}"
            caption += (
                f'<div class="sub">{html_text(item_id)}{" · " + scores if scores else ""}</div>'
            )
            parts.append(f"<tr>{cells}</tr>")
            parts.append(f'<tr><td class="caption" colspan="{len(shots)}">{caption}</td></tr>')
        parts.append("</table>")
    return "\n".join(parts)


def _timings(results: dict[str, Any]) -> str:
    t = results["manifest"].get("timings") or {}
    if not t:
        return ""
    rows = []
    if "generate_s" in t:
        rows.append(("generate", f"{format_value(t['generate_s'])} s"))
    for name, secs in (t.get("metrics_s") or {}).items():
        rows.append((f"metric {name}", f"{format_value(secs)} s"))
    if "total_s" in t:
        rows.append(("total", f"{format_value(t['total_s'])} s"))
    for key in ("images_generated", "images_from_cache"):
        if key in t:
            rows.append((key.replace("_", " "), str(t[key])))
    hw = (results["manifest"].get("environment") or {}).get("hardware") or {}
    if hw:
        gpus = ", ".join(hw.get("gpus") or []) or "none"
        rows.append(
            ("hardware", f"{hw.get('device', '?')} × {hw.get('world_size', 1)}; GPUs: {gpus}")
        )
    body = "".join(
        f"<tr><td>{html_text(k)}</td><td class='num'>{html_text(v)}</td></tr>" for k, v in rows
    )
    return f"<h2>Timings</h2>\n<table>{body}</table>"


def _dump(obj: Any) -> str:
    return html_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def _manifest(results: dict[str, Any]) -> str:
    metric_manifests = {n: e.get("manifest") or {} for n, e in results["metrics"].items()}
    return (
        "<h2>Protocol manifest</h2>\n"
        f"<details><summary>Run manifest (suite, model, sampling, environment, timings)</summary>"
        f"<pre>{_dump(results['manifest'])}</pre></details>\n"
        f"<details><summary>Metric manifests</summary><pre>{_dump(metric_manifests)}</pre></details>\n"
        f"<details><summary>Spec</summary><pre>{_dump(results['spec'])}</pre></details>"
    )


def render_report_html(
    results: dict[str, Any],
    samples: Sequence[Mapping[str, Any]],
    plots: dict[str, list[str]] | None = None,
    *,
    run_dir: Path | None = None,
    prompts_per_category: int = PROMPTS_PER_CATEGORY,
    images_per_prompt: int = IMAGES_PER_PROMPT,
) -> str:
    """The whole page. ``plots`` maps metric name -> plot paths relative to the run dir."""
    m = results["manifest"]
    title = f"evalkit: {m['model']['name']} on {m['suite']['name']}"
    if is_uncalibrated(results):
        title = "[UNCALIBRATED] " + title
    body = [
        _header(results),
        _metric_table(results),
        _per_stage(results),
        _per_category(results, plots or {}),
        _grids(results, samples, run_dir, prompts_per_category, images_per_prompt),
        _timings(results),
        _manifest(results),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html_text(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body></html>\n"
    )
