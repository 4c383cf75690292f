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
.ek-set h3 { margin: 0 0 4px 0; font-size: 1.05rem; }
.ek-grid { display: grid; grid-template-columns: repeat(var(--ek-cols, 4), minmax(0, 1fr));
  gap: 4px; max-width: calc(var(--ek-cols, 4) * max(80px, (100vh - 330px) / var(--ek-rows, 2))); }
.ek-grid img.ek-thumb { width: 100%; aspect-ratio: 1 / 1; object-fit: cover; cursor: zoom-in;
  border-radius: 3px; background: #eee; display: block; }
.ek-grid img.ek-failed { outline: 3px solid #b3261e; outline-offset: -3px; }
.ek-tabs { display: none; }
.ek-caption { font-size: 1.15rem; padding: 8px 10px; border-left: 4px solid #1f6fb4;
  background: rgba(31, 111, 180, 0.07); overflow-wrap: anywhere; }
.ek-question { font-weight: 600; margin-top: 2px; overflow-wrap: anywhere; }
#ek-answerbar { position: sticky; bottom: 0; z-index: 50; padding: 6px 10px;
  background: var(--background-fill-primary, #fff); border-top: 1px solid #d0d7de;
  box-shadow: 0 -3px 8px rgba(0, 0, 0, 0.08); gap: 4px !important; }
#ek-answerbar .html-container { padding-top: 0; padding-bottom: 0; }
.ek-imgnote:empty { display: none; }
.ek-imgnote { color: #8a4b00; font-weight: 600; }
.ek-imgnote.ek-bad { color: #b3261e; }
.ek-bar { height: 10px; background: #e3e3e3; border-radius: 5px; overflow: hidden; }
.ek-bar > div { height: 100%; background: #1f6fb4; }
.ek-muted { color: #777; font-size: 0.85rem; }
.ek-error { color: #b3261e; font-weight: 600; }
.ek-ok { color: #1b6e2a; }
.ek-table { border-collapse: collapse; font-size: 0.85rem; }
.ek-table td, .ek-table th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
.ek-export { margin: 6px 8px 6px 0; padding: 4px 12px; border: 1px solid #aaa; border-radius: 6px;
  cursor: pointer; }
#ek-lightbox { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.9); z-index: 10000;
  display: flex; flex-direction: column; align-items: center; justify-content: center;
  cursor: zoom-out; }
#ek-lightbox img { width: 100vw; height: calc(100vh - 36px); object-fit: contain;
  image-rendering: auto; }
#ek-lightbox .ek-lb-label { color: #eee; font-size: 0.95rem; line-height: 36px; }
@media (max-width: 760px) {
  #ek-sets .html-container { padding-left: 0; padding-right: 0; }
  #ek-answerbar { position: static; box-shadow: none; }
  .ek-sets { display: flex; overflow-x: auto; scroll-snap-type: x mandatory; gap: 0;
    scrollbar-width: none; }
  .ek-set { flex: 0 0 100%; scroll-snap-align: start; box-sizing: border-box; padding: 0 1px; }
  .ek-grid { grid-template-columns: repeat(2, minmax(0, 1fr)); max-width: none; }
  .ek-tabs { display: flex; gap: 6px; margin: 4px 0 6px 0; }
  .ek-tabs button { flex: 1; padding: 6px; border: 1px solid #1f6fb4; border-radius: 6px;
    background: transparent; font-weight: 600; }
  .ek-tabs button.ek-active { background: #1f6fb4; color: #fff; }
  .ek-caption { font-size: 1rem; }
}
"""

# Rules for Gradio's outer layout, which its scoped `css=` cannot reach; served as /ek/rating.css.
OUTER_CSS = """
.gradio-container { overflow: visible !important; }
@media (max-width: 760px) {
  .gradio-container .main.fillable { padding-left: 4px !important; padding-right: 4px !important; }
}
"""

# The page script, served as /ek/rating.js (the Content-Security-Policy allows no inline script).
# Keys, the enlarged view, the phone's set tabs, admin exports, and the image check: Submit
# stays disabled until every image of the task has loaded; failed images are retried.
RATING_JS = r"""
(function () {
  'use strict';
  var TOKEN_KEY = 'ek-token';

  function button(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    return el.tagName === 'BUTTON' ? el : el.querySelector('button');
  }
  function visible(el) { return !!el && el.offsetParent !== null; }
  function setsRoot() { return document.querySelector('#ek-sets .ek-sets'); }

  // ------------------------------------------------------------------ images of the task
  function thumbs() {
    var root = setsRoot();
    return root ? Array.prototype.slice.call(root.querySelectorAll('img.ek-thumb')) : [];
  }
  function loaded(img) { return img.complete && img.naturalWidth > 0 && img.dataset.ekOk === '1'; }
  function retry(img) {
    var tries = parseInt(img.dataset.ekTries || '0', 10) + 1;
    img.dataset.ekTries = String(tries);
    img.classList.add('ek-failed');
    var wait = Math.min(8000, 400 * Math.pow(2, Math.min(tries, 5)));
    setTimeout(function () {
      if (!img.isConnected) return;
      img.src = img.dataset.ekSrc + '?retry=' + tries;
    }, wait);
  }
  function bind(img) {
    if (img.dataset.ekBound === '1') return;
    img.dataset.ekBound = '1';
    img.dataset.ekSrc = img.getAttribute('src').split('?')[0];
    img.addEventListener('load', function () {
      img.dataset.ekOk = '1';
      img.classList.remove('ek-failed');
      tick();
    });
    img.addEventListener('error', function () { img.dataset.ekOk = '0'; retry(img); tick(); });
    if (img.complete) {
      if (img.naturalWidth > 0) img.dataset.ekOk = '1'; else retry(img);
    }
  }
  function imageState() {
    var root = setsRoot();
    var imgs = thumbs();
    var ok = imgs.filter(loaded).length;
    var failed = imgs.filter(function (i) { return !loaded(i) && i.dataset.ekTries; }).length;
    return { root: root, total: imgs.length, ok: ok, failed: failed };
  }
  window.ekImageState = function () {
    var st = imageState();
    var id = st.root ? st.root.getAttribute('data-task') : '';
    return (id || '') + ':' + st.ok + '/' + st.total;
  };
  function tick() {
    var st = imageState();
    thumbs().forEach(bind);
    var note = document.querySelector('#ek-imgnote .ek-imgnote');
    var submit = button('ek-submit');
    var ready = st.total > 0 && st.ok === st.total;
    if (note) {
      var text = '';
      if (st.total && !ready) {
        text = st.failed
          ? st.failed + ' of ' + st.total + ' images did not load: retrying. ' +
            'Submit is disabled until every image is shown.'
          : 'Loading images: ' + st.ok + ' of ' + st.total + '. Submit is enabled once all are shown.';
      }
      if (note.textContent !== text) note.textContent = text;
      note.classList.toggle('ek-bad', st.failed > 0);
    }
    if (submit && visible(submit)) {
      if (submit.disabled === ready) submit.disabled = !ready;
    }
    var tabs = document.querySelectorAll('#ek-sets .ek-tabs button');
    if (tabs.length && st.root) {
      var idx = Math.round(st.root.scrollLeft / Math.max(1, st.root.clientWidth));
      tabs.forEach(function (b, k) { b.classList.toggle('ek-active', k === idx); });
    }
  }
  setInterval(tick, 250);

  // ------------------------------------------------------------------ enlarged view
  var box = null;
  function closeBox() { if (box) { box.remove(); box = null; } }
  function showBox(img) {
    closeBox();
    var set = img.closest('.ek-set');
    var list = set ? Array.prototype.slice.call(set.querySelectorAll('img.ek-thumb')) : [img];
    var k = list.indexOf(img);
    box = document.createElement('div');
    box.id = 'ek-lightbox';
    var big = document.createElement('img');
    var label = document.createElement('div');
    label.className = 'ek-lb-label';
    box.appendChild(big);
    box.appendChild(label);
    function show(n) {
      k = (n + list.length) % list.length;
      big.src = list[k].src;
      big.alt = list[k].alt;
      var title = set ? set.getAttribute('data-title') : '';
      label.textContent = title + ' ' + (k + 1) + ' / ' + list.length +
        '   (arrow keys: next image, Esc: close)';
    }
    box.ekStep = function (d) { show(k + d); };
    show(k);
    document.body.appendChild(box);
  }

  // ------------------------------------------------------------------ keys
  function clickChoice(id, idx) {
    var root = document.getElementById(id);
    if (!root) return;
    var inputs = root.querySelectorAll('input[type=radio]');
    if (inputs[idx]) inputs[idx].click();
  }
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && ((t.tagName === 'INPUT' && t.type !== 'radio') || t.tagName === 'TEXTAREA')) return;
    if (box) {
      if (e.key === 'Escape' || e.key === 'Enter') { closeBox(); e.preventDefault(); return; }
      if (e.key === 'ArrowRight') { box.ekStep(1); e.preventDefault(); return; }
      if (e.key === 'ArrowLeft') { box.ekStep(-1); e.preventDefault(); return; }
    }
    var k = e.key.toLowerCase();
    if (k === 'u') {
      var u = visible(button('ek-undo')) ? button('ek-undo') : button('ek-undo-done');
      if (visible(u)) { closeBox(); u.click(); e.preventDefault(); }
      return;
    }
    var submit = button('ek-submit');
    if (!visible(submit)) return;
    var first = {'1': 0, '2': 1, '3': 2};
    var second = {'q': 0, 'w': 1, 'e': 2, '4': 0, '5': 1, '6': 2};
    if (k in first) { clickChoice('ek-q0', first[k]); e.preventDefault(); }
    else if (k in second) { clickChoice('ek-q1', second[k]); e.preventDefault(); }
    else if (k === 'enter') {
      e.preventDefault();
      tick();
      if (!submit.disabled) submit.click();
    }
  });

  // ------------------------------------------------------------------ clicks
  document.addEventListener('click', function (e) {
    if (box && box.contains(e.target)) { closeBox(); return; }
    var tab = e.target.closest ? e.target.closest('.ek-tabs button') : null;
    if (tab) {
      var root = setsRoot();
      if (root) root.scrollTo({left: root.clientWidth * parseInt(tab.dataset.set, 10), behavior: 'smooth'});
      return;
    }
    var exp = e.target.closest ? e.target.closest('button.ek-export') : null;
    if (exp) { exportVotes(exp); return; }
    var img = e.target.closest ? e.target.closest('img.ek-thumb') : null;
    if (img) showBox(img);
  });

  // ------------------------------------------------------------------ admin exports
  function exportVotes(btn) {
    var fmt = btn.dataset.format;
    var token = '';
    try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (err) { token = ''; }
    var note = document.getElementById('ek-export-note');
    fetch('api/v1/export?format=' + encodeURIComponent(fmt), {
      headers: {'Authorization': 'Bearer ' + token}, cache: 'no-store'
    }).then(function (r) {
      if (!r.ok) {
        return r.json().then(function (j) { throw new Error(j.error || ('HTTP ' + r.status)); });
      }
      var name = (r.headers.get('Content-Disposition') || '').split('filename="')[1] || ('votes.' + fmt);
      return r.blob().then(function (b) { return [b, name.replace(/"$/, '')]; });
    }).then(function (pair) {
      var a = document.createElement('a');
      a.href = URL.createObjectURL(pair[0]);
      a.download = pair[1];
      document.body.appendChild(a);
      a.click();
      setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      if (note) note.textContent = 'Downloaded ' + pair[1] + '.';
    }).catch(function (err) { if (note) note.textContent = 'Export failed: ' + err.message; });
  }
})();
"""

# Runs before the page's first request to the server: takes the token out of the address
# bar (kept in this tab's sessionStorage) and hands it to the load event.
LOAD_JS = """
(ignored) => {
  let token = '';
  try {
    const url = new URL(window.location.href);
    token = url.searchParams.get('token') || '';
    if (token) {
      sessionStorage.setItem('ek-token', token);
      url.searchParams.delete('token');
      history.replaceState(null, '', url.pathname + url.search + url.hash);
    } else {
      token = sessionStorage.getItem('ek-token') || '';
    }
  } catch (err) { token = ''; }
  return [token];
}
"""

# A token typed into the box is kept for this tab too (reloads and admin exports use it).
TOKEN_JS = """
(text) => {
  try { if (text && text.trim()) sessionStorage.setItem('ek-token', text.trim()); } catch (err) {}
  return [text];
}
"""

# Adds the page's own count of loaded images to a submission ("<task>:<loaded>/<total>").
SUBMIT_JS = """
(...args) => {
  args[2] = window.ekImageState ? window.ekImageState() : '';
  return args;
}
"""

HEAD = """
<meta name="referrer" content="no-referrer">
<link rel="stylesheet" href="ek/rating.css">
<script src="ek/rating.js" defer></script>
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
    """The two image sets side by side (on a phone: one at a time, full width, swiped or tabbed)."""
    n = len(view.left_images)
    cols = min(4, max(1, n))
    rows = -(-n // cols)

    def one(title: str, urls: list[str]) -> str:
        imgs = "".join(
            f"<img class='ek-thumb' loading='eager' decoding='async' src='{escape(u)}' "
            f"alt='{escape(title)} image {k + 1}'>"
            for k, u in enumerate(urls)
        )
        return (
            f"<div class='ek-set' data-title='{escape(title)}' style='--ek-cols:{cols};--ek-rows:{rows}'>"
            f"<h3>{escape(title)}</h3><div class='ek-grid'>{imgs}</div></div>"
        )

    tabs = (
        "<div class='ek-tabs' role='tablist'><button type='button' data-set='0' class='ek-active'>"
        "Set A</button><button type='button' data-set='1'>Set B</button></div>"
    )
    return (
        tabs
        + f"<div class='ek-sets' data-task='{escape(view.assignment_id)}'>"
        + one("Set A", view.left_images)
        + one("Set B", view.right_images)
        + "</div>"
    )


def images_ready(state: object, assignment_id: str, expected: int) -> tuple[bool, str]:
    """Whether the page reported every image of ``assignment_id`` loaded ("<task>:<ok>/<total>")."""
    text = state if isinstance(state, str) else ""
    task, _, counts = text.partition(":")
    ok, _, total = counts.partition("/")
    if task != assignment_id or not ok.isdigit() or not total.isdigit() or int(total) != expected:
        return False, "the page has not shown this task's images yet; wait a moment"
    if int(ok) < expected:
        missing = expected - int(ok)
        return False, (
            f"{missing} of {expected} images have not loaded yet (they are being retried): "
            "you can submit once every image is shown"
        )
    return True, ""


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
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            escape(r["name"]),
            escape(r["rater_id"]),
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
        "<h3>Per rater</h3><table class='ek-table'><tr><th>name</th><th>id</th><th>role</th><th>tasks</th>"
        f"<th>gold accuracy</th><th>last vote</th></tr>{rows_rater}</table>"
        "<details><summary>Per item</summary><table class='ek-table'><tr><th>item</th><th>category</th>"
        f"<th>done</th><th>target</th></tr>{rows_item}</table></details>"
        "<p><button type='button' class='ek-export' data-format='csv'>Export votes (CSV)</button>"
        "<button type='button' class='ek-export' data-format='json'>Export votes (JSON)</button>"
        "<span id='ek-export-note' class='ek-muted'></span></p>"
    )


def render_caption(view: TaskView) -> str:
    return f"<div class='ek-caption'>Caption: {escape(view.caption)}</div>"


def render_question(text: str) -> str:
    return f"<div class='ek-question'>{escape(text)}</div>"
