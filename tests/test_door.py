"""What the door (app/door.py) answers itself and what it leaves to the app.
Its decisions only; tests/test_service_limits.py shows it on a real server
(the 503 in order with pipelined requests, the connection kept in step)."""
from __future__ import annotations

import json
import random
from urllib.parse import parse_qsl

import pytest
from starlette.exceptions import HTTPException

from app.door import Door
from app.gate import Gate
from app.http import HttpLimits, parse_query
from app.metrics import ServiceMetrics


def make_door(busy=True, **gate):
    async def never(scope, receive, send):
        raise AssertionError("the door calls no app")
    refusal = HTTPException(503, "the server is busy (queue full); retry in 3 s", headers={"Retry-After": "3"})
    limits = HttpLimits(never, max_body_bytes=1000, body_timeout_s=1,
                        busy=lambda images, rows: refusal if busy else None)
    metrics = ServiceMetrics()
    return Door(Gate(limits, **gate), limits, metrics), metrics


H = [(b"host", b"x")]


def test_a_busy_server_refuses_a_bodyless_generation_request():
    door, metrics = make_door()
    status, headers, body = door("POST", b"/generate?label=5&steps=20", H + [(b"x-request-id", b"abc")], ("1.2.3.4", 9))
    heads = dict(headers)
    assert status == 503 and heads[b"retry-after"] == b"3" and heads[b"x-request-id"] == b"abc"
    assert heads[b"x-content-type-options"] == b"nosniff" and heads[b"content-type"] == b"application/json"
    assert json.loads(body) == {"detail": "the server is busy (queue full); retry in 3 s",
                                "message": "the server is busy (queue full); retry in 3 s"}
    assert metrics.requests.value(route="/generate", method="POST", status=503) == 1
    for method, url in (("GET", b"/generate/stream?label=1"), ("GET", b"/generate.gif?label=1"),
                        ("GET", b"/generate%2Egif?label=1")):  # uvicorn's path is unquoted too
        assert door(method, url, H, None)[0] == 503


@pytest.mark.parametrize("method, url, headers", [
    ("GET", b"/info", H),                                              # not generation
    ("GET", b"/generate?label=1", H),                                  # POST only
    ("POST", b"/generate?label=1", H + [(b"content-length", b"12")]),  # a body: the app reads it in step
    ("POST", b"/generate?label=1", H + [(b"transfer-encoding", b"chunked")]),
    ("POST", b"/generate?label=1", H + [(b"origin", b"http://elsewhere")]),  # CORS: the app's answer
    ("POST", b"/generate?label=1&label=2", H),                         # the app's 422 comes first
])
def test_the_door_leaves_these_to_the_app(method, url, headers):
    door, metrics = make_door()
    assert door(method, url, headers, None) is None
    assert metrics.requests.value(route="/generate", method="POST", status=503) == 0


def test_nothing_is_refused_when_the_engine_can_take_it():
    door, _ = make_door(busy=False)
    assert door("POST", b"/generate?label=1", H, None) is None


def test_api_keys_are_checked_and_rate_limits_leave_it_to_the_app():
    door, _ = make_door(api_keys=("k1",))
    assert door("POST", b"/generate", H, None) is None  # no key: the app's 401
    assert door("POST", b"/generate", H + [(b"authorization", b"Bearer nope")], None) is None
    assert door("POST", b"/generate", H + [(b"authorization", b"Bearer k1")], None)[0] == 503
    door, _ = make_door(rate=5, burst=1)  # every request takes a token: the app's gate does that
    assert door("POST", b"/generate", H, None) is None


def test_parse_query_reads_a_query_as_parse_qsl_does():
    """The door's fast path for queries with nothing to unquote, against the
    standard library on random strings of the characters that matter."""
    rng = random.Random(0)
    for _ in range(20_000):
        qs = "".join(rng.choice("ab=&;#+%20x_.-") for _ in range(rng.randint(0, 14)))
        assert parse_query(qs.encode("latin-1")) == parse_qsl(qs, keep_blank_values=True), qs
