"""The body of a send: text, media, a reaction, a location or a contact card (exactly one),
optionally quoting a received message. The JSON Schema here is the contract, and the
parsing below accepts exactly what it allows (schemathesis holds both to it)."""

from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass, field
from typing import Any

from bot.content import (
    MAX_CAPTION,
    MAX_FILENAME,
    MEDIA_KINDS,
    MEDIA_TYPES,
    MESSAGE_ID_RE,
    MIMETYPE_RE,
    TEXT,
    Content,
    allowed_type,
    expected_types,
    vcard,
)
from web.validation import PHONE_SCHEMAS, Fields, stripped_pattern
from web.webhook_fields import WEBHOOK_URL_PATTERN

BODY_KINDS = ("text", "media", "reaction", "location", "contact")
# Values are stripped before they are checked, as everywhere in the API (web.validation).
BASE64_PATTERN = stripped_pattern(
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
)
MESSAGE_ID_PATTERN = stripped_pattern(MESSAGE_ID_RE.pattern)
MIMETYPE_PATTERN = stripped_pattern(MIMETYPE_RE.pattern)
MAX_EMOJI = 16
MAX_PLACE = 200
MAX_ADDRESS = 500
MAX_CONTACT_NAME = 100
PHONE_RE = re.compile(r"\s*\+?[0-9]{7,15}\s*")

_NO_CAPTION = ("audio", "voice", "sticker")


def _media_type_branch(kind: str) -> dict[str, Any]:
    branch: dict[str, Any] = {"properties": {"type": {"const": kind}}}
    if kind != "document":
        branch["properties"]["mimetype"] = {"enum": list(MEDIA_TYPES[kind])}
    if kind in _NO_CAPTION:
        branch["not"] = {"required": ["caption"]}
    return branch


MEDIA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "description": "A file, from `url` (fetched by the server, through the same address "
    "guard as webhooks) or `data` (base64, with its `mimetype`); at most MAX_MEDIA_BYTES "
    "(16 MiB) once decoded. `voice` is a voice note (push-to-talk), `audio` a file.",
    "properties": {
        "type": {"type": "string", "enum": list(MEDIA_KINDS)},
        "url": {"type": "string", "maxLength": 2000, "pattern": WEBHOOK_URL_PATTERN},
        "data": {"type": "string", "pattern": BASE64_PATTERN},
        "mimetype": {
            "type": "string",
            "pattern": MIMETYPE_PATTERN,
            "description": "image: "
            + expected_types("image")
            + "; video: "
            + expected_types("video")
            + "; audio: "
            + expected_types("audio")
            + "; voice: "
            + expected_types("voice")
            + "; sticker: image/webp; document: any",
        },
        "filename": {"type": "string", "minLength": 1, "maxLength": MAX_FILENAME},
        "caption": {
            "type": "string",
            "maxLength": MAX_CAPTION,
            "description": "images, videos and documents only",
        },
    },
    "allOf": [
        {"oneOf": [{"required": ["url"]}, {"required": ["data", "mimetype"]}]},
        {"oneOf": [_media_type_branch(kind) for kind in MEDIA_KINDS]},
    ],
}
REACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messageId", "emoji"],
    "additionalProperties": False,
    "properties": {
        "messageId": {"type": "string", "pattern": MESSAGE_ID_PATTERN},
        "emoji": {
            "type": "string",
            "maxLength": MAX_EMOJI,
            "description": "an empty string removes the bot's reaction",
        },
    },
}
LOCATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["latitude", "longitude"],
    "additionalProperties": False,
    "properties": {
        "latitude": {"type": "number", "minimum": -90, "maximum": 90},
        "longitude": {"type": "number", "minimum": -180, "maximum": 180},
        "name": {"type": "string", "maxLength": MAX_PLACE},
        "address": {"type": "string", "maxLength": MAX_ADDRESS},
    },
}
CONTACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "phone"],
    "additionalProperties": False,
    "description": "sent as a vCard",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_CONTACT_NAME, "pattern": r"\S"},
        "phone": {
            "type": "string",
            "pattern": r"^\s*\+?[0-9]{7,15}\s*$",
            "description": "+15551234567",
        },
    },
}
REPLY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": MESSAGE_ID_PATTERN,
    "description": "the WhatsApp id of a received message to quote (its `id` in the "
    "message.received event)",
}
BODY_BRANCHES: list[dict[str, Any]] = [
    {"required": ["text"]},
    {"required": ["media"]},
    # A reaction quotes nothing: it is on the message it names.
    {"required": ["reaction"], "not": {"required": ["replyTo"]}},
    {"required": ["location"]},
    {"required": ["contact"]},
]
assert PHONE_SCHEMAS  # the `to` field's schemas live with the route


