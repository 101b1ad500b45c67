"""Admission, deadlines, disconnects and shutdown, with time under the test's
control: a server with one batch slot and one queue place whose clock and
engine steps the test drives (tests/controlled_server.py). Each test runs
against the real tiny model and against stand-in engine steps of ~0 ms and
~200 ms: none of them depends on how fast the machine is."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from conftest import Server, sse_events

DEADLINE_S = 30          # never reached in real time: the tests move the clock past it
GRACE_S = 60             # the graceful period: uvicorn's own cut (real time) never comes first
ENGINES = {"tiny": dict(engine="tiny"), "stand-in-0ms": dict(engine="stand-in", step_ms=0),
           "stand-in-200ms": dict(engine="stand-in", step_ms=200)}
LONG = {"label": 2, "steps": 1000, "scheduler": "ddim"}


def limited_server(weights, folder, engine):
    return Server(weights, folder / "uvicorn.log", **ENGINES[engine], max_batch=1, max_queue=1,
                  deadline_s=DEADLINE_S, graceful_s=GRACE_S)


@pytest.fixture(scope="module", params=list(ENGINES))
def small(request, tiny_weights, tmp_path_factory):
    srv = limited_server(tiny_weights, tmp_path_factory.mktemp("small"), request.param)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def engine_runs_freely_after_each_test(request):
    yield
    if "small" in request.fixturenames:
        srv = request.getfixturevalue("small")
        srv.control("run")
        srv.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)
        srv.wait_metric("digitgen_queue_depth", lambda v: v == 0)


def in_background(fn):
    """Run fn on a thread; call the result to join it and get fn's return value."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    t.start()

    def result(timeout=60):
        t.join(timeout)
        assert not t.is_alive(), "the request did not return"
        return out["value"]
    return result


def test_full_queue_gives_503_with_retry_after_then_deadline_ends_work(small):
    small.control("hold")
    deadline_before = small.metric("digitgen_trajectories_cancelled_total", reason="deadline")
    with httpx.Client(base_url=small.url, timeout=30) as a, httpx.Client(base_url=small.url, timeout=30) as b:
        with a.stream("GET", "/generate/stream", params=LONG) as running:
            events = sse_events(running.iter_lines())
            assert next(events)[0] == "start"
            small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)  # the only batch slot
            with b.stream("GET", "/generate/stream", params=LONG) as waiting:
                assert waiting.status_code == 200
                small.wait_metric("digitgen_queue_depth", lambda v: v == 1)  # the only queue place
                r = httpx.post(small.url + "/generate", params={"label": 1, "steps": 2}, timeout=10)
                assert r.status_code == 503
                assert int(r.headers["retry-after"]) >= 1
                assert "busy" in r.json()["detail"]
                assert small.metric("digitgen_requests_rejected_total", reason="queue_full") >= 1
                # time passes the deadline: the running stream ends with an error event, its work stops
                small.control(f"advance {DEADLINE_S + 1}")
                small.control("run")
                error = next(e for e in events if e[0] != "step")
                assert error[0] == "error" and error[2]["status"] == 504 and "deadline" in error[2]["detail"]
                # the queued one waited past its deadline too
                last = list(sse_events(waiting.iter_lines()))[-1]
                assert last[0] == "error" and "waiting for a batch slot" in last[2]["detail"]
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)
    small.wait_metric("digitgen_queue_depth", lambda v: v == 0)
    small.wait_metric("digitgen_trajectories_cancelled_total", lambda v: v == deadline_before + 2, reason="deadline")


