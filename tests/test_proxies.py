"""Who the client is: the socket's peer, unless that peer is one of
DIGITGEN_TRUSTED_PROXIES, whose X-Forwarded-For / Forwarded then names it by
the right-most untrusted hop (app/gate.py). On real servers (the rate limit
and the access log see the same client) and on the rule itself."""
from __future__ import annotations

import json
import socket
import subprocess
import time

import httpx
import pytest

from app.config import ConfigError, Settings
from app.proxies import TrustedProxies, forwarded_hops
from conftest import ROOT, Server, free_port, service_command, service_env

ONCE = dict(rate_limit=0.01, rate_burst=1)  # one request now, the next in 100 s: counts, not durations


def can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


needs_second_loopback = pytest.mark.skipif(not can_bind("127.0.0.2"), reason="127.0.0.2 is not a loopback here")


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x on Linux is loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def logged_clients(srv: Server, request_ids: list[str]) -> dict[str, str]:
    """request id -> the client its access line names (waiting for the lines to be written)."""
    end = time.monotonic() + 10
    while True:
        lines = [json.loads(l) for l in srv.log.read_text().splitlines() if l.startswith('{"time"')]
        found = {r["request_id"]: r["client"] for r in lines if r["request_id"] in request_ids}
        if len(found) == len(request_ids) or time.monotonic() > end:
            return found
        time.sleep(0.05)


def get(srv: Server, rid: str, client: httpx.Client | None = None, **headers) -> int:
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return (client or httpx).get(srv.url + "/info", headers={"X-Request-ID": rid, **headers}).status_code


@pytest.fixture(scope="module")
def untrusting(tiny_weights, tmp_path_factory):
    srv = Server(tiny_weights, tmp_path_factory.mktemp("untrusting") / "uvicorn.log", **ONCE)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def behind_proxy(tiny_weights, tmp_path_factory):
    srv = Server(tiny_weights, tmp_path_factory.mktemp("proxied") / "uvicorn.log",
                 trusted_proxies="127.0.0.1, 10.0.0.0/8", **ONCE)
    yield srv
    srv.stop()


def test_a_spoofed_forwarded_address_from_an_untrusted_peer_changes_nothing(untrusting):
    """By default no one is trusted: a new X-Forwarded-For (or Forwarded) a
    request does not make a new client (it made 20 of 20 pass a 1/s limit on
    uvicorn's defaults), and the access log names the peer."""
    codes = [get(untrusting, f"spoof-{i}", x_forwarded_for=f"198.51.100.{i}") for i in range(4)]
    codes.append(get(untrusting, "spoof-fwd", forwarded='for="[2001:db8::1]:4711"'))
    assert codes == [200, 429, 429, 429, 429]
    clients = logged_clients(untrusting, [f"spoof-{i}" for i in range(4)] + ["spoof-fwd"])
    assert set(clients.values()) == {"127.0.0.1"}, clients


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(behind_proxy):
    assert get(behind_proxy, "a-1", x_forwarded_for="203.0.113.1") == 200
    assert get(behind_proxy, "a-2", x_forwarded_for="203.0.113.1") == 429   # the same client, limited
    assert get(behind_proxy, "b-1", x_forwarded_for="203.0.113.2") == 200   # another client, its own bucket
    clients = logged_clients(behind_proxy, ["a-1", "a-2", "b-1"])
    assert clients == {"a-1": "203.0.113.1", "a-2": "203.0.113.1", "b-1": "203.0.113.2"}


def test_the_client_is_the_right_most_untrusted_hop(behind_proxy):
    """The client sent `6.6.6.6`; 10.1.2.3 (a trusted proxy) appended the
    client it saw: the spoofed left-most entry is not the client, nor is
    writing a new one a new bucket."""
    assert get(behind_proxy, "c-1", x_forwarded_for="198.51.100.7, 10.1.2.3") == 200
    assert get(behind_proxy, "c-2", x_forwarded_for="6.6.6.6, 198.51.100.7, 10.1.2.3") == 429
    assert get(behind_proxy, "c-3", x_forwarded_for="6.6.6.7,198.51.100.7", forwarded="for=1.1.1.1") == 429
    assert get(behind_proxy, "d-1", forwarded='for=192.0.2.9, for="[2001:db8::17]:4711";proto=https') == 200
    assert get(behind_proxy, "e-1", x_forwarded_for="10.0.0.1, 10.0.0.2") == 200   # every hop trusted: left-most
    assert get(behind_proxy, "f-1", x_forwarded_for="198.51.100.8, unknown") == 200  # the proxy that wrote it
    clients = logged_clients(behind_proxy, ["c-1", "c-2", "c-3", "d-1", "e-1", "f-1"])
    assert clients == {"c-1": "198.51.100.7", "c-2": "198.51.100.7", "c-3": "198.51.100.7",
                       "d-1": "2001:db8::17", "e-1": "10.0.0.1", "f-1": "127.0.0.1"}


