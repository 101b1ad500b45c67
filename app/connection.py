"""Per-connection limits below ASGI, where uvicorn has none: a request's
line and headers must arrive within a time limit and fit in a size limit.

We run uvicorn's httptools protocol (llhttp, in C): under a burst it answers
about four times as many requests a second as the pure-Python h11 one
(bench/burst_floor.py), and every refusal under load is served by one event
loop, one after another. Two limits it lacks are added here:

* A deadline on each request's head. uvicorn closes a keep-alive connection
  idle for `timeout_keep_alive`, but only after a response, and any byte
  resets that timer: a client that connects and sends nothing, or trickles a
  header a byte at a time (slowloris), holds its connection, and a place
  under the connection cap, for ever. Here the clock starts when the
  connection opens (and again after each response) and stops only when the
  whole head is in; past it the client gets a 408 and the connection closes.
* A cap on the head's size (request line + headers), which llhttp does not
  bound: past it a 431 and the connection closes.

And one shortcut: given a `door` (app/door.py), each request's head is shown
to it before uvicorn starts an ASGI task; a response it returns is written
at once, and the request never reaches the app. Only for requests without a
body (the door declines the others), so the connection stays in step.

Bodies have their own deadline and cap in the app (`HttpLimits`).
"""
from __future__ import annotations

import asyncio
from typing import Callable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop llhttp mid-head."""


DoorFn = Callable[[str, bytes, list, object], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"]


def limited_protocol(header_timeout_s: float, max_head_bytes: int = MAX_HEAD_BYTES,
                     door: DoorFn | None = None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on, and a cap on the size
    of, each request's head; `door(method, raw URL, headers, client)` may
    answer a request before the app sees it."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0          # of the head being read: URL, header names and values
        _head_begun = False      # a byte of the next request's head has come
        _head_too_large = False
        _at_door = False         # the message being read was answered by the door
        _served = 0              # requests answered on this connection, by the door or the app

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
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
            self._head_begun = False
            # only between requests: a response written now must not overtake one still being made
            if door is not None and (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
                try:
                    answer = door(self.parser.get_method().decode("ascii"), self.url, self.headers, self.client)
                except Exception:  # a bug in the door must not turn requests into 400s: let the app answer
                    self.logger.exception("the door failed; the app answers this request")
                    answer = None
                if answer is not None:
                    self._answer(*answer)
                    return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._at_door:  # the door takes no request with a body; be safe all the same
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._at_door:
                return super().on_message_complete()
            self._at_door = False
            # after the parser has returned, as uvicorn would after a response: a pipelined request's
            # head may still be in this same read
            self.loop.call_soon(self._door_response_complete)

        def on_response_complete(self) -> None:
            self._served += 1
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on this keep-alive connection gets the same deadline

        def _answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            keep_alive = self.parser.should_keep_alive()
            lines = [STATUS_LINE[status]]
            for name, value in [*self.server_state.default_headers, *headers,
                                (b"content-length", str(len(body)).encode())] + \
                    ([] if keep_alive else [(b"connection", b"close")]):
                lines += [name, b": ", value, b"\r\n"]
            self.transport.write(b"".join([*lines, b"\r\n", body]))
            self._at_door = True
            if not keep_alive:
                self.transport.close()

        def _door_response_complete(self) -> None:
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                self._served += 1  # a pipelined request is already being served: its own cycle takes over
                self.server_state.total_requests += 1
                return
            self.on_response_complete()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to whatever llhttp refused; ours when it was the size."""
            if not self._head_too_large:
                return super().send_400_response(msg)
            self._disarm()
            self._refuse(b"431 Request Header Fields Too Large",
                         f"the request line and headers are over {max_head_bytes} bytes\n")

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge  # llhttp stops; uvicorn's data_received calls send_400_response

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # a request is being served: its head came in time
            if self._head_begun or not self._served:  # part of a head came, or nothing at all yet
                self._refuse(b"408 Request Timeout",
                             f"the request line and headers did not arrive within {header_timeout_s:g} s\n")
            else:  # idle after a response: just close, as the keep-alive timeout would
                self.transport.close()

        def _refuse(self, status: bytes, why: str) -> None:
            body = why.encode()
            self.transport.write(b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
            self.transport.close()

    return LimitedHttpToolsProtocol
