"""A scripted engine: the manager's tests drive engine events by hand (or automatically).

It implements the same protocol as the WhatsApp driver (`bot.engines.base`), so everything
above the engine runs as in production. `auto_engine` is the factory the end-to-end tests
name in BOT_ENGINE: its sessions show a QR, or connect at once when already "linked".
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from bot.engines.base import (
    EngineError,
    EngineEvent,
    EventKind,
    EventSink,
    Heartbeat,
    MediaFile,
    MediaNotFoundError,
)


class ScriptedSession:
    def __init__(self, engine: ScriptedEngine, session_id: str, on_event: EventSink) -> None:
        self.engine = engine
        self.session_id = session_id
        self.on_event = on_event
        self.stopped = False
        self.logged_out = False
        self.healthy = True
        self.hang_heartbeat = False
        self.sent: list[tuple[str, str]] = []
        # What a received message's file is (by message id), and how often it was fetched.
        self.media: dict[str, MediaFile] = {}
        self.media_fetches = 0

    async def emit(self, kind: EventKind, **data: Any) -> None:
        await self.on_event(EngineEvent(kind, data))

    async def stop(self) -> None:
        self.stopped = True
        if self.engine.live.get(self.session_id) is self:
            del self.engine.live[self.session_id]

    async def logout(self) -> None:
        self.logged_out = True
        self.engine.unlink(self.session_id)

    async def send_text(self, to: str, text: str) -> str:
        if self.engine.fail_sends > 0:
            self.engine.fail_sends -= 1
            raise EngineError("WhatsApp refused the message (scripted)")
        self.sent.append((to, text))
        self.engine.sent.append((self.session_id, to, text))
        return f"msg-{len(self.engine.sent)}"

    async def send_content(self, to: str, content: dict[str, Any]) -> str:
        if self.engine.fail_sends > 0:
            self.engine.fail_sends -= 1
            raise EngineError("WhatsApp refused the message (scripted)")
        self.engine.contents.append((self.session_id, to, content))
        self.engine.sent.append((self.session_id, to, str(content.get("text", ""))))
        return f"msg-{len(self.engine.sent)}"

    async def presence(self, to: str, state: str) -> None:
        self.engine.presences.append((self.session_id, to, state))

    async def heartbeat(self) -> Heartbeat:
        if self.hang_heartbeat:
            await asyncio.sleep(3600)
        return Heartbeat(ok=self.healthy, state="CONNECTED" if self.healthy else "TIMEOUT")

    async def request_pair_code(self, phone: str) -> str:
        gate = self.engine.pair_gate
        if gate is not None:  # the page takes its time (a test says when it answers)
            self.engine.pairs_waiting += 1
            await gate.wait()
        if self.stopped:  # as Playwright says when the browser closed under a call
            raise EngineError("Target page, context or browser has been closed")
        return "WAKEFUL1"  # 8 characters, as WhatsApp's codes are (shown as WAKE-FUL1)

    # Contacts and groups (bot.engines.base.ContactsSession)

    async def query_exists(self, phone: str) -> dict[str, Any]:
        self.engine.exists_asked.append(phone)
        if phone not in self.engine.registered:
            return {"exists": False}
        return {"exists": True, "id": f"{phone}@c.us", "lid": None}

    async def groups(self) -> list[dict[str, Any]]:
        return [
            {"id": g["id"], "name": g["name"], "size": len(g["participants"])}
            for g in self.engine.groups
        ]

    async def group(self, group_id: str) -> dict[str, Any] | None:
        for found in self.engine.groups:
            if found["id"] == group_id:
                return {**found, "size": len(found["participants"])}
        return None

    async def download_media(self, message_id: str) -> MediaFile:
        self.media_fetches += 1
        found = self.media.get(message_id)
        if found is None:
            raise MediaNotFoundError(f"no message {message_id} with a file")
        return found


class ScriptedEngine:
    name = "scripted"

    def __init__(self, *, auto: bool = False, state_file: Path | None = None) -> None:
        self.auto = auto
        self.starts: list[str] = []
        self.live: dict[str, ScriptedSession] = {}
        self.fail_starts = 0  # the next N starts raise EngineError
        self.fail_sends = 0  # the next N sends raise EngineError
        self.sent: list[tuple[str, str, str]] = []  # (session, to, text), every session
        # Messages that are more than text: (session, to, content) as the sender hands them
        self.contents: list[tuple[str, str, dict[str, Any]]] = []
        self.presences: list[tuple[str, str, str]] = []  # (session, to, state)
        self.start_delay = 0.0
        self.pair_gate: asyncio.Event | None = None  # set: pairing codes wait for it
        self.pairs_waiting = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.forgotten: list[str] = []
        self.registered: set[str] = {"15550000001"}  # numbers on "WhatsApp"
        self.exists_asked: list[str] = []
        self.groups: list[dict[str, Any]] = []
        self._state_file = state_file
        self.linked: set[str] = set(self._load_linked())
        self._tasks: set[asyncio.Task[None]] = set()

    def _load_linked(self) -> list[str]:
        if self._state_file and self._state_file.exists():
            linked: list[str] = json.loads(self._state_file.read_text())
            return linked
        return []

    def _save_linked(self) -> None:
        if self._state_file:
            self._state_file.write_text(json.dumps(sorted(self.linked)))

    def link(self, session_id: str) -> None:
        self.linked.add(session_id)
        self._save_linked()

    def unlink(self, session_id: str) -> None:
        self.linked.discard(session_id)
        self._save_linked()

    async def start(self, session_id: str, on_event: EventSink) -> ScriptedSession:
        self.starts.append(session_id)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.start_delay:
                await asyncio.sleep(self.start_delay)
            if self.fail_starts > 0:
                self.fail_starts -= 1
                raise EngineError("scripted start failure")
        finally:
            self.concurrent -= 1
        session = ScriptedSession(self, session_id, on_event)
        self.live[session_id] = session
        if self.auto:
            task = asyncio.get_running_loop().create_task(self._auto(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return session

    async def _auto(self, session: ScriptedSession) -> None:
        await asyncio.sleep(0.01)
        if session.session_id in self.linked:
            await session.emit(EventKind.READY, me="15550001111")
        else:
            await session.emit(EventKind.QR, qr=f"2@scripted-{session.session_id}")

    async def forget(self, session_id: str) -> None:
        self.forgotten.append(session_id)
        self.unlink(session_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def auto_engine(settings: Any) -> ScriptedEngine:
    """BOT_ENGINE=tests.engines:auto_engine — remembers linked bots in DATA_DIR, so a
    restarted process reconnects them without a QR, like a real profile would."""
    data_dir = Path(os.environ.get("DATA_DIR", settings.data_dir))
    engine = ScriptedEngine(auto=True, state_file=data_dir / "scripted-linked.json")
    # Everything started in this process counts as scanned: the e2e tests link by starting.
    original = engine._auto

    async def scan_then_ready(session: ScriptedSession) -> None:
        await original(session)
        if session.session_id not in engine.linked and not session.stopped:
            await asyncio.sleep(0.05)
            engine.link(session.session_id)
            await session.emit(EventKind.AUTHENTICATED)
            await session.emit(EventKind.READY, me="15550001111")

    engine._auto = scan_then_ready  # type: ignore[method-assign]
    return engine
