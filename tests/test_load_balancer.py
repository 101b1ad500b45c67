"""Replicas behind the real load balancer: Debian's HAProxy with
deploy/haproxy/haproxy.cfg (as deploy/local/cluster.py runs it), in front of
real `digitgen serve` processes on loopback. Skipped where haproxy is not
installed (scripts/test.sh installs it as root)."""
from __future__ import annotations

import queue
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Server, free_port

sys.path.insert(0, str(ROOT / "deploy" / "local"))
from cluster import LoadBalancer, haproxy_binary  # noqa: E402

pytestmark = pytest.mark.skipif(haproxy_binary() is None,
                                reason="haproxy is not installed (apt-get install haproxy; scripts/test.sh does it)")
LONG = {"label": 2, "steps": 1000, "scheduler": "ddim"}


def behind(servers: list[Server], tmp_path: Path) -> LoadBalancer:
    return LoadBalancer([("127.0.0.1", s.port) for s in servers], free_port(), tmp_path / "haproxy.log",
                        folder=tmp_path)


@pytest.fixture
def two(tiny_weights, tmp_path):
    servers = [Server(tiny_weights, tmp_path / f"r{i}.log", trusted_proxies="127.0.0.1") for i in range(2)]
    lb = behind(servers, tmp_path)
    yield lb, servers
    lb.stop()
    for s in servers:
        s.stop()


def test_a_seeded_request_gives_the_same_bytes_through_the_balancer_as_directly(two):
    lb, servers = two
    for params in ({"label": 4, "seed": 77, "steps": 5}, {"label": 2, "seed": 3, "n": 3, "model": "fast"}):
        through = [httpx.post(lb.url + "/generate", params=params, timeout=60) for _ in range(4)]
        direct = httpx.post(servers[0].url + "/generate", params=params, timeout=60)
        assert direct.status_code == 200 and all(r.content == direct.content for r in through)
    # both replicas served, and each saw the real client in X-Forwarded-For (trusted: the balancer)
    served = [s.metric("digitgen_http_requests_total", route="/generate", method="POST", status="200")
              for s in servers]
    assert all(n >= 1 for n in served), served


def test_a_refusal_by_a_full_replica_is_retried_on_another_and_never_reaches_the_client(tiny_weights, tmp_path):
    full = Server(tiny_weights, tmp_path / "full.log", engine="tiny", max_batch=1, max_queue=1,
                  trusted_proxies="127.0.0.1")
    free = Server(tiny_weights, tmp_path / "free.log", trusted_proxies="127.0.0.1")
    lb = behind([full, free], tmp_path)
    pool = ThreadPoolExecutor(2)
    try:
        full.control("hold")   # its engine stops: one request in the batch, one queued, then it refuses
        held = [pool.submit(httpx.post, full.url + "/generate", params=LONG, timeout=60) for _ in range(2)]
        full.wait_metric("digitgen_queue_depth", lambda v: v == 1)
        assert httpx.post(full.url + "/generate", params={"label": 1, "steps": 2}).status_code == 503
        before = full.metric("digitgen_http_requests_total", route="/generate", method="POST", status="503")
        answers = [httpx.post(lb.url + "/generate", params={"label": 1, "steps": 2, "seed": i}, timeout=60)
                   for i in range(12)]
        assert [r.status_code for r in answers] == [200] * 12
        # some of them were refused by the full replica first: the balancer retried those elsewhere
        assert full.metric("digitgen_http_requests_total", route="/generate", method="POST", status="503") > before
        # a body is replayed too (the page and the edit API POST JSON)
        r = httpx.post(lb.url + "/generate", json={"label": 3, "steps": 2, "seed": 1, "format": "json"}, timeout=60)
        assert r.status_code == 200 and r.json()["images"]
    finally:
        full.control("run")
        for f in held:
            f.result(60)
        pool.shutdown()
        lb.stop()
        full.stop()
        free.stop()


def test_an_event_stream_arrives_frame_by_frame_through_the_balancer(tiny_weights, tmp_path):
    """The engine takes one step only when the test says so: a proxy that
    buffered the stream would deliver nothing until the run ended."""
    srv = Server(tiny_weights, tmp_path / "r.log", engine="tiny", trusted_proxies="127.0.0.1")
    lb = behind([srv], tmp_path)
    events: queue.Queue = queue.Queue()

    def read():
        with httpx.stream("GET", lb.url + "/generate/stream", params={"label": 5, "steps": 4, "seed": 2},
                          timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("event:"):
                    events.put(line.split(":", 1)[1].strip())
    try:
        srv.control("hold")
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert events.get(timeout=20) == "start"   # sent before any step
        for _ in range(4):
            assert events.empty()
            srv.control("step 1")
            assert events.get(timeout=20) == "step"  # each step's frame as soon as it is computed
        srv.control("run")
        assert events.get(timeout=20) == "done"
        reader.join(20)
    finally:
        srv.control("run")
        lb.stop()
        srv.stop()


def test_sigterm_to_one_replica_under_load_loses_no_request(tiny_weights, tmp_path):
    servers = [Server(tiny_weights, tmp_path / f"r{i}.log", trusted_proxies="127.0.0.1", graceful_s=10)
               for i in range(3)]
    lb = behind(servers, tmp_path)
    done: list[int] = []
    lock = threading.Lock()
    sent = threading.Event()

    def client(k: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=lb.url, timeout=60) as c:
            for i in range(15):
                codes.append(c.post("/generate", params={"label": i % 10, "steps": 4, "seed": 100 * k + i}).status_code)
                with lock:
                    done.append(1)
                    if len(done) == 15:
                        sent.set()
        return codes
    try:
        with ThreadPoolExecutor(4) as pool:
            results = [pool.submit(client, k) for k in range(4)]
            assert sent.wait(120)
            servers[0].proc.send_signal(signal.SIGTERM)   # a rolling update takes it out under load
            codes = [c for f in results for c in f.result(180)]
        assert codes == [200] * 60
        assert servers[0].proc.wait(30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
        # the others kept serving, and took its share after it left
        assert all(s.metric("digitgen_http_requests_total", route="/generate", method="POST", status="200") > 0
                   for s in servers[1:])
    finally:
        lb.stop()
        for s in servers:
            s.stop()
