"""What an unfriendly client sends gets a clear 4xx, never a 500 or a hang,
and never an echo of its whole input (real server on loopback)."""
from __future__ import annotations

import socket
import time

import httpx
import pytest

from conftest import Server

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("raw, field", [
    (b'{"label": 1, "guidance_scale": NaN}', "guidance_scale"),
    (b'{"label": 1, "guidance_scale": Infinity}', "guidance_scale"),
    (b'{"label": 1, "guidance_scale": -Infinity}', "guidance_scale"),
    (b'{"label": 1, "seed": 1e400}', "seed"),
    (b'{"label": NaN}', "label"),
])
def test_non_finite_json_numbers_are_a_422(client, raw, field):
    r = client.post("/generate", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"] and r.json()["errors"][0]["loc"][-1] == field


@pytest.mark.parametrize("value", ["5.0", "+5", "05", "1_000", " 5", "5 ", "0x5", "٥"])
def test_query_numbers_are_read_strictly(client, value):
    r = client.post("/generate", params={"label": value, "steps": 2})
    assert r.status_code == 422 and "label" in r.json()["detail"], r.text


def test_query_decimal_guidance_is_plain_decimal(client):
    assert client.post("/generate", params={"label": 1, "steps": 2, "guidance_scale": "1.5"}).status_code == 200
    for bad in ("1e0", "nan", "inf", "+1", "1.", ".5"):
        r = client.post("/generate", params={"label": 1, "steps": 2, "guidance_scale": bad})
        assert r.status_code == 422 and "guidance_scale" in r.json()["detail"], bad


def test_repeated_parameters_must_agree(client):
    r = client.post("/generate?label=5&label=6&steps=2")
    assert r.status_code == 422 and "label is given twice" in r.json()["detail"]
    assert client.post("/generate?label=5&label=5&steps=2").status_code == 200


@pytest.mark.parametrize("header, words", [
    ("9" * 5000 + "-1", "must be an id this stream sent"),   # the documented pattern, checked before any int()
    ("abc", "must be an id this stream sent"),
    ("-1-2", "must be an id this stream sent"),
    ("4294967296-1", "is not a seed"),   # past 2^32 - 1
    ("5-1001", "step 1001 of a 8-step run"),  # the step is checked against the run, whatever its sampler's limit
    ("5-9", "step 9 of a 8-step run"),
])
def test_last_event_id_is_validated_like_every_other_input(client, header, words):
    r = client.get("/generate/stream", params={"label": 1, "steps": 8}, headers={"Last-Event-ID": header})
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"] and r.json()["errors"][0]["loc"] == ["header", "last-event-id"]
    assert len(r.content) < 2000


def test_large_inputs_are_refused_and_never_echoed_whole(client):
    big = client.post("/generate", json={"label": "x" * 2_000_000})
    assert big.status_code == 413 and "1048576 bytes" in big.json()["detail"]
    mid = client.post("/generate", json={"label": "x" * 50_000})
    assert mid.status_code == 422 and len(mid.content) < 2000 and "50000 characters" in mid.text

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        for _ in range(1100):
            yield b"x" * 1024
    r = client.post("/generate", content=chunks(), headers=JSON)
    assert r.status_code == 413


def test_a_body_that_does_not_arrive_gets_408(tiny_weights, tmp_path):
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", body_timeout_s=1)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"label\"")
            t0 = time.monotonic()
            reply = b""
            while b"within" not in reply:  # the head and the body may arrive in two reads
                part = s.recv(4096)
                assert part, reply
                reply += part
            assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in reply
            assert time.monotonic() - t0 < 25
    finally:
        srv.stop()


