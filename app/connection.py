"""Per-connection limits below ASGI, where uvicorn has none.

We run uvicorn's httptools protocol (llhttp, in C: under a burst it answers
about four times as many requests a second as the pure-Python h11 one,
bench/burst_floor.py) and add what it lacks:

* A deadline on each request's head. uvicorn closes a keep-alive connection
  idle for `timeout_keep_alive`, but only after a response, and any byte
  resets that timer: a client that connects and sends nothing, or trickles a
  header a byte at a time (slowloris), would hold its connection for ever.
  Here the clock starts when the connection opens (and again after each
  response) and stops only when the whole head is in; past it a 408 and the
  connection closes.
* A cap on the head's size (request line + headers), which llhttp does not
  bound: past it a 431 and the connection closes.
* Idle connections in their own budget. A connection waiting for a request
  head (new, trickling, or kept alive between requests) holds nothing a
  request needs; past `max_idle` of them the OLDEST is closed, so a crowd of
  silent sockets cannot lock anyone out (uvicorn's limit_concurrency counts
  them with the requests and answers everyone 503). Requests in progress
  have their own cap, `max_requests` (past it a 503 from the app's edge),
  which the probes and /metrics never count against.
* A send timeout: a client that stops reading a response (a stalled stream
  reader) fills the socket's buffer; if writing stays paused for
  `send_timeout_s` the connection is dropped, and the request's work with it.

Bodies have their own deadline and cap in the app (app/edge.py).
"""
from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .edge import OPS_PATHS, OVERLOADED
from .errors import Problem, encode

MAX_HEAD_BYTES = 16 * 1024
log = logging.getLogger("uvicorn.error.digitgen")


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop llhttp mid-head."""


def idle_budget(wanted: int) -> int:
    """At most `wanted` idle connections, and no more than a quarter of the
    file descriptors this process may open (the rest are for requests,
    weights and logs)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(wanted, soft // 4)) if soft != resource.RLIM_INFINITY else wanted


def limited_protocol(header_timeout_s: float, *, max_idle: int = 1000, max_requests: int = 200,
                     send_timeout_s: float = 30.0, max_head_bytes: int = MAX_HEAD_BYTES) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the limits above, shared by every
    connection of one server."""
    idle: OrderedDict[HttpToolsProtocol, None] = OrderedDict()  # waiting for a head, oldest first
    max_idle = idle_budget(max_idle)

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0          # of the head being read: URL, header names and values
        _head_begun = False      # a byte of the next request's head has come
        _head_too_large = False
        _served = 0              # responses completed on this connection

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._wait_for_head()
            while len(idle) > max_idle:  # the newest connection stays: a crowd of old silent ones goes
                oldest = next(iter(idle))
                oldest._close_idle()

        def connection_lost(self, exc) -> None:
            idle.pop(self, None)
            self._disarm()
            self._cancel_send_timer()
            super().connection_lost(exc)

        # llhttp's callbacks, in the order they come for each request
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes, self._head_begun = 0, True

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)  # ": " and CRLF, as on the wire
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            idle.pop(self, None)
            self._head_begun = False
            if len(self.tasks) >= max_requests:  # the edge answers 503; the probes are always served
                path = self.url.partition(b"?")[0].decode("latin-1")
                if path not in OPS_PATHS:
                    self.scope[OVERLOADED] = max_requests
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._served += 1
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete) \
                    and not self.pipeline:
                self._wait_for_head()  # the next request on this keep-alive connection gets the same deadline

        # flow control: the transport calls these as its write buffer fills and drains
        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(send_timeout_s, self._send_timed_out)

        def resume_writing(self) -> None:
            self._cancel_send_timer()
            super().resume_writing()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to whatever llhttp refused; ours when it was the size."""
            if not self._head_too_large:
                return super().send_400_response(msg)
            self._disarm()
            self._refuse(Problem(431, "head_too_large", f"the request line and headers are over {max_head_bytes} bytes"))

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge  # llhttp stops; uvicorn's data_received calls send_400_response

        def _wait_for_head(self) -> None:
            idle[self] = None
            idle.move_to_end(self)
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _cancel_send_timer(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # a request is being served: its head came in time
            self._close_idle(f"the request line and headers did not arrive within {header_timeout_s:g} s")

        def _close_idle(self, why: str = "the server closed this idle connection to make room for others") -> None:
            idle.pop(self, None)
            self._disarm()
            if self._head_begun or not self._served:  # part of a head came, or nothing at all yet
                self._refuse(Problem(408, "request_timeout", why))
            else:  # idle after a response: just close, as the keep-alive timeout would
                self.transport.close()

        def _send_timed_out(self) -> None:
            self._send_timer = None
            log.warning("dropping a client that read nothing for %g s (%s)", send_timeout_s,
                        self.client[0] if self.client else "?")
            self.transport.abort()  # connection_lost follows: the request sees the disconnect

        def _refuse(self, problem: Problem) -> None:
            """The Problem written straight to the socket (no request is being served), then close."""
            media, body = encode(problem)
            self.transport.write(STATUS_LINE[problem.status] + b"content-type: %s\r\nconnection: close\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (media, len(body), body))
            self.transport.close()

    return LimitedHttpToolsProtocol
