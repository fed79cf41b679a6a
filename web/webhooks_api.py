"""A bot's webhook: where its events go, which ones, the signing secret, the deliveries."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.webhooks import EVENTS, DeliveryStore, new_secret
from services.secretbox import SecretBox
from web.routing import ApiRoute
from web.sessions_api import SESSION_SCHEMA, audit, find, manager, session_json
from web.validation import Fields, choice_param, read_json
from web.webhook_fields import WEBHOOK_URL_SCHEMA, webhook_events, webhook_url

DELIVERY_STATUSES = ("queued", "sending", "delivered", "dead")
UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "webhookUrl": WEBHOOK_URL_SCHEMA,
        "webhookEvents": {
            "type": ["array", "null"],
            "items": {"type": "string", "enum": list(EVENTS)},
        },
        "metadata": {"type": ["object", "null"], "description": "null clears it"},
    },
}


def secret_box(request: Request) -> SecretBox:
    found: SecretBox = request.app.state.secret_box
    return found


async def update_session(request: Request) -> Response:
    session = find(request)
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    fields = Fields(body, {"webhookUrl", "webhookEvents", "metadata"})
    changes: dict[str, Any] = {}
    if "webhookUrl" in body:
        changes["webhook_url"] = await webhook_url(fields, request)
    if "webhookEvents" in body:
        changes["webhook_events"] = webhook_events(fields)
    if "metadata" in body:
        changes["metadata"] = fields.mapping("metadata")
    fields.done()
    secret = None
    if changes.get("webhook_url") and session.record.webhook_secret is None:
        # A bot made before webhooks were signed has no secret yet: it gets one now.
        secret = new_secret()
        changes["webhook_secret"] = secret_box(request).seal(secret)
    if changes:
        await manager(request).store.save_fields(session.id, **changes)
        for name, value in changes.items():
            setattr(session.record, name, value)
        await manager(request).node.notify(f"changed:{session.id}")
        named = sorted(k for k in changes if k != "webhook_secret")
        await audit(request, "session.update", session.id, ", ".join(named))
    document = await session_json(request, session)
    if secret is not None:
        document["webhookSecret"] = secret
    return JSONResponse(document, headers={"Cache-Control": "no-store"})


async def rotate_secret(request: Request) -> Response:
    session = find(request)
    secret = new_secret()
    sealed = secret_box(request).seal(secret)
    await manager(request).store.save_fields(session.id, webhook_secret=sealed)
    session.record.webhook_secret = sealed
    await manager(request).node.notify(f"changed:{session.id}")
    await audit(request, "session.webhook_secret.rotate", session.id, None)
    return JSONResponse(
        {"webhookSecret": secret, "note": "Shown this once; deliveries are signed with it now."},
        headers={"Cache-Control": "no-store"},
    )


async def retry_dead_deliveries(request: Request) -> Response:
    session = find(request)
    store: DeliveryStore = request.app.state.deliveries
    count = await store.requeue_dead(session.id, manager(request).clock.now())
    request.app.state.webhooks.wake()
    await audit(request, "deliveries.retry_dead", session.id, str(count))
    return JSONResponse({"requeued": count})


async def list_deliveries(request: Request) -> Response:
    session = find(request)
    status = choice_param(request, "status", DELIVERY_STATUSES)
    store: DeliveryStore = request.app.state.deliveries
    deliveries, total = await store.list_for(session.id, status, 100)
    return JSONResponse({"deliveries": [d.as_json() for d in deliveries], "total": total})


WEBHOOK_ROUTES = [
    ApiRoute(
        "PATCH",
        "/api/sessions/{session_id}",
        update_session,
        "Change a bot's webhook (URL, events) or metadata",
        body=UPDATE_SCHEMA,
        responses={200: ("The session", SESSION_SCHEMA)},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/webhook-secret",
        rotate_secret,
        "Replace the webhook signing secret; the new one is shown once",
        responses={200: ("The new secret", {"type": "object"})},
    ),
    ApiRoute(
        "GET",
        "/api/sessions/{session_id}/deliveries",
        list_deliveries,
        "The newest 100 webhook deliveries of this bot, with their last HTTP status",
        query={"status": {"type": "string", "enum": list(DELIVERY_STATUSES)}},
        responses={200: ("Deliveries", {"type": "object"})},
    ),
    ApiRoute(
        "POST",
        "/api/sessions/{session_id}/deliveries/retry-dead",
        retry_dead_deliveries,
        "Queue this bot's dead webhook deliveries again (due now, attempts counted afresh)",
        responses={200: ("How many", {"type": "object"})},
    ),
]
