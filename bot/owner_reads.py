"""What only the node that runs a bot can read through its browser: a received message's
file, a number check (paced per bot, so asked where the bot runs), and its groups. Run by
bot.actions on the owner node, whichever node the request came through; the answer travels
back in the action's result row.

A file travels as base64 in that row: the database is the only channel every node shares
(nodes need not reach each other over the network, and a direct stream would need a second
address and credentials per node). The file is bounded by MEDIA_DOWNLOAD_MAX_MB before it is
written, so a row never holds more than that (about 4/3 of it in base64). On the node that
runs the bot the file is handed over as it is: base64 is for the row only (16 MB each way
costs about a second of CPU on a small instance).
"""

from __future__ import annotations

import base64
from typing import Any, cast

from bot.contacts import ContactChecker
from bot.engines.base import ContactsSession, EngineError, MediaFile
from bot.session import BotSession, NotConnectedError
from bot.states import SessionState as S

READS = frozenset({"media", "check", "groups", "group"})
DEFAULT_MEDIA_MAX_BYTES = 16 * 1024 * 1024


def encode_file(file: MediaFile) -> dict[str, Any]:
    return {
        "data": base64.b64encode(file.data).decode("ascii"),
        "mimetype": file.mimetype,
        "filename": file.filename,
    }


def decode_file(found: dict[str, Any]) -> MediaFile:
    filename = found.get("filename")
    return MediaFile(
        data=base64.b64decode(str(found["data"])),
        mimetype=str(found["mimetype"]),
        filename=str(filename) if filename is not None else None,
    )


def wire(result: dict[str, Any]) -> dict[str, Any]:
    """A read's result as it is written in the result row (JSON)."""
    file = result.get("file")
    if isinstance(file, MediaFile):
        return {**result, "file": encode_file(file)}
    return result


def file_of(result: dict[str, Any]) -> MediaFile:
    """The file of a "media" read: as read here, or as another node wrote it."""
    file = result["file"]
    return file if isinstance(file, MediaFile) else decode_file(file)


def connected(session: BotSession) -> ContactsSession:
    """The bot's page when this node runs it connected; else NotConnectedError (the asker
    says why, and may wake an expired bot)."""
    handle = session.engine_session
    if session.state is not S.CONNECTED or handle is None or not session.held():
        raise NotConnectedError(session.state)
    return cast(ContactsSession, handle)


class OwnerReads:
    """The owner's side of the reads; what it needs from the process (the number checker,
    the file bound) is given once at start."""

    def __init__(
        self, contacts: ContactChecker, *, media_max_bytes: int = DEFAULT_MEDIA_MAX_BYTES
    ) -> None:
        self.contacts = contacts
        self.media_max_bytes = media_max_bytes

    async def perform(
        self, session: BotSession, action: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        if action == "media":
            return {"file": await self.media(session, str(args["message"]))}
        if action == "check":
            return await self.check(session, [str(p) for p in args["phones"]])
        if action == "groups":
            return {"groups": await connected(session).groups()}
        if action == "group":
            return {"group": await connected(session).group(str(args["group"]))}
        raise ValueError(f"unknown read {action!r}")

    async def media(self, session: BotSession, message_id: str) -> MediaFile:
        file = await session.download_media(message_id)
        if len(file.data) > self.media_max_bytes:
            mb = self.media_max_bytes / (1024 * 1024)
            raise EngineError(f"the file is larger than MEDIA_DOWNLOAD_MAX_MB ({mb:g} MB)")
        return file

    async def check(self, session: BotSession, phones: list[str]) -> dict[str, Any]:
        """One answer per number (None: pending), as the API shows them."""
        results = await self.contacts.check(session.id, connected(session), phones)
        await session.touch()
        return {"results": [None if r is None else r.as_json() for r in results]}