def test_a_full_server_refuses_a_request_with_a_body_with_503_and_retry_after(small):
    """Admission is decided once, when the request is parsed (body included:
    it may change the cost), before any work; the refusal carries when to
    come back and the request's ID. (A body that never comes is the body
    deadline's 408, test_hostile_inputs.py.)"""
    small.control("hold")
    with httpx.Client(base_url=small.url, timeout=30) as a, httpx.Client(base_url=small.url, timeout=30) as b:
        with a.stream("GET", "/generate/stream", params=LONG) as running:
            assert running.status_code == 200
            small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
            with b.stream("GET", "/generate/stream", params=LONG) as waiting:
                assert waiting.status_code == 200
                small.wait_metric("digitgen_queue_depth", lambda v: v == 1)
                host, port = small.url.removeprefix("http://").split(":")
                with socket.create_connection((host, int(port)), timeout=30) as s:
                    body = b'{"n": 1}'
                    s.sendall(b"POST /generate?label=1&steps=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    head = s.recv(65536).split(b"\r\n\r\n")[0].decode().lower()
                assert head.startswith("http/1.1 503"), head
                assert "retry-after:" in head and "x-request-id:" in head, head


def _responses(s: socket.socket, k: int) -> list[tuple[bytes, bytes]]:
    """k (head, body) pairs read off a keep-alive connection (bodies by Content-Length)."""
    data, out = b"", []
    while len(out) < k:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = next(int(v) for n, _, v in (l.partition(b": ") for l in head.split(b"\r\n")[1:])
                          if n.lower() == b"content-length")
            if len(rest) >= length:
                out.append((head.lower(), rest[:length]))
                data = rest[length:]
                continue
        chunk = s.recv(65536)
        assert chunk, f"closed after {len(out)} responses"
        data += chunk
    return out


def test_a_full_server_answers_pipelined_requests_in_step(small):
    """Generation requests on a full server get the 503 with its headers,
    problem body and log line, in order with pipelined requests, and the
    connection stays usable."""
    small.control("hold")
    before = small.metric("digitgen_http_requests_total", route="/generate", method="POST", status="503")
    with httpx.Client(base_url=small.url, timeout=30) as a, httpx.Client(base_url=small.url, timeout=30) as b:
        with a.stream("GET", "/generate/stream", params=LONG) as running:
            small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
            with b.stream("GET", "/generate/stream", params=LONG) as waiting:
                assert running.status_code == waiting.status_code == 200
                small.wait_metric("digitgen_queue_depth", lambda v: v == 1)
                host, port = small.url.removeprefix("http://").split(":")
                with socket.create_connection((host, int(port)), timeout=30) as s:
                    s.sendall(b"POST /generate?label=1&steps=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: door-1\r\n\r\n"
                              b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                              b"GET /generate.gif?label=1&steps=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    (h1, b1), (h2, b2), (h3, b3) = _responses(s, 3)
                    s.sendall(b"POST /generate?label=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    (h4, _), = _responses(s, 1)
                    assert s.recv(65536) == b""  # closed, as asked
    for head in (h1, h3, h4):
        assert head.startswith(b"http/1.1 503") and b"retry-after: " in head and b"x-request-id: " in head
        assert b"x-content-type-options: nosniff" in head and b"content-type: application/problem+json" in head
    assert b"x-request-id: door-1" in h1 and b"connection: close" in h4
    problem = json.loads(b1)
    assert (problem["status"], problem["code"]) == (503, "busy") and "busy" in problem["detail"]
    assert h2.startswith(b"http/1.1 200") and json.loads(b2)["status"] == "ok"
    assert small.metric("digitgen_http_requests_total", route="/generate", method="POST", status="503") == before + 2
    end = time.monotonic() + 10
    while '"request_id": "door-1"' not in small.log.read_text():
        assert time.monotonic() < end, "no access-log line for the request answered at the door"
        time.sleep(0.05)
    line = next(l for l in small.log.read_text().splitlines() if '"request_id": "door-1"' in l)
    assert json.loads(line)["status"] == 503 and json.loads(line)["path"] == "/generate"


def test_post_past_its_deadline_gives_504(small):
    small.control("hold")
    response = in_background(lambda: httpx.post(small.url + "/generate", params=LONG, timeout=30))
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
    small.control("step 3")   # a few steps are taken...
    small.wait_metric("digitgen_denoising_steps_total", lambda v: v >= 3)
    small.control(f"advance {DEADLINE_S + 1}")  # ...then the deadline passes
    small.control("run")
    r = response()
    assert r.status_code == 504
    assert f"deadline of {DEADLINE_S} s" in r.json()["detail"]
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)


def test_post_within_its_deadline_finishes(small):
    """The other side of the deadline: time that has not passed it ends nothing."""
    small.control("hold")
    response = in_background(lambda: httpx.post(small.url + "/generate", params={"label": 3, "steps": 5},
                                                timeout=30))
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
    small.control(f"advance {DEADLINE_S - 1}")
    small.control("run")
    r = response()
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_client_leaving_a_stream_frees_its_batch_slot(small):
    before = small.metric("digitgen_trajectories_cancelled_total", reason="disconnect")
    ended = small.metric("digitgen_http_requests_total", route="/generate/stream", status="200")
    small.control("hold")
    with httpx.Client(base_url=small.url, timeout=30) as c:
        with c.stream("GET", "/generate/stream", params=LONG) as r:
            events = sse_events(r.iter_lines())  # keep a reference: closing the iterator closes the connection
            assert next(events)[0] == "start"
            small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
    # the server has seen the stream end before the engine may take another step
    small.wait_metric("digitgen_http_requests_total", lambda v: v == ended + 1, route="/generate/stream",
                      status="200")
    small.control("run")
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)
    small.wait_metric("digitgen_trajectories_cancelled_total", lambda v: v == before + 1, reason="disconnect")


def test_client_leaving_a_post_frees_its_batch_slot(small):
    before = small.metric("digitgen_trajectories_cancelled_total", reason="disconnect")
    gone = small.metric("digitgen_http_requests_total", route="/generate", status="499")
    small.control("hold")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(small.url + "/generate", params=LONG, timeout=1)
    small.wait_metric("digitgen_http_requests_total", lambda v: v == gone + 1, route="/generate", status="499")
    small.control("run")
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)
    small.wait_metric("digitgen_trajectories_cancelled_total", lambda v: v == before + 1, reason="disconnect")


