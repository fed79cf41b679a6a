"""Sending messages: accepted means stored (202 after the commit), then sent by the outbox."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.outbox import MAX_TEXT, STATUSES, OutboxStore
from bot.quota import MessageQuota
from bot.sender import OutboxSender
from web.errors import Problem
from web.routing import ApiRoute
from web.sessions_api import audit, find, manager
from web.validation import (
    MAX_OFFSET,
    PHONE_SCHEMAS,
    Fields,
    choice_param,
    int_param,
    read_json,
    stripped_pattern,
)

# A WhatsApp chat id: a person (c.us / s.whatsapp.net / lid), a group (g.us), a channel.
CHAT_ID_RE = re.compile(r"\d{5,20}(-\d{1,20})?@(c\.us|g\.us|s\.whatsapp\.net|lid|newsletter)")
PHONE_RE = re.compile(r"\+?[1-9][0-9 ()\-.]{5,24}")
KEY_RE = re.compile(r"[\x21-\x7e]{1,200}")
CHAT_ID_BODY = r"\d{5,20}(?:-\d{1,20})?@(?:c\.us|g\.us|s\.whatsapp\.net|lid|newsletter)"
CHAT_ID_PATTERN = stripped_pattern(CHAT_ID_BODY)
# Empty (or only spaces) means no key, as when the field is left out.
KEY_PATTERN = stripped_pattern(r"[!-~]{1,200}") + "|^\\s*$"
TO_EXPECTED = (
    "expected a phone number in international form (+15551234567) or a WhatsApp chat id "
    "(15551234567@c.us, 1203630xxxxxxx@g.us)"
)

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status", "to", "attempts"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "to": {"type": "string"},
        "text": {"type": "string"},
        "attempts": {"type": "integer"},
        "lastError": {"type": ["string", "null"]},
        "createdAt": {"type": "string"},
        "sentAt": {"type": ["string", "null"]},
    },
}
SEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["to", "text"],
    "additionalProperties": False,
    "properties": {
        "to": {
            "type": "string",
            "anyOf": [{"pattern": CHAT_ID_PATTERN}, *PHONE_SCHEMAS],
            "description": "+15551234567 (7 to 15 digits) or a chat id: 15551234567@c.us, "
            "1203630xxxxxxx@g.us",
        },
        "text": {
            "type": "string",
            "maxLength": MAX_TEXT,
            "pattern": r"\S",
            "description": "not only whitespace",
        },
        "idempotencyKey": {
            "type": "string",
            "pattern": KEY_PATTERN,
            "description": "1 to 200 visible ASCII characters; the Idempotency-Key header "
            "works too",
        },
    },
}


def outbox(request: Request) -> OutboxStore:
    found: OutboxStore = request.app.state.outbox
    return found


def normalise_to(fields: Fields) -> str | None:
    raw = fields.body.get("to")
    if not isinstance(raw, str) or not raw.strip():
        fields.error("to", "required; " + TO_EXPECTED)
        return None
    value = raw.strip()
    if CHAT_ID_RE.fullmatch(value):
        return value
    digits = re.sub(r"\D", "", value)
    if PHONE_RE.fullmatch(value) and 7 <= len(digits) <= 15:
        return digits
    fields.error("to", TO_EXPECTED)
    return None


def message_text(fields: Fields) -> str | None:
    text = fields.body.get("text")
    if not isinstance(text, str) or not text.strip():
        fields.error("text", "required; a non-empty string")
        return None
    if len(text) > MAX_TEXT:
        fields.error("text", f"at most {MAX_TEXT} characters (this one has {len(text)})")
        return None
    return text


async def send_message(request: Request) -> Response:
    session = find(request)
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    fields = Fields(body, {"to", "text", "idempotencyKey"})
    to = normalise_to(fields)
    text = message_text(fields)
    key = fields.text("idempotencyKey", max_length=200) or request.headers.get("idempotency-key")
    if key is not None and not KEY_RE.fullmatch(key):
        fields.error("idempotencyKey", "1 to 200 visible ASCII characters")
    fields.done()
    assert to is not None and text is not None
    quota: MessageQuota = request.app.state.quota
    exceeded = await quota.check(session.record.user_id)
    if exceeded is not None:
        raise Problem(
            429,
            f"Not queued: {exceeded.reason}; try again in {exceeded.retry_after}s.",
            headers={"Retry-After": str(exceeded.retry_after)},
        )
    now = manager(request).clock.now()
    message, created = await outbox(request).enqueue(session.id, to, text, key, now)
    if not created:
        if (message.to, message.text) != (to, text):
            raise Problem(
                409,
                f"The idempotency key '{key}' was already used for another message "
                f"({message.id}) of this bot.",
            )
        return JSONResponse(message.as_json(), status_code=200)
    sender: OutboxSender = request.app.state.sender
    # An expired bot wakes for it (through the lease: another node may have been first).
    await manager(request).wake(session, "a message was queued")
    sender.wake(session.id)
    if not session.held():
        # Another node runs the bot: its worker is told at once (Postgres NOTIFY).
        await manager(request).node.notify(f"outbox:{session.id}")
    return JSONResponse(
        message.as_json(),
        status_code=202,
        headers={"Location": f"/api/sessions/{session.id}/messages/{message.id}"},
    )


async def list_messages(request: Request) -> Response:
    session = find(request)
    status = choice_param(request, "status", STATUSES)
    limit = int_param(request, "limit", default=50, low=1, high=500)
    offset = int_param(request, "offset", default=0, low=0, high=MAX_OFFSET)
    store = outbox(request)
    messages, total = await store.list_for(session.id, status, limit, offset)
    return JSONResponse(
        {
            "messages": [m.as_json() for m in messages],
            "total": total,
            "counts": await store.counts(session.id),
        }
    )


async def get_message(request: Request) -> Response:
    session = find(request)
    message_id = request.path_params["message_id"]
    message = await outbox(request).get(session.id, message_id[:40])
    if message is None:
        raise Problem(404, f"There is no message '{message_id[:40]}' for this bot.")
    return JSONResponse(message.as_json())


async def retry_dead(request: Request) -> Response:
    session = find(request)
    count = await outbox(request).requeue_dead(session.id, manager(request).clock.now())
    request.app.state.sender.wake(session.id)
    await audit(request, "messages.retry_dead", session.id, str(count))
    return JSONResponse({"requeued": count})


MESSAGE_ROUTES = [
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/messages",
        send_message,
        "Queue a text message (202 once stored); an idempotencyKey makes a retry safe",
        body=SEND_SCHEMA,
        responses={
            202: ("Queued", MESSAGE_SCHEMA),
            200: ("Already queued under this idempotency key", MESSAGE_SCHEMA),
            409: ("The key was used for another message", {}),
            429: (
                "The owner's message quota is used up (MAX_QUEUED_MESSAGES_PER_USER or "
                "MESSAGE_ACCEPT_RATE); see Retry-After",
                {},
            ),
        },
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/messages",
        list_messages,
        "This bot's messages, newest first, with counts by status",
        query={
            "status": {"type": "string", "enum": list(STATUSES)},
            "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
            "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
        responses={200: ("Messages", {"type": "object"})},
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/messages/{message_id}",
        get_message,
        "One message: status, attempts, last error, times",
        responses={200: ("The message", MESSAGE_SCHEMA)},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/messages/retry-dead",
        retry_dead,
        "Queue this bot's dead messages again",
        responses={200: ("How many", {"type": "object"})},
    ),
]
