"""The HTTP server: the Gradio app at ``/``, blinded images by opaque id at ``/img``, a JSON API.

JSON API (``Authorization: Bearer <token>``; bodies at most 4 KiB and 8 levels deep; errors
are ``{"error": message}`` with a 4xx status, 429 and 503 with ``Retry-After``):

- ``POST /api/v1/next``      -> the rater's current task, or ``{"done": true}``
- ``POST /api/v1/vote``      ``{study_id, assignment_id, submission_id, answers: {question: A|B|tie}}``
- ``POST /api/v1/undo``      ``{study_id, submission_id?}``
- ``GET  /api/v1/progress``  (admin token)
- ``GET  /api/v1/export?format=csv|json`` (admin token)

Limits are per rater (token), never per address, for everything a valid rater does. Failed
tokens are counted per client address; past that budget a wrong token is answered 429, while
a valid token from the same address keeps working. The client address is the TCP peer, or,
when the peer is one of the ``trusted_proxies``, what that proxy wrote in X-Forwarded-For.

Only the Gradio routes the page needs are reachable (its upload, file and API routes are not:
nobody can write a file). Pages carry a Content-Security-Policy with a per-response nonce.
"""

from __future__ import annotations

import gc
import os
import re
import secrets
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evalkit.human.errors import (
    AuthError,
    BadRequest,
    PayloadTooLarge,
    RateLimited,
    RatingError,
    StoreUnavailable,
)
from evalkit.human.images import IMAGE_HEADERS
from evalkit.human.pages import OUTER_CSS, RATING_JS
from evalkit.human.security import RateLimiter, parse_json_object, parse_trusted_proxies
from evalkit.human.service import MAX_PAYLOAD_BYTES, RatingService, check_payload_size
from evalkit.progress import log

SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",  # invite links carry the token: never leak it to other sites
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

# Gradio 6 renders its HTML components through `Function(...)`, hence 'unsafe-eval'; inline
# scripts run only with the response's nonce (Gradio's own bootstrap), so an injected
# <script> or on...= attribute does not run; nothing loads from or talks to other hosts.
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; media-src 'none'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'; worker-src 'self' blob:; manifest-src 'self'"
)
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"

# What the rating page needs from Gradio; every other Gradio route (upload, file=, run/call
# APIs, streams, ...) answers 404.
_GRADIO_GET = re.compile(
    r"^/(|config/?|theme\.css|favicon\.ico|manifest\.json|robots\.txt|"
    r"(assets|static|svelte)/[^?#]*|gradio_api/queue/data|gradio_api/heartbeat/[A-Za-z0-9_-]+|"
    r"gradio_api/startup-events)$"
)
_GRADIO_POST = re.compile(r"^/gradio_api/(queue/join|cancel)$")
_OWN = re.compile(r"^/(api/v1/|img/|healthz$|ek/)")
_IMAGE_PATH = re.compile(r"^/img/([^/]+)/([^/]+)$")
_SCRIPT_TAG = re.compile(rb"<script\b")
GRADIO_MAX_BODY = 64 * 1024  # a task's answers are a few hundred bytes
API_THREADS = 16
IMAGE_THREADS = 8
IMAGE_PROCESSES = max(1, min(4, os.cpu_count() or 1))  # re-encoding, beside the server
KEEP_ALIVE_S = (
    75  # longer than a rater's pause, so an idle connection is not closed under a request
)


def _error(exc: RatingError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimited | StoreUnavailable):
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
    return parse_json_object(body)


def _is_token_failure(exc: RatingError) -> bool:
    """A missing, malformed, unknown or revoked token (what the failed-token budget counts)."""
    return isinstance(exc, AuthError) or (
        isinstance(exc, BadRequest) and "access token" in str(exc)
    )


