"""Request IDs and access logs, API keys and per-client rate limits, on real
servers (tests/conftest.py)."""
from __future__ import annotations

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
    for path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js"):
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