@pytest.mark.parametrize("engine", list(ENGINES))
def test_shutdown_lets_the_open_request_finish(engine, tiny_weights, tmp_path):
    """SIGINT/SIGTERM: uvicorn stops accepting, the request in flight still
    gets its image, then the process exits cleanly."""
    srv = limited_server(tiny_weights, tmp_path, engine)
    srv.control("hold")
    response = in_background(lambda: httpx.post(srv.url + "/generate", params={"label": 9, "steps": 5}, timeout=30))
    srv.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
    srv.proc.send_signal(signal.SIGINT)
    wait_until_refused(srv.url)  # shutdown has begun: no new connections
    srv.control("run")
    r = response()
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert srv.proc.wait(30) == 0
    srv.stop()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_light_request_is_not_starved_behind_a_heavy_one(engine, tiny_weights, tmp_path):
    """Four batch places; a request for 8 images of 8 steps arrives first, a
    one-image 5-step request after it. The places are dealt round-robin over
    the requests, so the light one rides every step and is done after its
    own 5 steps; first come first served would keep it out until the heavy
    one's first four images were done (8 steps, then 5 of its own: 13 > 7)."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", **ENGINES[engine], max_batch=4, deadline_s=DEADLINE_S)
    try:
        srv.control("hold")
        heavy = in_background(lambda: httpx.post(srv.url + "/generate", timeout=60,
                                                 params={"label": 3, "n": 8, "steps": 8, "scheduler": "ddim"}))
        waiting = lambda: srv.metric("digitgen_inflight_trajectories") + srv.metric("digitgen_queue_depth")  # noqa
        end = time.monotonic() + 30
        while waiting() < 8:
            assert time.monotonic() < end
            time.sleep(0.02)
        light = in_background(lambda: httpx.post(srv.url + "/generate", params={"label": 4, "steps": 5}, timeout=60))
        while waiting() < 9:
            assert time.monotonic() < end
            time.sleep(0.02)
        srv.control("step 7")  # the heavy job's first step (taken before the light one came), then 5 + 1 spare
        r = light()
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        assert srv.metric("digitgen_images_generated_total") == 1  # the heavy one is far from done
        srv.control("run")
        assert heavy().status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_sigterm_finishes_what_it_can_and_ends_the_rest_cleanly(engine, tiny_weights, tmp_path):
    """SIGTERM with three requests in flight: nothing new is taken, a short
    one finishes, and when the grace period (on the test's clock) is nearly
    over the long ones end with a 503 and an `event: error` (not a bare 500
    or a cut connection); then the process exits."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", **ENGINES[engine], max_batch=4, deadline_s=DEADLINE_S,
                 graceful_s=GRACE_S)
    srv.control("hold")
    short = in_background(lambda: httpx.post(srv.url + "/generate", params={"label": 1, "steps": 3}, timeout=30))
    long = in_background(lambda: httpx.post(srv.url + "/generate", params=LONG, timeout=30))

    def stream():
        with httpx.stream("GET", srv.url + "/generate/stream", params=LONG, timeout=30) as r:
            return r.status_code, list(sse_events(r.iter_lines()))
    streamed = in_background(stream)
    end = time.monotonic() + 30
    while srv.metric("digitgen_inflight_trajectories") + srv.metric("digitgen_queue_depth") < 3:
        assert time.monotonic() < end, "the three requests did not arrive"
        time.sleep(0.02)
    srv.control("step 1")                 # the first arrival's step; then all three are in the batch
    srv.wait_metric("digitgen_inflight_trajectories", lambda v: v == 3)
    srv.proc.send_signal(signal.SIGTERM)
    wait_until_refused(srv.url)           # no new connections
    srv.control("step 3")                 # time enough for the short one ...
    r = short()
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    srv.control(f"advance {GRACE_S}")     # ... then the grace period runs out
    srv.control("run")
    r = long()
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]
    status, events = streamed()
    assert status == 200 and events[-1][0] == "error" and events[-1][2]["status"] == 503
    assert srv.proc.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
    srv.stop()