class OwnRoutes:
    """The JSON API, the image route and the page's own script and stylesheet, as plain ASGI.

    No framework routing: a request costs the event loop one dictionary lookup and a handler,
    a fraction of FastAPI's middleware and dependency stack. That matters because every task
    of every rater is 18 requests on one event loop (16 of them images), and a vote must not
    queue behind other raters' image requests. An image already re-encoded in memory is
    answered on the event loop itself; anything that reads a file or the database runs in a
    worker thread, images and API calls in separate pools so a burst of images never makes a
    vote wait for a thread.
    """

    def __init__(self, service: RatingService, failures: RateLimiter) -> None:
        self.service = service
        self.failures = failures
        self._pools: dict[str, CapacityLimiter] = {}  # created on first use, inside the loop
        self._routes: dict[str, tuple[str, Callable[..., Awaitable[Response]]]] = {
            "/api/v1/next": ("POST", self._next_task),
            "/api/v1/vote": ("POST", self._vote),
            "/api/v1/undo": ("POST", self._undo),
            "/api/v1/progress": ("GET", self._progress),
            "/api/v1/export": ("GET", self._export),
            "/ek/rating.js": ("GET", self._script),
            "/ek/rating.css": ("GET", self._stylesheet),
            "/healthz": ("GET", self._health),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        response: Response
        image = _IMAGE_PATH.match(path)
        if image is not None:
            allowed, args = "GET", image.groups()
            handler: Callable[..., Awaitable[Response]] = self._image
        elif path in self._routes:
            (allowed, handler), args = self._routes[path], ()
        else:
            response = JSONResponse({"error": "not found"}, status_code=404)
            await response(scope, receive, send)
            return
        if method != allowed:
            response = JSONResponse(
                {"error": f"method not allowed: use {allowed}"},
                status_code=405,
                headers={"Allow": allowed},
            )
        else:
            response = await self._guarded(handler, Request(scope, receive), *args)
        await response(scope, receive, send)

    async def _in_thread(self, pool: str, fn: Callable[..., Any], *args: Any) -> Any:
        if pool not in self._pools:
            self._pools[pool] = CapacityLimiter(API_THREADS if pool == "api" else IMAGE_THREADS)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._pools[pool])

    async def _guarded(
        self, handler: Callable[..., Awaitable[Response]], request: Request, *args: Any
    ) -> Response:
        """The handler's response; a RatingError as its 4xx answer, anything else a logged 500."""
        try:
            return await handler(request, *args)
        except RatingError as exc:
            if _is_token_failure(exc):
                client = request.client.host if request.client else "?"
                try:
                    self.failures.take(f"fail:{client}")
                except RateLimited as limited:
                    return _error(
                        RateLimited(
                            f"too many failed access tokens from your address: wait "
                            f"{max(1, int(limited.retry_after + 0.999))} s (valid links "
                            "keep working)",
                            limited.retry_after,
                        )
                    )
            return _error(exc)
        except Exception:  # noqa: BLE001 - answered as a clean 500, logged for the admin
            log(f"internal error on {request.url.path}:\n{traceback.format_exc()}")
            return JSONResponse(
                {"error": "internal error: the server's log has the details"}, status_code=500
            )

    async def _next_task(self, request: Request) -> Response:
        body = await _json_body(request)
        view = await self._in_thread(
            "api", self.service.next_task, _bearer(request), body.get("study_id")
        )
        return JSONResponse({"done": True} if view is None else view.to_json())

    async def _vote(self, request: Request) -> Response:
        body = await _json_body(request)
        receipt = await self._in_thread(
            "api",
            self.service.submit,
            _bearer(request),
            body.get("assignment_id"),
            body.get("answers"),
            body.get("submission_id"),
            body.get("study_id"),
        )
        return JSONResponse(asdict(receipt))

    async def _undo(self, request: Request) -> Response:
        body = await _json_body(request)
        receipt = await self._in_thread(
            "api",
            self.service.undo,
            _bearer(request),
            body.get("submission_id"),
            body.get("study_id"),
        )
        return JSONResponse(asdict(receipt))

    async def _progress(self, request: Request) -> Response:
        return JSONResponse(await self._in_thread("api", self.service.progress, _bearer(request)))

    async def _export(self, request: Request) -> Response:
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "json"):
            raise BadRequest("format must be csv or json")
        name, text = await self._in_thread("api", self.service.export, _bearer(request), fmt)
        media = "text/csv" if fmt == "csv" else "application/json"
        return PlainTextResponse(
            text,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def _image(self, request: Request, assignment_id: str, slot: str) -> Response:
        data = self.service.image_in_memory(assignment_id, slot)
        if data is None:
            data = await self._in_thread("images", self.service.image, assignment_id, slot)
        return Response(data, media_type="image/png", headers=IMAGE_HEADERS)

    async def _script(self, request: Request) -> Response:
        return Response(
            RATING_JS, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    async def _stylesheet(self, request: Request) -> Response:
        return Response(OUTER_CSS, media_type="text/css", headers={"Cache-Control": "no-cache"})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "study_id": self.service.study.study_id})