@dataclass(slots=True)
class ParsedSend:
    kind: str  # one of bot.content.KINDS
    text: str  # the text, a caption, an emoji, a place's name: what a list shows
    fields: dict[str, Any] = field(default_factory=dict)
    url: str | None = None  # media to fetch
    data: bytes | None = None  # media given in the body
    mimetype: str | None = None
    filename: str | None = None

    @property
    def plain_text(self) -> bool:
        return self.kind == TEXT and not self.fields

    def content(self) -> Content:
        return Content(self.kind, self.fields)


def _sub(fields: Fields, name: str, allowed: set[str]) -> Fields | None:
    value = fields.body.get(name)
    if not isinstance(value, dict):
        fields.error(name, f"expected an object, got {type(value).__name__}")
        return None
    return Fields(value, allowed)


def _merge(fields: Fields, name: str, sub: Fields) -> None:
    for error in sub.errors:
        fields.error(f"{name}.{error['field']}", error["message"])


def _string(sub: Fields, name: str, *, low: int = 0, high: int) -> str | None:
    value = sub.body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        sub.error(name, f"expected a string, got {type(value).__name__}")
        return None
    if not low <= len(value) <= high:
        sub.error(name, f"{low} to {high} characters")
        return None
    return value


def _number(sub: Fields, name: str, bound: float) -> float | None:
    value = sub.body.get(name)
    if value is None:
        sub.error(name, f"required; a number from -{bound:g} to {bound:g}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        sub.error(name, f"expected a number, got {type(value).__name__}")
        return None
    if not math.isfinite(value) or not -bound <= value <= bound:
        sub.error(name, f"a number from -{bound:g} to {bound:g}")
        return None
    return float(value)


def which_kind(fields: Fields) -> str | None:
    given = [name for name in BODY_KINDS if name in fields.body]
    if len(given) != 1:
        fields.error(
            "text" if not given else given[1],
            "send exactly one of text, media, reaction, location and contact"
            + (f" (got {', '.join(given)})" if given else ""),
        )
        return None
    return given[0]


def reply_to(fields: Fields) -> str | None:
    value = fields.body.get("replyTo")
    if value is None:
        return None
    if not isinstance(value, str) or not MESSAGE_ID_RE.fullmatch(value.strip()):
        fields.error(
            "replyTo", "expected a received message's WhatsApp id (false_<chat>_<id>[_<author>])"
        )
        return None
    return value.strip()


def parse_media(fields: Fields, max_media_bytes: int) -> ParsedSend | None:
    sub = _sub(fields, "media", {"type", "url", "data", "mimetype", "filename", "caption"})
    if sub is None:
        return None
    kind = sub.body.get("type")
    if kind not in MEDIA_KINDS:
        sub.error("type", f"required; one of {', '.join(MEDIA_KINDS)}")
        kind = None
    has_url, has_data = "url" in sub.body, "data" in sub.body
    url = data = mimetype = None
    if has_url == has_data:
        sub.error("url" if has_url else "data", "give the file as exactly one of url and data")
    elif has_url:
        url = sub.url("url")
        if url is not None:
            url = sub.requestable_url("url", url)
    raw_type = sub.body.get("mimetype")
    if raw_type is not None and (
        not isinstance(raw_type, str) or not MIMETYPE_RE.fullmatch(raw_type.strip())
    ):
        sub.error("mimetype", "expected a media type in lower case, like image/jpeg")
    elif isinstance(raw_type, str):
        mimetype = raw_type.strip()
    filename = _string(sub, "filename", low=1, high=MAX_FILENAME)
    caption = _string(sub, "caption", high=MAX_CAPTION)
    if caption is not None and kind in _NO_CAPTION:
        sub.error("caption", f"a {kind} has no caption on WhatsApp")
    problem_415: str | None = None
    if has_data and not has_url:
        if mimetype is None and "mimetype" not in sub.body:
            sub.error("mimetype", "required with data: the file's media type")
        data = _base64(sub, max_media_bytes)
    # A document may be any type; the other kinds list theirs exactly (no spaces around).
    checked = mimetype if kind == "document" else raw_type
    if kind is not None and mimetype is not None and not allowed_type(kind, str(checked)):
        problem_415 = f"a {kind} must be {expected_types(kind)} (got {mimetype})"
    _merge(fields, "media", sub)
    if problem_415 is not None and not sub.errors:
        raise MediaTypeError(problem_415)
    if sub.errors or kind is None:
        return None
    shown: dict[str, Any] = {}
    if caption:
        shown["caption"] = caption
    return ParsedSend(
        kind=kind,
        text=caption or "",
        fields=shown,
        url=url,
        data=data,
        mimetype=mimetype,
        filename=filename,
    )


class MediaTooLargeError(Exception):
    pass


class MediaTypeError(Exception):
    pass


def _base64(sub: Fields, max_media_bytes: int) -> bytes | None:
    value = sub.body.get("data")
    if isinstance(value, str):
        value = value.strip()
    if not isinstance(value, str) or len(value) < 4 or len(value) % 4:
        sub.error("data", "expected the file as base64 (standard alphabet, padded)")
        return None
    if len(value) // 4 * 3 - value[-2:].count("=") > max_media_bytes:
        raise MediaTooLargeError(
            f"The file is larger than MAX_MEDIA_BYTES ({max_media_bytes} bytes)."
        )
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        sub.error("data", "expected the file as base64 (standard alphabet, padded)")
        return None


def parse_reaction(fields: Fields) -> ParsedSend | None:
    sub = _sub(fields, "reaction", {"messageId", "emoji"})
    if sub is None:
        return None
    message_id = sub.body.get("messageId")
    if isinstance(message_id, str):
        message_id = message_id.strip()
    if not isinstance(message_id, str) or not MESSAGE_ID_RE.fullmatch(message_id):
        sub.error("messageId", "required; a message's WhatsApp id (false_<chat>_<id>)")
    emoji = _string(sub, "emoji", high=MAX_EMOJI)
    if "emoji" not in sub.body:
        sub.error("emoji", "required; an emoji, or an empty string to remove the reaction")
    _merge(fields, "reaction", sub)
    if sub.errors or emoji is None:
        return None
    return ParsedSend("reaction", emoji, {"messageId": message_id, "emoji": emoji})


def parse_location(fields: Fields) -> ParsedSend | None:
    sub = _sub(fields, "location", {"latitude", "longitude", "name", "address"})
    if sub is None:
        return None
    latitude = _number(sub, "latitude", 90)
    longitude = _number(sub, "longitude", 180)
    name = _string(sub, "name", high=MAX_PLACE)
    address = _string(sub, "address", high=MAX_ADDRESS)
    _merge(fields, "location", sub)
    if sub.errors:
        return None
    found: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name:
        found["name"] = name
    if address:
        found["address"] = address
    return ParsedSend("location", name or f"{latitude}, {longitude}", found)


def parse_contact(fields: Fields) -> ParsedSend | None:
    sub = _sub(fields, "contact", {"name", "phone"})
    if sub is None:
        return None
    name = _string(sub, "name", low=1, high=MAX_CONTACT_NAME)
    if "name" not in sub.body:
        sub.error("name", "required; the contact's name")
    elif name is not None and not name.strip():
        sub.error("name", "must not be only spaces")
    phone = sub.body.get("phone")
    if not isinstance(phone, str) or not PHONE_RE.fullmatch(phone):
        sub.error("phone", "required; a phone number in international form (+15551234567)")
    _merge(fields, "contact", sub)
    if sub.errors or name is None or not isinstance(phone, str):
        return None
    digits = re.sub(r"\D", "", phone)
    card = vcard(name.strip(), digits)
    return ParsedSend(
        "contact", name.strip(), {"name": name.strip(), "phone": f"+{digits}", "vcard": card}
    )
