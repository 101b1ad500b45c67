"""The gate's limits shared by every replica, in Redis.

Across replicas (DIGITGEN_REDIS_URL): every limit lives in Redis instead,
shared by all of them, checked and taken by one Lua script (LIMITS_SCRIPT)
on Redis's own clock (TIME), so the replicas' clocks play no part: N
replicas admit what one would. The client (RedisConnection) is RESP over one
asyncio connection, commands pipelined and replies matched in order: no
dependency, and no connection per request under a burst. API keys are
stored hashed. While the store is down, slow (a call past
DIGITGEN_REDIS_TIMEOUT_S, 50 ms) or answering errors, each request is
decided by this process's own limits, as without a store: open, never a
500 or a longer wait; the store is not asked again until a background task
has had an answer from it (probing with backoff); one warning line when the
outage begins and one line when it ends (SharedLimits; /metrics:
digitgen_limits_store_up, digitgen_limits_store_fallbacks_total,
digitgen_limits_local_decisions_total).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import random
from collections.abc import Callable
log = logging.getLogger("uvicorn.error.digitgen.limits")  # shows up wherever uvicorn logs


# -- the shared store: Redis ------------------------------------------------------------
# The limits of one request, checked and taken together on Redis's clock.
# KEYS: one a limit. ARGV: four a limit: kind ("b" a token bucket: a tokens a
# second, at most b saved; "w" a fixed window: a requests in each b seconds),
# a, b and cost (what the request takes, 0 or 1; every limit needs room for
# one). All or nothing: {0, 0} when each had room (its cost taken), else
# {i, ms} for the first that had none (room again in ms), nothing taken.
LIMITS_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = {}
for i, key in ipairs(KEYS) do
  local kind, a, b = ARGV[4 * i - 3], tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i - 1])
  local v = redis.call('HMGET', key, 'v', 't')
  local value, wait = tonumber(v[1]), 0
  if kind == 'b' then
    local at = tonumber(v[2])
    if value == nil or at == nil then value = b else value = math.min(b, value + math.max(0, now - at) * a) end
    if value < 1 then wait = (1 - value) / a end
  else
    local window = math.floor(now / b)
    if value == nil or tonumber(v[2]) ~= window then value = 0 end
    if value + 1 > a then wait = (window + 1) * b - now end
  end
  if wait > 0 then return {i, math.ceil(wait * 1000)} end
  held[i] = value
end
for i, key in ipairs(KEYS) do
  local kind, a, b, cost = ARGV[4 * i - 3], tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i])
  if cost > 0 and kind == 'b' then
    redis.call('HSET', key, 'v', string.format('%.17g', held[i] - cost), 't', string.format('%.6f', now))
    redis.call('EXPIRE', key, math.min(10000000, math.ceil(b / a) + 1))
  elseif cost > 0 then
    local window = math.floor(now / b)
    redis.call('HSET', key, 'v', string.format('%d', held[i] + cost), 't', string.format('%d', window))
    redis.call('EXPIRE', key, math.ceil((window + 1) * b - now) + 1)
  end
end
return {0, 0}
"""
LIMITS_SHA = hashlib.sha1(LIMITS_SCRIPT.encode()).hexdigest()
KEY_PREFIX = "digitgen:"
MAX_UNSENT = 1 << 20  # bytes of commands the store has not read yet, past which it counts as down
RETRY_S = (0.1, 5.0)  # probing a store that is down: the first wait, doubling up to the last


class StoreError(Exception):
    """The store did not answer as it should: unreachable, closed, slow, or an error reply."""


