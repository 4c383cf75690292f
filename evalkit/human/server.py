"""The HTTP server: the Gradio app at ``/``, images by opaque id at ``/img``, a small JSON API.

JSON API (``Authorization: Bearer <token>``; bodies at most 4 KiB; errors are
``{"error": message}`` with a 4xx status, 429 with ``Retry-After``):

- ``POST /api/v1/next``      -> the rater's current task, or ``{"done": true}``
- ``POST /api/v1/vote``      ``{study_id, assignment_id, submission_id, answers: {question: A|B|tie}}``
- ``POST /api/v1/undo``      ``{study_id, submission_id?}``
- ``GET  /api/v1/progress``  (admin token)
- ``GET  /api/v1/export?format=csv|json`` (admin token)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from evalkit.human.errors import BadRequest, PayloadTooLarge, RateLimited, RatingError
from evalkit.human.security import RateLimiter
from evalkit.human.service import MAX_PAYLOAD_BYTES, RatingService, check_payload_size

SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",  # invite links carry the token: never leak it to other sites
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _error(exc: RatingError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    return JSONResponse({"error": str(exc)}, status_code=exc.http_status, headers=headers)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _json_body(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_PAYLOAD_BYTES):
        raise PayloadTooLarge(f"request too large (at most {MAX_PAYLOAD_BYTES} bytes)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        check_payload_size(body)
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def build_app(
    service: RatingService, *, ui: bool = True, failed_auth: RateLimiter | None = None
) -> FastAPI:
    """The FastAPI app with the API, the image route and (unless ``ui=False``) the Gradio UI at ``/``."""
    api = FastAPI(title="evalkit rating", docs_url=None, redoc_url=None, openapi_url=None)
    failures = failed_auth or RateLimiter(capacity=30, rate=0.5)
    images = RateLimiter(capacity=400, rate=40)

    @api.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            if k == "Cache-Control" and request.url.path.startswith("/img/"):
                continue
            response.headers.setdefault(k, v)
        return response

    def client(request: Request) -> str:
        return request.client.host if request.client else "?"

    def guarded(fn: Any) -> Any:
        async def handler(request: Request) -> Response:
            ip = client(request)
            try:
                failures.check(f"probe:{ip}")  # refuse while this client is locked out
                return await fn(request)
            except RatingError as exc:
                if exc.http_status in (400, 401, 403, 404):
                    try:
                        failures.take(f"probe:{ip}")
                    except RateLimited as limited:
                        return _error(limited)
                return _error(exc)

        handler.__name__ = fn.__name__
        return handler

    async def next_task(request: Request) -> Response:
        body = await _json_body(request)
        view = await run_in_threadpool(service.next_task, _bearer(request), body.get("study_id"))
        return JSONResponse({"done": True} if view is None else view.to_json())

    async def vote(request: Request) -> Response:
        body = await _json_body(request)
        receipt = await run_in_threadpool(
            service.submit,
            _bearer(request),
            body.get("assignment_id"),
            body.get("answers"),
            body.get("submission_id"),
            body.get("study_id"),
        )
        return JSONResponse(asdict(receipt))

    async def undo(request: Request) -> Response:
        body = await _json_body(request)
        receipt = await run_in_threadpool(
            service.undo, _bearer(request), body.get("submission_id"), body.get("study_id")
        )
        return JSONResponse(asdict(receipt))

    async def progress(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.progress, _bearer(request)))

    async def export(request: Request) -> Response:
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "json"):
            raise BadRequest("format must be csv or json")
        name, text = await run_in_threadpool(service.export, _bearer(request), fmt)
        media = "text/csv" if fmt == "csv" else "application/json"
        return PlainTextResponse(
            text,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def image(request: Request) -> Response:
        images.take(f"img:{client(request)}")
        path = await run_in_threadpool(
            service.image_file, request.path_params["assignment_id"], request.path_params["slot"]
        )
        return FileResponse(
            path,
            media_type="image/png" if path.suffix.lower() == ".png" else None,
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    api.add_api_route("/api/v1/next", guarded(next_task), methods=["POST"])
    api.add_api_route("/api/v1/vote", guarded(vote), methods=["POST"])
    api.add_api_route("/api/v1/undo", guarded(undo), methods=["POST"])
    api.add_api_route("/api/v1/progress", guarded(progress), methods=["GET"])
    api.add_api_route("/api/v1/export", guarded(export), methods=["GET"])
    api.add_api_route("/img/{assignment_id}/{slot}", guarded(image), methods=["GET"])
    api.add_api_route(
        "/healthz", lambda: {"ok": True, "study_id": service.study.study_id}, methods=["GET"]
    )

    if not ui:
        return api
    import gradio as gr

    from evalkit.human import app as pages  # sets GRADIO_ANALYTICS_ENABLED before gradio loads

    blocks = pages.build_blocks(service)
    blocks.queue(default_concurrency_limit=16)
    return gr.mount_gradio_app(
        api,
        blocks,
        path="",
        css=pages.CSS,
        theme=pages.theme(),
        head=pages.HEAD,
        ssr_mode=False,
        footer_links=[],
        show_error=False,
    )


def serve(
    service: RatingService, host: str = "127.0.0.1", port: int = 7860, ui: bool = True
) -> None:
    """Run the server until interrupted."""
    import uvicorn

    app = build_app(service, ui=ui)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
