"""Per-connection limits below ASGI, where uvicorn has none: a request's
line and headers must arrive within a time limit.

uvicorn closes a keep-alive connection idle for `timeout_keep_alive`, but
only after a response, and any byte resets that timer: a client that
connects and sends nothing, or trickles a header a byte at a time
(slowloris), holds its connection, and a place under the connection cap,
for ever. Here the clock starts when the connection opens (and again after
each response) and stops only when h11 has the whole head; past it the
client gets a 408 and the connection is closed. Bodies have their own
deadline in the app (`HttpLimits`, DIGITGEN_BODY_TIMEOUT_S).
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's head."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in (or the connection is ending)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on this keep-alive connection gets the same deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0] or self.cycle is None:  # part of a head came, or nothing at all yet
                body = f"the request line and headers did not arrive within {timeout_s:g} s\n".encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return HeaderTimeoutH11Protocol
