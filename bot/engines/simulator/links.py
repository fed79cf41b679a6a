"""WhatsApp's servers' side of a linked device: which browser holds its connection.

On the real service a linked device has one live connection. When a second browser opens
the same device (a copy of its profile: the old and the new node of a deploy), the server
keeps the newest connection and sends the older one a `conflict` stream error; its page
shows "WhatsApp is open in another window" and its Socket state becomes CONFLICT. A client
may take the link back (`Socket.takeover()`, what whatsapp-web.js does with
`takeoverOnConflict`), which conflicts the other browser in turn.

The processes of a cluster each run their own simulator, so this record lives in a folder
they share (`WHATSAPP_SIMULATOR_DIR`): one JSON file per device, written atomically under a
lock, with the holder (host, process, simulator, page) and a heartbeat; and a log of the
conflicts, one line each, for the tests to count. Without a folder it lives in memory (one
simulator sees only its own browsers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# A holder whose page has not beaten for this long is gone (its process froze, or died on
# another host); on this host a dead process is seen at once by its pid.
STALE_AFTER_S = 10.0
# Pages beat every second (a conflict is heard within one); the record is rewritten at most
# this often, so a demo left running does not write each bot's file every second.
WRITE_BEAT_EVERY_S = 2.0
CONFLICT_LOG = "simulator-conflicts.jsonl"


@dataclass(frozen=True, slots=True)
class Holder:
    """One browser page of one simulator in one process."""

    host: str
    pid: int
    simulator: str
    page: str

    def label(self) -> str:
        return f"{self.host}:{self.pid}/{self.simulator}/{self.page}"


@dataclass(frozen=True, slots=True)
class Conflict:
    session_id: str
    device: str
    replaced: str  # the holder that got the conflict
    by: str  # the browser that took the link
    takeover: bool  # taken back by `Socket.takeover()`, not by opening
    at: float


def device_id(secret: str) -> str:
    """A file-safe name for a linked device, from the link's own secret (never stored)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:24]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LinkRegistry:
    def __init__(self, folder: Path | None, *, now: Callable[[], float] = time.time) -> None:
        self._folder = folder / "simulator-links" if folder is not None else None
        self._log = folder / CONFLICT_LOG if folder is not None else None
        self._now = now
        self._memory: dict[str, dict[str, Any]] = {}
        self._memory_conflicts: list[Conflict] = []
        self._host = socket.gethostname()

    # The record ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._folder is None:
            yield
            return
        self._folder.mkdir(parents=True, exist_ok=True)
        with (self._folder / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, device: str) -> dict[str, Any] | None:
        if self._folder is None:
            return self._memory.get(device)
        try:
            found: dict[str, Any] = json.loads((self._folder / f"{device}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return found

    def _write(self, device: str, record: dict[str, Any] | None) -> None:
        if self._folder is None:
            if record is None:
                self._memory.pop(device, None)
            else:
                self._memory[device] = record
            return
        path = self._folder / f"{device}.json"
        if record is None:
            path.unlink(missing_ok=True)
            return
        # Atomic: another process reads either the old holder or the new one.
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    def _live(self, record: dict[str, Any]) -> bool:
        holder = record["holder"]
        if self._now() - float(record["beat"]) > STALE_AFTER_S:
            return False
        return holder["host"] != self._host or _pid_alive(int(holder["pid"]))

    def _log_conflict(self, conflict: Conflict) -> None:
        if self._log is None:
            self._memory_conflicts.append(conflict)
            return
        with self._log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(conflict)) + "\n")

    # What the pages do -----------------------------------------------------------------

    def holder(self, simulator: str, page: str) -> Holder:
        return Holder(self._host, os.getpid(), simulator, page)

    def open(
        self, device: str, session_id: str, holder: Holder, *, takeover: bool = False
    ) -> Holder | None:
        """`holder` connects as `device`; the live browser it replaces (which gets the
        conflict), if any."""
        with self._locked():
            record = self._read(device)
            replaced: Holder | None = None
            if record is not None and record["holder"] != asdict(holder) and self._live(record):
                replaced = Holder(**record["holder"])
                self._log_conflict(
                    Conflict(
                        session_id=session_id,
                        device=device,
                        replaced=replaced.label(),
                        by=holder.label(),
                        takeover=takeover,
                        at=self._now(),
                    )
                )
            self._write(
                device, {"session": session_id, "holder": asdict(holder), "beat": self._now()}
            )
            return replaced

    def beat(self, device: str, holder: Holder) -> bool:
        """The page is still there; False: another browser holds the device now."""
        with self._locked():
            record = self._read(device)
            if record is None or record["holder"] != asdict(holder):
                return record is None  # released (its page closed): nobody conflicts it
            if self._now() - float(record["beat"]) < WRITE_BEAT_EVERY_S:
                return True
            record["beat"] = self._now()
            self._write(device, record)
            return True

    def release(self, device: str, holder: Holder) -> None:
        """The page closed: the device has no connection, unless another took it."""
        with self._locked():
            record = self._read(device)
            if record is not None and record["holder"] == asdict(holder):
                self._write(device, None)

    def held_by(self, device: str) -> Holder | None:
        with self._locked():
            record = self._read(device)
        return Holder(**record["holder"]) if record and self._live(record) else None

    def conflicts(self, session_id: str | None = None) -> list[Conflict]:
        """Every conflict WhatsApp gave (in every process sharing the folder)."""
        if self._log is None:
            found = list(self._memory_conflicts)
        elif not self._log.exists():
            found = []
        else:
            lines = self._log.read_text(encoding="utf-8").splitlines()
            found = [Conflict(**json.loads(line)) for line in lines if line.strip()]
        return [c for c in found if session_id is None or c.session_id == session_id]
