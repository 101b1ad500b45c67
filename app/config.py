"""Service settings, read from DIGITGEN_* environment variables, each with
its default and its range written once (`RANGES`); a value out of range, or
malformed, stops start-up with one line that names the variable.

    DIGITGEN_WEIGHTS        weights folder (default: weights/ next to the package)
    DIGITGEN_HOST           bind address for `serve` (default 127.0.0.1)
    DIGITGEN_PORT           port for `serve` (default 8000)
    DIGITGEN_MAX_BATCH      trajectories per UNet forward (default 64)
    DIGITGEN_MAX_QUEUE      images that may wait for a batch slot (default 256)
    DIGITGEN_DEADLINE_S     per-request deadline in seconds, queueing included (default 120)
    DIGITGEN_GRACEFUL_S     seconds `serve` lets open requests finish on shutdown (default 10)
    DIGITGEN_THREADS        engine threads (default 0: the CPUs it may use, cgroup quota included; at most 8)
    DIGITGEN_MAX_REQUEST_ROWS UNet rows one request may cost (images x steps x rows a step); more is a 422
                            (default 8192: one base digit is 40)
    DIGITGEN_MAX_BACKLOG_ROWS UNet rows admitted and not yet run, past which new requests get 503 (default 32768)
    DIGITGEN_MAX_GIF_PIXELS frames x width x height one GIF may have; more is a 422 (default 50 x 512 x 512)
    DIGITGEN_MAX_BODY_BYTES request bodies larger than this are a 413 (default 1 MiB: an uploaded PNG)
    DIGITGEN_BODY_TIMEOUT_S seconds a request body may take to arrive, else 408 (default 10)
    DIGITGEN_HEADER_TIMEOUT_S seconds a request line + headers may take to arrive, else 408 and the
                            connection closes (default 10; `serve` only: it is uvicorn's protocol)
    DIGITGEN_SEND_TIMEOUT_S seconds a client may read nothing of a response before it is dropped (default 30)
    DIGITGEN_MAX_CONNECTIONS requests `serve` serves at once before answering 503; the probes and /metrics
                            are always answered (default 200)
    DIGITGEN_MAX_IDLE_CONNECTIONS connections waiting for a request (new, slow or kept alive) past which the
                            oldest is closed (default 1000, at most a quarter of the open-file limit)
    DIGITGEN_API_KEYS       comma-separated API keys; when set (or DIGITGEN_API_KEYS_FILE, one key a line)
                            every endpoint but the probes, metrics, page and docs needs Authorization: Bearer <key>;
                            an address gets 10 wrong keys, then one a minute (429 until then: app/gate.py)
    DIGITGEN_RATE_LIMIT     requests a second per client (API key, else address); 0 = off (default)
    DIGITGEN_RATE_BURST     requests a client may send at once before the rate applies (default 20)
    DIGITGEN_KEY_QUOTA      requests per client (API key, else address) per UTC day; past it a 429
                            quota_exceeded until the day ends; 0 = none (default)
    DIGITGEN_REDIS_URL      redis://[[user]:password@]host[:port][/db]: the rate limits, quotas and the
                            wrong-key throttle live there, shared by every replica (default: none, each
                            process counts its own); while it is down each process counts its own (app/limits_store.py)
    DIGITGEN_REDIS_TIMEOUT_S seconds one call to that store may take before the request is decided by the
                            per-process limits instead (default 0.05)
    DIGITGEN_TRUSTED_PROXIES comma-separated proxy addresses or networks (10.0.0.5, 10.0.0.0/8, fd00::/8)
                            whose X-Forwarded-For / Forwarded names the client; from any other peer those
                            headers are ignored (default: none, the client is the socket's peer)
    DIGITGEN_CORS_ORIGINS   comma-separated origins allowed to call the API from a browser (default: none)
    DIGITGEN_ALLOWED_HOSTS  comma-separated names the Host header may carry, or * for any (default: the
                            loopback names when bound to loopback or a named address; * on 0.0.0.0 / ::)
    DIGITGEN_DEFAULT_MODEL  base, fast or onestep: the model a request without `model` gets (default: fast
                            when WEIGHTS/fast is there, else base)
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from engine import paths

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable."""


# setting -> (lowest, highest) it may be; None: no bound on that side
RANGES: dict[str, tuple[float | None, float | None]] = {
    "port": (0, 65535),
    "max_batch": (1, 1024),
    "max_queue": (0, 100_000),
    "deadline_s": (1, 86_400),
    "graceful_s": (0, 3_600),
    "threads": (0, 256),
    "max_body_bytes": (1024, 64 * 2**20),
    "body_timeout_s": (1, 3_600),
    "header_timeout_s": (1, 3_600),
    "send_timeout_s": (1, 3_600),
    "max_connections": (1, 100_000),
    "max_idle_connections": (1, 1_000_000),
    "max_request_rows": (1, 10**9),
    "max_backlog_rows": (1, 10**10),
    "max_gif_pixels": (28 * 28 * 2, 10**10),
    "rate_limit": (0, 1e6),
    "rate_burst": (1, 10**6),
    "key_quota": (0, 10**9),
    "redis_timeout_s": (0.001, 5),
}


