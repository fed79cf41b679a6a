"""Sending messages: accepted means stored (202 after the commit), then sent by the outbox."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.content import (
    KINDS,
    MEDIA_KINDS,
    MEDIA_TYPES,
    TEXT,
    allowed_type,
    expected_types,
    identity,
)
from bot.mediastore import MediaFile, MediaStore
from bot.outbox import MAX_TEXT, STATUSES, OutboxMessage, OutboxStore
from bot.quota import MessageQuota
from bot.sender import OutboxSender
from services.mediafetch import MediaFetchError, fetch_media
from web.bodylimit import media_body_bytes
from web.errors import Problem
from web.routing import ApiRoute
from web.send_fields import (
    BODY_BRANCHES,
    CONTACT_SCHEMA,
    LOCATION_SCHEMA,
    MEDIA_SCHEMA,
    REACTION_SCHEMA,
    REPLY_SCHEMA,
    MediaTooLargeError,
    MediaTypeError,
    ParsedSend,
    parse_contact,
    parse_location,
    parse_media,
    parse_reaction,
    reply_to,
    which_kind,
)
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
        "kind": {"type": "string", "enum": list(KINDS)},
        "replyTo": {"type": "string", "description": "the quoted message's WhatsApp id"},
        "media": {
            "type": "object",
            "description": "type, caption, url, mimetype, filename, size, sha256",
        },
        "reaction": {"type": "object"},
        "location": {"type": "object"},
        "contact": {"type": "object", "description": "name, phone and the vCard sent"},
    },
}
SEND_FIELDS = {
    "to",
    "text",
    "media",
    "reaction",
    "location",
    "contact",
    "replyTo",
    "idempotencyKey",
}
# What a server is asked for when it is given a URL of each kind.
ACCEPT = {
    kind: ", ".join(MEDIA_TYPES.get(kind, ())) + ", */*;q=0.1" if kind in MEDIA_TYPES else "*/*"
    for kind in MEDIA_KINDS
}
SEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["to"],
    "additionalProperties": False,
    "description": "Exactly one of text, media, reaction, location and contact; replyTo "
    "quotes a received message (not with a reaction).",
    "oneOf": BODY_BRANCHES,
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
        "media": MEDIA_SCHEMA,
        "reaction": REACTION_SCHEMA,
        "location": LOCATION_SCHEMA,
        "contact": CONTACT_SCHEMA,
        "replyTo": REPLY_SCHEMA,
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
    settings = request.app.state.settings
    body = await read_json(
        request, media_body_bytes(settings.max_body_bytes, settings.max_media_bytes)
    )
    fields = Fields(body, SEND_FIELDS)
    to = normalise_to(fields)
    parsed = parse_body(fields, settings.max_media_bytes)
    key = fields.text("idempotencyKey", max_length=200) or request.headers.get("idempotency-key")
    if key is not None and not KEY_RE.fullmatch(key):
        fields.error("idempotencyKey", "1 to 200 visible ASCII characters")
    fields.done()
    assert to is not None and parsed is not None
    quota: MessageQuota = request.app.state.quota
    exceeded = await quota.check(session.record.user_id)
    if exceeded is not None:
        raise Problem(
            429,
            f"Not queued: {exceeded.reason}; try again in {exceeded.retry_after}s.",
            headers={"Retry-After": str(exceeded.retry_after)},
        )
    now = manager(request).clock.now()
    store = outbox(request)
    if parsed.plain_text:
        message, created = await store.enqueue(session.id, to, parsed.text, key, now)
    else:
        if key is not None:
            # A retry under a known key is answered before any file is fetched again.
            known = await MediaStore(store).by_key(session.id, key)
            if known is not None:
                return _again(known, to, parsed, key)
        media = await media_of(request, parsed)
        if media is not None:
            await media_share(request, session.record.user_id, len(media.data))
        message, created = await MediaStore(store).enqueue(
            session.id, to, parsed.text, parsed.content(), media, key, now
        )
    if not created:
        return _again(message, to, parsed, key)
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


def _again(message: OutboxMessage, to: str, parsed: ParsedSend, key: str | None) -> Response:
    """The answer to a send under a key already used: the stored message, if it is this one."""
    if (message.to, message.kind, message.text) != (to, parsed.kind, parsed.text) or identity(
        message.kind, message.payload
    ) != identity(parsed.kind, parsed.content().payload() if parsed.fields else None):
        raise Problem(
            409,
            f"The idempotency key '{key}' was already used for another message "
            f"({message.id}) of this bot.",
        )
    return JSONResponse(message.as_json(), status_code=200)


def parse_body(fields: Fields, max_media_bytes: int) -> ParsedSend | None:
    """The message's kind and fields; 413 and 415 for a file too big or of a wrong type."""
    kind = which_kind(fields)
    parsed: ParsedSend | None = None
    try:
        if kind == "text":
            text = message_text(fields)
            parsed = None if text is None else ParsedSend(TEXT, text)
        elif kind == "media":
            parsed = parse_media(fields, max_media_bytes)
        elif kind == "reaction":
            parsed = parse_reaction(fields)
        elif kind == "location":
            parsed = parse_location(fields)
        elif kind == "contact":
            parsed = parse_contact(fields)
    except MediaTooLargeError as exc:
        raise Problem(413, str(exc)) from None
    except MediaTypeError as exc:
        raise Problem(415, f"Not a type this message can carry: {exc}.") from None
    reply = reply_to(fields)
    if kind == "reaction" and "replyTo" in fields.body:
        fields.error("replyTo", "a reaction quotes nothing: it is on reaction.messageId")
    if parsed is not None:
        if parsed.url is not None:
            parsed.fields["url"] = parsed.url
        elif parsed.data is not None:
            parsed.fields["sha256"] = hashlib.sha256(parsed.data).hexdigest()
        if reply is not None and kind != "reaction":
            parsed.fields["replyTo"] = reply
    return parsed


