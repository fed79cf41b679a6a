"""Group commit for accepted messages: the inserts that arrive while one transaction is being
written go, together, into the next one.

An accept is answered only once its row is committed, and on a busy instance most of its cost
was the transaction around one row (a pooled connection, BEGIN, INSERT, COMMIT, each a hop to
the database driver). Here the first insert starts a writer at once (no waiting for company:
a lone request is not slowed); every insert that comes while it writes waits for the next
round, and that round writes them all with one `executemany` in one transaction. Each caller
gets its own row's outcome:

- committed: True;
- a unique-constraint conflict (an idempotency key already used): False for that row only.
  A batch that hits one is written again row by row, each in its own transaction, so one
  caller's repeated key never fails another caller's message;
- any other error (the database away): raised to every caller of that batch; none of their
  rows is committed (one transaction), so a retry is safe.

The writer runs in its own task, tracked by the database (its `dispose()` waits for it), so
a caller that goes away (a client that disconnects) never cancels a transaction holding
others' rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError

from services.database import Database

# Rows in one transaction at most: a large burst is written in several rounds, so no single
# transaction holds the database's write lock for long.
MAX_BATCH = 500

Row = dict[str, Any]


class AcceptBatcher:
    def __init__(self, db: Database, table: Table, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.table = table
        self.max_batch = max_batch
        self._waiting: list[tuple[Row, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (tests and figures)

    async def insert(self, row: Row) -> bool:
        """Insert `row` with the others arriving now; True once committed, False if it
        broke a unique constraint (nothing of it stored)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((row, done))
        if self._writer is None:
            self._writer = loop.create_task(self._write_all())
            self.db.track(self._writer)
        return await asyncio.shield(done)

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                await self._write(batch)
        finally:
            self._writer = None
            if self._waiting:  # only if the loop above was cancelled mid-way
                for _, done in self._waiting:
                    if not done.done():
                        done.set_exception(RuntimeError("the accept writer was stopped"))
                self._waiting.clear()

    async def _write(self, batch: list[tuple[Row, asyncio.Future[bool]]]) -> None:
        self.batches += 1
        try:
            async with self.db.engine.begin() as conn:
                # Rows with the same columns in one executemany; another engineer's optional
                # columns (a row without them) make a second group, in the same transaction.
                for rows in _by_columns([row for row, _ in batch]):
                    await conn.execute(insert(self.table), rows)
        except IntegrityError:
            if len(batch) == 1:
                _settle(batch[0][1], False)
                return
            for one in batch:  # find whose row conflicts; the others are stored
                await self._write([one])
            return
        except BaseException as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else _stopped(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for _, done in batch:
            _settle(done, True)


def _by_columns(rows: list[Row]) -> list[list[Row]]:
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return list(groups.values())


def _settle(done: asyncio.Future[bool], value: bool) -> None:
    if not done.done():
        done.set_result(value)


def _stopped(exc: BaseException) -> Exception:
    error = RuntimeError(f"the accept writer was stopped ({type(exc).__name__})")
    error.__cause__ = exc
    return error