class GuardMiddleware:
    """Security headers, the page's CSP nonce, and the allow-list of routes (pure ASGI).

    Our own routes go to ``own``; with the UI, the allowed Gradio routes go to ``app``.
    """

    def __init__(self, app: ASGIApp, own: OwnRoutes, ui: bool) -> None:
        self.app = app
        self.own = own
        self.ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if _OWN.match(path):
            await self.own(scope, receive, self._with_headers(send, path, None))
            return
        if not self._allowed(path, method):
            response = JSONResponse({"error": "not found"}, status_code=404)
            await response(scope, receive, self._with_headers(send, path, None))
            return
        if method == "POST" and self._too_large(scope):
            response = JSONResponse({"error": "request too large"}, status_code=413)
            await response(scope, receive, self._with_headers(send, path, None))
            return
        if method == "GET" and path == "/":
            await self._page(scope, receive, send)
            return
        await self.app(scope, receive, self._with_headers(send, path, None))

    @staticmethod
    def _too_large(scope: Scope) -> bool:
        """A Gradio event body without a length, or longer than GRADIO_MAX_BODY."""
        length = dict(scope.get("headers", [])).get(b"content-length")
        return length is None or not length.isdigit() or int(length) > GRADIO_MAX_BODY

    def _allowed(self, path: str, method: str) -> bool:
        """Whether a Gradio route is one the page needs (none without the UI)."""
        if not self.ui:
            return False
        if method in ("GET", "HEAD"):
            return bool(_GRADIO_GET.match(path))
        return method == "POST" and bool(_GRADIO_POST.match(path))

    @staticmethod
    def _with_headers(send: Send, path: str, nonce: str | None) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                extra = dict(SECURITY_HEADERS)
                if path.startswith("/img/"):
                    extra.update(IMAGE_HEADERS)
                elif path.startswith(("/assets/", "/static/", "/svelte/")) or path == "/theme.css":
                    extra.pop("Cache-Control")  # Gradio's own caching of its static files
                extra["Content-Security-Policy"] = (
                    PAGE_CSP.format(nonce=nonce) if nonce else OTHER_CSP
                )
                for k, v in extra.items():
                    if k.lower().encode() not in have:
                        headers.append((k.lower().encode(), v.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return wrapped

    async def _page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's HTML page with a fresh nonce on each of its <script> tags."""
        nonce = secrets.token_urlsafe(18)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = _SCRIPT_TAG.sub(b'<script nonce="' + nonce.encode() + b'"', b"".join(chunks))
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-security-policy")
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        send_page = self._with_headers(send, "/", nonce)
        await send_page({**start, "headers": headers})
        await send_page({"type": "http.response.body", "body": body})


def build_app(
    service: RatingService,
    *,
    ui: bool = True,
    failed_auth: RateLimiter | None = None,
    trusted_proxies: Sequence[str] = (),
) -> ASGIApp:
    """The ASGI app: the API, the image route and (unless ``ui=False``) the Gradio UI at ``/``."""
    failures = failed_auth or RateLimiter(capacity=30, rate=0.5)
    # The host of the Gradio mount (and of the ASGI lifespan); our own routes never reach it.
    app: ASGIApp = FastAPI(title="evalkit rating", docs_url=None, redoc_url=None, openapi_url=None)
    if ui:
        import gradio as gr

        from evalkit.human import app as pages  # sets GRADIO_ANALYTICS_ENABLED before gradio

        blocks = pages.build_blocks(service, failed_auth=failures)
        blocks.queue(default_concurrency_limit=16)
        app = gr.mount_gradio_app(
            app,
            blocks,
            path="",
            css=pages.CSS,
            theme=pages.theme(),
            head=pages.HEAD,
            ssr_mode=False,
            footer_links=[],
            show_error=False,
            max_file_size=1,  # bytes: the upload route is closed anyway
        )
    app = GuardMiddleware(app, OwnRoutes(service, failures), ui=ui)
    proxies = parse_trusted_proxies(trusted_proxies)
    if proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        # uvicorn types ASGI apps with its own TypedDict scopes and events, starlette with plain
        # mutable mappings: the same protocol at run time that the two stubs do not reconcile
        app = ProxyHeadersMiddleware(app, trusted_hosts=proxies)  # type: ignore[arg-type,assignment]
    return app


def serve(
    service: RatingService,
    host: str = "127.0.0.1",
    port: int = 7860,
    ui: bool = True,
    trusted_proxies: Sequence[str] = (),
) -> None:
    """Run the server until interrupted. X-Forwarded-For is believed only from ``trusted_proxies``."""
    import uvicorn

    app = build_app(service, ui=ui, trusted_proxies=trusted_proxies)
    # Gradio and the study leave hundreds of thousands of long-lived objects; each full
    # collection walked all of them, a 165-230 ms pause of every request in flight (measured
    # under the 50-rater load test). Moved out of the collector's reach once, here.
    gc.collect()
    gc.freeze()
    service.images.use_processes(IMAGE_PROCESSES)
    service.warm_images()  # before raters arrive, where the cache holds them
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # our ProxyHeadersMiddleware decides, from --trusted-proxy only
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    finally:
        service.images.close()