async def media_share(request: Request, owner: str | None, size: int) -> None:
    """A user's files not yet sent stay within their share of the database (the admin's
    own bots are not limited, as with the message quota)."""
    bound: int = request.app.state.settings.max_stored_media_bytes_per_user
    if owner is None or not bound:
        return
    stored = await MediaStore(outbox(request)).stored_bytes(owner)
    if stored + size > bound:
        raise Problem(
            429,
            f"Not queued: this user's bots already hold {stored} bytes of files not yet sent; "
            f"with this one ({size} bytes) that is more than "
            f"MAX_STORED_MEDIA_BYTES_PER_USER={bound}. Try again once some are sent "
            f"(dead messages keep their files: retry or remove them).",
            headers={"Retry-After": "60"},
        )


async def media_of(request: Request, parsed: ParsedSend) -> MediaFile | None:
    """The message's file: from the body, or fetched from its URL through the address guard."""
    if parsed.kind not in MEDIA_KINDS:
        return None
    settings = request.app.state.settings
    data, mimetype, filename = parsed.data, parsed.mimetype, parsed.filename
    if parsed.url is not None:
        try:
            fetched = await fetch_media(
                request.app.state.media_client,
                parsed.url,
                max_bytes=settings.max_media_bytes,
                within=settings.media_fetch_timeout.total_seconds(),
                accept=ACCEPT[parsed.kind],
            )
        except MediaFetchError as exc:
            if exc.status == 413:
                raise Problem(413, f"Not queued: {exc.message}.") from None
            raise Problem(
                422,
                f"The media's URL could not be used: {exc.message}.",
                errors=[{"field": "media.url", "message": exc.message}],
            ) from None
        data = fetched.data
        mimetype = mimetype or fetched.mimetype
        filename = filename or fetched.filename
        if not data:
            raise Problem(
                422,
                "The media's URL sent an empty file.",
                errors=[{"field": "media.url", "message": "the answer had no bytes"}],
            )
        if mimetype is None or not allowed_type(parsed.kind, mimetype):
            raise Problem(
                415,
                f"Not a type this message can carry: a {parsed.kind} must be "
                f"{expected_types(parsed.kind)} (the URL sent {mimetype or 'no type'}); "
                "give media.mimetype if the server says the wrong one.",
            )
    assert data is not None and mimetype is not None
    parsed.fields.update(mimetype=mimetype, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    if filename:
        parsed.fields["filename"] = filename
    return MediaFile(data, mimetype, filename)


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
        "Queue a message (202 once stored, media included): text, media (image, video, "
        "audio, voice note, document, sticker; by URL or base64), a reaction, a location or "
        "a contact card, optionally quoting a received message; an idempotencyKey makes a "
        "retry safe",
        body=SEND_SCHEMA,
        responses={
            413: (
                "The body is larger than MAX_BODY_BYTES plus room for MAX_MEDIA_BYTES of "
                "base64, or the file is larger than MAX_MEDIA_BYTES",
                {},
            ),
            415: ("The body is not JSON, or the file's type is not one the kind allows", {}),
            202: ("Queued", MESSAGE_SCHEMA),
            200: ("Already queued under this idempotency key", MESSAGE_SCHEMA),
            409: ("The key was used for another message", {}),
            429: (
                "The owner's message quota is used up (MAX_QUEUED_MESSAGES_PER_USER, "
                "MESSAGE_ACCEPT_RATE or MAX_STORED_MEDIA_BYTES_PER_USER); see Retry-After",
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