def test_a_head_that_does_not_arrive_gets_408_and_the_connection_closes(tiny_weights, tmp_path):
    """uvicorn has no deadline on a request's head: a client that sends
    nothing, or trickles its headers, would hold a connection for ever."""
    srv = Server(tiny_weights, tmp_path / "serve.log", header_timeout_s=1)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as silent, \
                socket.create_connection(("127.0.0.1", srv.port), timeout=30) as trickle:
            trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
            for _ in range(150):  # a header byte at a time, never the blank line that ends the head
                try:
                    trickle.sendall(b"X")
                except OSError:  # closed by the server
                    break
                time.sleep(0.1)
            reply = _read_to_close(trickle)
            assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in reply, reply
            reply = _read_to_close(silent)
            assert reply.startswith(b"HTTP/1.1 408"), reply
        # a head that arrives whole is served as ever, and the connection stays usable
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").status_code == 200 and c.get("/healthz").status_code == 200
    finally:
        srv.stop()



def test_a_head_over_16_kib_gets_431_and_the_connection_closes(tiny_weights, tmp_path):
    """llhttp does not bound a request's headers; app/connection.py does."""
    srv = Server(tiny_weights, tmp_path / "serve.log")
    try:
        for size, sent_whole in ((17_000, True), (40_000, False)):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
                head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
                try:
                    if sent_whole:
                        s.sendall(head)
                    else:  # in pieces: refused before the head is complete
                        for i in range(0, len(head) - 4, 4096):
                            s.sendall(head[i:i + 4096])
                except OSError:  # closed by the server part-way
                    pass
                reply = _read_to_close(s)
                assert reply.startswith(b"HTTP/1.1 431") and b"over 16384 bytes" in reply, reply[:200]
        with httpx.Client(base_url=srv.url) as c:  # just under the cap is served
            assert c.get("/healthz", headers={"x-big": "a" * 15_000}).status_code == 200
    finally:
        srv.stop()

def _read_to_close(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            part = s.recv(4096)
        except ConnectionResetError:
            return out
        if not part:
            return out
        out += part


@pytest.mark.parametrize("path", ["/", "/info", "/healthz", "/readyz", "/metrics"])
def test_head_on_get_endpoints(client, path):
    get, head = client.get(path), client.head(path)
    assert head.status_code == 200 == get.status_code and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_generating_gets_do_not_take_head(client):
    assert client.head("/generate.gif", params={"label": 1}).status_code == 405


def test_security_headers(client):
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for r in (page, client.get("/info"), client.post("/generate", params={"label": 1, "steps": 1})):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"


def test_cross_origin_requests_are_refused_unless_allowed(client, server, tiny_weights, tmp_path):
    evil = client.post("/generate", params={"label": 1, "steps": 1}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "DIGITGEN_CORS_ORIGINS" in evil.json()["detail"]
    same = client.post("/generate", params={"label": 1, "steps": 1},
                       headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert same.status_code == 200
    srv = Server(tiny_weights, tmp_path / "uvicorn.log", cors_origins="https://digits.example")
    try:
        ok = httpx.post(srv.url + "/generate", params={"label": 1, "steps": 1},
                        headers={"Origin": "https://digits.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://digits.example"
        assert "x-seed" in ok.headers["access-control-expose-headers"]
        pre = httpx.options(srv.url + "/generate", headers={"Origin": "https://digits.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200
        assert httpx.post(srv.url + "/generate", params={"label": 1, "steps": 1},
                          headers={"Origin": "http://evil.example"}).status_code == 403
    finally:
        srv.stop()


def test_a_request_costing_more_than_the_server_takes_is_a_422(client):
    r = client.post("/generate", params={"label": 8, "steps": 1000, "scheduler": "ddpm", "n": 64,
                                         "guidance_scale": 2})
    assert r.status_code == 422
    body = r.json()
    assert body["errors"][0]["loc"] == ["query", "n"] and "128,000 UNet rows" in body["detail"]
    assert "at most 8,192" in body["detail"]
    one = client.post("/generate", params={"label": 8, "steps": 1000, "scheduler": "ddpm", "n": 1,
                                           "guidance_scale": 2})  # 2,000 rows: within the cap
    assert one.status_code == 200


def test_a_gif_past_the_pixel_cap_is_a_422(client):
    r = client.get("/generate.gif", params={"label": 8, "steps": 1000, "scheduler": "ddim", "every": 1, "size": 512})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"][-1] == "every" and "1001 frames of 512x512" in r.json()["detail"]
