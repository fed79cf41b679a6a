"""What a user may do about their own access: rotate their token."""

from __future__ import annotations

from loguru import logger
from sqlalchemy import update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.store import users
from web.auth import hash_token, new_token
from web.errors import Problem
from web.routing import ApiRoute, principal

log = logger.bind(component="auth")


async def rotate_token(request: Request) -> Response:
    """A new token for the caller; the old one (and every dashboard session signed in with
    it) stops working at once. The new token is in this answer only."""
    who = principal(request)
    if who.is_admin or who.user_id is None:
        raise Problem(
            409,
            "The admin token is not rotated here: set a new ADMIN_TOKEN and restart.",
        )
    manager = request.app.state.manager
    token = new_token()
    async with manager.store.db.engine.begin() as conn:
        await conn.execute(
            update(users).where(users.c.id == who.user_id).values(token_hash=hash_token(token))
        )
    request.app.state.auth.forget_user(who.user_id)
    await manager.store.audit(
        manager.clock.now(), who.label, "user.token.rotate", who.user_id, None
    )
    log.info("User {} rotated their token", who.user_id)
    return JSONResponse(
        {"id": who.user_id, "name": who.name, "token": token},
        headers={"Cache-Control": "no-store"},
    )


ME_ROUTES = [
    ApiRoute(
        "POST",
        "/api/me/token",
        rotate_token,
        "Rotate your own token: the new one is in this answer only; the old one stops working",
        responses={
            200: (
                "The new token",
                {
                    "type": "object",
                    "required": ["id", "name", "token"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "token": {"type": "string", "description": "shown once"},
                    },
                },
            ),
            409: ("The admin token is set by ADMIN_TOKEN", {}),
        },
    ),
]
