"""Limits that hold across replicas (DIGITGEN_REDIS_URL, app/gate.py): the
rate limit, the key quota and the wrong-key throttle in one real Redis
(Debian's redis-server, started here on a free port with nothing saved),
shared by real `digitgen serve` replicas, directly and behind HAProxy; and
while Redis is down or stopped, each replica serves by its own limits and
says so in /metrics until it is back. Counts, never durations: the rates are
so low (one token in 1,000 s) that nothing refills during a test."""
from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.gate import Gate, Windows
from app.limits_store import LIMITS_SHA, SharedLimits, read_reply
from conftest import ROOT, Server, free_port, service_command, service_env
from test_gate import refused

SHARED = dict(rate_limit=0.001, rate_burst=5)  # 5 now, the sixth in 1,000 s


class RedisServer:
    """redis-server on 127.0.0.1:port, nothing written to disk; start() again on the same port after kill()."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = self.folder / f"redis-{self.port}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have left it stopped
            self.kill()


@pytest.fixture
def redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; scripts/test.sh does it)")
    srv = RedisServer(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def replicas(tiny_weights, tmp_path, redis, request):
    """Replicas sharing `redis`, with the settings the test gives by indirect parametrisation."""
    count, settings = request.param
    servers = []
    try:
        for i in range(count):
            servers.append(Server(tiny_weights, tmp_path / f"r{i}.log", redis_url=redis.url, **settings))
        yield servers
    finally:
        for s in servers:
            s.stop()


def statuses(servers: list[Server], n: int, path: str = "/info", **headers) -> list[int]:
    """n GETs, one replica after another."""
    return [httpx.get(servers[i % len(servers)].url + path, headers=headers, timeout=30).status_code
            for i in range(n)]


def log_lines(server: Server, text: str) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if text in line]


@pytest.mark.parametrize("replicas", [(2, SHARED)], indirect=True)
def test_two_replicas_share_one_burst(replicas):
    codes = statuses(replicas, 20)
    assert set(codes) <= {200, 429}
    assert 4 <= codes.count(200) <= 6, codes  # one replica's burst of 5; each its own would admit 10
    assert all(s.metric("digitgen_limits_store_up") == 1 for s in replicas)
    assert all(s.metric("digitgen_limits_local_decisions_total") == 0 for s in replicas)
    limited = httpx.get(replicas[1].url + "/info")
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 1000


def test_three_replicas_behind_haproxy_admit_what_one_would(tiny_weights, tmp_path, redis):
    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    from cluster import LoadBalancer, haproxy_binary
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; scripts/test.sh does it)")
    servers = [Server(tiny_weights, tmp_path / f"r{i}.log", redis_url=redis.url, trusted_proxies="127.0.0.1",
                      **SHARED) for i in range(3)]
    lb = None
    try:
        lb = LoadBalancer([("127.0.0.1", s.port) for s in servers], free_port(), tmp_path / "haproxy.log",
                          folder=tmp_path)
        with httpx.Client(base_url=lb.url, timeout=30) as c:
            codes = [c.get("/info").status_code for _ in range(24)]
        assert set(codes) <= {200, 429}
        assert 4 <= codes.count(200) <= 6, codes  # per replica it would be up to 15
        served = [sum(s.metric("digitgen_http_requests_total", route="/info", method="GET", status=code)
                      for code in (200, 429)) for s in servers]
        assert sum(served) == 24 and sum(n > 0 for n in served) >= 2, served  # it did spread them
    finally:
        if lb is not None:
            lb.stop()
        for s in servers:
            s.stop()


@pytest.mark.parametrize("replicas", [(2, dict(api_keys="k1,k2", key_quota=3))], indirect=True)
def test_a_key_quota_is_shared_across_replicas(replicas):
    k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    assert statuses(replicas, 3, **k1) == [200, 200, 200]
    for srv in replicas:  # the fourth request of the day, on either replica
        r = httpx.get(srv.url + "/info", headers=k1)
        assert r.status_code == 429 and r.json()["code"] == "quota_exceeded", r.text
        assert 1 <= int(r.headers["retry-after"]) <= 86_400 and "DIGITGEN_KEY_QUOTA" in r.json()["detail"]
    assert statuses(replicas, 2, **k2) == [200, 200]  # another key has its own
    assert httpx.get(replicas[0].url + "/healthz").status_code == 200  # the probes count for nothing


@pytest.mark.parametrize("replicas", [(2, SHARED)], indirect=True)
def test_with_redis_killed_each_replica_serves_by_its_own_limits_until_it_is_back(replicas, redis):
    assert statuses(replicas, 2) == [200, 200]  # shared: 3 of the burst left
    redis.kill()
    for srv in replicas:
        srv.wait_metric("digitgen_limits_store_up", lambda v: v == 0, timeout=30)
    codes = statuses(replicas, 14)
    assert set(codes) <= {200, 429} and codes.count(200) == 10, codes  # each its own burst of 5: open, not closed
    for srv in replicas:
        assert srv.metric("digitgen_limits_store_fallbacks_total") == 1
        assert srv.metric("digitgen_limits_local_decisions_total") == 7
        assert len(log_lines(srv, "is down (")) == 1  # one line when it went, none a request
    redis.start()  # the same port, empty
    for srv in replicas:
        srv.wait_metric("digitgen_limits_store_up", lambda v: v == 1, timeout=60)
    end = time.monotonic() + 20
    while not all(log_lines(s, "is back: the limits") for s in replicas) and time.monotonic() < end:
        time.sleep(0.05)
    assert all(len(log_lines(s, "is back: the limits")) == 1 for s in replicas)
    codes = statuses(replicas, 12)
    assert 4 <= codes.count(200) <= 6, codes  # shared again: one burst between them
    assert all(s.metric("digitgen_limits_local_decisions_total") == 7 for s in replicas)


@pytest.mark.parametrize("replicas", [(1, SHARED)], indirect=True)
def test_a_stopped_redis_costs_a_request_its_timeout_not_a_hang(replicas, redis):
    """SIGSTOP: connections are accepted and nothing answers, the slow store's shape."""
    srv = replicas[0]
    assert statuses(replicas, 1) == [200]
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        r = httpx.get(srv.url + "/info", timeout=30)
        assert r.status_code == 200 and time.monotonic() - start < 10  # 50 ms, then the local bucket
        assert srv.metric("digitgen_limits_store_up") == 0
        assert statuses(replicas, 3) == [200, 200, 200]
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    srv.wait_metric("digitgen_limits_store_up", lambda v: v == 1, timeout=60)


