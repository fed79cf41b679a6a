"""A bot's contacts and groups: which numbers are on WhatsApp (paced, answers stored for a
while), and the groups its account is in with their members. Owner or admin only (another
user's bot is a 404, as everywhere). What needs the bot's page runs on the node that runs
the bot (bot.owner_reads), whichever node the request came through; stored answers are read
wherever it came in."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.contacts import ContactChecker
from bot.engines.base import EngineError
from bot.session import BotSession, ConcurrentChangeError, NotConnectedError
from bot.states import SessionState as S
from web.errors import Problem
from web.routing import ApiRoute
from web.sessions_api import REMOTE_RESPONSES, find, manager, run_action
from web.validation import PHONE_SCHEMAS, read_json

MAX_PHONES = 20
PHONE_RE = re.compile(r"\+?[0-9][0-9 ()\-.]{5,24}")
GROUP_ID_RE = re.compile(r"\d{5,20}(-\d{1,20})?@g\.us")
PHONE_EXPECTED = (
    "expected a phone number in international form with its country code, like +15551234567 "
    "(7 to 15 digits)"
)
# Seconds a woken bot usually needs before it can answer (a browser start and a restore).
WAKE_RETRY_AFTER = 15

CHECK_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["phones"],
    "additionalProperties": False,
    "properties": {
        "phones": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PHONES,
            "items": {"type": "string", "anyOf": PHONE_SCHEMAS},
            "description": f"1 to {MAX_PHONES} numbers in international form: +15551234567",
        }
    },
}
CHECK_RESULT: dict[str, Any] = {
    "type": "object",
    "required": ["phone", "onWhatsApp", "id", "lid", "checkedAt", "cached", "pending"],
    "additionalProperties": False,
    "properties": {
        "phone": {"type": "string", "description": "+ and the digits"},
        "onWhatsApp": {
            "type": ["boolean", "null"],
            "description": "null while pending (not asked yet: ask again in a while)",
        },
        "id": {"type": ["string", "null"], "description": "the account's id (…@c.us)"},
        "lid": {"type": ["string", "null"], "description": "the account's LID, when told"},
        "checkedAt": {"type": ["string", "null"], "format": "date-time"},
        "cached": {
            "type": "boolean",
            "description": "answered from an earlier check (within CONTACT_CHECK_TTL)",
        },
        "pending": {
            "type": "boolean",
            "description": "not asked yet: the questions are paced; it is asked in its turn "
            "and the answer is stored for the next request",
        },
    },
}
CHECK_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["results", "pending"],
    "additionalProperties": False,
    "properties": {
        "results": {"type": "array", "items": CHECK_RESULT},
        "pending": {"type": "integer", "minimum": 0, "description": "numbers not asked yet"},
    },
}
GROUP_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "size"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "description": "…@g.us"},
        "name": {"type": ["string", "null"]},
        "size": {"type": "integer", "minimum": 0},
    },
}
GROUPS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {"groups": {"type": "array", "items": GROUP_SUMMARY}},
}
PARTICIPANT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "phone", "lid", "isAdmin", "isSuperAdmin"],
    "additionalProperties": False,
    "properties": {
        "id": {
            "type": "string",
            "description": "the phone-number id where WhatsApp knows it, else the LID",
        },
        "phone": {"type": ["string", "null"], "description": "+ and the digits, when known"},
        "lid": {"type": ["string", "null"]},
        "isAdmin": {"type": "boolean"},
        "isSuperAdmin": {"type": "boolean"},
    },
}
GROUP_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "name",
        "size",
        "description",
        "owner",
        "createdAt",
        "announce",
        "participants",
    ],
    "additionalProperties": False,
    "properties": {
        **GROUP_SUMMARY["properties"],
        "description": {"type": ["string", "null"]},
        "owner": {"type": ["string", "null"]},
        "createdAt": {"type": ["integer", "null"], "description": "Unix time"},
        "announce": {"type": "boolean", "description": "only admins may write"},
        "participants": {"type": "array", "items": PARTICIPANT},
    },
}
NOT_CONNECTED: dict[int, tuple[str, dict[str, Any] | None]] = {
    409: ("The bot is not connected (an expired one is woken: see Retry-After)", {})
}


def phone_digits(raw: object) -> str | None:
    """The digits of an international phone number, or None when it is not one."""
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    digits = re.sub(r"\D", "", value)
    if not PHONE_RE.fullmatch(value) or not 7 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return digits


def read_phones(body: dict[str, Any]) -> list[str]:
    errors = [
        {"field": name, "message": "unknown field; expected one of ['phones']"}
        for name in sorted(set(body) - {"phones"})
    ]
    phones = body.get("phones")
    digits: list[str] = []
    if not isinstance(phones, list) or not phones:
        errors.append(
            {"field": "phones", "message": f"required; a list of 1 to {MAX_PHONES} numbers"}
        )
    elif len(phones) > MAX_PHONES:
        errors.append(
            {
                "field": "phones",
                "message": f"at most {MAX_PHONES} numbers per request (this one has "
                f"{len(phones)}): WhatsApp logs out accounts that check numbers in bulk",
            }
        )
    else:
        for index, raw in enumerate(phones):
            found = phone_digits(raw)
            if found is None:
                errors.append({"field": f"phones[{index}]", "message": PHONE_EXPECTED})
            else:
                digits.append(found)
    if errors:
        names = ", ".join(e["field"] for e in errors)
        raise Problem(422, f"Some fields are not valid: {names}.", errors=errors)
    return digits


async def not_connected(request: Request, session: BotSession, what: str, state: S) -> Problem:
    """Why the bot cannot answer now (`state`, as the node that runs it saw it); an expired
    bot is woken, so that a retry in a few seconds finds it connected."""
    if state is S.CONNECTED:
        # Connected as stored, yet no node could reach its page: its node stopped and the
        # bot is being taken over (the lease ends within NODE_LEASE).
        node = session.record.owner_node
        return Problem(
            409,
            f"The bot's node ({node or 'unknown'}) does not answer for its page now; {what} "
            "needs the node that runs it: try again in a few seconds.",
            node=node,
        )
    if await manager(request).wake(session, f"its owner asked for {what}"):
        return Problem(
            409,
            f"The bot was asleep (EXPIRED, its link kept) and is starting again; {what} "
            f"will work once it is connected: try again in about {WAKE_RETRY_AFTER}s.",
            state=session.state.value,
            headers={"Retry-After": str(WAKE_RETRY_AFTER)},
        )
    return Problem(
        409, f"The bot is {state.value}; {what} needs a connected bot.", state=state.value
    )


async def on_owner(
    request: Request, session: BotSession, action: str, args: dict[str, Any], what: str
) -> dict[str, Any]:
    """Read through the bot's page on the node that runs it (this one, or its owner node:
    bot.owner_reads); a bot that cannot answer now is a 409 that says why."""
    try:
        return await run_action(request, session, action, args)
    except NotConnectedError as exc:
        raise await not_connected(request, session, what, exc.state) from None
    except ConcurrentChangeError:
        raise Problem(
            409, f"The bot was moving to another node (or changed) meanwhile; try {what} again."
        ) from None


def checker(request: Request) -> ContactChecker:
    found: ContactChecker = request.app.state.contacts
    return found


async def check_contacts(request: Request) -> Response:
    session = find(request)
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    phones = read_phones(body)
    contacts = checker(request)
    known = await contacts.cached(session.id, phones)
    if all(phone in known for phone in phones):
        # Answered from what was asked before: no question to WhatsApp, no connection needed.
        return JSONResponse({"results": [known[p].as_json() for p in phones], "pending": 0})
    try:
        answered = await on_owner(request, session, "check", {"phones": phones}, "a number check")
    except EngineError as exc:
        raise Problem(
            502,
            f"WhatsApp did not answer the number check: {exc}. The numbers already checked "
            "are stored; asking again does not ask them twice.",
        ) from None
    results: list[dict[str, Any] | None] = answered["results"]
    pending = sorted({p for p, r in zip(phones, results, strict=True) if r is None})
    document = {
        "results": [
            _pending(phone) if result is None else result
            for phone, result in zip(phones, results, strict=True)
        ],
        "pending": len(pending),
    }
    if not pending:
        return JSONResponse(document)
    # Each pending number is asked in its turn, CONTACT_CHECK_GAP apart.
    gap = request.app.state.settings.contact_check_gap.total_seconds()
    wait = max(1, round(len(pending) * gap * 1.5))
    return JSONResponse(document, headers={"Retry-After": str(wait)})


def _pending(phone: str) -> dict[str, Any]:
    return {
        "phone": f"+{phone}",
        "onWhatsApp": None,
        "id": None,
        "lid": None,
        "checkedAt": None,
        "cached": False,
        "pending": True,
    }


async def list_groups(request: Request) -> Response:
    session = find(request)
    try:
        answered = await on_owner(request, session, "groups", {}, "the group list")
    except EngineError as exc:
        raise Problem(502, f"WhatsApp Web did not list the groups: {exc}.") from None
    return JSONResponse({"groups": [_summary(g) for g in answered["groups"]]})


async def get_group(request: Request) -> Response:
    session = find(request)
    group_id = request.path_params["group_id"]
    if not GROUP_ID_RE.fullmatch(group_id):
        raise Problem(
            404, f"There is no group '{group_id[:60]}': a group id looks like 1203630…@g.us."
        )
    try:
        answered = await on_owner(request, session, "group", {"group": group_id}, "a group")
    except EngineError as exc:
        raise Problem(502, f"WhatsApp Web did not read the group: {exc}.") from None
    group: dict[str, Any] | None = answered["group"]
    if group is None:
        raise Problem(404, f"The bot's account is not in a group '{group_id}'.")
    return JSONResponse(
        {
            **_summary(group),
            "description": _text(group.get("description")),
            "owner": _text(group.get("owner")),
            "createdAt": group["createdAt"] if isinstance(group.get("createdAt"), int) else None,
            "announce": bool(group.get("announce")),
            "participants": [_participant(p) for p in group.get("participants") or []],
        }
    )


def _text(value: object) -> str | None:
    return str(value) if value else None


def _summary(group: dict[str, Any]) -> dict[str, Any]:
    size = group.get("size")
    return {
        "id": str(group.get("id")),
        "name": _text(group.get("name")),
        "size": size if isinstance(size, int) and size >= 0 else 0,
    }


def _participant(member: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(member.get("id")),
        "phone": _text(member.get("phone")),
        "lid": _text(member.get("lid")),
        "isAdmin": bool(member.get("isAdmin")),
        "isSuperAdmin": bool(member.get("isSuperAdmin")),
    }


CONTACT_ROUTES = [
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/contacts/check",
        check_contacts,
        "Which numbers are on WhatsApp: asked one at a time, CONTACT_CHECK_GAP apart (WhatsApp "
        "logs out accounts that check in bulk); an answer is reused for CONTACT_CHECK_TTL. "
        "The request waits a few seconds at most: numbers not asked by then are pending "
        "(see Retry-After), asked in their turn, and answered from storage next time",
        body=CHECK_BODY,
        responses={
            200: ("One answer (or pending) per number, in the order asked", CHECK_RESPONSE),
            **NOT_CONNECTED,
            502: ("WhatsApp did not answer, or the bot's node failed", {}),
            504: REMOTE_RESPONSES[504],
        },
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/groups",
        list_groups,
        "The groups the bot's account is in",
        responses={
            200: ("The groups", GROUPS_RESPONSE),
            **NOT_CONNECTED,
            502: ("WhatsApp Web did not answer, or the bot's node failed", {}),
            504: REMOTE_RESPONSES[504],
        },
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/groups/{group_id}",
        get_group,
        "One group with its members (phone numbers where WhatsApp knows them, else LIDs)",
        responses={
            200: ("The group", GROUP_RESPONSE),
            **NOT_CONNECTED,
            502: ("WhatsApp Web did not answer, or the bot's node failed", {}),
            504: REMOTE_RESPONSES[504],
        },
    ),
]
