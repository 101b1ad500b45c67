"""The edge: what every HTTP request passes before a route, as one pure-ASGI
middleware (pure ASGI, so event streams are never buffered).

In order, each check answering with the service's one error shape
(app/errors.py) before any work:

1. one `Host` header, naming this server (DIGITGEN_ALLOWED_HOSTS: a browser
   page on another name that resolves here, the DNS-rebinding shape, is 400);
2. an `Origin` that is this server itself or one DIGITGEN_CORS_ORIGINS lists
   (else 403), with the CORS headers and preflights for the listed ones;
   `OPTIONS` answered with the methods a path takes;
3. API keys (`Authorization: Bearer <key>`, when configured) on everything
   but the probes, the metrics, the page and the docs (else 401; an address
   that keeps presenting wrong keys gets 429);
4. a per-client token bucket and daily quota (when configured; else 429
   with Retry-After, which is this client's own limit: a 503 is the whole
   server's), in Redis for every replica when DIGITGEN_REDIS_URL is set;
5. a query string that gives a parameter twice must give it the same value;
6. the body: no content encoding, at most DIGITGEN_MAX_BODY_BYTES (413,
   counted as it arrives), within DIGITGEN_BODY_TIMEOUT_S (408).

The client of 3 and 4, of the access log and of the routes (scope["client"])
is the socket's peer, or, when that peer is one of DIGITGEN_TRUSTED_PROXIES,
the address it forwards (app/gate.py has the rule and the keys' throttle).

Around every request: an `X-Request-ID` (the client's when it is sane, else
a new one) echoed back, security headers (and a strict CSP on the page),
one JSON access-log line, and the request counted in /metrics by route.

What the HTTP protocol itself bounds (the head's size and deadline, idle
connections, stalled readers) is in app/connection.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl

from .errors import Problem, send_problem
from .gate import Gate
from .limits_store import SharedLimits
from .metrics import ServiceMetrics

access_log = logging.getLogger("digitgen.access")
_json_str = json.encoder.encode_basestring_ascii  # a str as a JSON string literal (C)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Open to anyone: the probes and metrics (kubelet and Prometheus have no key
# and name the pod by its address), the page and the API docs.
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PATHS = OPS_PATHS | {"/", "/favicon.ico", "/docs", "/openapi.json"}
OPEN_PREFIXES = ("/static/", "/docs-assets/")
PAGE_PREFIXES = ("/static/",)

# The page loads only its own scripts and styles; images are data: URLs of
# the frames and blob: URLs of downloads.
PAGE_CSP = (b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
            b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
CORS_EXPOSED = b"x-seed, x-model, x-steps, x-scheduler, retry-after, x-request-id"
CORS_ALLOWED_HEADERS = b"content-type, authorization, last-event-id, x-request-id"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
OVERLOADED = "digitgen.overloaded"  # scope key set by app/connection.py past its cap on requests in progress


def host_name(authority: str) -> str:
    """The name in a Host header or an origin's authority, without the port, lower-case."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # [::1]:8000
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


