"""``evalkit dashboard``: a static site from a history folder, opened from ``file://``.

``index.html`` (inline CSS and script, nothing fetched from anywhere) shows, per series
(suite/model) and metric: the trend chart (value vs commit, 95% band, protocol breaks,
detected steps, gate verdicts), the per-category trend, the steps found over the whole
history, and a table with exact values linking each record's report
(``records/<id>/report.html``, rendered by :func:`evalkit.report.render_html.render_report_html`
on the record's thumbnails). A side-by-side view shows the same prompts and seeds of two
chosen records. Every string from data is escaped (:func:`evalkit.textsafe.html_text`);
the script reads its data from a JSON block and sets text and image sources through the DOM.
The site is written beside ``out`` and swapped into place, so a published folder is never
half written. Unreadable records are listed, not fatal.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from evalkit.atomic import atomic_write_text
from evalkit.changepoint import Step, detect_steps
from evalkit.dashboard.charts import category_figure, save_chart, trend_figure
from evalkit.errors import InputError
from evalkit.hashing import sha256_text
from evalkit.history import Record, Skipped, metric_frame, scan
from evalkit.plotting import safe_stem
from evalkit.report.render_html import CSS, render_report_html
from evalkit.results import format_interval, format_value
from evalkit.textsafe import html_text, html_url, script_json

EXTRA_CSS = """
nav.toc a{margin-right:1em}.series{margin-top:2.4em}
img.chart{max-width:100%;border:1px solid #eee}
.verdict-regression{color:#b00020;font-weight:bold}.verdict-cannot-decide,.verdict-warn{color:#b36b00}
.verdict-pass,.verdict-improved{color:#1b7f1b}.brk{color:#777;font-weight:bold}
.compare select{margin:0 1em .5em .3em;max-width:28em}
table.cmp td{text-align:center;vertical-align:top;border:1px solid #eee}
table.cmp img{width:128px;height:128px;object-fit:contain;background:#eee;image-rendering:pixelated}
table.cmp .prompt{text-align:left;max-width:18em;font-size:.9em}
.skipped li{color:#b00020}
"""

# Reads the JSON data block; sets only textContent and src (never HTML from data).
SCRIPT = """
(function(){
  var data = JSON.parse(document.getElementById('ek-data').textContent);
  function fill(box){
    var s = data.compare[box.getAttribute('data-series')];
    var a = box.querySelector('select.ek-a').value, b = box.querySelector('select.ek-b').value;
    var body = box.querySelector('tbody');
    while (body.firstChild) body.removeChild(body.firstChild);
    var shown = 0;
    function has(r, k){ return !!(s.thumbs[r] && s.thumbs[r][k.key]); }
    var both = s.keys.filter(function(k){ return has(a, k) && has(b, k); });
    var one = s.keys.filter(function(k){ return has(a, k) !== has(b, k); });
    both.concat(one).forEach(function(k){
      var ta = s.thumbs[a] && s.thumbs[a][k.key], tb = s.thumbs[b] && s.thumbs[b][k.key];
      var tr = document.createElement('tr');
      var p = document.createElement('td'); p.className = 'prompt';
      p.textContent = k.prompt + ' (' + k.item_id + ' #' + k.sample_index + ')';
      tr.appendChild(p);
      [ta, tb].forEach(function(t){
        var td = document.createElement('td');
        if (t) {
          var img = document.createElement('img'); img.src = t.src; img.alt = k.prompt;
          img.className = 'ek-thumb';
          td.appendChild(img);
          var cap = document.createElement('div'); cap.className = 'sub';
          cap.textContent = 'seed ' + t.seed;
          td.appendChild(cap);
        } else { td.textContent = 'no thumbnail'; }
        tr.appendChild(td);
      });
      body.appendChild(tr); shown++;
    });
    box.querySelector('.ek-count').textContent = both.length + ' prompt(s) in both, ' +
      one.length + ' in one only (the suites differ)';
  }
  document.querySelectorAll('div.compare').forEach(function(box){
    box.querySelectorAll('select').forEach(function(sel){
      sel.addEventListener('change', function(){ fill(box); });
    });
    fill(box);
  });
})();
"""


@dataclass
class Site:
    """What :func:`build_dashboard` wrote."""

    index: Path
    records: int
    skipped: list[Skipped]
    steps: list[dict[str, Any]] = field(default_factory=list)


def _anchor(*parts: str) -> str:
    return "s-" + sha256_text("\x00".join(parts))[:12]


def _series_steps(rows: Any) -> list[tuple[int, Step]]:
    """Steps per protocol segment (never across a break), as (row index, step)."""
    out: list[tuple[int, Step]] = []
    starts = [0] + [i for i in range(1, len(rows)) if bool(rows.iloc[i]["break"])]
    for s, e in zip(starts, [*starts[1:], len(rows)], strict=True):
        seg = rows.iloc[s:e]
        lo = seg["lo"].to_numpy(dtype=np.float64, na_value=np.nan)
        hi = seg["hi"].to_numpy(dtype=np.float64, na_value=np.nan)
        for step in detect_steps(
            seg["value"].to_numpy(dtype=np.float64), half_widths=(hi - lo) / 2
        ):
            out.append((s + step.index, step))
    return out


def _step_verdict(step: Step, direction: str | None) -> str:
    if direction is None or step.delta == 0:
        return "changed"
    worse = step.delta > 0 if direction == "lower" else step.delta < 0
    return "worse" if worse else "better"


def _record_page(record: Record, site: Path) -> tuple[str, set[str]]:
    """Write records/<id>/report.html with its thumbnails: (page path in the site, thumbnails copied)."""
    folder = site / "records" / record.record_id
    samples = []
    for t in record.meta["thumbnails"]:
        try:
            src = record.thumbnail(t["file"])
        except InputError:
            continue
        dest = folder / t["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        samples.append(
            {
                "item_id": t["item_id"],
                "sample_index": t["sample_index"],
                "seed": t.get("seed"),
                "prompt": t.get("prompt") or t["item_id"],
                "category": t.get("category"),
                "image": t["file"],
            }
        )
    results = record.results()
    page = render_report_html(results, samples, None, run_dir=None, prompts_per_category=4)
    m = record.meta
    facts = (
        "<p class='facts'><a href='../../index.html'>← dashboard</a> "
        f"<span>record {html_text(record.record_id)}</span><span>commit {html_text(m.get('commit') or '?')}</span>"
        f"<span>branch {html_text(m.get('branch') or '?')}</span><span>measured {html_text(m['time'])}</span>"
        "<span>images: the record's thumbnails</span></p>"
    )
    page = page.replace("<body>\n", "<body>\n" + facts, 1)
    atomic_write_text(folder / "report.html", page)
    return f"records/{record.record_id}/report.html", {s["image"] for s in samples}


def _thumb_index(records: list[Record], copied: dict[str, set[str]]) -> dict[str, Any]:
    """Per series: the thumbnail keys (item, sample) and each record's thumbnail sources."""
    out: dict[str, Any] = {}
    for r in records:
        if r.record_id not in copied:
            continue
        s = out.setdefault(r.meta["series"], {"keys": {}, "thumbs": {}, "records": []})
        s["records"].append(r.record_id)
        thumbs = {}
        for t in r.meta["thumbnails"]:
            key = f"{t['item_id']}#{t['sample_index']}"
            s["keys"].setdefault(
                key,
                {
                    "key": key,
                    "item_id": t["item_id"],
                    "sample_index": t["sample_index"],
                    "prompt": t.get("prompt") or "",
                },  # fmt: skip
            )
            if t["file"] in copied[r.record_id]:
                thumbs[key] = {
                    "src": f"records/{quote(r.record_id)}/{quote(t['file'])}",
                    "seed": t.get("seed"),
                }
        s["thumbs"][r.record_id] = thumbs
    for s in out.values():
        s["keys"] = sorted(s["keys"].values(), key=lambda k: (k["item_id"], k["sample_index"]))
    return out


def _option(r: Record) -> str:
    m = r.meta
    return f"{(m.get('commit') or '?')[:10]} · {m.get('branch') or '?'} · {m['time'][:16]}"


def _compare_block(series: str, records: list[Record], comp: dict[str, Any]) -> str:
    mine = [r for r in records if r.record_id in comp.get(series, {}).get("thumbs", {})]
    if len(mine) < 1 or not comp[series]["keys"]:
        return "<p class='sub'>No thumbnails recorded for this series.</p>"

    def select(cls: str, chosen: str) -> str:
        opts = "".join(
            f"<option value='{html_text(r.record_id)}'{' selected' if r.record_id == chosen else ''}>"
            f"{html_text(_option(r))}</option>"
            for r in mine
        )
        return f"<select class='{cls}'>{opts}</select>"

    return (
        f"<div class='compare' data-series='{html_text(series)}'>"
        f"<label>left {select('ek-a', mine[0].record_id)}</label>"
        f"<label>right {select('ek-b', mine[-1].record_id)}</label>"
        "<span class='sub ek-count'></span>"
        "<table class='cmp'><thead><tr><th>prompt</th><th>left</th><th>right</th></tr></thead>"
        "<tbody></tbody></table></div>"
    )


def _verdict_cell(verdict: Any) -> str:
    if not isinstance(verdict, str) or not verdict:
        return "<td></td>"
    return f"<td class='verdict-{html_text(verdict.replace(' ', '-'))}'>{html_text(verdict)}</td>"


def build_dashboard(history: str | os.PathLike, out: str | os.PathLike) -> Site:
    """Write the site for ``history`` into ``out`` (replaced as a whole); returns what was written."""
    records, skipped = scan(history)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        site = _write_site(Path(history), records, skipped, tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    site.index = out / "index.html"
    return site


def _write_site(history: Path, records: list[Record], skipped: list[Skipped], site: Path) -> Site:
    pages: dict[str, str] = {}
    copied: dict[str, set[str]] = {}
    for r in records:
        try:
            pages[r.record_id], copied[r.record_id] = _record_page(r, site)
        except InputError as e:
            skipped.append(Skipped(r.path, str(e)))
    records = [r for r in records if r.record_id in pages]
    by_id = {r.record_id: r for r in records}
    mf = metric_frame(records)
    comp = _thumb_index(records, copied)
    all_steps: list[dict[str, Any]] = []
    sections: list[str] = []
    toc: list[str] = []
    series_names = sorted(mf["series"].unique()) if len(mf) else []
    for series in series_names:
        srows = mf[mf["series"] == series]
        anchor = _anchor(series)
        toc.append(f"<a href='#{anchor}'>{html_text(series)}</a>")
        parts = [f"<section class='series' id='{anchor}'><h2>{html_text(series)}</h2>"]
        for metric in sorted(srows["metric"].unique()):
            rows = srows[(srows["metric"] == metric) & (srows["category"] == "")].reset_index(
                drop=True
            )
            direction = (
                rows["direction"].dropna().iloc[0] if rows["direction"].notna().any() else None
            )
            steps = _series_steps(rows)
            stem = f"{safe_stem(series)}-{safe_stem(metric)}-{sha256_text(series + metric)[:8]}"
            svg = save_chart(
                trend_figure(f"{series} · {metric}", rows, steps, direction), site / "charts" / stem
            )
            parts.append(f"<h3>{html_text(metric)}</h3>")
            parts.append(
                f"<figure><img class='chart trend' src='{html_url('charts/' + svg.name)}' "
                f"alt='{html_text(metric)} over commits'></figure>"
            )
            cat_rows = srows[(srows["metric"] == metric) & (srows["category"] != "")]
            if len(cat_rows):
                cats_svg = save_chart(
                    category_figure(f"{series} · {metric}", cat_rows, direction),
                    site / "charts" / f"{stem}-categories",
                )
                parts.append(
                    f"<figure><img class='chart categories' src='{html_url('charts/' + cats_svg.name)}' "
                    f"alt='{html_text(metric)} per category over commits'></figure>"
                )
            step_items = []
            for i, st in steps:
                rec = rows.iloc[i]
                verdict = _step_verdict(st, direction)
                info = {
                    "series": series,
                    "metric": metric,
                    "record_id": rec["record_id"],
                    "commit": rec["commit"],
                    "before": st.before,
                    "after": st.after,
                    "delta": st.delta,
                    "relative": st.relative,
                    "verdict": verdict,
                }
                all_steps.append(info)
                rel = "" if st.relative is None else f" ({st.relative * 100:+.1f}%)"
                step_items.append(
                    f"<li><b>{html_text(verdict)}</b> at commit <code>{html_text((rec['commit'] or '?')[:10])}</code> "
                    f"(<a href='{html_url(pages[rec['record_id']])}'>{html_text(rec['record_id'])}</a>): "
                    f"{html_text(format_value(st.before))} → {html_text(format_value(st.after))}{html_text(rel)}</li>"
                )
            parts.append(
                "<p><b>Detected steps</b> (PELT change points over the whole series, within each "
                "protocol segment):</p><ul class='steps'>" + "".join(step_items) + "</ul>"
                if step_items
                else "<p class='sub'>No step detected in this series.</p>"
            )
            parts.append(_table(rows, pages, by_id))
        parts.append("<h3>Same prompts and seeds, two records side by side</h3>")
        parts.append(
            _compare_block(
                series, [by_id[i] for i in comp.get(series, {}).get("records", [])], comp
            )
        )
        parts.append("</section>")
        sections.append("\n".join(parts))

    skipped_html = ""
    if skipped:
        items = "".join(f"<li>{html_text(s.reason)}</li>" for s in skipped)
        skipped_html = f"<h2>Skipped entries ({len(skipped)})</h2><ul class='skipped'>{items}</ul>"
    data = {
        "compare": {k: {"keys": v["keys"], "thumbs": v["thumbs"]} for k, v in comp.items()},
    }
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    html = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>evalkit dashboard: {html_text(history.name)}</title><style>{CSS}{EXTRA_CSS}</style></head>\n<body>\n"
        f"<h1>evalkit dashboard</h1><p class='facts'><span>history {html_text(history)}</span>"
        f"<span>{len(records)} records</span><span>{len(series_names)} series</span>"
        f"<span>generated {html_text(generated)}</span></p>"
        f"<nav class='toc'>{''.join(toc)}</nav>"
        "<p class='sub'>Charts: value per record in time order (x labels: commit and time), shaded "
        "band: the 95% interval the run reported; dashed grey line: the protocol changed (values "
        "on either side are not comparable); orange line: a detected step; markers: the gate's "
        "verdict attached to a record.</p>\n"
        + "\n".join(sections)
        + skipped_html
        + f"\n<script type='application/json' id='ek-data'>{script_json(data)}</script>"
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
    index = atomic_write_text(site / "index.html", html)
    atomic_write_text(
        site / "steps.json",
        json.dumps(
            {
                "steps": all_steps,
                "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
        + "\n",
    )
    return Site(index, len(records), skipped, all_steps)


def _table(rows: Any, pages: dict[str, str], by_id: dict[str, Record]) -> str:
    body = []
    for _, r in rows.iterrows():
        iv = (
            None
            if r["lo"] is None or (isinstance(r["lo"], float) and np.isnan(r["lo"]))
            else [r["lo"], r["hi"]]
        )
        labels = by_id[r["record_id"]].meta.get("labels") or {}
        body.append(
            "<tr>"
            f"<td>{html_text(str(r['time'])[:19])}</td>"
            f"<td><code>{html_text((r['commit'] or '?')[:10])}</code></td>"
            f"<td>{html_text(r['branch'] or '?')}</td>"
            f"<td class='num'>{html_text(format_value(r['value']))}</td>"
            f"<td class='num'>{html_text(format_interval(iv))}</td>"
            f"<td class='num'>{html_text(r['n'] if r['n'] is not None else '—')}</td>"
            f"<td>{'<span class=brk>protocol change</span>' if r['break'] else ''}</td>"
            + _verdict_cell(r["gate"])
            + f"<td>{html_text(', '.join(f'{k}={v}' for k, v in sorted(labels.items())))}</td>"
            f"<td><a href='{html_url(pages[r['record_id']])}'>report</a></td>"
            "</tr>"
        )
    return (
        "<details open><summary>Exact values</summary><table><thead><tr><th>measured</th><th>commit</th>"
        "<th>branch</th><th>value</th><th>95% CI</th><th>n</th><th>protocol</th><th>gate</th>"
        "<th>labels</th><th>record</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></details>"
    )
