"""What a bot received lately: `GET /api/sessions/{id}/received`, the last messages kept by
bot.inbox (newest first), each file described with the link that downloads it. Owner or
admin only (another user's bot is a 404, as everywhere)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.inbox import BODY_LIMIT, KEEP, Inbox
from web.routing import ApiRoute
from web.sessions_api import find
from web.validation import int_param

NULLABLE_TEXT: dict[str, Any] = {"type": ["string", "null"]}
RECEIVED_MEDIA: dict[str, Any] = {
    "type": "object",
    "required": ["mimetype", "size", "filename", "caption", "url"],
    "additionalProperties": False,
    "properties": {
        "mimetype": NULLABLE_TEXT,
        "size": {"type": ["integer", "null"], "description": "bytes, as WhatsApp announced"},
        "filename": NULLABLE_TEXT,
        "caption": NULLABLE_TEXT,
        "url": {
            "type": "string",
            "description": "GET it (with the same token) for the file: fetched through "
            "WhatsApp Web when asked, so the bot must be connected",
        },
    },
}
RECEIVED_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "chat", "from", "phone", "type", "body", "media", "receivedAt"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "description": "WhatsApp's message id"},
        "chat": {"type": "string"},
        "from": {"type": "string", "description": "the sender's id (…@c.us or …@lid)"},
        "phone": {**NULLABLE_TEXT, "description": "+ and the digits, when WhatsApp tells it"},
        "type": {"type": "string", "description": "chat, image, video, audio, ptt, document…"},
        "body": {
            "type": "string",
            "description": f"the text or caption (its first {BODY_LIMIT} characters)",
        },
        "media": {"anyOf": [RECEIVED_MEDIA, {"type": "null"}]},
        "receivedAt": {"type": "string", "format": "date-time"},
    },
}
RECEIVED_LIST: dict[str, Any] = {
    "type": "object",
    "required": ["received", "total"],
    "additionalProperties": False,
    "properties": {
        "received": {"type": "array", "items": RECEIVED_MESSAGE},
        "total": {"type": "integer", "minimum": 0, "maximum": KEEP},
    },
}


def inbox(request: Request) -> Inbox:
    found: Inbox = request.app.state.inbox
    return found


async def list_received(request: Request) -> Response:
    session = find(request)
    limit = int_param(request, "limit", default=KEEP, low=1, high=KEEP)
    offset = int_param(request, "offset", default=0, low=0, high=KEEP)
    messages, total = await inbox(request).list_for(session.id, limit, offset)
    return JSONResponse({"received": [m.as_json() for m in messages], "total": total})


INBOX_ROUTES = [
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/received",
        list_received,
        f"The last {KEEP} messages this bot received, newest first (files described, with "
        "the link that downloads them)",
        query={
            "limit": {"type": "integer", "minimum": 1, "maximum": KEEP, "default": KEEP},
            "offset": {"type": "integer", "minimum": 0, "maximum": KEEP, "default": 0},
        },
        responses={200: ("Received messages", RECEIVED_LIST)},
    ),
]
