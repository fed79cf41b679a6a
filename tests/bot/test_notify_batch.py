"""Notices between nodes (Postgres NOTIFY) said at the same moment go out together: every
distinct notice still reaches the listening node, each once, and every caller returns only
once its notice is sent."""

from __future__ import annotations

import asyncio

from bot.cluster import Node
from bot.ownership import OwnershipStore
from services.clock import SystemClock
from services.database import Database


async def test_a_burst_of_notices_reaches_the_other_node_whole(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate()
    speaker, listener = (
        Node(OwnershipStore(db), SystemClock()),
        Node(OwnershipStore(db), SystemClock()),
    )
    heard: list[str] = []
    listener.on_message.append(heard.append)
    await listener.listen()
    try:
        said = [f"outbox:bot_{n % 7:012d}" for n in range(40)]  # repeats among them
        await asyncio.gather(*(speaker.notify(m) for m in said))
        if db.dialect != "postgresql":
            assert heard == []  # SQLite: the nodes poll; nothing is said
            return
        async with asyncio.timeout(10):
            while set(heard) != set(said):
                await asyncio.sleep(0.02)
        assert sorted(set(heard)) == sorted(set(said))
        assert len(heard) <= len(said)  # a notice waiting already is not said twice
    finally:
        await listener.close()
        await db.dispose()
