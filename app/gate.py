"""Who the client is, and whether it may go on: the edge's API keys,
per-client rate and quota (app/edge.py, checks 3 and 4), and the address
they are counted against.

API keys: a request that presents a key that is not one of the server's
(any Authorization header but a right Bearer key) is a failed
authentication, counted against its address: AUTH_FAILURE_BURST of them,
then one more every 1 / AUTH_FAILURE_RATE s. Past that, every request from
that address that presents a key is a 429 with Retry-After whatever its key,
right or wrong (the throttle is the first limit either is counted against):
answering a right key 200 there would tell a guesser which guess was right
at full speed. A request with no key at all is a 401 that counts for
nothing (it guesses nothing); other addresses, and this one once its
allowance is back, are unaffected. IPv6 addresses are counted by their /64,
the block one host is given.

Quotas (DIGITGEN_KEY_QUOTA): requests per client (the API key, else the
address) per UTC day; past it a 429 `quota_exceeded` whose Retry-After is
the end of the day. A request is counted against every limit that applies
(the wrong-key throttle, the rate, the quota) all or nothing: one refused by
its rate uses none of its quota.

Who the client is: app/proxies.py; the limits across replicas: app/limits_store.py.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time

from .errors import Problem
from .limits_store import KEY_PREFIX, SharedLimits
from .proxies import Network, TrustedProxies, address_bucket

AUTH_FAILURE_BURST = 10       # wrong keys an address may present before it is throttled
AUTH_FAILURE_RATE = 1 / 60    # then one more a minute
QUOTA_WINDOW_S = 86_400       # DIGITGEN_KEY_QUOTA counts requests per UTC day


class _Limit:
    """A per-client limit of this process: take() counts a request, wait() asks."""

    def take(self, client: str) -> float:
        """0 if the client may go now (the request is counted), else the seconds until it may."""
        return self._take(client, take=True)

    def wait(self, client: str) -> float:
        """What take() would answer, counting nothing."""
        return self._take(client, take=False)

    def _take(self, client: str, take: bool) -> float:
        raise NotImplementedError


class TokenBuckets(_Limit):
    """rate tokens a second, at most `burst` saved up, one bucket per client."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_clients: int = 10_000, name: str = "rate"):
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self.name, self.spec = name, ("b", rate, burst)  # the store's key prefix, and its script's arguments
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()

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


