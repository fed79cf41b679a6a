"""What the bot manager needs from an engine, and the events an engine reports.

An engine starts one session per bot (with that bot's profile), and reports what happens
through a single callback, as normalised events. The manager never sees a browser.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class EventKind(StrEnum):
    QR = "qr"  # data: {"qr": str}
    PAIR_CODE = "pair_code"  # data: {"code": str}
    # data: {"fresh": bool}: the phone has linked (fresh: on this page, by a scan or a code);
    # the first sync follows
    AUTHENTICATED = "authenticated"
    SYNC = "sync"  # data: {"percent": int}, the sync's progress after linking
    READY = "ready"  # data: {"me": str} (the linked account, when known)
    # data: {"id", "chat", "from", "phone", "lid", "isGroup", "author", "type", "body",
    # "timestamp", "quotedMessageId", "media"}: `from` is the sender's phone-number id when
    # known, else its LID; `quotedMessageId` the message a reply quotes (else None); `media`
    # {"mimetype", "size", "filename", "caption"} for image, video, audio, ptt, document and
    # sticker messages (else None), whose `body` is the caption
    MESSAGE = "message"
    # data: {"id", "messageId", "chat", "from", "phone", "lid", "reaction", "removed",
    # "timestamp"}: someone reacted to `messageId` (an empty reaction removes theirs)
    REACTION = "reaction"
    # data: {"id", "chat", "from", "phone", "lid", "body", "previousBody", "timestamp"}: a
    # message was edited by its sender (`id` is the edited message's)
    EDITED = "edited"
    # data: {"id", "chat", "from", "phone", "lid", "by", "timestamp"}: a message was deleted
    # for everyone; `from` is who deleted it (`by`: "sender" or "admin")
    REVOKED = "revoked"
    # data: {"chat", "action", "subtype", "author", "participants", "timestamp"}: a group's
    # membership or settings changed; action "join", "leave" or "update"
    GROUP = "group"
    STATE = "state"  # data: {"state": "CONNECTED" | "OPENING" | "CONFLICT" | ...}
    LOGOUT = "logout"  # data: {"reason": str}
    CRASH = "crash"  # data: {"reason": str}; the session is gone, the manager restarts it
    # data: {"missing": str, "stage": str, "version": str | None}: WhatsApp Web changed and
    # the bridge cannot work with it; retrying will not help, an update of wakeful will
    BRIDGE_OUTDATED = "bridge_outdated"


@dataclass(frozen=True, slots=True)
class EngineEvent:
    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[EngineEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A received message's file, as WhatsApp Web downloaded and decrypted it."""

    data: bytes
    mimetype: str
    filename: str | None = None


class MediaNotFoundError(Exception):
    """No such message in the bot's WhatsApp, or it has no file."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ok: bool  # the page answered and the chat socket is connected
    state: str  # the engine's own word for the socket state


class EngineError(Exception):
    """A failure the manager treats as transient: it backs off and tries again."""


class EngineSession(Protocol):
    async def stop(self) -> None:
        """Close the session (browser and all); the link to the phone is kept."""

    async def logout(self) -> None:
        """Unlink from the phone; the session is closed afterwards."""

    async def send_text(self, to: str, text: str) -> str:
        """Send a text message; return the engine's message id."""

    async def send_content(self, to: str, content: dict[str, Any]) -> str:
        """Send a message that is more than text (bot.content: `kind`, its fields, `text`,
        and for media the file as base64 `data` with `mimetype` and `filename`); return the
        engine's message id."""

    async def presence(self, to: str, state: str) -> None:
        """Before a send: mark the chat read, and show "typing…" (`typing`) or
        "recording…" (`recording`) to it; `read` only marks it read."""

    async def heartbeat(self) -> Heartbeat:
        """Ask the page whether it is alive and connected; raise on no answer."""

    async def request_pair_code(self, phone: str) -> str:
        """Ask for an 8-character pairing code for linking without a camera."""

    async def download_media(self, message_id: str) -> MediaFile:
        """Fetch and decrypt a received message's file; MediaNotFoundError when there is
        none, EngineError when WhatsApp could not give it now."""


class Engine(Protocol):
    name: str

    async def start(self, session_id: str, on_event: EventSink) -> EngineSession:
        """Start a session for this bot; raise EngineError when it cannot start."""

    async def close(self) -> None:
        """Release what the engine holds across sessions (a shared browser, say)."""


class ContactsSession(Protocol):
    """Number checks and groups (an engine session may offer them; the WhatsApp one does)."""

    async def query_exists(self, phone: str) -> dict[str, Any]:
        """{"exists": bool, "id": str, "lid": str | None} for one number (digits)."""

    async def groups(self) -> list[dict[str, Any]]:
        """The account's groups: {"id", "name", "size"}."""

    async def group(self, group_id: str) -> dict[str, Any] | None:
        """One group with its participants, or None when the account is not in it."""
