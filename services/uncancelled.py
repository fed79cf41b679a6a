"""HTTP requests judged at a deadline but never cancelled mid-way.

httpcore (1.0.9) leaks a pooled connection when a request is cancelled just after its
connection was made and before the request began (the connection stays `NEW`, neither
usable nor closed, and keeps its place in the pool): an `asyncio.timeout` around a request
whose deadline falls in the connect phase does exactly that. After `max_connections` (100)
such timeouts every later request of the client waits for a place that never frees (a soak
saw it: 100 sockets in CLOSE-WAIT, every keep-alive ping failing while `/health` answered in
3 ms). So the caller's deadline decides the answer, and the request itself is left to end by
httpx's own timeouts (each phase bounded), in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx


class UncancelledRequests:
    """The requests still running after their caller stopped waiting (strong references)."""

    def __init__(self) -> None:
        self._late: set[asyncio.Future[httpx.Response]] = set()

    async def within(self, seconds: float, request: Awaitable[httpx.Response]) -> httpx.Response:
        """The response, or TimeoutError once `seconds` have passed; the request goes on."""
        running = asyncio.ensure_future(request)
        self._late.add(running)
        running.add_done_callback(self._forget)
        async with asyncio.timeout(seconds):
            return await asyncio.shield(running)

    def _forget(self, running: asyncio.Future[httpx.Response]) -> None:
        self._late.discard(running)
        if not running.cancelled():
            running.exception()  # a late failure was already answered for: not "unretrieved"

    async def close(self) -> None:
        """At shutdown: stop what is still running (the client is closed next)."""
        for running in list(self._late):
            running.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)
