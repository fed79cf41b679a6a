"""Time as an injected dependency, so that step logic is tested against literal datetimes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for measuring durations."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
