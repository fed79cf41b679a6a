"""What a bot received, as the webhook events its owner subscribes to.

The engine reports messages, reactions, edits, deletions and group notifications in its own
words (`bot.engines.base.EventKind`); this module names them for the webhook and adds what
only the server knows: where a received file can be downloaded.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bot.engines.base import EventKind

RECEIVED_KINDS = frozenset(
    {EventKind.MESSAGE, EventKind.REACTION, EventKind.EDITED, EventKind.REVOKED, EventKind.GROUP}
)
GROUP_EVENTS = {"join": "group.join", "leave": "group.leave", "update": "group.update"}
EVENT_NAMES = {
    EventKind.MESSAGE: "message.received",
    EventKind.REACTION: "message.reaction",
    EventKind.EDITED: "message.edited",
    EventKind.REVOKED: "message.revoked",
}


def media_path(session_id: str, message_id: str) -> str:
    """The API path that serves a received message's file (the id quoted: it has `@`)."""
    return f"/api/sessions/{session_id}/messages/{quote(message_id, safe='')}/media"


def webhook_event(
    session_id: str, kind: EventKind, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The webhook event's name and data for what the engine reported."""
    payload = dict(data)
    if kind is EventKind.GROUP:
        return GROUP_EVENTS.get(str(payload.get("action")), "group.update"), payload
    if kind is EventKind.MESSAGE:
        payload.setdefault("quotedMessageId", None)
        media = payload.get("media")
        if isinstance(media, dict):
            payload["media"] = {**media, "url": media_path(session_id, str(payload.get("id", "")))}
        else:
            payload["media"] = None
    return EVENT_NAMES[kind], payload