class Windows(_Limit):
    """At most `limit` requests a client in each window of `period` s of the
    wall clock (UTC days for 86,400), counted in this process."""

    def __init__(self, limit: int, period: float = QUOTA_WINDOW_S, clock=time.time, max_clients: int = 100_000,
                 name: str = "quota"):
        self.limit, self.period, self.clock, self.max_clients = limit, period, clock, max_clients
        self.name, self.spec = name, ("w", limit, period)
        self._used: dict[str, tuple[int, int]] = {}  # client -> (window, requests in it)
        self._lock = threading.Lock()

    def _take(self, client: str, take: bool) -> float:
        now = self.clock()
        window = math.floor(now / self.period)
        with self._lock:
            seen, used = self._used.get(client, (window, 0))
            used = used if seen == window else 0
            if used >= self.limit:
                return (window + 1) * self.period - now
            if take:
                self._used[client] = (window, used + 1)
                if len(self._used) > self.max_clients:  # past windows first, then the first counted
                    stale = [k for k, (w, _) in self._used.items() if w != window] or list(self._used)
                    for key in stale[:max(1, len(self._used) // 2)]:
                        del self._used[key]
            return 0.0


Limiter = TokenBuckets | Windows
Check = tuple[Limiter, str, int]  # (limit, client, cost): cost 0 asks only that there be room


def take_all(checks: list[Check]) -> tuple[int, float]:
    """Every limit has room for the client: each takes its cost, (-1, 0).
    Else nothing is taken: (the first without room, the seconds until it has)."""
    if len(checks) == 1:
        limiter, client, cost = checks[0]
        return (-1, 0.0) if (wait := (limiter.take if cost else limiter.wait)(client)) <= 0 else (0, wait)
    for i, (limiter, client, _) in enumerate(checks):
        if (wait := limiter.wait(client)) > 0:
            return i, wait
    for limiter, client, cost in checks:
        if cost:
            limiter.take(client)
    return -1, 0.0


class Gate:
    """API keys, failed-key throttling, the per-client rate and quota (all off
    unless configured); in the shared store when there is one."""

    def __init__(self, api_keys: tuple[str, ...] = (), rate: float = 0.0, burst: int = 1,
                 trusted_proxies: tuple[Network, ...] = (), clock=time.monotonic, *, quota: int = 0,
                 store: SharedLimits | None = None, wall_clock=time.time):
        self.api_keys = tuple(k.encode() for k in api_keys)
        # a key as the limits name it: hashed, so the store never holds a key
        self.key_ids = {k: "key:" + hashlib.sha256(k).hexdigest()[:32] for k in self.api_keys}
        self.buckets = TokenBuckets(rate, max(1, burst), clock) if rate > 0 else None
        self.quota = Windows(quota, QUOTA_WINDOW_S, wall_clock) if quota > 0 else None
        self.failures = TokenBuckets(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST, clock, name="fail") if api_keys else None
        self.proxies = TrustedProxies(trusted_proxies)
        self.store = store
        self.on = bool(self.api_keys or self.buckets or self.quota)  # whether check() has anything to check

    async def check(self, client: str, authorization: str | None) -> Problem | None:
        """The 401 or 429 for a request to a guarded path from `client` (its
        address), else None: by the shared store's limits while it answers,
        else (or without a store) by this process's."""
        ok, checks = self._plan(client, authorization)
        if not checks:
            return ok
        taken = None
        if self.store is not None:
            taken = await self.store.apply(checks, [KEY_PREFIX + f"{limiter.name}:{who}" for limiter, who, _ in checks])
            if taken is None:
                self.store.on_local()
        return self._answer(ok, checks, take_all(checks) if taken is None else taken)

    def _plan(self, client: str, authorization: str | None) -> tuple[Problem | None, list[Check]]:
        """(the answer when every limit has room, the limits this request is counted against)."""
        checks: list[Check] = []
        ok, who = None, "ip:" + client
        if self.api_keys:
            if authorization is None:
                return Problem(401, "unauthorized", "an API key is required: send Authorization: Bearer <key>",
                               headers={"www-authenticate": 'Bearer realm="digitgen"'}), checks
            address = address_bucket(client)
            key = self.key_of(authorization)
            if key is None:  # counted against the address; past its allowance a 429 whatever the key
                return Problem(401, "unauthorized", "this API key is not one of the server's: send "
                                                    "Authorization: Bearer <key>",
                               headers={"www-authenticate": 'Bearer realm="digitgen", error="invalid_token"'}), \
                    [(self.failures, address, 1)]
            checks.append((self.failures, address, 0))  # a right key costs nothing, but is throttled too
            who = self.key_ids[key]
        if self.buckets is not None:
            checks.append((self.buckets, who, 1))
        if self.quota is not None:
            checks.append((self.quota, who, 1))
        return ok, checks

    def _answer(self, ok: Problem | None, checks: list[Check], taken: tuple[int, float]) -> Problem | None:
        first, wait = taken
        if first < 0:
            return ok
        limiter, retry = checks[first][0], math.ceil(wait)
        if limiter is self.failures:
            return Problem(429, "rate_limited",
                           f"too many wrong API keys from this address: at most {AUTH_FAILURE_BURST}, then one "
                           f"every {1 / AUTH_FAILURE_RATE:g} s; retry in {retry} s", retry_after=retry)
        if limiter is self.quota:
            return Problem(429, "quota_exceeded",
                           f"this {'API key' if self.api_keys else 'client'} has made its {self.quota.limit} "
                           f"requests of the day (DIGITGEN_KEY_QUOTA; days are UTC); retry in {retry} s",
                           retry_after=retry)
        return Problem(429, "rate_limited",
                       f"too many requests from this client: at most {self.buckets.rate:g} a second "
                       f"(bursts of {self.buckets.burst}); retry in {retry} s", retry_after=retry)

    def key_of(self, authorization: str) -> bytes | None:
        """The request's API key when it is one of the server's, else None."""
        scheme, _, key = authorization.encode("latin-1").partition(b" ")
        key = key.strip()
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(key, k) for k in self.api_keys):
            return key
        return None
