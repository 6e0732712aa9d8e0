"""Bounds on what one client can hold: connection time, header size, connections per address.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but it waits forever for
a request head that never completes (slow-loris), and a silent connection opened and never used
is never closed. `guarded_h11` subclasses uvicorn's h11 protocol (pinned uvicorn) to add:

- a **header deadline**: the request line and headers must arrive within `header_timeout_s` of
  the connection opening or of the first byte of a keep-alive request, else the connection is
  closed;
- a **per-address connection cap**: an address holding `max_connections_per_client` open
  connections has further ones closed at once (0 turns it off; behind a reverse proxy every
  connection comes from the proxy's address, so raise or disable it there);
- a request head over `max_header_bytes` is refused: 431 before parsing when it arrives in one
  read, 400 from h11's `max_incomplete_event_size` when it arrives in pieces; then closed.

The body deadline (`body_timeout_s`) is enforced by the app while it reads the body (408).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_BODY = b'{"error": "request headers are over the limit"}'
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    max_connections_per_client: int = 100

    def uvicorn_options(self) -> dict:
        """The keyword arguments of `uvicorn.run` that carry these limits."""
        return {
            "http": guarded_h11(self),
            "timeout_keep_alive": self.keep_alive_s,
            "h11_max_incomplete_event_size": self.max_header_bytes,
            "limit_concurrency": self.max_connections or None,
        }


def guarded_h11(limits: ConnectionLimits) -> type[H11Protocol]:
    """An H11Protocol class enforcing `limits` (one class per server: the per-address counts are its own)."""
    open_per_address: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _address: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = self.client[0] if self.client else None
            open_per_address[self._address] += 1
            cap = limits.max_connections_per_client
            if cap and self._address is not None and open_per_address[self._address] > cap:
                transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if (
                self.conn.their_state is h11.IDLE
                and len(data) > limits.max_header_bytes
                and data.find(b"\r\n\r\n", 0, limits.max_header_bytes) == -1
            ):
                # a whole oversized head in one read: refuse it before h11 parses it (h11 bounds only
                # a head still arriving, and parsing 64 kB of headers per request is what a flood costs)
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()
                return
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm_head_timer()  # part of a request head: the deadline runs from its first byte
            else:
                self._cancel_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            open_per_address[self._address] -= 1
            if open_per_address[self._address] <= 0:
                del open_per_address[self._address]
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
