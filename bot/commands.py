"""Built-in chat commands (BOT_COMMANDS): a way to ask a bot, from a phone, whether it lives.

`!ping` → `pong`; `!status` → the bot's state, how long it has been connected, and the
keep-alive success rate of the server it runs on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
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


Reply = Callable[[Any, str, str, str | None], Awaitable[None]]
# One answer per sender per bot this often: a stranger cannot make the bot send in bursts.
COOLDOWN = timedelta(seconds=10)


class ChatCommands:
    """A session listener that answers the commands in the chat they came from.

    Answers go through `reply` (the outbox: paced by SEND_RATE, retried, never lost), keyed
    by the incoming message's id, so a message reported twice is answered once."""

    def __init__(self, clock: Clock, keepalive_summary: Callable[[], str], reply: Reply) -> None:
        self._clock = clock
        self._keepalive_summary = keepalive_summary
        self._reply = reply
        self._last_answer: dict[tuple[str, str], datetime] = {}

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

    def _cooling_down(self, session_id: str, sender: str) -> bool:
        now = self._clock.now()
        key = (session_id, sender)
        last = self._last_answer.get(key)
        if last is not None and now - last < COOLDOWN:
            return True
        if len(self._last_answer) > 10_000:
            self._last_answer = {
                k: at for k, at in self._last_answer.items() if now - at < COOLDOWN
            }
        self._last_answer[key] = now
        return False

    async def __call__(self, session: Any, event: str, data: dict[str, Any]) -> None:
        if event != "message.received":
            return
        reply = self.reply_to(session, str(data.get("body", "")))
        sender = str(data.get("from") or "")
        if reply is None or not sender:
            return
        bound = logger.bind(component="bot", session=session.id)
        command = str(data.get("body", "")).strip().lower()
        if self._cooling_down(session.id, sender):
            bound.info(
                "Not answering {} from {}: answered it less than {}s ago",
                command,
                sender,
                int(COOLDOWN.total_seconds()),
            )
            return
        message_id = data.get("id")
        # In the chat it came from: a group's command is answered in the group.
        chat = str(data.get("chat") or sender)
        await self._reply(session, chat, reply, f"cmd:{message_id}" if message_id else None)
        bound.info("Answering {} from {}", command, sender)
