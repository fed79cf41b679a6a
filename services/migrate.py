"""The schema migration in a process of its own, before the server starts.

Alembic (and the migration scripts) cost the server ~10 MB that it would keep for its whole
life to use once, at start; a child process runs them and exits, so `python server.py`
never imports them. The database's URL reaches the child in its environment (never in its
arguments, which `ps` shows); the child prints the one-line error a bad database gives, and
the parent stops with it, as it would have in-process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from services.database import Database, DatabaseError

URL_VARIABLE = "WAKEFUL_MIGRATE_URL"
ROOT = Path(__file__).resolve().parent.parent
MIGRATE_TIMEOUT_S = 600.0  # a long migration on a large database still finishes


def migrate_in_child(url: str) -> str | None:
    """Run the migrations in a child process; None when done, else the error to show."""
    env = {**os.environ, URL_VARIABLE: url}
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import services.migrate as m; m.child()"
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", code],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"The database migration did not finish within {MIGRATE_TIMEOUT_S:.0f}s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"The database migration failed (exit {done.returncode})"


def child() -> None:
    url = os.environ.pop(URL_VARIABLE)
    try:
        asyncio.run(_migrate(url))
    except DatabaseError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
