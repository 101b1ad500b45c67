"""Who may call, how often, and a record of every call (pure ASGI).

* Request IDs: a client's `X-Request-ID` (up to 64 of A-Z a-z 0-9 . _ -) is
  kept, otherwise one is made; either way it is echoed in the response and
  written in the access log.
* API keys (off unless configured): `Authorization: Bearer <key>` on every
  endpoint but the probes, the metrics, the page and its static files;
  a missing or wrong key is a 401.
* A per-client token bucket (off unless configured): `rate` requests a second
  with bursts of `burst`, per API key when keys are on, else per client
  address; past it a 429 with `Retry-After`, which is this client's own limit
  (a 503 is the whole server's).
* One JSON line per request on the "digitgen.access" logger.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import threading
import time

from .http import problem

access_log = logging.getLogger("digitgen.access")
_json_str = json.encoder.encode_basestring_ascii  # a str as a JSON string literal, as json.dumps writes it (C)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/", "/favicon.ico", "/docs", "/openapi.json")
OPEN_PREFIXES = ("/static/", "/docs-assets/")


class TokenBuckets:
    """rate tokens a second, at most `burst` saved up, one bucket per client."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_clients: int = 10_000):
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if the client may go now, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                if len(self._buckets) > self.max_clients:  # forget the oldest, full buckets first
                    for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:len(self._buckets) // 2]:
                        del self._buckets[key]
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


class Gate:
    def __init__(self, app, *, api_keys: tuple[str, ...] = (), rate: float = 0.0, burst: int = 1, clock=time.monotonic):
        self.app = app
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.buckets = TokenBuckets(rate, max(1, burst), clock) if rate > 0 else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        request_id = request_id_of(headers)
        start, status = time.perf_counter(), 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                   (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            refusal = self._refusal(scope, headers)
            if refusal:
                await problem(send_with_id, *refusal)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            log_access(request_id, scope.get("client"), scope["method"], scope["path"], status, start)

    def key_refusal(self, path: str, headers: dict) -> tuple | None:
        """The 401 (status, why, headers) when API keys are on and this request has none of them."""
        if not self.api_keys or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        scheme, _, key = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not any(hmac.compare_digest(key.strip(), k) for k in self.api_keys):
            return 401, "an API key is required: send Authorization: Bearer <key>", \
                [(b"www-authenticate", b'Bearer realm="digitgen"')]
        return None

    def _refusal(self, scope, headers) -> tuple | None:
        """(status, why, headers) when the request may not go on."""
        path = scope["path"]
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        refusal = self.key_refusal(path, headers)
        if refusal:
            return refusal
        key = headers.get(b"authorization", b"").partition(b" ")[2] if self.api_keys else None
        if self.buckets is not None and not open_path:
            client = "key:" + key.strip().decode("latin-1") if key else "ip:" + (scope.get("client") or ("?",))[0]
            wait = self.buckets.take(client)
            if wait > 0:
                return 429, (f"too many requests from this client: at most {self.buckets.rate:g} a second "
                             f"(bursts of {self.buckets.burst}); retry in {math.ceil(wait)} s"), \
                    [(b"retry-after", str(math.ceil(wait)).encode())]
        return None


def request_id_of(headers: dict) -> str:
    """The client's X-Request-ID when it is sane, else a new one (128 random bits in hex)."""
    given = headers.get(b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given.decode("latin-1")):
        return given.decode("latin-1")
    return os.urandom(16).hex()


def log_access(request_id: str, client, method: str, path: str, status: int, start: float) -> None:
    """One JSON access line; `start` is the request's time.perf_counter().
    Written without logging's caller lookup and json.dumps's dict walk: on a
    burst of refusals this line was a quarter of each one's cost."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = (f'{{"time": {time.time():.3f}, "request_id": {_json_str(request_id)}, '
            f'"client": {_json_str((client or ("",))[0])}, "method": {_json_str(method)}, '
            f'"path": {_json_str(path[:200])}, "status": {int(status)}, '
            f'"duration_ms": {(time.perf_counter() - start) * 1e3:.1f}}}')
    access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, line, None, None))
