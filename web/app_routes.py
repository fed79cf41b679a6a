"""Every route of the app in one list, and the OpenAPI document generated from it."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from web.admin_api import ADMIN_ROUTES
from web.api import PUBLIC_ROUTES
from web.api import routes as public_routes
from web.contacts_api import CONTACT_ROUTES
from web.dashboard import DASHBOARD_ROUTES
from web.inbox_api import INBOX_ROUTES
from web.linking_api import LINKING_ROUTES
from web.me_api import ME_ROUTES
from web.media_api import MEDIA_ROUTES
from web.messages_api import MESSAGE_ROUTES
from web.routing import ApiRoute, openapi_endpoint, starlette_routes
from web.sessions_api import SESSION_ROUTES
from web.webhooks_api import WEBHOOK_ROUTES

BOT_ROUTES = [
    *SESSION_ROUTES,
    *LINKING_ROUTES,
    *MESSAGE_ROUTES,
    *WEBHOOK_ROUTES,
    *CONTACT_ROUTES,
    *MEDIA_ROUTES,
    *INBOX_ROUTES,
]
API: list[ApiRoute] = [*PUBLIC_ROUTES, *BOT_ROUTES, *ADMIN_ROUTES, *ME_ROUTES]


def all_routes() -> list[BaseRoute]:
    return [
        *public_routes,
        Route("/openapi.json", openapi_endpoint(API), methods=["GET"]),
        *starlette_routes(BOT_ROUTES + ADMIN_ROUTES + ME_ROUTES),
        *DASHBOARD_ROUTES,
    ]
