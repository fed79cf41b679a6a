"""What an outbox message carries besides text: its kind, and the fields of that kind.

A message is text (optionally quoting a received message), media (image, video, audio, a
voice note, a document or a sticker, with a caption and a file name; the bytes are kept
apart, in `bot.mediastore`), a reaction to a message (an empty emoji removes it), a location
or a contact card. The fields are stored as JSON beside the message (`payload`) and handed
to the engine as they are, with the media's bytes, when the message is sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TEXT = "text"
MEDIA_KINDS = ("image", "video", "audio", "voice", "document", "sticker")
KINDS = (TEXT, *MEDIA_KINDS, "reaction", "location", "contact")

# The types WhatsApp shows as each kind; anything else is refused (415), except documents,
# which may be any file.
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("image/jpeg", "image/png", "image/webp"),
    "video": ("video/mp4", "video/3gpp", "video/quicktime"),
    "audio": (
        "audio/mpeg",
        "audio/mp4",
        "audio/ogg",
        "audio/aac",
        "audio/amr",
        "audio/wav",
        "audio/webm",
        "audio/opus",
        "audio/x-m4a",
    ),
    "voice": ("audio/ogg", "audio/opus", "audio/mpeg", "audio/mp4", "audio/aac", "audio/webm"),
    "sticker": ("image/webp",),
}
MIMETYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
MAX_CAPTION = 1024
MAX_FILENAME = 255
# A received message's serialized WhatsApp id: fromMe_chat_id[_participant].
MESSAGE_ID_RE = re.compile(r"(true|false)_[0-9A-Za-z.:@\-]{3,120}_[0-9A-Za-z]{4,64}(_\S{3,120})?")


def allowed_type(kind: str, mimetype: str) -> bool:
    if kind == "document":
        return MIMETYPE_RE.fullmatch(mimetype) is not None
    return mimetype in MEDIA_TYPES.get(kind, ())


def expected_types(kind: str) -> str:
    if kind == "document":
        return "any type/subtype"
    return ", ".join(MEDIA_TYPES[kind])


def vcard(name: str, phone: str) -> str:
    """A minimal vCard 3.0 as WhatsApp writes them: the number with its `waid`."""
    digits = re.sub(r"\D", "", phone)
    safe = re.sub(r"[\r\n;]", " ", name).strip()
    return (
        "BEGIN:VCARD\nVERSION:3.0\n"
        f"N:;{safe};;;\nFN:{safe}\n"
        f"TEL;type=CELL;type=VOICE;waid={digits}:+{digits}\n"
        "END:VCARD"
    )


@dataclass(frozen=True, slots=True)
class Content:
    """A message's kind and fields, as stored and as handed to the engine."""

    kind: str
    fields: dict[str, Any]

    def payload(self) -> str:
        return json.dumps(self.fields, sort_keys=True, separators=(",", ":"))

    @property
    def presence(self) -> str:
        """What the recipient sees before it arrives: "recording…" before a voice note."""
        return "recording" if self.kind == "voice" else "typing"


def load_content(kind: str | None, payload: str | None) -> Content:
    fields = json.loads(payload) if payload else {}
    return Content(kind or TEXT, fields if isinstance(fields, dict) else {})


def typing_seconds(text: str, budget: float) -> float:
    """How long a person would type `text`: a second, plus about 30 characters a second,
    at most 8 s, and never more than `budget` (the pacing's gap; presence must not slow
    the send rate down)."""
    wanted = min(1.0 + len(text) / 30.0, 8.0)
    return max(0.0, min(wanted, budget))


def public_fields(kind: str, payload: str | None) -> dict[str, Any]:
    """What a message's JSON shows of its fields: the kind's own object (`media`,
    `reaction`, `location`, `contact`) and `replyTo`; plain text adds nothing."""
    if not payload:
        return {}
    fields = load_content(kind, payload).fields
    shown: dict[str, Any] = {}
    reply = fields.get("replyTo")
    if reply:
        shown["replyTo"] = reply
    own = {k: v for k, v in fields.items() if k != "replyTo"}
    if kind in MEDIA_KINDS:
        shown["media"] = {"type": kind, **own}
    elif kind != TEXT:
        shown[kind] = own
    return shown


# Fields that follow from the file itself (fetched from a URL they may differ between two
# fetches of the same message): not part of what makes two sends the same message.
_DERIVED = ("mimetype", "size", "filename")


def identity(kind: str, payload: str | None) -> dict[str, Any]:
    """What two sends under one idempotency key must share to be the same message."""
    fields = load_content(kind, payload).fields
    same = {k: v for k, v in fields.items() if k not in _DERIVED}
    if "url" in same:
        same.pop("sha256", None)
    return same
