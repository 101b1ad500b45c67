"""Admission, deadline and shutdown, on a server with one batch slot, one
queue place and a short deadline."""
from __future__ import annotations

import threading

import httpx
import pytest

from conftest import Server, sse_events

DEADLINE_S = 3


@pytest.fixture(scope="module")
def small(tiny_weights, tmp_path_factory):
    srv = Server(tiny_weights, tmp_path_factory.mktemp("small") / "uvicorn.log",
                 max_batch=1, max_queue=1, deadline_s=DEADLINE_S)
    yield srv
    srv.stop()


LONG = {"label": 2, "steps": 1000, "scheduler": "ddim"}  # ~20 s here: the deadline ends it first


def test_full_queue_gives_503_with_retry_after_then_deadline_ends_work(small):
    with httpx.Client(base_url=small.url, timeout=30) as a, httpx.Client(base_url=small.url, timeout=30) as b:
        with a.stream("GET", "/generate/stream", params=LONG) as running:
            events = sse_events(running.iter_lines())
            assert next(events)[0] == "start"
            assert next(events)[0] == "step"  # it holds the only batch slot
            with b.stream("GET", "/generate/stream", params=LONG) as waiting:
                assert waiting.status_code == 200
                small.wait_metric("digitgen_queue_depth", lambda v: v == 1)  # it holds the only queue place
                r = httpx.post(small.url + "/generate", params={"label": 1, "steps": 2}, timeout=10)
                assert r.status_code == 503
                assert int(r.headers["retry-after"]) >= 1
                assert "busy" in r.json()["detail"]
                assert small.metric("digitgen_requests_rejected_total", reason="queue_full") >= 1
                # the running stream hits its deadline: an error event, and its work stops
                error = next(e for e in events if e[0] != "step")
                assert error[0] == "error" and error[2]["status"] == 504 and "deadline" in error[2]["detail"]
                # the queued one waited past its deadline too
                last = list(sse_events(waiting.iter_lines()))[-1]
                assert last[0] == "error" and "waiting for a batch slot" in last[2]["detail"]
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)
    small.wait_metric("digitgen_queue_depth", lambda v: v == 0)
    assert small.metric("digitgen_trajectories_cancelled_total", reason="deadline") >= 2


def test_post_past_its_deadline_gives_504(small):
    r = httpx.post(small.url + "/generate", params=LONG, timeout=30)
    assert r.status_code == 504
    assert f"deadline of {DEADLINE_S} s" in r.json()["detail"]
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 0)


def test_shutdown_lets_the_open_request_finish(small):
    """SIGINT/SIGTERM: uvicorn stops accepting, the request in flight still
    gets its image, then the process exits cleanly."""
    result = {}

    def request():
        result["r"] = httpx.post(small.url + "/generate", params={"label": 9, "steps": 40}, timeout=30)

    t = threading.Thread(target=request)
    t.start()
    small.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
    assert small.stop() == 0
    t.join(30)
    assert result["r"].status_code == 200 and result["r"].content.startswith(b"\x89PNG")
