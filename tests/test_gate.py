"""Request IDs and access logs, API keys and per-client rate limits, on real
servers (tests/conftest.py)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time

import httpx
import pytest

from conftest import Server, service_command, service_env, free_port, ROOT


def test_request_ids_are_echoed_or_made_and_logged(server, client):
    mine = client.get("/info", headers={"X-Request-ID": "trace-42.a_b"})
    assert mine.headers["x-request-id"] == "trace-42.a_b"
    made = client.get("/info", headers={"X-Request-ID": "no spaces or <tags>"})
    assert made.headers["x-request-id"] != "no spaces or <tags>" and len(made.headers["x-request-id"]) == 32
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
    end = time.monotonic() + 10
    while True:
        lines = [json.loads(l) for l in server.log.read_text().splitlines() if l.startswith('{"time"')]
        if any(r["request_id"] == "trace-42.a_b" for r in lines) or time.monotonic() > end:
            break
        time.sleep(0.05)
    record = next(r for r in lines if r["request_id"] == "trace-42.a_b")
    assert record["method"] == "GET" and record["path"] == "/info" and record["status"] == 200
    assert record["duration_ms"] >= 0 and record["client"] == "127.0.0.1"


@pytest.fixture(scope="module")
def keyed(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed")
    (folder / "keys").write_text("# one key a line\nsecond-key\n")
    srv = Server(tiny_weights, folder / "uvicorn.log", api_keys="first-key", api_keys_file=str(folder / "keys"))
    yield srv
    srv.stop()


def test_api_keys_guard_the_api_but_not_the_probes_or_page(keyed):
    url = keyed.url
    none = httpx.post(url + "/generate", params={"label": 1, "steps": 1})
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in none.json()["detail"]
    wrong = httpx.get(url + "/info", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    for key in ("first-key", "second-key"):  # from the variable and from the file
        ok = httpx.post(url + "/generate", params={"label": 1, "steps": 1}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/", "/static/style.css"):
        assert httpx.get(url + path).status_code == 200, path


def test_a_missing_keys_file_stops_start_up_with_a_clear_error(tiny_weights, tmp_path):
    proc = subprocess.run(service_command(free_port()), cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=service_env(tiny_weights, api_keys_file=str(tmp_path / "missing")))
    assert proc.returncode != 0 and "DIGITGEN_API_KEYS_FILE" in proc.stderr and "Traceback" not in proc.stderr


def test_rate_limit_is_per_client_and_a_429_not_a_503(tiny_weights, tmp_path):
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", rate_limit=0.01, rate_burst=2)  # 2 now, then 1 per 100 s
    try:
        codes = [httpx.get(srv.url + "/info").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = httpx.post(srv.url + "/generate", params={"label": 1, "steps": 1})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 100
        assert "too many requests from this client" in r.json()["detail"]
        assert httpx.get(srv.url + "/healthz").status_code == 200  # probes are never limited
    finally:
        srv.stop()


def test_wrong_keys_are_throttled_per_address_and_a_right_key_elsewhere_is_not(tiny_weights, tmp_path):
    """Wrong keys used to be free: 300 guesses in 0.2 s, 300 401s. Now an
    address gets AUTH_FAILURE_BURST of them, then 429 for every key it
    presents, right or wrong (a 200 there would tell a guesser which guess
    was right), until one more try a minute comes back; counts, not durations."""
    from app.gate import AUTH_FAILURE_BURST, AUTH_FAILURE_RATE
    from test_proxies import can_bind, from_address
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", api_keys="right-key")
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            guesses = [c.get("/info", headers={"Authorization": f"Bearer guess-{i}"})
                       for i in range(AUTH_FAILURE_BURST + 5)]
            assert [r.status_code for r in guesses] == [401] * AUTH_FAILURE_BURST + [429] * 5
            throttled = guesses[-1]
            assert throttled.json()["code"] == "rate_limited" and "wrong API keys" in throttled.json()["detail"]
            assert 1 <= int(throttled.headers["retry-after"]) <= 1 / AUTH_FAILURE_RATE
            assert c.get("/info", headers={"Authorization": "Bearer right-key"}).status_code == 429  # no oracle
            assert c.get("/info").status_code == 401                # no key guesses nothing: still the 401
            assert c.get("/healthz").status_code == 200              # the probes need no key
            openai = c.post("/v1/images/generations", json={"prompt": "7"}, headers={"Authorization": "Bearer x"})
            assert openai.status_code == 429 and "retry-after" in openai.headers and "error" in openai.json()
        if can_bind("127.0.0.2"):  # another address: unaffected
            with from_address("127.0.0.2") as other:
                ok = other.get(srv.url + "/info", headers={"Authorization": "Bearer right-key"})
                assert ok.status_code == 200
                assert other.get(srv.url + "/info", headers={"Authorization": "Bearer guess"}).status_code == 401
    finally:
        srv.stop()


def refused(gate, client: str, authorization: str | None):
    """The gate's answer to one request, as the edge asks for it (on an event loop)."""
    return asyncio.run(gate.check(client, authorization))


def test_the_wrong_key_allowance_comes_back_at_its_rate_and_right_keys_cost_nothing():
    """The gate alone, on a clock the test drives."""
    from app.gate import AUTH_FAILURE_BURST, AUTH_FAILURE_RATE, Gate
    now = [0.0]
    gate = Gate(("right-key",), clock=lambda: now[0])
    codes = lambda auth, n=1: [getattr(refused(gate, "192.0.2.1", auth), "status", 200) for _ in range(n)]
    assert codes("Bearer right-key", 50) == [200] * 50                          # right keys never count
    assert codes("Bearer nope", AUTH_FAILURE_BURST + 1) == [401] * AUTH_FAILURE_BURST + [429]
    assert codes("Bearer right-key") == [429]
    assert refused(gate, "192.0.2.1", "Bearer nope").retry_after == 1 / AUTH_FAILURE_RATE
    now[0] += 1 / AUTH_FAILURE_RATE                                               # one more try comes back
    assert codes("Bearer right-key") == [200] and codes("Bearer nope", 2) == [401, 429]
    assert codes(None) == [401]                                                   # no key: the plain 401
    assert getattr(refused(gate, "192.0.2.2", "Bearer right-key"), "status", 200) == 200  # another address
    # one IPv6 host is given a /64: its addresses share one allowance
    assert [getattr(refused(gate, f"2001:db8::{i:x}", "Bearer nope"), "status", 200)
            for i in range(AUTH_FAILURE_BURST + 1)] == [401] * AUTH_FAILURE_BURST + [429]
    assert getattr(refused(gate, "2001:db8:0:1::1", "Bearer nope"), "status", 200) == 401
