"""Open incidents in the database: an alert raised before a restart (how a PaaS applies a
fixed setting) is still open after it, so the RESOLVED notice is sent once, with the downtime
counted from the first failure. A resolved incident's row is deleted; the log keeps history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, String, Table, Text, delete, insert, select, update

from services.database import Database, UTCDateTime, metadata, shielded

incidents = Table(
    "incidents",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("message", Text, nullable=False),
    Column("opened_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredIncident:
    key: str
    title: str
    message: str
    opened_at: datetime


class IncidentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @shielded
    async def open(self, key: str, title: str, message: str, opened_at: datetime) -> None:
        """Store an open incident; one already stored under the key keeps its start."""
        async with self.db.engine.begin() as conn:
            changed = await conn.execute(
                update(incidents)
                .where(incidents.c.key == key)
                .values(title=title[:200], message=message)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(incidents).values(
                        key=key, title=title[:200], message=message, opened_at=opened_at
                    )
                )

    @shielded
    async def close(self, key: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(incidents).where(incidents.c.key == key))

    @shielded
    async def all_open(self) -> list[StoredIncident]:
        query = select(
            incidents.c.key, incidents.c.title, incidents.c.message, incidents.c.opened_at
        ).order_by(incidents.c.opened_at)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredIncident(*row) for row in rows]
