"""Built-in chat commands (BOT_COMMANDS): a way to ask a bot, from a phone, whether it lives.

`!ping` → `pong`; `!status` → the bot's state, how long it has been connected, and the
keep-alive success rate of the server it runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from loguru import logger

from services.clock import Clock


def _uptime(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes = seconds // 60
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


class ChatCommands:
    """A session listener that answers the commands in the chat they came from."""

    def __init__(self, clock: Clock, keepalive_summary: Callable[[], str]) -> None:
        self._clock = clock
        self._keepalive_summary = keepalive_summary

    def reply_to(self, session: Any, body: str) -> str | None:
        command = body.strip().lower()
        if command == "!ping":
            return "pong"
        if command == "!status":
            record = session.record
            connected = record.last_connected_at
            up = _uptime(self._clock.now() - connected) if connected else "not connected"
            return (
                f"🤖 {record.name}: {record.state.value}\n"
                f"⏱️ connected for {up}\n"
                f"💓 keep-alive: {self._keepalive_summary()}"
            )
        return None

    async def __call__(self, session: Any, event: str, data: dict[str, Any]) -> None:
        if event != "message.received":
            return
        reply = self.reply_to(session, str(data.get("body", "")))
        handle = session.engine_session
        if reply is None or handle is None or not data.get("from"):
            return
        await handle.send_text(str(data["from"]), reply)
        await session.touch()
        logger.bind(component="bot", session=session.id).info(
            "Answered {} from {}", str(data.get("body", "")).strip().lower(), data["from"]
        )
