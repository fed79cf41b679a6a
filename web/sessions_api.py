"""`/api/sessions`: a user's bots (the admin's: everyone's). Another user's bot is a 404,
exactly like a bot that does not exist."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.actions import OwnerSilentError, RemoteFailedError
from bot.manager import BotManager, SessionLimitError
from bot.session import (
    BotSession,
    ConcurrentChangeError,
    EngineUnavailableError,
    OwnedElsewhereError,
)
from bot.states import RUNNING_STATES, STARTABLE_STATES, TRANSITIONS, IllegalTransitionError
from bot.states import SessionState as S
from bot.store import ADMIN_OWNER, DuplicateNameError
from bot.webhooks import EVENTS, new_secret, redact_userinfo
from services.memory import MemoryBudget, MemoryFullError
from web.errors import Problem
from web.routing import ApiRoute, principal
from web.strictjson import shown as shown_json
from web.validation import (
    MAX_OFFSET,
    Fields,
    choice_param,
    int_param,
    name_pattern,
    read_json,
)
from web.webhook_fields import WEBHOOK_URL_SCHEMA, webhook_events
from web.webhook_fields import webhook_url as webhook_url_field

NAME_RE = re.compile(r"[\w .@:+\-]{1,64}")
NAME_PATTERN = name_pattern(r"\w.@:+\-", 64)
SESSION_ID_RE = re.compile(r"bot_[0-9a-f]{12}")
USER_ID_RE = re.compile(r"usr_[0-9a-f]{12}")
USER_ID_PATTERN = r"^\s*usr_[0-9a-f]{12}\s*$"
HISTORY_LIMIT = 20

SESSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "owner", "state", "health", "isConnected"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in S]},
        "stateReason": {"type": ["string", "null"]},
        "health": {"type": "string"},
        "isConnected": {"type": "boolean"},
        "reconnectAttempts": {"type": "integer"},
        "errorCount": {"type": "integer"},
        "connectedForSeconds": {"type": ["number", "null"]},
        "syncProgress": {"type": ["integer", "null"]},
        "history": {"type": "array", "items": {"type": "object"}},
    },
}
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": "letters, digits, spaces and . @ : + - _ (1 to 64); unique per user",
        },
        "webhookUrl": WEBHOOK_URL_SCHEMA,
        "webhookEvents": {
            "type": ["array", "null"],
            "items": {"type": "string", "enum": list(EVENTS)},
        },
        "metadata": {"type": ["object", "null"]},
        "start": {"type": "boolean", "default": True},
        "userId": {
            "type": "string",
            "pattern": USER_ID_PATTERN,
            "description": "admin only (403 otherwise): create it for this user (404 if none)",
        },
    },
}


def manager(request: Request) -> BotManager:
    found: BotManager = request.app.state.manager
    return found


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def session_json(
    request: Request, session: BotSession, *, with_history: bool = True
) -> dict[str, Any]:
    if not with_history:
        return _session_document(request, session)
    # Under the state lock, so a change stored while the history is read cannot show its
    # row in the history beside the state from before it.
    async with session.state_lock:
        if not session.held():
            # Another node may run it (or just changed it): the database is the truth.
            fresh = await manager(request).store.get_session(session.id)
            if fresh is not None:
                session.replace_record(fresh)
        document = _session_document(request, session)
        history = await manager(request).store.history(session.id, HISTORY_LIMIT)
    document["history"] = [t.as_json() for t in history]
    return document


def _session_document(request: Request, session: BotSession) -> dict[str, Any]:
    record = session.record
    now = manager(request).clock.now()
    connected = record.state is S.CONNECTED
    document: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "owner": record.user_id or ADMIN_OWNER,
        "state": record.state.value,
        "stateReason": record.state_reason,
        "stateChangedAt": record.state_changed_at.isoformat(),
        "health": record.health,
        "isConnected": connected,
        "linkedAs": record.linked_as,
        # The node running it (its lease live), or null: none runs it.
        "node": (
            record.owner_node
            if record.owner_node and record.lease_until and record.lease_until >= now
            else None
        ),
        "reconnectAttempts": record.reconnect_attempts,
        "errorCount": record.error_count,
        "connectedForSeconds": (
            round((now - record.last_connected_at).total_seconds(), 1)
            if connected and record.last_connected_at
            else None
        ),
        "lastActivity": _iso(record.last_activity_at),
        "lastConnectedAt": _iso(record.last_connected_at),
        "lastDisconnectedAt": _iso(record.last_disconnected_at),
        "nextRetryAt": (
            _iso(record.next_retry_at) if record.state in (S.DISCONNECTED, S.SUSPENDED) else None
        ),
        "qrAvailable": session.qr is not None,
        # Linked, loading the account's chats: how far (percent), as WhatsApp Web reports it.
        "syncProgress": session.sync_progress if record.state is S.SYNCING else None,
        "browserMemoryMb": _browser_memory_mb(session),
        "webhookUrl": redact_userinfo(record.webhook_url) if record.webhook_url else None,
        "webhookEvents": (list(EVENTS) if record.webhook_events is None else record.webhook_events),
        "metadata": shown_json(record.metadata),
        "createdAt": record.created_at.isoformat(),
        "startedAt": _iso(record.started_at),
    }
    return document


def _browser_memory_mb(session: BotSession) -> float | None:
    """PSS of the bot's browser tree as the memory watchdog last measured it."""
    measured = getattr(session.engine_session, "memory_bytes", None)
    return round(measured / 1024 / 1024, 1) if measured else None


