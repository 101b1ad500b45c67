"""Hostile clients, round 3 (real `digitgen serve` processes on loopback):
crowds of idle and trickling sockets cannot lock anyone out, a reader that
stalls is dropped, SIGHUP drains, a taken port fails before the weights
load, settings are held to their ranges, the Host header is one and ours,
OPTIONS and HEAD are answered, and heavy requests give their memory back."""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bench.crowd import Crowd
from conftest import ROOT, Server, free_port, service_command, service_env
from test_service_limits import in_background, wait_until_refused


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return s


def test_a_crowd_of_idle_and_trickling_sockets_locks_nobody_out(tiny_weights, tmp_path):
    """1,200 silent and 100 trickling sockets against the default budget of
    1,000 idle connections, reconnecting whenever they are closed: the probes,
    /metrics and generations are all served (uvicorn's limit_concurrency
    answered every request 503 with 200 silent sockets)."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", header_timeout_s=5)
    crowd = Crowd(srv.port, idle=1200, trickling=100)
    try:
        time.sleep(2)  # the crowd is in
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            codes = [c.get(p).status_code for p in ("/healthz", "/readyz", "/metrics") for _ in range(20)]
            codes += [c.post("/generate", params={"label": i % 10, "steps": 2}).status_code for i in range(10)]
        assert codes == [200] * 70
        assert crowd.reconnects > 0  # the oldest idle ones were closed to make room
    finally:
        crowd.stop()
        srv.stop()


def test_a_reader_that_stalls_is_dropped_and_its_stream_ends(tiny_weights, tmp_path):
    """A client that opens a large stream and reads nothing fills the
    socket's buffers; after DIGITGEN_SEND_TIMEOUT_S of paused writing the
    server drops it, and the stream's request ends (without the timeout it
    was held for as long as the client liked)."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", engine="stand-in", send_timeout_s=1, deadline_s=600)
    try:
        ended = srv.metric("digitgen_http_requests_total", route="/generate/stream", status="200")
        s = connect(srv.port)
        s.sendall(b"GET /generate/stream?label=1&steps=1000&scheduler=ddim&size=512 HTTP/1.1\r\n"
                  b"Host: 127.0.0.1\r\n\r\n")
        srv.wait_metric("digitgen_http_requests_total", lambda v: v == ended + 1, timeout=60,
                        route="/generate/stream", status="200")
        s.close()
        assert "read nothing for 1 s" in srv.log.read_text()
    finally:
        srv.stop()


def test_sighup_drains_like_sigterm(tiny_weights, tmp_path):
    """A closed terminal (SIGHUP) used to kill the server mid-request."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", engine="stand-in", graceful_s=60)
    srv.control("hold")
    response = in_background(lambda: httpx.post(srv.url + "/generate", params={"label": 9, "steps": 5}, timeout=30))
    srv.wait_metric("digitgen_inflight_trajectories", lambda v: v == 1)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until_refused(srv.url)  # draining: no new connections
    srv.control("run")
    r = response()
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert srv.proc.wait(30) == -signal.SIGHUP  # then the signal ends the process, as it would have
    srv.stop()


def test_a_taken_port_fails_at_once_before_the_weights_load(tiny_weights):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(service_command(port), cwd=ROOT, env=service_env(tiny_weights), capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert "digitgen model" not in proc.stderr and "startup complete" not in proc.stderr  # nothing was loaded


@pytest.mark.parametrize("setting, value, says", [
    ("api_keys", " , ", "lists nothing"),                  # was: authentication silently off
    ("body_timeout_s", "0.001", "out of range"),           # was: every request a 408
    ("header_timeout_s", "0", "out of range"),
    ("max_body_bytes", "10", "out of range"),
    ("cors_origins", ",", "lists nothing"),
    ("max_idle_connections", "0", "out of range"),
])
def test_settings_are_held_to_their_ranges(tiny_weights, setting, value, says):
    proc = subprocess.run(service_command(free_port()), cwd=ROOT, env=service_env(tiny_weights, **{setting: value}),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr and setting in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_one_host_header_naming_this_server(server):
    two = raw(server.port, b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert two.startswith(b"HTTP/1.1 400") and b"more than one Host header" in two
    # DNS rebinding: a page on evil.example whose name now resolves here calls "its own" origin
    rebound = httpx.post(server.url + "/generate", params={"label": 1, "steps": 1},
                         headers={"Host": f"evil.example:{server.port}", "Origin": f"http://evil.example:{server.port}"})
    assert rebound.status_code == 400 and "DIGITGEN_ALLOWED_HOSTS" in rebound.json()["detail"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):  # the page, however it is reached
        ok = httpx.post(server.url + "/generate", params={"label": 1, "steps": 1},
                        headers={"Host": host, "Origin": f"http://{host}"})
        assert ok.status_code == 200
    assert httpx.get(server.url + "/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200  # kubelet


def test_options_and_head_are_answered_where_clients_send_them(client):
    r = client.options("/generate")
    assert r.status_code == 204 and r.headers["allow"] == "OPTIONS, POST"
    # GET for a link or <img>; POST for a body (a PNG to start from)
    assert client.options("/generate.gif").headers["allow"] == "GET, OPTIONS, POST"
    assert client.options("/no/such").status_code == 404
    for path in ("/docs", "/openapi.json", "/static/js/main.js"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == 200 == get.status_code and head.content == b"", path


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident size now (VmRSS) or at its highest (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def test_heavy_requests_give_their_memory_back(tiny_weights, tmp_path):
    """Four 64-image grids at 512 px and two 512 px GIFs: once they are
    done, the process's RSS comes back most of the way to where it started
    (glibc's malloc kept the freed heap: RSS stayed at the peak)."""
    srv = Server(tiny_weights, tmp_path / "uvicorn.log")
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            c.post("/generate", params={"label": 1, "steps": 1, "n": 4, "size": 64})  # warm
            time.sleep(0.5)
            before = rss_mb(srv.proc.pid)
            for i in range(4):
                assert c.post("/generate", params={"label": i, "steps": 1, "n": 64, "size": 512}).status_code == 200
            for i in range(2):
                assert c.get("/generate.gif", params={"label": i, "steps": 49, "size": 512,
                                                      "frames": "xt"}).status_code == 200
            # the worker gives memory back when it goes idle, on its own thread: wait for that
            # (up to a deadline no machine needs), never for a fixed time a slow one would overrun
            peak = rss_mb(srv.proc.pid, "VmHWM")
            deadline = time.monotonic() + 30
            while (after := rss_mb(srv.proc.pid)) - before > (peak - before) / 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        print(f"RSS before {before:.1f} MB, peak {peak:.1f} MB, after {after:.1f} MB")
        # they took tens of MB; at least half of it is given back (it all stayed before)
        assert peak > before + 20 and after - before <= (peak - before) / 2, (before, peak, after)
    finally:
        srv.stop()
