"""The client's address, as the gate counts it and the access log names it.

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
"""
from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