def test_a_bad_redis_url_stops_start_up_with_one_clear_line(tiny_weights):
    for url, said in (("http://127.0.0.1:6379", "is not a redis:// URL"), ("redis://:secret@h:x", "port"),
                      ("redis://127.0.0.1/zero", "database")):
        proc = subprocess.run(service_command(free_port()), cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=service_env(tiny_weights, redis_url=url))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "DIGITGEN_REDIS_URL" in lines[0] and said in lines[0] and "secret" not in lines[0], lines


# -- the gate alone ---------------------------------------------------------------------
def test_the_quota_is_per_key_per_utc_day_in_process():
    now = [86_400 * 20_000 + 100.0]  # 100 s into a day
    gate = Gate(("k1", "k2"), rate=0.001, burst=10, quota=3, wall_clock=lambda: now[0])
    codes = lambda key, n=1: [getattr(refused(gate, "192.0.2.1", f"Bearer {key}"), "code", 200) for _ in range(n)]
    assert codes("k1", 4) == [200, 200, 200, "quota_exceeded"] and codes("k2") == [200]
    assert refused(gate, "192.0.2.1", "Bearer k1").retry_after == 86_300  # the end of the day
    now[0] += 86_300
    assert codes("k1") == [200]
    # a request refused by its rate uses none of its quota, and one refused by its quota none of its rate
    tight = Gate(rate=0.001, burst=2, quota=3, wall_clock=lambda: now[0])
    assert [getattr(refused(tight, "192.0.2.9", None), "code", 200) for _ in range(4)] == \
        [200, 200, "rate_limited", "rate_limited"]
    assert tight.quota.wait("ip:192.0.2.9") == 0 and isinstance(tight.quota, Windows)


def test_an_unreachable_store_decides_at_once_by_the_local_limits():
    address = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0").redis_address  # nothing listens there
    fallbacks, local = [], []

    async def run():
        store = SharedLimits(address, 0.05, on_fallback=lambda: fallbacks.append(1), on_local=lambda: local.append(1))
        gate = Gate(rate=0.001, burst=2, store=store)
        store.start()
        start = time.monotonic()
        codes = [getattr(await gate.check("192.0.2.1", None), "status", 200) for _ in range(3)]
        took = time.monotonic() - start
        await asyncio.wait_for(store._tried.wait(), 10)  # the first attempt has failed (it may outlast a check)
        store.close()
        return codes, took, store.up
    codes, took, up = asyncio.run(run())
    assert codes == [200, 200, 429] and not up and took < 5
    assert fallbacks == [1] and local == [1, 1, 1]


def test_a_store_slower_than_its_timeout_is_down_on_one_line():
    """A stand-in Redis that loads the script at once and runs it in 0.2 s,
    four times the timeout: after the first such call no request waits for
    it, and the probe (the script itself) never brings it back."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("uvicorn.error.digitgen.limits")
    logger.addHandler(handler)

    async def slow_redis(reader, writer):
        try:
            while True:
                command = await read_reply(reader)
                if command[0].upper() == b"SCRIPT":
                    writer.write(b"$40\r\n" + LIMITS_SHA.encode() + b"\r\n")
                else:
                    await asyncio.sleep(0.2)
                    writer.write(b"*2\r\n:0\r\n:0\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):  # closed, or the test is over
            writer.close()

    async def run():
        server = await asyncio.start_server(slow_redis, "127.0.0.1", 0)
        address = Settings(redis_url=f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}").redis_address
        local: list[int] = []
        store = SharedLimits(address, 0.05, on_local=lambda: local.append(1))
        gate = Gate(rate=0.001, burst=3, store=store)
        store.start()
        codes = []
        for _ in range(40):
            codes.append(getattr(await gate.check("192.0.2.1", None), "status", 200))
            await asyncio.sleep(0.01)
        up = store.up
        store.close()
        server.close()
        return codes, local, up
    try:
        codes, local, up = asyncio.run(run())
    finally:
        logger.removeHandler(handler)
    assert codes == [200] * 3 + [429] * 37 and not up  # the local bucket of 3
    assert len(local) == 40  # none was the store's: each in time was too late
    assert len([line for line in lines if "is down" in line]) == 1 and not [l for l in lines if "is back:" in l], lines
