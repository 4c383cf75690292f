"""The Gradio rating app. Every handler goes through ``RatingService``; nothing here decides.

Raters arrive with ``/?token=...``; the page moves the token into the tab's sessionStorage
and out of the address bar before it talks to the server. Without a valid token only a
notice and a token box are shown. A rater sees one task at a time: the caption, two
anonymous image sets (sides randomised per task by the service), then a bar that stays on
screen with the study's questions, the paper's answers, Submit and Undo. Submit stays
disabled until every image of the task has loaded (failed images are retried), and the
server refuses a submission whose page did not report all images shown. Keyboard: 1/2/3 the
first question, q/w/e (or 4/5/6) the second, Enter submits, u undoes (also on the "All done"
page), a click enlarges an image to the screen (arrow keys step, Esc closes). The admin token
opens a progress view; its exports download through the admin-token API.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from evalkit.human.errors import RateLimited, RatingError  # noqa: E402
from evalkit.human.pages import (  # noqa: E402
    CSS,
    HEAD,
    KEYS_HELP,
    LOAD_JS,
    NO_ACCESS,
    SUBMIT_JS,
    TOKEN_JS,
    images_ready,
    render_admin,
    render_caption,
    render_error,
    render_progress,
    render_question,
    render_sets,
)
from evalkit.human.security import RateLimiter  # noqa: E402
from evalkit.human.service import RatingService  # noqa: E402
from evalkit.human.study import ANSWERS  # noqa: E402

LABEL_TO_CHOICE = {label: choice for choice, label in ANSWERS.items()}
RADIO_CHOICES = [ANSWERS["A"], ANSWERS["tie"], ANSWERS["B"]]
DONE = "<h2>All done</h2><p>There is nothing left for you to rate. Thank you!</p>"


def theme() -> gr.themes.Base:
    """Gradio's default look with system fonts: the page makes no request to font hosts."""
    system = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def _html(**kw: Any) -> gr.HTML:
    """An HTML block that runs no script of its own (the page script does everything)."""
    return gr.HTML(js_on_load=None, **kw)


def build_blocks(service: RatingService, failed_auth: RateLimiter | None = None) -> gr.Blocks:
    """The Gradio Blocks of one study (mount with css=CSS and head=HEAD).

    ``failed_auth`` counts failed tokens per client address (as for the JSON API): past its
    budget a wrong token is answered "wait N s"; a valid token always opens.
    """
    study = service.study
    questions = list(study.questions)
    n_images = 2 * study.images_per_side

    with gr.Blocks(title="Image preference study", analytics_enabled=False) as demo:
        token_state = gr.State(None)
        view_state = gr.State(None)  # (assignment_id, submission_id) of the task on screen
        token_in = gr.Textbox(visible="hidden", elem_id="ek-token-in")
        image_state = gr.Textbox(visible="hidden", elem_id="ek-image-state")

        with gr.Column(visible=True) as gate_col:
            gate_html = _html(value=NO_ACCESS, elem_id="ek-gate")
            token_box = gr.Textbox(
                label="Access token", type="password", max_lines=1, max_length=128
            )
            token_btn = gr.Button("Enter")

        with gr.Column(visible=False) as rate_col:
            progress_html = _html(elem_id="ek-progress")
            caption_html = _html(elem_id="ek-caption")
            sets_html = _html(elem_id="ek-sets")
            with gr.Column(elem_id="ek-answerbar"):
                q_html: list[gr.HTML] = []
                radios: list[gr.Radio] = []
                for n, _q in enumerate(questions):
                    q_html.append(_html(elem_id=f"ek-qtext{n}"))
                    radios.append(
                        gr.Radio(
                            RADIO_CHOICES,
                            value=None,
                            show_label=False,
                            elem_id=f"ek-q{n}",
                            interactive=True,
                            container=False,
                        )
                    )
                with gr.Row(equal_height=True):
                    submit_btn = gr.Button(
                        "Submit (Enter)", variant="primary", elem_id="ek-submit", scale=2
                    )
                    undo_btn = gr.Button("Undo last vote (u)", elem_id="ek-undo", scale=1)
                _html(
                    value="<div class='ek-imgnote' aria-live='polite'></div>", elem_id="ek-imgnote"
                )
                status_html = _html(elem_id="ek-status")
            _html(value=KEYS_HELP)

        with gr.Column(visible=False) as done_col:
            done_html = _html(elem_id="ek-done")
            undo_done_btn = gr.Button("Undo last vote (u)", elem_id="ek-undo-done")
            done_status_html = _html(elem_id="ek-done-status")

        with gr.Column(visible=False) as admin_col:
            admin_html = _html(elem_id="ek-admin")
            refresh_btn = gr.Button("Refresh")

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
            done_status_html,
            undo_done_btn,
            admin_html,
            view_state,
            token_state,
        ]

        def refuse(client: str | None, exc: RatingError) -> str:
            """The message for a refused token; past the address's budget, a wait."""
            if failed_auth is not None and client:
                try:
                    failed_auth.take(f"fail:{client}")
                except RateLimited as limited:
                    return render_error(limited)
            return render_error(exc)

        def screen(token: str | None, status: str = "", client: str | None = None) -> dict:
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
                    gate_html: NO_ACCESS + refuse(client, exc),
                    token_state: None,
                    view_state: None,
                }
            if view is None:
                can_undo = "undo" in status
                return hidden | {
                    done_col: gr.update(visible=True),
                    done_html: DONE,
                    done_status_html: status,
                    undo_done_btn: gr.update(visible=can_undo),
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

        def client_of(request: gr.Request | None) -> str | None:
            return request.client.host if request is not None and request.client else None

        def on_load(token: str | None, request: gr.Request) -> dict:
            token = (token or "").strip()
            if not token:
                return {gate_col: gr.update(visible=True), rate_col: gr.update(visible=False)}
            return screen(token, client=client_of(request))

        def on_token(text: str, request: gr.Request) -> dict:
            return screen((text or "").strip(), client=client_of(request))

        def on_submit(
            token: str | None, view: tuple[str, str] | None, images: str | None, *labels: str | None
        ) -> dict:
            if not token or not view:
                return screen(token)
            ready, why = images_ready(images, view[0], n_images)
            if not ready:
                return {status_html: f"<p class='ek-error'>Not saved: {why}.</p>"}
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
                return {status_html: render_error(exc), done_status_html: render_error(exc)}
            return screen(
                token, "<p class='ek-ok'>Your last vote was undone: answer that task again.</p>"
            )

        def on_refresh(token: str | None) -> dict:
            return screen(token)

        demo.load(on_load, token_in, task_outputs, js=LOAD_JS, api_visibility="private")
        token_btn.click(on_token, token_box, task_outputs, js=TOKEN_JS, api_visibility="private")
        token_box.submit(on_token, token_box, task_outputs, js=TOKEN_JS, api_visibility="private")
        submit_btn.click(
            on_submit,
            [token_state, view_state, image_state, *radios],
            task_outputs,
            js=SUBMIT_JS,
            trigger_mode="once",
            api_visibility="private",
        )
        for btn in (undo_btn, undo_done_btn):
            btn.click(
                on_undo, token_state, task_outputs, trigger_mode="once", api_visibility="private"
            )
        refresh_btn.click(on_refresh, token_state, task_outputs, api_visibility="private")
    return demo


__all__ = ["CSS", "HEAD", "build_blocks", "theme"]