@needs_second_loopback
def test_a_peer_that_is_not_a_trusted_proxy_is_its_own_client(behind_proxy):
    with from_address("127.0.0.2") as other:
        codes = [get(behind_proxy, f"g-{i}", other, x_forwarded_for=f"203.0.113.{50 + i}") for i in range(2)]
    assert codes == [200, 429]
    assert set(logged_clients(behind_proxy, ["g-0", "g-1"]).values()) == {"127.0.0.2"}


@pytest.mark.parametrize("value, says", [
    ("10.0.0/8", "'10.0.0/8' is not an IP address or network"),
    ("127.0.0.1, localhost", "'localhost' is not an IP address or network"),
    ("10.0.0.1/8", "'10.0.0.1/8' has host bits set: the network is 10.0.0.0/8"),
    (" , ", "lists nothing"),
])
def test_a_bad_trusted_proxy_setting_is_a_config_error(value, says):
    with pytest.raises(ConfigError, match="trusted_proxies|TRUSTED_PROXIES") as e:
        Settings.from_env({"DIGITGEN_TRUSTED_PROXIES": value})
    assert says in str(e.value)


def test_a_bad_trusted_proxy_stops_start_up_with_one_line(tiny_weights):
    proc = subprocess.run(service_command(free_port()), cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=service_env(tiny_weights, trusted_proxies="127.0.0.1,10.0.0/8"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DIGITGEN_TRUSTED_PROXIES: '10.0.0/8' is not an IP address" in lines[0], proc.stderr


def h(**headers) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


@pytest.mark.parametrize("peer, headers, client", [
    ("127.0.0.1", h(x_forwarded_for="203.0.113.1"), "203.0.113.1"),
    ("192.0.2.1", h(x_forwarded_for="203.0.113.1"), "192.0.2.1"),                 # untrusted peer: ignored
    ("127.0.0.1", h(), "127.0.0.1"),                                                # nothing forwarded
    ("127.0.0.1", h(x_forwarded_for="1.1.1.1, 203.0.113.1, 10.9.9.9"), "203.0.113.1"),
    ("127.0.0.1", [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"203.0.113.1")], "203.0.113.1"),
    ("127.0.0.1", h(x_forwarded_for="203.0.113.1:5555"), "203.0.113.1"),
    ("127.0.0.1", h(x_forwarded_for="[2001:db8::1]:80"), "2001:db8::1"),
    ("127.0.0.1", h(x_forwarded_for="::ffff:203.0.113.1"), "203.0.113.1"),
    ("::ffff:127.0.0.1", h(x_forwarded_for="203.0.113.1"), "203.0.113.1"),         # a dual-stack socket's peer
    ("127.0.0.1", h(x_forwarded_for="10.0.0.1, 10.0.0.2"), "10.0.0.1"),           # all trusted: the left-most
    ("127.0.0.1", h(x_forwarded_for="203.0.113.1, 10.0.0.2, garbage"), "127.0.0.1"),
    ("127.0.0.1", h(x_forwarded_for="203.0.113.1, , 10.0.0.2"), "10.0.0.2"),      # 10.0.0.2 wrote the blank
    ("127.0.0.1", h(x_forwarded_for=""), "127.0.0.1"),
    ("127.0.0.1", h(forwarded='for=198.51.100.1;proto=https, For="[2001:db8::2]:8"'), "2001:db8::2"),
    ("127.0.0.1", h(forwarded="for=_hidden"), "127.0.0.1"),
    ("127.0.0.1", h(forwarded="proto=https"), "127.0.0.1"),
    ("127.0.0.1", h(x_forwarded_for="203.0.113.1", forwarded="for=198.51.100.1"), "203.0.113.1"),
])
def test_the_right_most_untrusted_rule(peer, headers, client):
    proxies = TrustedProxies(Settings(trusted_proxies="127.0.0.1, 10.0.0.0/8").trusted_proxy_list)
    assert proxies.client_of((peer, 40000), headers)[0] == client


def test_no_trusted_proxies_reads_nothing():
    assert not TrustedProxies(())
    assert TrustedProxies(()).client_of(("127.0.0.1", 1), h(x_forwarded_for="203.0.113.1")) == ("127.0.0.1", 1)
    assert forwarded_hops(h(forwarded="for=a;by=b, for=c")) == ["a", "c"]
