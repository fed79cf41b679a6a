"""The dashboard: server-rendered pages (Jinja2) over the same JSON API the rest uses.

Signing in exchanges a token for a session cookie (`web.websession`); from then on the pages'
own JavaScript calls the API with that cookie and the page's CSRF token. Every asset is served
from `web/static`: no CDN, no build step.
"""

from __future__ import annotations

import secrets
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from services.metrics import SystemSampler
from web.api import keepalive_document
from web.auth import Authenticator, Principal, hash_token
from web.authlimit import FailedAuthLimiter, client_address
from web.bodylimit import BodyTooLargeError
from web.websession import (
    COOKIE,
    CSRF_FIELD,
    LIFETIME,
    LOGIN_CSRF_COOKIE,
    BrowserSession,
    csrf_matches,
    set_cookie,
)

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
LATENCY_POINTS = 60


FORM_MAX_BYTES = 4096


@cache
def templates() -> Jinja2Templates:
    """Jinja2 is loaded with the first page served, not at start: a deploy driven only
    through the API (most are) never carries it (~2 MB)."""
    from starlette.templating import Jinja2Templates

    return Jinja2Templates(directory=str(HERE / "templates"))


async def _form(request: Request) -> dict[str, str]:
    """The two small url-encoded forms (sign in, sign out): read without a multipart parser,
    and never more than FORM_MAX_BYTES of it (anyone may post to /login)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > FORM_MAX_BYTES:
            raise BodyTooLargeError(FORM_MAX_BYTES)
        chunks.append(chunk)
    body = b"".join(chunks)
    pairs = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in pairs.items()}


def _auth(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.auth
    return found


async def _signed_in(request: Request) -> tuple[Principal, BrowserSession] | None:
    auth = _auth(request)
    session = await auth.browser_session(request)
    if session is None:
        return None
    who = await auth.principal_for(session.token_hash)
    return (who, session) if who is not None else None


def _page(
    request: Request, name: str, who: Principal, session: BrowserSession, **context: Any
) -> Response:
    settings = request.app.state.settings
    return templates().TemplateResponse(
        request,
        name,
        {
            "who": who,
            "csrf": session.csrf,
            "demo": settings.whatsapp_simulator and settings.bot_engine.strip() == "whatsapp",
            **context,
        },
        headers={"Cache-Control": "no-store"},
    )


def _to_login() -> Response:
    return RedirectResponse("/login", status_code=303)


async def login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
    csrf = secrets.token_urlsafe(24)
    response = templates().TemplateResponse(
        request,
        "login.html",
        {"csrf": csrf, "error": error, "who": None, "demo": False},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
    set_cookie(response, request, LOGIN_CSRF_COOKIE, csrf, 3600)
    return response


async def login(request: Request) -> Response:
    form = await _form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not csrf_matches(expected, str(form.get(CSRF_FIELD, ""))):
        return await login_form(request, "The form expired; please sign in again.", 403)
    token = str(form.get("token", "")).strip()
    auth = _auth(request)
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    client = client_address(request)
    wait = limiter.retry_after(client)
    if wait is not None:
        response = await login_form(
            request, f"Too many failed sign-ins from this address; try again in {wait}s.", 429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    who = await auth.principal_for(hash_token(token)) if 0 < len(token) <= 200 else None
    if who is None or auth.signer is None:
        limiter.failed(client)
        return await login_form(request, "That token is not valid.", 401)
    value, _ = auth.signer.new_session(hash_token(token))
    response = RedirectResponse("/", status_code=303)
    set_cookie(response, request, COOKIE, value, LIFETIME)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


async def logout(request: Request) -> Response:
    form = await _form(request)
    signed = await _signed_in(request)
    if signed is not None and not csrf_matches(signed[1].csrf, str(form.get(CSRF_FIELD, ""))):
        return Response("The form is missing its CSRF token; reload the page.", status_code=403)
    if signed is not None:
        await _auth(request).end_browser_session(signed[1], request.app.state.manager.clock.now())
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def latency_chart(pings: list[dict[str, Any]]) -> dict[str, Any]:
    """Points for an inline SVG of the recent pings' latency (oldest first)."""
    recent = list(reversed(pings[:LATENCY_POINTS]))
    values = [p.get("latencyMs") or 0.0 for p in recent]
    top = max([*values, 1.0])
    width, height = 600, 120
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - v / top * (height - 10):.1f}" for i, v in enumerate(values)
    )
    failures = [{"x": f"{i * step:.1f}"} for i, p in enumerate(recent) if not p.get("ok", True)]
    return {
        "points": points,
        "failures": failures,
        "top": round(top, 1),
        "count": len(values),
        "width": width,
        "height": height,
    }


async def overview(request: Request) -> Response:
    signed = await _signed_in(request)
    if signed is None:
        return _to_login()
    who, session = signed
    snapshot = keepalive_document(request)
    sampler: SystemSampler = request.app.state.sampler
    return _page(
        request,
        "overview.html",
        who,
        session,
        keepalive=snapshot,
        chart=latency_chart(snapshot["recentPings"]),
        process=sampler.process(),
        memory=request.app.state.memory.snapshot(),
        # The nodes of the cluster (a cluster of one on SQLite), for the admin.
        cluster=request.app.state.manager.cluster_summary() if who.is_admin else None,
    )


async def bot_page(request: Request) -> Response:
    signed = await _signed_in(request)
    if signed is None:
        return _to_login()
    who, session = signed
    bot_id = request.path_params["session_id"]
    found = request.app.state.manager.visible(bot_id, who.owner_scope)
    if found is None:
        return templates().TemplateResponse(
            request,
            "missing.html",
            {"who": who, "csrf": session.csrf, "demo": False, "bot_id": bot_id[:40]},
            status_code=404,
        )
    return _page(request, "bot.html", who, session, bot_id=found.id, bot_name=found.record.name)


async def admin_page(request: Request) -> Response:
    signed = await _signed_in(request)
    if signed is None:
        return _to_login()
    who, session = signed
    if not who.is_admin:
        return Response("Only the admin may open this page.", status_code=403)
    return _page(request, "admin.html", who, session)


DASHBOARD_ROUTES: list[BaseRoute] = [
    Route("/", overview, methods=["GET"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/bots/{session_id}", bot_page, methods=["GET"]),
    Route("/admin", admin_page, methods=["GET"]),
    Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
]
