"""Failed authentications limited per client address: guessing tokens costs time.

A client with AUTH_MAX_FAILURES failed attempts inside AUTH_FAILURE_WINDOW gets 429 with
Retry-After until the oldest failure leaves the window, even with a right token (otherwise a
guesser would learn which guess was right from the one answer that is not a 429). Kept in
memory, per process: a bound on guessing speed, not an audit trail. The address is the one
uvicorn reports, which honours forwarding headers only from FORWARDED_ALLOW_IPS.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request

MAX_CLIENTS = 10_000  # addresses remembered; the least recently failing are forgotten first


class FailedAuthLimiter:
    def __init__(self, max_failures: int, window: float, monotonic: Callable[[], float]) -> None:
        self._max = max_failures
        self._window = window
        self._monotonic = monotonic
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None if it may now."""
        times = self._failures.get(client)
        if times is None:
            return None
        now = self._monotonic()
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        if len(times) < self._max:
            return None
        return max(1, math.ceil(times[0] + self._window - now))

    def failed(self, client: str) -> None:
        times = self._failures.setdefault(client, deque(maxlen=self._max))
        times.append(self._monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