def find(request: Request) -> BotSession:
    session_id = request.path_params["session_id"]
    session = None
    if SESSION_ID_RE.fullmatch(session_id):
        session = manager(request).visible(session_id, principal(request).owner_scope)
    if session is None:
        raise Problem(404, f"There is no bot session '{session_id[:40]}' for this token.")
    return session


async def list_sessions(request: Request) -> Response:
    who = principal(request)
    user_filter = request.query_params.get("user") if who.is_admin else None
    with_history = choice_param(request, "include", ("history",)) == "history"
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    offset = int_param(request, "offset", default=0, low=0, high=MAX_OFFSET)
    sessions = manager(request).list_visible(who.owner_scope, user_filter)
    page = sessions[offset : offset + limit]
    items = [await session_json(request, s, with_history=with_history) for s in page]
    return JSONResponse(
        {"sessions": items, "total": len(sessions), "limit": limit, "offset": offset}
    )


async def get_session(request: Request) -> Response:
    return JSONResponse(await session_json(request, find(request)))


async def create_session(request: Request) -> Response:
    who = principal(request)
    settings = request.app.state.settings
    body = await read_json(request, settings.max_body_bytes)
    fields = Fields(body, {"name", "webhookUrl", "webhookEvents", "metadata", "start", "userId"})
    name = fields.text(
        "name",
        required=True,
        max_length=64,
        pattern=NAME_RE,
        pattern_text="letters, digits, spaces and . @ : + - _ only (1 to 64)",
    )
    webhook_url = await webhook_url_field(fields, request)
    events = webhook_events(fields)
    metadata = fields.mapping("metadata")
    start = fields.boolean("start", True)
    owner = who.user_id
    user_id = fields.text(
        "userId",
        max_length=16,
        pattern=USER_ID_RE,
        pattern_text="a user id: usr_ and 12 hexadecimal digits",
    )
    fields.done()
    if user_id:
        # Well formed, so not a field error: not allowed (403), or no such user (404).
        if not who.is_admin:
            raise Problem(403, "Only the admin token may create bots for another user (userId).")
        if await manager(request).store.get_user(user_id) is None:
            raise Problem(404, f"There is no user '{user_id}' (userId).")
        owner = user_id
    assert name is not None
    if start:
        check_memory(request)
    try:
        secret = new_secret()
        session = await manager(request).create(
            user_id=owner,
            name=name,
            webhook_url=webhook_url,
            metadata=metadata,
            start=start,
            webhook_events=events,
            webhook_secret=request.app.state.secret_box.seal(secret),
        )
    except DuplicateNameError:
        whose = "You already have" if owner == who.user_id else "That owner already has"
        raise Problem(409, f"{whose} a bot named '{name}'; names are unique per user.") from None
    except SessionLimitError as exc:
        raise Problem(
            409,
            f"This user already has {exc.args[0]} bots, the most MAX_SESSIONS_PER_USER allows; "
            "delete one first.",
        ) from None
    await audit(request, "session.create", session.id, name)
    document = await session_json(request, session)
    # The one time the signing secret is shown; only its sealed form is stored.
    document["webhookSecret"] = secret
    return JSONResponse(document, status_code=201, headers={"Cache-Control": "no-store"})


def _conflict(exc: IllegalTransitionError | ConcurrentChangeError, action: str) -> Problem:
    if isinstance(exc, OwnedElsewhereError):
        where = f"node {exc.node}" if exc.node else "another node"
        return Problem(
            409,
            f"The bot was moving to {where} while it was being {action}; try again in a "
            "few seconds.",
            node=exc.node,
        )
    if isinstance(exc, ConcurrentChangeError):
        return Problem(409, f"The session changed while it was being {action}; try again.")
    current = exc.current
    if action == "started":
        allowed = sorted(s.value for s in STARTABLE_STATES)
    else:
        allowed = sorted(s.value for s, targets in TRANSITIONS.items() if exc.target in targets)
    return Problem(
        409,
        f"The session is {current.value}, so it cannot be {action}; that needs one of: "
        f"{', '.join(allowed)}.",
        state=current.value,
    )