def resp_command(*args) -> bytes:
    """A command as RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader):
    """One RESP2 reply: str, int, bytes, None, a list of them, or a StoreError (an error reply)."""
    line = await reader.readuntil(b"\r\n")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode("latin-1")
    if kind == b"-":
        return StoreError(body.decode("latin-1"))
    if kind == b":":
        return int(body)
    if kind in (b"$", b"*") and body.lstrip(b"-").isdigit():
        n = int(body)
        if n < 0:
            return None
        if kind == b"$":
            return (await reader.readexactly(n + 2))[:-2]
        return [await read_reply(reader) for _ in range(n)]
    raise StoreError(f"not a RESP reply: {line[:40]!r}")


class RedisConnection:
    """One connection: commands are written as they come (pipelined), and one
    task reads the replies, which Redis sends in the order of the commands,
    each to the oldest command still waiting. A caller that stopped waiting
    leaves its place in that order; its reply is read and dropped."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_lost: Callable[["RedisConnection", str], None]):
        self.reader, self.writer, self.on_lost = reader, writer, on_lost
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.lost: str | None = None  # why it is closed
        self._replies = asyncio.get_running_loop().create_task(self._read_replies())

    def call(self, *args) -> asyncio.Future:
        """The reply's future (a StoreError as its exception for an error reply)."""
        if self.lost is not None:
            raise StoreError(self.lost)
        if self.writer.transport.get_write_buffer_size() > MAX_UNSENT:
            raise StoreError(f"{MAX_UNSENT} bytes of commands unread")
        reply = asyncio.get_running_loop().create_future()
        self.writer.write(resp_command(*args))
        self.waiting.append(reply)
        return reply

    async def _read_replies(self) -> None:
        why = "closed"
        try:
            while True:
                reply = await read_reply(self.reader)
                if not self.waiting:
                    raise StoreError("a reply to no command")
                waiter = self.waiting.popleft()
                if not waiter.done():
                    if isinstance(reply, StoreError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        except asyncio.IncompleteReadError:
            why = "the store closed the connection"
        except (OSError, StoreError, ValueError, asyncio.LimitOverrunError) as e:
            why = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            why = "closed"
        finally:
            reported = self.lost is None
            self.close(why)
            if reported and why != "closed":
                self.on_lost(self, why)

    def close(self, why: str = "closed") -> None:
        if self.lost is None:
            self.lost = why
            self.writer.close()
            if self._replies is not asyncio.current_task():
                self._replies.cancel()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(StoreError(why))


class SharedLimits:
    """The gate's limits in Redis, for every replica; None from apply() when
    the store has no answer within `timeout_s` (the gate then decides by this
    process's limits). Once a call has failed the store is down: it is not
    asked at all, and a background task probes it (at once, then after 0.1 s,
    doubling to 5 s; a store that fails again within 30 s of coming back
    waits longer each time, so a flapping one logs a line at most every 5 s)
    until it answers within `timeout_s` again."""

    STABLE_S = 30.0  # up this long, a failure is a new outage, not the old one flapping

    def __init__(self, address, timeout_s: float = 0.05, on_fallback: Callable[[], None] = lambda: None,
                 on_local: Callable[[], None] = lambda: None):
        self.address, self.timeout_s = address, timeout_s
        self.connect_timeout_s = max(1.0, 20 * timeout_s)
        self.on_fallback, self.on_local = on_fallback, on_local
        self.conn: RedisConnection | None = None
        self.outage = False           # a call failed; the probe has not had an answer since
        self._delay = 0.0             # before the next probe
        self._up_since = -math.inf    # loop time the store last came up
        self._loop = None
        self._probing: asyncio.Task | None = None
        self._tried: asyncio.Event | None = None  # set once the first connection attempt has ended
        self._closed = False          # the app is shutting down: no more reconnecting

    @property
    def up(self) -> bool:
        return self.conn is not None and self.conn.lost is None and not self.outage

    def start(self) -> None:
        """Connect in the background (on the running loop; the app's start-up calls it)."""
        loop, self._closed = asyncio.get_running_loop(), False
        if self._loop is not loop:  # a new loop (a test's, say): nothing of the old one can be used
            self._loop, self.conn, self._probing, self._tried = loop, None, None, asyncio.Event()
        if not self.up and self._probing is None:
            self._probing = loop.create_task(self._probe())

    def close(self) -> None:
        self._closed = True
        if self._probing is not None:
            self._probing.cancel()
            self._probing = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def apply(self, checks: list[tuple], keys: list[str]) -> tuple[int, float] | None:
        """take_all's answer for the gate's checks (limit, client, cost), from
        the store; None when it has none in time."""
        if self._loop is not asyncio.get_running_loop() or not self.up:
            if self._closed:
                return None
            self.start()
            if not self._tried.is_set():  # starting up: the first attempt may be about to succeed
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await self._tried.wait()
                except TimeoutError:
                    return None
            if not self.up:
                return None
        conn, args = self.conn, []
        for limiter, _, cost in checks:
            args += [*limiter.spec, cost]
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    reply = await conn.call("EVALSHA", LIMITS_SHA, len(keys), *keys, *args)
                except StoreError as e:
                    if not str(e).startswith("NOSCRIPT"):
                        raise
                    reply = await conn.call("EVAL", LIMITS_SCRIPT, len(keys), *keys, *args)
            first, ms = reply
            return (-1, 0.0) if first == 0 else (int(first) - 1, int(ms) / 1000)
        except TimeoutError:
            self._fail(f"no answer within {self.timeout_s:g} s")
        except Exception as e:  # an error reply, a lost connection, a reply not the script's: never a 500
            self._fail(f"{type(e).__name__}: {e}")
        return None

    def _lost(self, conn: RedisConnection, why: str) -> None:
        if conn is self.conn:
            self._fail(why)

    def _fail(self, why: str) -> None:
        """The store is down: the per-process limits decide until the probe has an answer."""
        if self._closed:
            return
        if not self.outage:
            self.outage = True
            self.on_fallback()
            flapping = self._loop.time() - self._up_since < self.STABLE_S
            self._delay = min(max(2 * self._delay, RETRY_S[0]), RETRY_S[1]) if flapping else 0.0
            log.warning("limits store %s is down (%s): each replica counts its own limits until it is back; "
                        "reconnecting with backoff", self.address.shown, why[:200])
        if self._probing is None:
            self._probing = self._loop.create_task(self._probe())

    async def _probe(self) -> None:
        """Until the store answers: a new connection when the old one is closed, else the script within timeout_s."""
        try:
            while True:
                if self._delay:
                    await asyncio.sleep(self._delay * random.uniform(0.8, 1.2))
                try:
                    if self.conn is None or self.conn.lost is not None:
                        self.conn = None
                        self.conn = await asyncio.wait_for(self._open(), self.connect_timeout_s)
                    else:  # the script on no limits: what a request would wait for
                        async with asyncio.timeout(self.timeout_s):
                            await self.conn.call("EVAL", LIMITS_SCRIPT, 0)  # (and loads it again, were it flushed)
                except Exception as e:  # whatever it was, the store is not back: never let the probe die
                    self._fail(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                    self._tried.set()
                    self._delay = min(max(2 * self._delay, RETRY_S[0]), RETRY_S[1])
                    continue
                self._up_since = self._loop.time()
                if self.outage:
                    self.outage = False
                    log.info("limits store %s is back: the limits are shared again", self.address.shown)
                elif not self._tried.is_set():
                    log.info("limits store %s: the limits are shared with every replica using it", self.address.shown)
                self._tried.set()
                return
        finally:
            if self._probing is asyncio.current_task():
                self._probing = None

    async def _open(self) -> RedisConnection:
        a = self.address
        reader, writer = await asyncio.open_connection(a.host, a.port)
        conn = RedisConnection(reader, writer, self._lost)
        try:
            calls = []
            if a.password:
                calls.append(conn.call("AUTH", *([a.username] if a.username else []), a.password))
            if a.db:
                calls.append(conn.call("SELECT", a.db))
            calls.append(conn.call("SCRIPT", "LOAD", LIMITS_SCRIPT))
            replies = await asyncio.gather(*calls, return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            if replies[-1] != LIMITS_SHA.encode():
                raise StoreError(f"SCRIPT LOAD answered {replies[-1]!r}")
        except BaseException:
            conn.close()
            raise
        return conn
