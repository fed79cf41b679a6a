"""Linking a bot to a phone: the QR code in every format, the pairing code, and in demo mode
the simulated phone (scan, messages, logout, ...)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.actions import NoQrError
from bot.engines.base import EngineError
from bot.engines.simulator import ACTIONS, Simulator, SimulatorError
from bot.qrcodes import qr_png, qr_svg
from bot.session import (
    BotSession,
    ConcurrentChangeError,
    NotLinkingError,
    OwnedElsewhereError,
)
from bot.states import SessionState as S
from web.errors import Problem
from web.routing import ApiRoute
from web.sessions_api import REMOTE_RESPONSES, audit, find, manager, run_action, session_json
from web.validation import PHONE_SCHEMAS, Fields, choice_param, read_json

QR_FORMATS = ("png", "svg", "raw")
PHONE_RE = re.compile(r"\+?[0-9][0-9 ()\-.]{5,24}")
NO_STORE = {"Cache-Control": "no-store"}
SETTLES_IN = {"scan": {S.CONNECTED}, "pair": {S.CONNECTED}, "logout": {S.LOGGED_OUT}}

QR_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["qr", "image", "mediaType", "generatedAt"],
    "properties": {
        "qr": {"type": "string", "description": "the string the QR code encodes"},
        "image": {"type": "string", "description": "base64 PNG"},
        "mediaType": {"type": "string"},
        "generatedAt": {"type": "string", "format": "date-time"},
        "expiresAt": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "when the bot stops waiting for a scan (QR_TIMEOUT)",
        },
    },
}
PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["phone"],
    "additionalProperties": False,
    "properties": {
        "phone": {
            "type": "string",
            "anyOf": PHONE_SCHEMAS,
            "description": "international form with the country code: +15551234567 "
            "(7 to 15 digits)",
        }
    },
}
CODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "phone"],
    "properties": {
        "code": {"type": "string", "minLength": 8, "maxLength": 8},
        "display": {"type": "string"},
        "phone": {"type": "string"},
    },
}
SIMULATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["action"],
    "additionalProperties": False,
    "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "phone": {"type": "string", "description": "scan / pair: the phone that links"},
        "code": {"type": "string", "description": "pair: the pairing code"},
        "from": {"type": "string", "description": "message / image: the sender"},
        "body": {"type": "string", "description": "message: the text; image: its caption"},
        "encrypted": {"type": "boolean", "description": "message: arrives undecrypted first"},
        "quote": {"type": "string", "description": "message: the id of the message it replies to"},
        "messageId": {
            "type": "string",
            "description": "react / edit / revoke: the message reacted to, edited or deleted",
        },
        "reaction": {"type": "string", "description": "react: an emoji (empty: remove)"},
    },
}


def _moving(exc: ConcurrentChangeError) -> Problem:
    node = exc.node if isinstance(exc, OwnedElsewhereError) else None
    return Problem(
        409,
        "The bot was moving to another node (or changed) meanwhile; try again in a few seconds.",
        node=node,
    )


def _no_qr(session: BotSession, state: S, sync_progress: int | None) -> Problem:
    if state is S.CONNECTED:
        who = f" as {session.record.linked_as}" if session.record.linked_as else ""
        reason = f"The bot is already linked{who}; no QR code is needed."
    elif state is S.SYNCING:
        progress = f" ({sync_progress}%)" if sync_progress is not None else ""
        reason = f"The bot is linked and loading its chats{progress}; no QR code is needed."
    elif state is S.CONNECTING:
        reason = "The bot is starting; its QR code appears in a few seconds."
    elif state is S.DISCONNECTED:
        reason = "The bot is reconnecting; a QR code appears if WhatsApp asks for one."
    else:
        reason = f"The bot is {state.value}; start it to get a QR code."
    return Problem(404, f"No QR code is pending. {reason}", state=state.value)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "image/" not in accept


async def get_qr(request: Request) -> Response:
    session = find(request)
    fmt = choice_param(request, "format", QR_FORMATS, "png")
    try:
        # From the node that runs the bot: the QR its browser shows now.
        pending = await run_action(request, session, "qr", {})
    except NoQrError as exc:
        if await manager(request).wake(session, "its owner asked for the QR code"):
            raise Problem(
                404,
                "No QR code is pending. The bot was asleep (EXPIRED, its link kept) and is "
                "starting again; it should need no QR code.",
                state=session.state.value,
            ) from None
        raise _no_qr(session, exc.state, exc.progress) from None
    except ConcurrentChangeError as exc:
        raise _moving(exc) from None
    qr = str(pending["qr"])
    if _wants_json(request):
        return JSONResponse(
            {
                "qr": qr,
                "image": base64.b64encode(qr_png(qr)).decode(),
                "mediaType": "image/png",
                "generatedAt": pending["generatedAt"],
                "expiresAt": pending["expiresAt"],
            },
            headers=NO_STORE,
        )
    if fmt == "raw":
        return Response(qr, media_type="text/plain", headers=NO_STORE)
    if fmt == "svg":
        return Response(qr_svg(qr), media_type="image/svg+xml", headers=NO_STORE)
    return Response(qr_png(qr), media_type="image/png", headers=NO_STORE)


def normalise_phone(fields: Fields, name: str) -> str | None:
    raw = fields.text(name, required=True, max_length=32)
    if raw is None:
        return None
    digits = re.sub(r"\D", "", raw)
    if not PHONE_RE.fullmatch(raw) or not 7 <= len(digits) <= 15 or digits.startswith("0"):
        fields.error(
            name,
            "expected a phone number in international form with its country code, "
            "like +15551234567 (7 to 15 digits)",
        )
        return None
    return digits


async def pair(request: Request) -> Response:
    session = find(request)
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    fields = Fields(body, {"phone"})
    phone = normalise_phone(fields, "phone")
    fields.done()
    assert phone is not None
    try:
        code = str((await run_action(request, session, "pair", {"phone": phone}))["code"])
    except ConcurrentChangeError as exc:
        raise _moving(exc) from None
    except NotLinkingError as exc:
        raise Problem(
            409,
            f"The bot is {exc.state.value}; a pairing code needs a bot waiting for a link "
            "(SCAN_QR): start it, or log it out first.",
            state=exc.state.value,
        ) from None
    except EngineError as exc:
        raise Problem(502, f"WhatsApp did not give a pairing code: {exc}") from None
    await audit(request, "session.pair", session.id, None)
    return JSONResponse(
        {"code": code, "display": f"{code[:4]}-{code[4:]}", "phone": f"+{phone}"},
        headers=NO_STORE,
    )


def _simulator(request: Request) -> Simulator:
    simulator = getattr(manager(request).engine, "simulator", None)
    if not isinstance(simulator, Simulator):
        raise Problem(
            404,
            "The simulator is off: it exists only in demo mode (WHATSAPP_SIMULATOR=1).",
        )
    return simulator


async def simulate(request: Request) -> Response:
    session = find(request)
    simulator = _simulator(request)
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    fields = Fields(
        body,
        {"action", "phone", "code", "from", "body", "encrypted", "quote", "messageId", "reaction"},
    )
    action = fields.text("action", required=True, max_length=20)
    if action is not None and action not in ACTIONS:
        fields.error("action", f"expected one of {list(ACTIONS)}")
    data: dict[str, Any] = {}
    if "phone" in body:
        data["phone"] = normalise_phone(fields, "phone")
    data["code"] = fields.text("code", max_length=9, required=action == "pair")
    data["from"] = normalise_phone(fields, "from") if "from" in body else None
    data["body"] = fields.text("body", max_length=4096, required=action in ("message", "edit"))
    data["encrypted"] = fields.boolean("encrypted", False)
    data["quote"] = fields.text("quote", max_length=200)
    on_message = action in ("react", "edit", "revoke")
    data["messageId"] = fields.text("messageId", max_length=200, required=on_message)
    data["reaction"] = fields.text("reaction", max_length=20)
    fields.done()
    assert action is not None
    assert simulator is not None
    args = {"action": action, "data": {k: v for k, v in data.items() if v}}
    try:
        result = await run_action(request, session, "simulate", args)
    except SimulatorError as exc:
        raise Problem(409, f"The simulator cannot {action} now: {exc}.") from None
    except ConcurrentChangeError as exc:
        raise _moving(exc) from None
    # The phone's side is done; let the bot's side catch up so the answer shows the outcome
    # (another node's bot: as stored, since that node writes every move).
    settled = SETTLES_IN.get(action)
    if settled is not None:
        store = manager(request).store
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while session.state not in settled:
                    await asyncio.sleep(0.05 if session.held() else 0.2)
                    if not session.held():
                        fresh = await store.get_session(session.id)
                        if fresh is not None:
                            session.replace_record(fresh)
    return JSONResponse(
        {"action": action, **result, "session": await session_json(request, session)}
    )


async def simulator_sent(request: Request) -> Response:
    session = find(request)
    _simulator(request)
    try:
        # As the node that runs the bot recorded them.
        return JSONResponse(await run_action(request, session, "sent", {}))
    except ConcurrentChangeError as exc:
        raise _moving(exc) from None


LINKING_ROUTES = [
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/qr",
        get_qr,
        "The pending QR code: PNG, ?format=svg or raw, or JSON with Accept: application/json",
        query={"format": {"type": "string", "enum": list(QR_FORMATS), "default": "png"}},
        responses={
            200: ("The QR code", {"type": "string", "format": "binary"}),
            **REMOTE_RESPONSES,
        },
        content_type="image/png",
        alt_media={
            "image/svg+xml": {"type": "string"},
            "text/plain": {"type": "string"},
            "application/json": QR_JSON_SCHEMA,
        },
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/pair",
        pair,
        "An 8-character pairing code, to link by typing it on the phone instead of scanning",
        body=PAIR_SCHEMA,
        responses={
            200: ("The pairing code", CODE_SCHEMA),
            409: ("Not waiting for a link", {}),
            **REMOTE_RESPONSES,
            502: ("WhatsApp refused, or the node that runs the bot failed", {}),
        },
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/simulator",
        simulate,
        "Demo mode: act as the phone (scan, pair, message, logout, conflict, drop, crash, "
        "react, edit, revoke)",
        body=SIMULATE_SCHEMA,
        responses={
            200: ("Done", {"type": "object"}),
            409: ("Not possible now", {}),
            **REMOTE_RESPONSES,
        },
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/simulator/sent",
        simulator_sent,
        "Demo mode: every message the bot sent, as the simulated WhatsApp received it, and"
        " how many conflicts it gave the bot's link (a second browser on it)",
        responses={200: ("The messages", {"type": "object"}), **REMOTE_RESPONSES},
    ),
]
