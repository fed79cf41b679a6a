"""Stored keep-alive pings: every ping is a row, so history and uptime survive restarts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, delete, func, insert, select

from services.database import Database, UTCDateTime, metadata, shielded

pings = Table(
    "keepalive_pings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("ok", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("error", String(500), nullable=True),
)


@dataclass(frozen=True, slots=True)
class PingRecord:
    at: datetime
    ok: bool
    latency_ms: float | None
    status_code: int | None
    error: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "ok": self.ok,
            "latencyMs": None if self.latency_ms is None else round(self.latency_ms, 1),
            "status": self.status_code,
            "error": self.error,
        }


class PingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @shielded
    async def add(self, record: PingRecord) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                insert(pings).values(
                    at=record.at,
                    ok=record.ok,
                    latency_ms=record.latency_ms,
                    status_code=record.status_code,
                    error=(record.error or None) and record.error[:500],
                )
            )

    @shielded
    async def since(self, start: datetime, limit: int) -> list[PingRecord]:
        """The newest `limit` pings at or after `start`, oldest first."""
        query = (
            select(pings.c.at, pings.c.ok, pings.c.latency_ms, pings.c.status_code, pings.c.error)
            .where(pings.c.at >= start)
            .order_by(pings.c.id.desc())
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [PingRecord(*row) for row in reversed(rows)]

    @shielded
    async def count(self) -> int:
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(pings))).scalar_one())

    @shielded
    async def prune(self, keep: int, older_than: datetime) -> int:
        """Drop pings older than `older_than` and all but the newest `keep`; return how many."""
        async with self.db.engine.begin() as conn:
            newest = (await conn.execute(select(func.max(pings.c.id)))).scalar_one_or_none()
            removed = (await conn.execute(delete(pings).where(pings.c.at < older_than))).rowcount
            if newest is not None:
                cut = delete(pings).where(pings.c.id <= newest - keep)
                removed += (await conn.execute(cut)).rowcount
        return int(removed or 0)
