"""HTML and CSS of the rating app, kept apart from Gradio so it is testable on its own.

Every value that comes from outside (prompts, rater names, ids, error messages) goes
through ``escape`` before it reaches HTML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evalkit.human.security import escape
from evalkit.human.service import TaskView

CSS = """
.ek-sets { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.ek-set h3 { margin: 0 0 6px 0; font-size: 1.05rem; }
.ek-grid { display: grid; grid-template-columns: repeat(4, 1fr); gap: 4px; }
.ek-grid img.ek-thumb { width: 100%; aspect-ratio: 1 / 1; object-fit: cover; cursor: zoom-in;
  border-radius: 3px; background: #eee; }
.ek-caption { font-size: 1.15rem; padding: 8px 10px; border-left: 4px solid #1f6fb4;
  background: rgba(31, 111, 180, 0.07); overflow-wrap: anywhere; }
.ek-question { font-weight: 600; margin-top: 4px; overflow-wrap: anywhere; }
.ek-bar { height: 10px; background: #e3e3e3; border-radius: 5px; overflow: hidden; }
.ek-bar > div { height: 100%; background: #1f6fb4; }
.ek-muted { color: #777; font-size: 0.85rem; }
.ek-error { color: #b3261e; font-weight: 600; }
.ek-ok { color: #1b6e2a; }
.ek-table { border-collapse: collapse; font-size: 0.85rem; }
.ek-table td, .ek-table th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
#ek-lightbox { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.85); z-index: 10000;
  display: flex; align-items: center; justify-content: center; cursor: zoom-out; }
#ek-lightbox img { max-width: 96vw; max-height: 92vh; image-rendering: auto; }
@media (max-width: 760px) {
  .ek-sets { grid-template-columns: 1fr; }
  .ek-caption { font-size: 1rem; }
}
"""

HEAD = """
<meta name="referrer" content="no-referrer">
<script>
(function () {
  function clickChoice(id, idx) {
    var root = document.getElementById(id);
    if (!root) return;
    var inputs = root.querySelectorAll('input[type=radio]');
    if (inputs[idx]) inputs[idx].click();
  }
  function button(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    return el.tagName === 'BUTTON' ? el : el.querySelector('button');
  }
  function closeBox() { var b = document.getElementById('ek-lightbox'); if (b) b.remove(); }
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && ((t.tagName === 'INPUT' && t.type !== 'radio') || t.tagName === 'TEXTAREA')) return;
    if (e.key === 'Escape') { closeBox(); return; }
    var submit = button('ek-submit');
    if (!submit || submit.offsetParent === null) return;
    var k = e.key.toLowerCase();
    var first = {'1': 0, '2': 1, '3': 2};
    var second = {'q': 0, 'w': 1, 'e': 2, '4': 0, '5': 1, '6': 2};
    if (k in first) { clickChoice('ek-q0', first[k]); e.preventDefault(); }
    else if (k in second) { clickChoice('ek-q1', second[k]); e.preventDefault(); }
    else if (k === 'enter') { closeBox(); submit.click(); e.preventDefault(); }
    else if (k === 'u') { var u = button('ek-undo'); if (u) u.click(); e.preventDefault(); }
  });
  document.addEventListener('click', function (e) {
    var box = document.getElementById('ek-lightbox');
    if (box && box.contains(e.target)) { closeBox(); return; }
    var img = e.target.closest ? e.target.closest('img.ek-thumb') : null;
    if (!img) return;
    var overlay = document.createElement('div');
    overlay.id = 'ek-lightbox';
    var big = document.createElement('img');
    big.src = img.src;
    big.alt = img.alt;
    overlay.appendChild(big);
    document.body.appendChild(overlay);
  });
})();
</script>
"""

NO_ACCESS = (
    "<h2>Image preference study</h2><p>This study is by invitation. Open the personal link "
    "you were sent, or paste your access token below.</p>"
)
KEYS_HELP = (
    "<span class='ek-muted'>Keys: <b>1/2/3</b> first question, <b>q/w/e</b> (or 4/5/6) second "
    "question, <b>Enter</b> submit, <b>u</b> undo the last vote. Click an image to enlarge it.</span>"
)


def render_error(exc: Exception) -> str:
    return f"<p class='ek-error'>{escape(exc)}</p>"


def render_sets(view: TaskView) -> str:
    """The two image sets side by side (stacked on narrow screens); all text escaped."""

    def one(title: str, urls: list[str]) -> str:
        imgs = "".join(
            f"<img class='ek-thumb' loading='eager' src='{escape(u)}' alt='{escape(title)} image {k + 1}'>"
            for k, u in enumerate(urls)
        )
        return (
            f"<div class='ek-set'><h3>{escape(title)}</h3><div class='ek-grid'>{imgs}</div></div>"
        )

    return (
        "<div class='ek-sets'>"
        + one("Set A", view.left_images)
        + one("Set B", view.right_images)
        + "</div>"
    )


def render_progress(view: TaskView) -> str:
    pct = 100.0 * view.study_done / view.study_target if view.study_target else 100.0
    return (
        f"<div class='ek-bar' title='study progress'><div style='width:{pct:.1f}%'></div></div>"
        f"<p class='ek-muted'>You have rated {view.rated_by_you} task(s). Study progress: "
        f"{view.study_done} / {view.study_target} ratings ({pct:.0f}%).</p>"
    )


def render_admin(progress: Mapping[str, Any]) -> str:
    """The admin progress view; every name and id escaped."""
    eta = progress["eta_seconds"]
    eta_text = "unknown (no recent votes)" if eta is None else f"{eta / 3600:.1f} h"
    pct = 100 * progress["fraction"]
    rows_cat = "".join(
        f"<tr><td>{escape(c)}</td><td>{v['done']}</td><td>{v['target']}</td></tr>"
        for c, v in progress["per_category"].items()
    )
    rows_rater = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            escape(r["name"]),
            escape(r["role"]) + (" (revoked)" if r["revoked"] else ""),
            r["tasks"],
            "–"
            if r["gold_accuracy"] is None
            else f"{100 * r['gold_accuracy']:.0f}% of {r['gold_tasks']} task(s)",
            "–"
            if r["last_active"] is None
            else f"{(progress['generated_at'] - r['last_active']) / 60:.0f} min ago",
        )
        for r in progress["per_rater"]
    )
    rows_item = "".join(
        f"<tr><td>{escape(i)}</td><td>{escape(v['category'])}</td><td>{v['done']}</td><td>{v['target']}</td></tr>"
        for i, v in progress["per_item"].items()
    )
    return (
        f"<h2>Study {escape(progress['study_id'])}: progress</h2>"
        f"<div class='ek-bar'><div style='width:{pct:.1f}%'></div></div>"
        f"<p>{progress['done']} / {progress['target']} ratings ({pct:.1f}%), "
        f"{progress['submissions']} submissions in all (gold included). Rate: "
        f"{progress['rate_per_hour']:.1f} ratings/hour; ETA to target: {eta_text}.</p>"
        "<h3>Per category</h3><table class='ek-table'><tr><th>category</th><th>done</th><th>target</th></tr>"
        f"{rows_cat}</table>"
        "<h3>Per rater</h3><table class='ek-table'><tr><th>name</th><th>role</th><th>tasks</th>"
        f"<th>gold accuracy</th><th>last vote</th></tr>{rows_rater}</table>"
        "<details><summary>Per item</summary><table class='ek-table'><tr><th>item</th><th>category</th>"
        f"<th>done</th><th>target</th></tr>{rows_item}</table></details>"
    )


def render_caption(view: TaskView) -> str:
    return f"<div class='ek-caption'>Caption: {escape(view.caption)}</div>"


def render_question(text: str) -> str:
    return f"<div class='ek-question'>{escape(text)}</div>"
