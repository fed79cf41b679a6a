"""Received files: `GET /api/sessions/{id}/messages/{mid}/media` fetches a received
message's file through the bot's WhatsApp Web (which downloads and decrypts it), for the
bot's owner or the admin only, and keeps it a while in the media cache. The file is fetched
by the node that runs the bot (bot.owner_reads), whichever node the request came through; the
node that answers keeps it in its cache."""

from __future__ import annotations

import re
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from bot.engines.base import EngineError, MediaFile, MediaNotFoundError
from bot.mediacache import MediaCache
from bot.owner_reads import file_of
from bot.session import BotSession, ConcurrentChangeError, NotConnectedError
from web.errors import Problem
from web.routing import ApiRoute
from web.sessions_api import find, run_action

# WhatsApp message ids: fromMe_chat@server_id[_participant@server].
MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_@.:\-]{1,200}")
MIMETYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+\-]*/[a-z0-9][a-z0-9!#$&^_.+\-]*")
FILENAME_UNSAFE = re.compile(r"[^\w.\- ]")


def media_cache(request: Request) -> MediaCache:
    cache: MediaCache = request.app.state.media_cache
    return cache


def _headers(file: MediaFile) -> dict[str, str]:
    name = file.filename or "media"
    ascii_name = FILENAME_UNSAFE.sub("_", name)[:100] or "media"
    return {
        # Whatever a sender claims the file is, it never renders as a page of ours.
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''"
        + quote(name[:200], safe=""),
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, no-store",
    }


def _media_type(file: MediaFile) -> str:
    essence = file.mimetype.split(";", 1)[0].strip().lower()
    return file.mimetype if MIMETYPE_RE.fullmatch(essence) else "application/octet-stream"


async def _download(request: Request, session: BotSession, message_id: str) -> MediaFile:
    """Through the bot's browser, on the node that runs it (this one, or its owner)."""
    return file_of(await run_action(request, session, "media", {"message": message_id}))


async def get_media(request: Request) -> Response:
    session = find(request)
    message_id = request.path_params["message_id"]
    if not MESSAGE_ID_RE.fullmatch(message_id):
        raise Problem(404, f"There is no received message '{message_id[:40]}' for this bot.")
    try:
        file = await media_cache(request).fetch(
            (session.id, message_id), lambda: _download(request, session, message_id)
        )
    except MediaNotFoundError as exc:
        raise Problem(404, f"No file for message '{message_id[:80]}': {exc}.") from None
    except NotConnectedError as exc:
        detail = (
            "The bot's browser runs in another process of this deployment; ask again shortly."
            if exc.elsewhere
            else f"The bot is {exc.state.value}: files are fetched through its WhatsApp Web, "
            "which needs a connected bot. Start it, then ask again."
        )
        raise Problem(409, detail, state=exc.state.value) from None
    except ConcurrentChangeError:
        raise Problem(
            409, "The bot was moving to another node (or changed) meanwhile; ask again shortly."
        ) from None
    except EngineError as exc:
        raise Problem(502, f"WhatsApp Web did not give the file: {exc}") from None
    return Response(file.data, media_type=_media_type(file), headers=_headers(file))


MEDIA_ROUTES = [
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/messages/{message_id}/media",
        get_media,
        "A received message's file (message.received's media.url), fetched and decrypted "
        "through WhatsApp Web; kept for MEDIA_CACHE_TTL",
        responses={
            200: ("The file, with its type", {"type": "string", "format": "binary"}),
            409: ("The bot is not connected", {}),
            502: ("WhatsApp Web could not give the file now, or the bot's node failed", {}),
            504: ("The node that runs the bot did not answer in time", {}),
        },
        content_type="application/octet-stream",
        creation_link=False,
    ),
]
