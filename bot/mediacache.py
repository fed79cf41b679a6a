"""Received files, kept for a while after a download.

A file is fetched and decrypted through the bot's WhatsApp Web page on demand; asking again
within `ttl` answers from memory instead of the page. The cache is bounded in bytes (the
least recently used files go first, a file larger than the whole bound is never kept) and
keyed by bot and message, so one user's downloads never answer another's. Concurrent
requests for the same file share one download.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.engines.base import MediaFile
from services.clock import Clock

Key = tuple[str, str]  # (bot id, message id)


@dataclass(frozen=True, slots=True)
class _Entry:
    file: MediaFile
    expires_at: datetime


class MediaCache:
    def __init__(self, *, max_bytes: int, ttl: timedelta, clock: Clock) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._bytes = 0
        self._downloads: dict[Key, asyncio.Task[MediaFile]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> MediaFile | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock.now() >= entry.expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.file

    def put(self, key: Key, file: MediaFile) -> bool:
        """Keep `file`; False when it is larger than the whole cache (it is not kept)."""
        size = len(file.data)
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(file, self._clock.now() + self.ttl)
        self._bytes += size
        self._evict()
        return True

    async def fetch(self, key: Key, download: Callable[[], Awaitable[MediaFile]]) -> MediaFile:
        """The cached file, or `download()`'s. One download per file at a time, in a task of
        its own: everyone asking meanwhile shares it, and a caller that goes away (a client
        that hung up) does not cancel it for the others."""
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        task = self._downloads.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(self._download(key, download))
            self._downloads[key] = task  # the strong reference, until it ends
            task.add_done_callback(_retrieve)
        else:
            self.hits += 1
        return await asyncio.shield(task)

    async def _download(self, key: Key, download: Callable[[], Awaitable[MediaFile]]) -> MediaFile:
        try:
            file = await download()
            self.put(key, file)
            return file
        finally:
            self._downloads.pop(key, None)

    def forget_session(self, session_id: str) -> None:
        """A bot deleted or unlinked: its files go."""
        for key in [k for k in self._entries if k[0] == session_id]:
            self._drop(key)

    def _evict(self) -> None:
        now = self._clock.now()
        for key in [k for k, e in self._entries.items() if now >= e.expires_at]:
            self._drop(key)
        while self._bytes > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.file.data)


def _retrieve(task: asyncio.Task[MediaFile]) -> None:
    # Every caller may have gone: the failure was theirs to see, not the event loop's to log.
    if not task.cancelled():
        task.exception()