class RedisAddress(NamedTuple):
    """Where DIGITGEN_REDIS_URL points; `shown` is it without the password (for logs)."""
    host: str
    port: int
    db: int
    username: str
    password: str

    @property
    def shown(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class Settings:
    weights: Path = paths.WEIGHTS
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64
    max_queue: int = 256
    deadline_s: float = 120.0
    graceful_s: float = 10.0
    threads: int = 0
    default_model: str = ""
    max_body_bytes: int = 2**20  # a PNG of a drawing is tens of KB; a scan or a photo up to this
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    send_timeout_s: float = 30.0
    cors_origins: str = ""
    allowed_hosts: str = ""
    max_connections: int = 200
    max_idle_connections: int = 1000
    max_request_rows: int = 8192
    max_backlog_rows: int = 32768
    max_gif_pixels: int = 50 * 512 * 512
    api_keys: str = ""
    api_keys_file: str = ""
    rate_limit: float = 0.0
    rate_burst: int = 20
    trusted_proxies: str = ""
    key_quota: int = 0
    redis_url: str = ""
    redis_timeout_s: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "weights", Path(self.weights))
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if (low is not None and value < low) or (high is not None and value > high):
                raise ConfigError(f"setting {name}={value!r} is out of range ({low:g} to {high:g})")
        if self.default_model not in ("", *paths.MODEL_FOLDERS):
            raise ConfigError(f"setting default_model={self.default_model!r} must be one of "
                              f"{', '.join(paths.MODEL_FOLDERS)}")
        if self.max_backlog_rows < self.max_request_rows:
            raise ConfigError(f"setting max_backlog_rows={self.max_backlog_rows} is below max_request_rows="
                              f"{self.max_request_rows}: no request of the largest allowed cost could be admitted")
        self.trusted_proxy_list  # each an address or a network, else one line naming it
        self.redis_address  # a redis:// URL, else one line saying what is wrong with it
        for name in ("api_keys", "cors_origins", "allowed_hosts", "trusted_proxies"):
            raw = getattr(self, name)
            if raw.strip() and not _items(raw):
                raise ConfigError(f"setting {name}={raw!r} lists nothing: leave it unset, or give at least one")

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        """Environment first, then explicit keyword overrides (None = not given)."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in dataclasses.fields(cls):
            var = f"DIGITGEN_{f.name.upper()}"
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = Path if f.name == "weights" else type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{e} (see DIGITGEN_* environment variables)") from None

    def api_key_list(self) -> tuple[str, ...]:
        """The keys from DIGITGEN_API_KEYS and DIGITGEN_API_KEYS_FILE (read now)."""
        keys = list(_items(self.api_keys))
        if self.api_keys_file:
            try:
                lines = Path(self.api_keys_file).read_text().splitlines()
            except OSError as e:
                raise ConfigError(f"DIGITGEN_API_KEYS_FILE={self.api_keys_file!r} cannot be read: {e}") from None
            found = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
            if not found:
                raise ConfigError(f"DIGITGEN_API_KEYS_FILE={self.api_keys_file!r} holds no key (one a line)")
            keys += found
        return tuple(keys)

    @property
    def trusted_proxy_list(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """DIGITGEN_TRUSTED_PROXIES as networks (an address is its /32 or /128)."""
        networks = []
        for item in _items(self.trusted_proxies):
            try:
                networks.append(ipaddress.ip_network(item.strip("[]")))
            except ValueError as e:
                said = ("has host bits set: the network is " + str(ipaddress.ip_network(item.strip("[]"), strict=False))
                        if "host bits" in str(e) else "is not an IP address or network (such as 10.0.0.5, 10.0.0.0/8)")
                raise ConfigError(f"DIGITGEN_TRUSTED_PROXIES: {item[:100]!r} {said}") from None
        return tuple(networks)

    @property
    def redis_address(self) -> RedisAddress | None:
        """DIGITGEN_REDIS_URL read: redis://[[user]:password@]host[:port][/db]; None when unset."""
        raw = self.redis_url.strip()
        if not raw:
            return None
        shown = raw if "@" not in raw else raw.partition("://")[0] + "://***@" + raw.rpartition("@")[2]
        url = urlsplit(raw)
        db = url.path[1:] if url.path.startswith("/") else url.path
        try:
            port = url.port or 6379
        except ValueError:
            port = None
        said = ("is not a redis:// URL (such as redis://127.0.0.1:6379/0; TLS and unix sockets are not supported)"
                if url.scheme != "redis" else
                "names no host (such as redis://127.0.0.1:6379/0)" if not url.hostname else
                "has a port that is not one (such as redis://127.0.0.1:6379/0)" if port is None else
                "has a database that is not a number (such as redis://127.0.0.1:6379/0)"
                if db and not (db.isdigit() and len(db) <= 5) else
                "takes no ?options or #fragment" if url.query or url.fragment else None)
        if said is not None:
            raise ConfigError(f"DIGITGEN_REDIS_URL: {shown[:100]!r} {said}")
        return RedisAddress(url.hostname, port, int(db or 0), unquote(url.username or ""), unquote(url.password or ""))

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return _items(self.cors_origins)

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        """The names a Host header may carry: as configured, else the
        loopback names (and the bound address), or any on a wildcard bind,
        where the names a container is reached by cannot be known here."""
        if self.allowed_hosts.strip():
            return tuple(h.strip("[]").lower() for h in _items(self.allowed_hosts))
        if self.host in WILDCARD_HOSTS:
            return ("*",)
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, self.host.strip("[]").lower())))


def _items(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())
