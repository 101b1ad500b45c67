"""Who the client is, and whether it may go on: the edge's API keys and
per-client rate (app/edge.py, checks 3 and 4), and the address both are
counted against.

The client's address is the socket's peer. Only when that peer is one of
DIGITGEN_TRUSTED_PROXIES (IP addresses and networks; default none) is it read
from the request instead, by uvicorn's rule (ProxyHeadersMiddleware): each
proxy appends the address it saw to X-Forwarded-For, so walking the list from
the right, past every trusted proxy, the first hop that is not one is the
client; everything left of it the client wrote itself. Forwarded (RFC 7239,
its `for=` values) is read the same way when there is no X-Forwarded-For. A
hop that is not an address (`unknown`, an obfuscated name, an empty or
malformed entry) is no one we could tell apart: the trusted proxy that wrote
it stands for its client. When every hop is trusted, the left-most is the
client. uvicorn's own reading of these headers is off (`serve`'s
proxy_headers=False, app/main.py): from 127.0.0.1 it believed any local
client's X-Forwarded-For, which escaped the rate limit and named the access
log's client.

API keys: a request that presents a key that is not one of the server's
(any Authorization header but a right Bearer key) is a failed
authentication, counted against its address: AUTH_FAILURE_BURST of them,
then one more every 1 / AUTH_FAILURE_RATE s. Past that, every request from
that address that presents a key is a 429 with Retry-After *before* its key
is compared, right key or wrong: answering a right key 200 there would tell
a guesser which guess was right at full speed. A request with no key at all
is a 401 that counts for nothing (it guesses nothing); other addresses, and
this one once its allowance is back, are unaffected. IPv6 addresses are
counted by their /64, the block one host is given.
"""
from __future__ import annotations

import functools
import hmac
import ipaddress
import math
import threading
import time

from .errors import Problem

AUTH_FAILURE_BURST = 10       # wrong keys an address may present before it is throttled
AUTH_FAILURE_RATE = 1 / 60    # then one more a minute
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBuckets:
    """rate tokens a second, at most `burst` saved up, one bucket per client."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_clients: int = 10_000):
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if the client may go now (a token is taken), else the seconds until it may."""
        return self._take(client, take=True)

    def wait(self, client: str) -> float:
        """What take() would answer, taking nothing."""
        return self._take(client, take=False)

    def _take(self, client: str, take: bool) -> float:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                if take:
                    self._buckets[client] = (tokens - 1, now)
                    if len(self._buckets) > self.max_clients:  # forget the oldest, full buckets first
                        for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:len(self._buckets) // 2]:
                            del self._buckets[key]
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


class TrustedProxies:
    """The client's address: the peer's, or, from a trusted proxy, the right-most untrusted hop."""

    def __init__(self, networks: tuple[Network, ...] = ()):
        self.networks = tuple(networks)
        self.trusts = functools.lru_cache(maxsize=4096)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _trusts(self, host: str) -> bool:
        ip = parse_ip(host)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.networks)

    def client_of(self, peer: tuple[str, int] | None, headers) -> tuple[str, int] | None:
        """(host, port) of the client, the peer unless it is a trusted proxy that says otherwise."""
        if not self.networks or not peer or not self.trusts(peer[0]):
            return peer
        hops = forwarded_hops(headers)
        if not hops:
            return peer
        nearest = peer  # the trusted hop that wrote the entry being read
        for entry in reversed(hops):
            host, port = split_host_port(entry)
            ip = parse_ip(host)
            if ip is None:  # unknown, obfuscated or malformed: the proxy that wrote it is what we know
                return nearest
            if not self.trusts(host):
                return str(ip), port
            nearest = (str(ip), port)
        return nearest  # every hop a trusted proxy: the left-most one is the client


def forwarded_hops(headers) -> list[str]:
    """The hops X-Forwarded-For lists (every such header, in order), else Forwarded's `for=` values."""
    xff = [v for k, v in headers if k == b"x-forwarded-for"]
    if xff:
        return [h.strip() for h in b",".join(xff).decode("latin-1").split(",")]
    forwarded = [v for k, v in headers if k == b"forwarded"]
    hops = []
    for element in b",".join(forwarded).decode("latin-1").split(","):
        value = ""
        for pair in element.split(";"):
            name, _, v = pair.partition("=")
            if name.strip().lower() == "for":
                value = v.strip().strip('"')
        hops.append(value)
    return hops if forwarded else []


def split_host_port(entry: str) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80` -> (host, port or 0)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return host, int(port) if port.isdigit() and len(port) <= 5 else 0


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, IPv4-mapped IPv6 as the IPv4 it is; None if `host` is not one."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def address_bucket(host: str) -> str:
    """The bucket an address's failed authentications count in: an IPv6 address's /64."""
    ip = parse_ip(host)
    if ip is not None and ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return host


class Gate:
    """API keys, failed-key throttling and the per-client rate (all off unless configured)."""

    def __init__(self, api_keys: tuple[str, ...] = (), rate: float = 0.0, burst: int = 1,
                 trusted_proxies: tuple[Network, ...] = (), clock=time.monotonic):
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.buckets = TokenBuckets(rate, max(1, burst), clock) if rate > 0 else None
        self.failures = TokenBuckets(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, clock) if api_keys else None
        self.proxies = TrustedProxies(trusted_proxies)
        self.on = bool(self.api_keys or self.buckets)  # whether refusal() has anything to check

    def refusal(self, client: str, authorization: str | None) -> Problem | None:
        """The 401 or 429 for a request to a guarded path from `client` (its address), else None."""
        key = None
        if self.api_keys:
            if authorization is None:
                return Problem(401, "unauthorized", "an API key is required: send Authorization: Bearer <key>",
                               headers={"www-authenticate": 'Bearer realm="digitgen"'})
            address = address_bucket(client)
            wait = self.failures.wait(address)
            if wait > 0:
                return Problem(429, "rate_limited",
                               f"too many wrong API keys from this address: at most {AUTH_FAILURE_BURST}, then one "
                               f"every {1 / AUTH_FAILURE_RATE:g} s; retry in {math.ceil(wait)} s",
                               retry_after=math.ceil(wait))
            key = self.key_of(authorization)
            if key is None:
                self.failures.take(address)
                return Problem(401, "unauthorized", "this API key is not one of the server's: send "
                                                    "Authorization: Bearer <key>",
                               headers={"www-authenticate": 'Bearer realm="digitgen", error="invalid_token"'})
        if self.buckets is not None:
            wait = self.buckets.take("key:" + key.decode("latin-1") if key else "ip:" + client)
            if wait > 0:
                return Problem(429, "rate_limited",
                               f"too many requests from this client: at most {self.buckets.rate:g} a second "
                               f"(bursts of {self.buckets.burst}); retry in {math.ceil(wait)} s",
                               retry_after=math.ceil(wait))
        return None

    def key_of(self, authorization: str) -> bytes | None:
        """The request's API key when it is one of the server's, else None."""
        scheme, _, key = authorization.encode("latin-1").partition(b" ")
        key = key.strip()
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(key, k) for k in self.api_keys):
            return key
        return None