def check_memory(request: Request) -> None:
    """Refuse a start that would not fit (before anything changes: the bot stays as it was)."""
    guard: MemoryBudget | None = getattr(request.app.state, "memory_guard", None)
    if guard is None:
        return
    try:
        guard.check_room()
    except MemoryFullError as exc:
        budget = guard.snapshot()
        raise Problem(
            409,
            str(exc)[0].upper() + str(exc)[1:] + ".",
            title="Memory budget full",
            memoryBudget=budget,
        ) from None


def remote_problem(exc: OwnerSilentError | RemoteFailedError) -> Problem:
    """The node that runs the bot did not answer (504), or failed (502)."""
    if isinstance(exc, OwnerSilentError):
        return Problem(
            504,
            f"The node that runs this bot ({exc.node}) did not answer within "
            f"{exc.seconds:.0f}s; nothing was changed through this node. If that node has "
            "stopped, another one takes the bot over once its lease ends (NODE_LEASE): "
            "try again then.",
            title="The bot's node did not answer",
            node=exc.node,
        )
    return Problem(
        502,
        f"The node that runs this bot ({exc.node}) failed: {exc.detail}",
        title="The bot's node failed",
        node=exc.node,
    )


async def run_action(
    request: Request, session: BotSession, action: str, args: dict[str, Any]
) -> dict[str, Any]:
    """Run an action where the bot runs (this node, or its owner node, bot.actions)."""
    try:
        return await manager(request).actions.run(session, action, args)
    except (OwnerSilentError, RemoteFailedError) as exc:
        raise remote_problem(exc) from None


def _action(name: str, past: str) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        session = find(request)
        if (
            name == "start"
            and session.state not in RUNNING_STATES
            and not session.owned_elsewhere()
        ):
            check_memory(request)
        try:
            await run_action(request, session, name, {})
        except (IllegalTransitionError, ConcurrentChangeError) as exc:
            raise _conflict(exc, past) from None
        except EngineUnavailableError:
            settings = request.app.state.settings
            raise Problem(
                503,
                f"No bot engine is available in this process (BOT_ENGINE={settings.bot_engine}).",
            ) from None
        await audit(request, f"session.{name}", session.id, None)
        return JSONResponse(await session_json(request, session))

    return act


start_session = _action("start", "started")
stop_session = _action("stop", "stopped")
restart_session = _action("restart", "restarted")
logout_session = _action("logout", "logged out")


async def delete_session(request: Request) -> Response:
    session = find(request)
    if not await manager(request).delete(session):
        raise Problem(404, f"There is no bot session '{session.id}' for this token.")
    await audit(request, "session.delete", session.id, session.record.name)
    return Response(status_code=204)


async def audit(request: Request, action: str, target: str | None, detail: str | None) -> None:
    who = principal(request)
    mgr = manager(request)
    await mgr.store.audit(mgr.clock.now(), who.label, action, target, detail)


def _ok(schema: dict[str, Any]) -> dict[int, tuple[str, dict[str, Any] | None]]:
    return {200: ("The session", schema), 409: ("Not allowed in this state", {})}


# An action on a bot another node runs is answered by that node (bot.actions).
REMOTE_RESPONSES: dict[int, tuple[str, dict[str, Any] | None]] = {
    502: ("The node that runs the bot failed", {}),
    504: ("The node that runs the bot did not answer in time", {}),
}


SESSION_ROUTES = [
    ApiRoute(
        "GET",
        "/api/sessions",
        list_sessions,
        "List the bots this token may see",
        query={
            "user": {"type": "string"},
            "include": {"type": "string", "enum": ["history"]},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
        responses={200: ("The sessions", {"type": "object"})},
    ),
    ApiRoute(
        "POST",
        "/api/sessions",
        create_session,
        "Create a bot (and start it unless start is false)",
        body=CREATE_SCHEMA,
        responses={
            201: ("Created", SESSION_SCHEMA),
            403: ("`userId` given with a token that is not the admin's", {}),
            404: ("No user has this `userId`", {}),
            409: ("Duplicate name or limit", {}),
        },
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}",
        get_session,
        "One bot with its last 20 state changes",
        responses={200: ("The session", SESSION_SCHEMA)},
    ),
    ApiRoute(
        "DELETE",
        "/api/sessions/{session_id}",
        delete_session,
        "Stop and delete a bot and its profile",
        responses={204: ("Deleted", None)},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/start",
        start_session,
        "Start a bot",
        responses={**_ok(SESSION_SCHEMA), 503: ("No engine", {}), **REMOTE_RESPONSES},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/stop",
        stop_session,
        "Stop a bot",
        responses={**_ok(SESSION_SCHEMA), **REMOTE_RESPONSES},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/restart",
        restart_session,
        "Stop and start a bot",
        responses={**_ok(SESSION_SCHEMA), 503: ("No engine", {}), **REMOTE_RESPONSES},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/logout",
        logout_session,
        "Unlink a bot from the phone and delete its profile",
        responses={**_ok(SESSION_SCHEMA), **REMOTE_RESPONSES},
    ),
]
