"""Open incidents in the database: an alert raised before a restart (how a PaaS applies a
fixed setting) is still open after it, so the RESOLVED notice is sent once, with the downtime
counted from the first failure. A resolved incident's row is deleted; the log keeps history.

The rows are also how several nodes speak with one voice: the node whose insert opens the
incident sends the alert, the node whose delete closes it sends the resolved notice; the
others only log what they saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, String, Table, Text, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

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
    async def open(self, key: str, title: str, message: str, opened_at: datetime) -> bool:
        """Store an open incident. True when this call opened it; False when it was open
        already (raised by another node, or before a restart): its notice was sent then;
        the stored start is kept, the message is the latest."""
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(incidents).values(
                        key=key, title=title[:200], message=message, opened_at=opened_at
                    )
                )
        except IntegrityError:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    update(incidents)
                    .where(incidents.c.key == key)
                    .values(title=title[:200], message=message)
                )
            return False
        return True

    @shielded
    async def close(self, key: str) -> bool:
        """True when this call closed it (the one resolved notice is this caller's)."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(incidents).where(incidents.c.key == key))
        return bool(result.rowcount == 1)

    @shielded
    async def all_open(self) -> list[StoredIncident]:
        query = select(
            incidents.c.key, incidents.c.title, incidents.c.message, incidents.c.opened_at
        ).order_by(incidents.c.opened_at)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredIncident(*row) for row in rows]