def wait_until_refused(url: str, timeout: float = 15.0) -> None:
    """Until a connection is refused. A probe that races the listener's close
    can be reset instead (the kernel had queued it; closing the socket resets
    what was never accepted): that proves nothing either way, so poll on."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            httpx.get(url + "/healthz", timeout=1)
        except httpx.ConnectError:
            return
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass
        time.sleep(0.02)
    raise AssertionError("the server still accepts connections")


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_request_that_cannot_finish_within_its_deadline_is_refused_before_any_work(engine, tiny_weights,
                                                                                    tmp_path):
    """Admission asks whether the work can finish in time at the pace the
    engine runs (here pinned by the test: 10 UNet rows a second, so the
    machine's speed plays no part). Alone too slow: a 422, no wait would
    help. Too slow behind the admitted work: a 503 whose Retry-After is when
    it would fit. (It used to be admitted and end in a 504 at the deadline.)"""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", **ENGINES[engine], max_batch=4, deadline_s=DEADLINE_S)
    try:
        srv.control("hold")
        srv.control("pace 10 0")
        slow = {"label": 1, "scheduler": "ddim", "steps": 200}  # 200 steps x 2 rows at 10 rows/s: 40 s alone
        r = httpx.post(srv.url + "/generate", params=slow, timeout=10)
        assert r.status_code == 422 and r.json()["code"] == "too_slow", r.text
        assert f"deadline of {DEADLINE_S} s" in r.json()["detail"] and "fewer images or steps" in r.json()["detail"]
        fits = {"label": 1, "scheduler": "ddim", "steps": 100}  # 20 s alone
        first = in_background(lambda: httpx.post(srv.url + "/generate", params=fits, timeout=30))
        srv.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
        r = httpx.post(srv.url + "/generate", params=fits, timeout=10)  # 400 rows to run at 10 a second: 40 s
        assert r.status_code == 503 and r.json()["code"] == "busy" and "past its deadline" in r.json()["detail"]
        assert int(r.headers["retry-after"]) == 10  # 400 - 10 x 30 rows must drain first
        assert srv.metric("digitgen_requests_rejected_total", reason="too_slow") == 1
        assert srv.metric("digitgen_requests_rejected_total", reason="past_deadline") == 1
        srv.control("run")
        assert first().status_code == 200
    finally:
        srv.stop()
