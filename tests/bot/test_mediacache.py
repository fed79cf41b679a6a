"""The received-files cache: bounded in time (an injected clock) and in bytes, keyed by bot
and message, one download shared by everyone asking at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from bot.engines.base import EngineError, MediaFile
from bot.mediacache import MediaCache
from tests.support import FakeClock

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def file(size: int, name: str = "f") -> MediaFile:
    return MediaFile(b"x" * size, "image/jpeg", name)


class Downloads:
    def __init__(self) -> None:
        self.count = 0

    def of(self, media: MediaFile) -> Callable[[], Awaitable[MediaFile]]:
        async def download() -> MediaFile:
            self.count += 1
            await asyncio.sleep(0)
            return media

        return download


async def test_a_file_is_downloaded_once_then_answered_from_memory_until_its_time_ends():
    clock = FakeClock(T0)
    cache = MediaCache(max_bytes=1000, ttl=timedelta(minutes=10), clock=clock)
    downloads = Downloads()
    first = await cache.fetch(("bot_a", "m1"), downloads.of(file(100)))
    clock.advance(timedelta(minutes=9, seconds=59))
    again = await cache.fetch(("bot_a", "m1"), downloads.of(file(100)))
    assert again is first and downloads.count == 1
    clock.advance(timedelta(seconds=1))
    await cache.fetch(("bot_a", "m1"), downloads.of(file(100)))
    assert downloads.count == 2


async def test_the_least_recently_used_files_go_first_and_the_total_stays_bounded():
    cache = MediaCache(max_bytes=250, ttl=timedelta(minutes=10), clock=FakeClock(T0))
    downloads = Downloads()
    for mid in ("m1", "m2"):
        await cache.fetch(("bot_a", mid), downloads.of(file(100, mid)))
    await cache.fetch(("bot_a", "m1"), downloads.of(file(100)))  # m1 used: m2 is older
    await cache.fetch(("bot_a", "m3"), downloads.of(file(100, "m3")))
    assert cache.size_bytes == 200
    assert cache.get(("bot_a", "m2")) is None
    assert cache.get(("bot_a", "m1")) is not None and cache.get(("bot_a", "m3")) is not None
    # Larger than the whole cache: served, never kept.
    big = await cache.fetch(("bot_a", "big"), downloads.of(file(251)))
    assert len(big.data) == 251 and cache.get(("bot_a", "big")) is None
    assert cache.size_bytes == 200


async def test_one_bots_file_never_answers_for_another_bot():
    cache = MediaCache(max_bytes=1000, ttl=timedelta(minutes=10), clock=FakeClock(T0))
    downloads = Downloads()
    await cache.fetch(("bot_a", "same-id"), downloads.of(file(10, "alice's")))
    other = await cache.fetch(("bot_b", "same-id"), downloads.of(file(10, "bob's")))
    assert other.filename == "bob's" and downloads.count == 2


async def test_concurrent_requests_share_one_download_and_a_failure_is_not_kept():
    cache = MediaCache(max_bytes=1000, ttl=timedelta(minutes=10), clock=FakeClock(T0))
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow() -> MediaFile:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return file(10)

    waiters = [asyncio.create_task(cache.fetch(("bot_a", "m"), slow)) for _ in range(5)]
    await started.wait()
    waiters[0].cancel()  # one client hangs up: the others still get the file
    release.set()
    results = await asyncio.gather(*waiters[1:])
    assert calls == 1 and all(r is results[0] for r in results)

    async def failing() -> MediaFile:
        raise EngineError("the page did not answer")

    with pytest.raises(EngineError):
        await cache.fetch(("bot_a", "bad"), failing)
    assert cache.get(("bot_a", "bad")) is None
    assert (await cache.fetch(("bot_a", "bad"), Downloads().of(file(3)))).data == b"xxx"
