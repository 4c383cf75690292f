"""The Gradio rating app. Every handler goes through ``RatingService``; nothing here decides.

Raters arrive with ``/?token=...``. Without a valid token only a notice and a token box
are shown. A rater sees one task at a time: the caption, two anonymous image sets (sides
randomised per task by the service), the study's questions with the paper's answers,
Submit and Undo. Keyboard: 1/2/3 answer the first question, q/w/e (or 4/5/6) the second,
Enter submits, u undoes, a click on an image enlarges it (Esc closes). The admin token
opens a progress view with exports instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from evalkit.human.errors import RatingError  # noqa: E402
from evalkit.human.pages import (  # noqa: E402
    CSS,
    HEAD,
    KEYS_HELP,
    NO_ACCESS,
    render_admin,
    render_caption,
    render_error,
    render_progress,
    render_question,
    render_sets,
)
from evalkit.human.service import RatingService  # noqa: E402
from evalkit.human.study import ANSWERS  # noqa: E402

LABEL_TO_CHOICE = {label: choice for choice, label in ANSWERS.items()}
RADIO_CHOICES = [ANSWERS["A"], ANSWERS["tie"], ANSWERS["B"]]


def theme() -> gr.themes.Base:
    """Gradio's default look with system fonts: the page makes no request to font hosts."""
    system = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def build_blocks(service: RatingService) -> gr.Blocks:
    """The Gradio Blocks of one study (mount with css=CSS and head=HEAD)."""
    study = service.study
    questions = list(study.questions)

    with gr.Blocks(title="Image preference study", analytics_enabled=False) as demo:
        token_state = gr.State(None)
        view_state = gr.State(None)  # (assignment_id, submission_id) of the task on screen

        with gr.Column(visible=True) as gate_col:
            gate_html = gr.HTML(NO_ACCESS, elem_id="ek-gate")
            token_box = gr.Textbox(
                label="Access token", type="password", max_lines=1, max_length=128
            )
            token_btn = gr.Button("Enter")

        with gr.Column(visible=False) as rate_col:
            progress_html = gr.HTML(elem_id="ek-progress")
            caption_html = gr.HTML(elem_id="ek-caption")
            sets_html = gr.HTML(elem_id="ek-sets")
            q_html: list[gr.HTML] = []
            radios: list[gr.Radio] = []
            for n, _q in enumerate(questions):
                q_html.append(gr.HTML(elem_id=f"ek-qtext{n}"))
                radios.append(
                    gr.Radio(
                        RADIO_CHOICES,
                        value=None,
                        show_label=False,
                        elem_id=f"ek-q{n}",
                        interactive=True,
                    )
                )
            with gr.Row():
                submit_btn = gr.Button("Submit (Enter)", variant="primary", elem_id="ek-submit")
                undo_btn = gr.Button("Undo last vote (u)", elem_id="ek-undo")
            status_html = gr.HTML(elem_id="ek-status")
            gr.HTML(KEYS_HELP)

        with gr.Column(visible=False) as done_col:
            done_html = gr.HTML(elem_id="ek-done")

        with gr.Column(visible=False) as admin_col:
            admin_html = gr.HTML(elem_id="ek-admin")
            with gr.Row():
                refresh_btn = gr.Button("Refresh")
                csv_btn = gr.Button("Export CSV")
                json_btn = gr.Button("Export JSON")
            export_file = gr.File(label="Export", interactive=False)

        task_outputs = [
            gate_col,
            rate_col,
            done_col,
            admin_col,
            gate_html,
            progress_html,
            caption_html,
            sets_html,
            *q_html,
            *radios,
            status_html,
            done_html,
            admin_html,
            view_state,
            token_state,
        ]

        def screen(token: str | None, status: str = "") -> dict:
            """Everything on screen for ``token``: gate, task, done or admin view."""
            hidden = {gate_col: gr.update(visible=False), rate_col: gr.update(visible=False)}
            hidden |= {done_col: gr.update(visible=False), admin_col: gr.update(visible=False)}
            try:
                role = service.role_of(token)
                if role == "admin":
                    return hidden | {
                        admin_col: gr.update(visible=True),
                        admin_html: render_admin(service.progress(token)),
                        token_state: token,
                    }
                view = service.next_task(token)
            except RatingError as exc:
                return hidden | {
                    gate_col: gr.update(visible=True),
                    gate_html: NO_ACCESS + render_error(exc),
                    token_state: None,
                    view_state: None,
                }
            if view is None:
                return hidden | {
                    done_col: gr.update(visible=True),
                    done_html: "<h2>All done</h2><p>There is nothing left for you to rate. Thank you!</p>"
                    + status,
                    token_state: token,
                    view_state: None,
                }
            out = hidden | {
                rate_col: gr.update(visible=True),
                progress_html: render_progress(view),
                caption_html: render_caption(view),
                sets_html: render_sets(view),
                status_html: status,
                token_state: token,
                view_state: (view.assignment_id, view.submission_id),
            }
            for n, (_qid, text) in enumerate(view.questions):
                out[q_html[n]] = render_question(text)
                out[radios[n]] = gr.update(value=None)
            return out

        def on_load(request: gr.Request) -> dict:
            token = request.query_params.get("token") if request else None
            if not token:
                return {gate_col: gr.update(visible=True), rate_col: gr.update(visible=False)}
            return screen(token)

        def on_token(text: str) -> dict:
            return screen((text or "").strip())

        def on_submit(token: str | None, view: tuple[str, str] | None, *labels: str | None) -> dict:
            if not token or not view:
                return screen(token)
            answers = {}
            for q, label in zip(questions, labels, strict=True):
                answers[q] = LABEL_TO_CHOICE.get(label, label) if label else None
            try:
                service.submit(token, view[0], answers, view[1])
            except RatingError as exc:
                return {status_html: render_error(exc)}
            undo_s = f"{study.undo_window_s:g}"
            return screen(
                token, f"<p class='ek-ok'>Saved. You can undo it within {undo_s} s (u).</p>"
            )

        def on_undo(token: str | None) -> dict:
            try:
                service.undo(token)
            except RatingError as exc:
                return {status_html: render_error(exc)}
            return screen(
                token, "<p class='ek-ok'>Your last vote was undone: answer that task again.</p>"
            )

        def on_refresh(token: str | None) -> dict:
            return screen(token)

        def on_export(token: str | None, fmt: str) -> Any:
            try:
                name, text = service.export(token, fmt)
            except RatingError as exc:
                return gr.update(value=None, label=str(exc))
            path = Path(tempfile.mkdtemp(prefix="evalkit-export-")) / name
            path.write_text(text, encoding="utf-8")
            return gr.update(value=str(path), label=f"Export ({fmt.upper()})")

        private = {"api_visibility": "private"}
        demo.load(on_load, None, task_outputs, **private)
        token_btn.click(on_token, token_box, task_outputs, **private)
        token_box.submit(on_token, token_box, task_outputs, **private)
        submit_btn.click(
            on_submit,
            [token_state, view_state, *radios],
            task_outputs,
            trigger_mode="once",
            **private,
        )
        undo_btn.click(on_undo, token_state, task_outputs, trigger_mode="once", **private)
        refresh_btn.click(on_refresh, token_state, task_outputs, **private)
        csv_btn.click(lambda t: on_export(t, "csv"), token_state, export_file, **private)
        json_btn.click(lambda t: on_export(t, "json"), token_state, export_file, **private)
    return demo


__all__ = ["CSS", "HEAD", "build_blocks", "theme"]
