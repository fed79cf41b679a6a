"""The webhook fields of a bot, validated for both create and update."""

from __future__ import annotations

from starlette.requests import Request

from bot.webhooks import EVENTS
from services.netguard import BlockedAddressError, check_url
from web.routing import principal
from web.validation import Fields


async def webhook_url(fields: Fields, request: Request) -> str | None:
    """`webhookUrl`, refused when it points into our own network (unless allowed)."""
    url = fields.url("webhookUrl")
    if url is None:
        return None
    state = request.app.state
    try:
        # Lookups are accounted per caller: one user's slow DNS holds only their own share.
        await check_url(
            url,
            allow_private=False,
            policy=state.address_policy,
            resolver=state.resolver,
            key=f"caller:{principal(request).label}",
        )
    except BlockedAddressError as exc:
        fields.error("webhookUrl", str(exc))
        return None
    return fields.requestable_url("webhookUrl", url)


def webhook_events(fields: Fields) -> list[str] | None:
    value = fields.body.get("webhookEvents")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fields.error("webhookEvents", f"expected a list of events from {list(EVENTS)}")
        return None
    unknown = sorted(set(value) - set(EVENTS))
    if unknown:
        fields.error("webhookEvents", f"unknown events {unknown}; expected some of {list(EVENTS)}")
        return None
    return sorted(set(value), key=EVENTS.index)