class Edge:
    def __init__(self, app, *, metrics: ServiceMetrics, routes: Mapping[str, frozenset[str]],
                 allowed_hosts: tuple[str, ...] = ("*",), cors_origins: tuple[str, ...] = (),
                 api_keys: tuple[str, ...] = (), rate: float = 0.0, burst: int = 1, trusted_proxies=(),
                 quota: int = 0, redis=None, redis_timeout_s: float = 0.05,
                 max_body_bytes: int = 65536, body_timeout_s: float = 10.0, clock=time.monotonic):
        self.app, self.metrics = app, metrics
        self.routes = routes  # path -> the methods it takes ("/static/*": everything under a mounted folder)
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.cors_origins = frozenset(cors_origins)
        store = None
        if redis is not None:  # a config.RedisAddress: the limits shared by every replica
            store = SharedLimits(redis, redis_timeout_s, on_fallback=metrics.limits_fallbacks.inc,
                                 on_local=metrics.limits_local.inc)
            metrics.limits_store_up_fn = lambda: float(store.up)
        self.gate = Gate(api_keys, rate, burst, trusted_proxies, clock, quota=quota, store=store)
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.gate.store is not None:
                receive = self._store_with_lifespan(receive)
            return await self.app(scope, receive, send)
        start, status, path = time.perf_counter(), 500, scope["path"]
        headers = scope.get("headers", ())
        if self.gate.proxies.networks:  # the forwarded client, from a trusted proxy, for everything after this
            scope["client"] = self.gate.proxies.client_of(scope.get("client"), headers)
        request_id = request_id_of(headers)
        origin = _header(headers, b"origin")
        cors = origin is not None and origin in self.cors_origins
        extra = [*SECURITY_HEADERS, (b"x-request-id", request_id.encode())]
        if path == "/" or path.startswith(PAGE_PREFIXES):
            extra.append((b"content-security-policy", PAGE_CSP))
        if cors:
            extra += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin"),
                      (b"access-control-expose-headers", CORS_EXPOSED)]

        async def send_with_headers(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            problem = await self.refusal(scope, headers, origin)
            if problem is None and scope["method"] == "OPTIONS":
                problem = await self._options(send_with_headers, scope, headers, cors)
                if problem is None:
                    return
            if problem is not None:
                return await send_problem(send_with_headers, problem, path)
            if self._has_body(scope):
                body = await self._read_body(scope, receive, send_with_headers)
                if body is None:  # answered (408, 413) or the client left
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_headers)
        finally:
            log_access(request_id, scope.get("client"), scope["method"], path, status, start)
            # the route's path, never the raw one: unknown URLs cannot grow the label set
            route = getattr(scope.get("route"), "path", None) or self._route_of(path) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start, request_id)

    def _store_with_lifespan(self, receive):
        """The app's start-up connects the shared store (in the background), its shutdown closes it."""
        async def lifespan_receive():
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.gate.store.start()
            elif message["type"] == "lifespan.shutdown":
                self.gate.store.close()
            return message
        return lifespan_receive

    # -- the checks, in order -------------------------------------------------------
    async def refusal(self, scope, headers, origin: str | None) -> Problem | None:
        """The Problem to answer before anything runs, else None (the gate's
        limits in the shared store when there is one, else this process's)."""
        problem = self._before_gate(scope, headers, origin)
        if problem is not None or scope["method"] == "OPTIONS":
            return problem  # a preflight carries no key; the request it asks about will
        if self.gate.on and not self._open_path(scope["path"]):
            problem = await self.gate.check((scope.get("client") or ("?",))[0], _header(headers, b"authorization"))
            if problem is not None:
                return problem
        return self._after_gate(scope, headers)

    @staticmethod
    def _open_path(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _before_gate(self, scope, headers, origin: str | None) -> Problem | None:
        """Checks 1 and 2 (and the connection's cap on requests)."""
        path = scope["path"]
        if scope.get(OVERLOADED):
            return Problem(503, "overloaded", f"the server is serving {scope[OVERLOADED]} requests, its most "
                                              f"(DIGITGEN_MAX_CONNECTIONS); retry shortly", retry_after=1)
        hosts = [v for k, v in headers if k == b"host"]
        if len(hosts) > 1:
            return Problem(400, "bad_host", "the request has more than one Host header; send one")
        host = hosts[0].decode("latin-1") if hosts else ""
        if path not in OPS_PATHS and not self._host_allowed(host):
            return Problem(400, "bad_host", f"this server does not answer to the name {host[:100]!r} "
                                            f"(DIGITGEN_ALLOWED_HOSTS lists the names it takes)")
        if origin is not None and origin not in self.cors_origins and not self._same_origin(origin, host):
            return Problem(403, "forbidden_origin", f"cross-origin requests from {origin[:100]} are not allowed "
                                                    f"(the server's DIGITGEN_CORS_ORIGINS lists the allowed origins)")
        return None

    def _after_gate(self, scope, headers) -> Problem | None:
        """Checks 5 and 6 (the body's declared length; its arrival is _read_body's)."""
        pairs = scope[QUERY] = parse_query(scope.get("query_string", b""))
        problem = repeated_parameter(pairs)
        if problem is not None:
            return problem
        encoding = _header(headers, b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return Problem(415, "unsupported_media_type", f"Content-Encoding {encoding[:40]!r} is not taken: "
                                                          f"send the body uncompressed")
        declared = _header(headers, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return self._too_large()
        return None

    def _host_allowed(self, host: str) -> bool:
        return self.any_host or host_name(host) in self.allowed_hosts

    def _same_origin(self, origin: str, host: str) -> bool:
        """The page this server serves, calling it: the Origin's authority is
        the Host, which the first check has held to the allowed names."""
        return bool(host) and origin.partition("://")[2].lower() == host.lower() and self._host_allowed(host)

    async def _options(self, send, scope, headers, cors: bool) -> Problem | None:
        """A CORS preflight (for an allowed origin), or the methods the path takes (204 with Allow)."""
        methods = self._methods_of(scope["path"])
        if methods is None:
            return Problem(404, "not_found", "not found")
        allow = ", ".join(sorted(methods | {"OPTIONS"})).encode()
        if cors and _header(headers, b"access-control-request-method") is not None:
            out = [(b"access-control-allow-methods", allow), (b"access-control-allow-headers", CORS_ALLOWED_HEADERS),
                   (b"access-control-max-age", b"600"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 200, "headers": out})
        else:
            await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
        await send({"type": "http.response.body", "body": b""})
        return None

    def _route_of(self, path: str) -> str | None:
        """The route a path belongs to: its own, or the mounted folder it is under."""
        if path in self.routes:
            return path
        return next((p for p in self.routes if p.endswith("/*") and path.startswith(p[:-1])), None)

    def _methods_of(self, path: str) -> frozenset[str] | None:
        route = self._route_of(path)
        return None if route is None else self.routes[route]

    def _too_large(self) -> Problem:
        return Problem(413, "body_too_large", f"the request body is larger than this server takes "
                                              f"({self.max_body_bytes} bytes)", headers={"connection": "close"})

    @staticmethod
    def _has_body(scope) -> bool:
        """Whether to read a body first: a method that carries one, or a request that says it has one."""
        headers = scope.get("headers", ())
        return scope["method"] in BODY_METHODS or _header(headers, b"content-length") not in (None, "0") \
            or _header(headers, b"transfer-encoding") is not None

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole body, within the size cap and the deadline."""
        headers = scope.get("headers", ())
        if _header(headers, b"content-length") == "0" and _header(headers, b"transfer-encoding") is None:
            return b""  # nothing to wait for
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # a timeout context, not wait_for: no task a message
                    message = await receive()
            except TimeoutError:
                await send_problem(send, Problem(408, "request_timeout", f"the request body did not arrive within "
                                                 f"{self.body_timeout_s:g} s", headers={"connection": "close"}),
                                   scope["path"])
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_problem(send, self._too_large(), scope["path"])
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """The body once, then the real receive (which reports the disconnect)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


QUERY = "digitgen.query"  # scope key: the query string's (name, value) pairs, parsed once here


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    """parse_qsl(..., keep_blank_values=True), with a fast path for the common
    query that has nothing to unquote."""
    qs = query_string.decode("latin-1")
    if "%" in qs or "+" in qs:
        return parse_qsl(qs, keep_blank_values=True)
    return [(name, value) for name, _, value in (part.partition("=") for part in qs.split("&") if part)]


def repeated_parameter(pairs: list[tuple[str, str]]) -> Problem | None:
    """A 422 when the query string gives one parameter twice with different values."""
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in seen and seen[name] != value:
            return Problem.invalid_field("query", name[:40], (
                f"{name[:40]} is given twice in the query string with different values "
                f"({seen[name][:40]!r}, {value[:40]!r}); give it once"), value[:40])
        seen[name] = value
    return None


def _header(headers, name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


# Request IDs need to be unique, not secret: a generator seeded once, because
# os.urandom is a system call that lets go of the GIL, and with the engine
# computing, getting it back cost a refused request more than its work did
_ids = random.Random(os.urandom(32))


def request_id_of(headers) -> str:
    """The client's X-Request-ID when it is sane, else a new one (128 random bits in hex)."""
    given = _header(headers, b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ids.getrandbits(128):032x}"


class AccessLineHandler(logging.StreamHandler):
    """Where the access lines go unless the embedding application says
    otherwise (app/main.py puts one on stderr): log_access hands it lines
    without making a LogRecord, and on the event loop they are written once
    per loop iteration, not once each: a write releases the GIL, and with the
    engine computing, taking it back cost a burst's refusals more than their
    work did."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self._pending: list[str] = []

    def write_line(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # not on a loop: write it now
                self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self._pending = self._pending, []
            if lines:
                self.stream.write("\n".join(lines) + "\n")
            super().flush()


def log_access(request_id: str, client, method: str, path: str, status: int, start: float) -> None:
    """One JSON access line; `start` is the request's time.perf_counter().
    Written without logging's caller lookup and json.dumps's dict walk (and
    to our own handler without a LogRecord): under a burst of refusals a
    line through logging cost about a quarter of each one."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = (f'{{"time": {time.time():.3f}, "request_id": {_json_str(request_id)}, '
            f'"client": {_json_str((client or ("",))[0])}, "method": {_json_str(method)}, '
            f'"path": {_json_str(path[:200])}, "status": {int(status)}, '
            f'"duration_ms": {(time.perf_counter() - start) * 1e3:.1f}}}')
    handlers = access_log.handlers
    if len(handlers) == 1 and type(handlers[0]) is AccessLineHandler and not access_log.filters:
        handlers[0].write_line(line)
    else:
        access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, line, None, None))
