"""uvicorn's HTTP protocol with a bound on how long a request's head may take to arrive.

uvicorn times out idle kept-alive connections but not a request whose head trickles in (or
never comes): 1,500 half-sent requests held 1,500 connections for as long as their senders
liked. Here the head (request line and headers) must be complete within HEADER_READ_TIMEOUT
of its first byte, or of the connection opening; then the connection is closed. The head's
size is bounded by h11 itself (`h11_max_incomplete_event_size`, MAX_HEADER_BYTES), which is
why the server runs h11 rather than httptools (which has no such bound).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadTimeoutH11Protocol(H11Protocol):
    header_read_timeout: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # the next request on a kept connection starts now
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(
                self.header_read_timeout, self._head_timed_out
            )

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_with_head_timeout(seconds: float) -> type[HeadTimeoutH11Protocol]:
    return type(
        "HeadTimeoutH11Protocol",
        (HeadTimeoutH11Protocol,),
        {"header_read_timeout": seconds},
    )
