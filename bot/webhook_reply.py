"""Answering from the webhook: a `message.received` delivery answered (2xx) with
`{"reply": {"text": ..., "to"?: ..., "quote"?: true}}` queues that message for the bot, once
per delivery id, however often the delivery is retried (its idempotency key is derived from
the delivery id). A bot can be one small HTTP handler, with no second call back.

The answer is read within the delivery's own deadline and size bound; an answer that is not
JSON, or has no `reply`, is an ordinary acknowledgement. A `reply` that is not valid is
refused and the refusal is recorded on the delivery (its `lastError`), where its owner sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

MAX_REPLY_BYTES = 65_536
MAX_REPLY_TEXT = 4096
REPLY_EVENT = "message.received"
CHAT_ID_RE = re.compile(r"\d{5,20}(-\d{1,20})?@(c\.us|g\.us|s\.whatsapp\.net|lid|newsletter)")
PHONE_RE = re.compile(r"\+?[1-9][0-9 ()\-.]{5,24}")
REPLY_FIELDS = frozenset({"text", "to", "quote"})


@dataclass(frozen=True, slots=True)
class Reply:
    to: str
    text: str
    quoted_id: str | None  # the received message's id, when quoting (the default)
    key: str  # the outbox idempotency key: one message per delivery


class ReplyRefusedError(ValueError):
    """The receiver's `reply` cannot be sent; the message says why, for its owner."""


# Queues the reply (the app's outbox); returns None when queued, else why not.
QueueReply = Callable[[str, Reply], Awaitable[str | None]]


def reply_key(delivery_id: str) -> str:
    return f"webhook-reply:{delivery_id}"


def parse_reply(body: bytes, delivery_id: str, payload: str) -> Reply | None:
    """The reply asked for in a receiver's answer, None when it asks for none; raises
    ReplyRefusedError for a `reply` that cannot be sent."""
    if not body.strip():
        return None
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # "OK", an HTML page: an acknowledgement, not a reply
    if not isinstance(answer, dict) or "reply" not in answer:
        return None
    wanted = answer["reply"]
    if not isinstance(wanted, dict):
        raise ReplyRefusedError('reply: expected an object like {"text": "..."}')
    unknown = sorted(set(wanted) - REPLY_FIELDS)
    if unknown:
        raise ReplyRefusedError(f"reply.{unknown[0]}: unknown field; expected text, to, quote")
    text = wanted.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ReplyRefusedError("reply.text: required; a non-empty string")
    if len(text) > MAX_REPLY_TEXT:
        raise ReplyRefusedError(f"reply.text: at most {MAX_REPLY_TEXT} characters")
    quote = wanted.get("quote", True)
    if not isinstance(quote, bool):
        raise ReplyRefusedError("reply.quote: expected true or false")
    received = _received(payload)
    to = _recipient(wanted.get("to"), received)
    quoted = str(received["id"]) if quote and received.get("id") else None
    return Reply(to=to, text=text, quoted_id=quoted, key=reply_key(delivery_id))


def _received(payload: str) -> dict[str, Any]:
    try:
        data = json.loads(payload).get("data")
    except (ValueError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def _recipient(raw: object, received: dict[str, Any]) -> str:
    """Where the reply goes: `to` as the send API takes it, by default the chat the
    message came from (a group's reply goes to the group)."""
    if raw is None:
        chat = received.get("chat")
        if isinstance(chat, str) and CHAT_ID_RE.fullmatch(chat):
            return chat
        raise ReplyRefusedError("reply.to: the received message has no chat to answer in")
    if not isinstance(raw, str):
        raise ReplyRefusedError("reply.to: expected a string")
    value = raw.strip()
    if CHAT_ID_RE.fullmatch(value):
        return value
    digits = re.sub(r"\D", "", value)
    if PHONE_RE.fullmatch(value) and 7 <= len(digits) <= 15:
        return digits
    raise ReplyRefusedError(
        "reply.to: expected a phone number in international form (+15551234567) or a "
        "WhatsApp chat id (15551234567@c.us, 1203630xxxxxxx@g.us)"
    )
