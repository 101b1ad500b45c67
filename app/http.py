"""HTTP hygiene around the app, as pure ASGI middleware (so event streams
are never buffered): a cap and a deadline on request bodies, repeated
query parameters with different values refused, cross-origin requests
refused unless allowed, and security headers on every response.

What uvicorn itself bounds is set where the server starts (app/main.py's
`serve` and the Dockerfile): concurrent connections (limit_concurrency, 503
past it) and idle keep-alive connections (timeout_keep_alive); the size of
a request's head and the time it may take are bounded in app/connection.py
(uvicorn has no such settings for its httptools protocol).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Callable
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException

# The page loads only its own script and style; images are data: URLs of
# the frames and blob: URLs of downloads.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


def problem_body(detail) -> bytes:
    """A JSON error in the app's shape: {detail, message}, where a 422's
    detail lists its issues as FastAPI's do."""
    message = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in detail) if isinstance(detail, list) else detail
    return json.dumps({"detail": detail, "message": message}).encode()


async def problem(send, status: int, detail, headers: list | None = None) -> None:
    """A JSON error (problem_body) straight from the middleware."""
    body = problem_body(detail)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


# The routes that queue work for the engine: refused at the door when it can take none.
GENERATION_ROUTES = {("POST", "/generate"), ("GET", "/generate/stream"), ("GET", "/generate.gif")}


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    """parse_qsl(..., keep_blank_values=True), with a fast path for the
    common query that has nothing to unquote (a burst's refusals read it)."""
    qs = query_string.decode("latin-1")
    if "%" in qs or "+" in qs:
        return parse_qsl(qs, keep_blank_values=True)
    return [(name, value) for name, _, value in (part.partition("=") for part in qs.split("&") if part)]


def busy_headers(busy: HTTPException) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in (busy.headers or {}).items()] + SECURITY_HEADERS


def least_cost(query: list[tuple[str, str]]) -> tuple[int, int]:
    """The least (images, UNet rows) the request can cost, read from its query
    string alone: n images of `steps` steps, a row each (1 where not given
    or not a plain number; the route checks them properly if it runs)."""
    q = dict(query)
    n, steps = (int(v) if v.isdigit() and len(v) < 5 else 1 for v in (q.get("n", "1"), q.get("steps", "1")))
    return max(n, 1), max(n, 1) * max(steps, 1)


class HttpLimits:
    def __init__(self, app, *, max_body_bytes: int, body_timeout_s: float, cors_origins: tuple[str, ...] = (),
                 busy: Callable[[int, int], HTTPException | None] = lambda images, rows: None):
        self.app = app
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.cors_origins = set(cors_origins)
        self.busy = busy  # (images, rows) -> the 503 to answer when the engine cannot take that much

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = parse_query(scope.get("query_string", b""))
        error = self.refused(scope, query)
        if error:
            return await problem(send, *error)
        if (scope["method"], scope["path"]) in GENERATION_ROUTES:
            busy = self.busy(*least_cost(query))
            if busy is not None:  # before the body, the parameters and the route: a burst costs little
                return await problem(send, busy.status_code, busy.detail, busy_headers(busy))
        body = await self._read_body(scope, receive, send)
        if body is None:  # answered (413/408) or the client left
            return

        replayed = False

        async def replay():
            """The body once, then the real receive (which reports the disconnect)."""
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = SECURITY_HEADERS + ([(b"content-security-policy", PAGE_CSP.encode())] if page else [])
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, replay, send_with_headers)

    def refused(self, scope, query: list[tuple[str, str]]) -> tuple[int, str] | None:
        """(status, why) for a request refused before anything runs."""
        origin = _header(scope, b"origin")
        if origin is not None and origin not in self.cors_origins:
            host = _header(scope, b"host") or ""
            if origin.split("://", 1)[-1] != host:  # same origin is fine
                return 403, (f"cross-origin requests from {origin[:100]} are not allowed "
                             f"(the server's DIGITGEN_CORS_ORIGINS lists the allowed origins)")
        seen: dict[str, str] = {}
        for name, value in query:
            if name in seen and seen[name] != value:
                return 422, [{"type": "value_error", "loc": ["query", name[:40]], "input": value[:40],
                              "msg": f"{name[:40]} is given twice in the query string with different values "
                                     f"({seen[name][:40]!r}, {value[:40]!r}); give it once"}]
            seen[name] = value
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return 413, f"the request body is larger than this server takes ({self.max_body_bytes} bytes)"
        return None

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole body, within the size cap and the deadline."""
        chunks, size, deadline = [], 0, time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await problem(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                              [(b"connection", b"close")])
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await problem(send, 413, f"the request body is larger than this server takes "
                                         f"({self.max_body_bytes} bytes)", [(b"connection", b"close")])
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
