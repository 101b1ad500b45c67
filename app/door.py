"""The front door: under a burst on a full server, a generation request the
engine cannot take is refused by the HTTP protocol itself
(app/connection.py calls `Door` once a request's head is in), before any
ASGI task, middleware or route runs. With the engine held, a burst's p99
went from 9.6 ms through the middleware to 4.6-6.0 ms here; with it
computing, from 13.1 to 6.4-7.9 ms (bench/burst_floor.py, RELIABILITY.md).

The answer is the one the middleware would give (HttpLimits' 503 with
Retry-After, the security headers, the request ID, one access-log line,
the request counted in /metrics). Anything the door is not sure of goes the
usual way, where it is still refused before any work: a request with a body,
a cross-origin one (CORS headers), one without a valid API key (401), any
request while per-client rate limits are on (each takes a token), a query
the middleware would refuse first (422, 413), and every request that fits.
"""
from __future__ import annotations

import time
from urllib.parse import unquote

from .gate import Gate, log_access, request_id_of
from .http import GENERATION_ROUTES, HttpLimits, busy_headers, least_cost, parse_query, problem_body
from .metrics import ServiceMetrics


class Door:
    def __init__(self, gate: Gate, limits: HttpLimits, metrics: ServiceMetrics):
        self.gate, self.limits, self.metrics = gate, limits, metrics

    def __call__(self, method: str, raw_url: bytes, headers: list[tuple[bytes, bytes]], client) \
            -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """(status, headers, body) to answer now, or None: let the app decide."""
        start = time.perf_counter()
        raw_path, _, raw_query = raw_url.partition(b"?")
        path = unquote(raw_path.decode("latin-1"))
        if (method, path) not in GENERATION_ROUTES or self.gate.buckets is not None:
            return None
        head = dict(headers)
        if b"content-length" in head and head[b"content-length"] != b"0" or b"transfer-encoding" in head \
                or b"origin" in head or self.gate.key_refusal(path, head):
            return None
        query_string = raw_query.split(b"#", 1)[0]
        query = parse_query(query_string)
        if self.limits.refused({"headers": headers, "query_string": query_string}, query):
            return None
        busy = self.limits.busy(*least_cost(query))
        if busy is None:
            return None
        request_id = request_id_of(head)
        log_access(request_id, client, method, path, busy.status_code, start)
        self.metrics.observe_request(path, method, busy.status_code, time.perf_counter() - start)
        return busy.status_code, [(b"content-type", b"application/json"), *busy_headers(busy),
                                  (b"x-request-id", request_id.encode())], problem_body(busy.detail)
