"""The webhook fields of a bot, validated for both create and update."""

from __future__ import annotations

from starlette.requests import Request

from bot.webhooks import EVENTS
from services.netguard import BlockedAddressError, check_url
from web.routing import principal
from web.validation import Fields, stripped_pattern

_PORT = r"(?:[0-9]{0,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_SUB_DELIMS = r"!$&'()*+,;="
# http(s), an optional user, a host name or IPv4 address, a valid port, then anything
# visible. Narrower than the server in two places a client never needs: IPv6 literals and
# non-ASCII host names (both accepted by the server) are left out.
WEBHOOK_URL_PATTERN = stripped_pattern(
    rf"[hH][tT][tT][pP][sS]?://(?:[A-Za-z0-9\-._~%{_SUB_DELIMS}:]*@)?"
    rf"[A-Za-z0-9\-._~%{_SUB_DELIMS}]+(?::{_PORT})?(?:[/?#][!-~]*)?"
)
WEBHOOK_URL_SCHEMA: dict[str, object] = {
    "type": ["string", "null"],
    "maxLength": 2000,
    "pattern": WEBHOOK_URL_PATTERN,
    "description": "An http:// or https:// URL with a host (at most 2000 characters); null "
    "removes it. Unless WEBHOOK_ALLOW_PRIVATE is set, its host must resolve, and only to "
    "public addresses: loopback, private, shared (100.64/10), link-local (cloud metadata), "
    "multicast and reserved addresses are refused (checked again at every delivery).",
}


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
