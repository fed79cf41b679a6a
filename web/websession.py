"""Browser sessions for the dashboard: a signed, HttpOnly, SameSite cookie, and CSRF tokens.

The cookie holds who signed in (the hash of their token, so a rotated token or a deleted user
ends the session), a CSRF token and an expiry, signed with HMAC-SHA256 under SECRET_KEY. It
is signed, not encrypted: it holds nothing its bearer could not already see.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "wakeful_session"
LOGIN_CSRF_COOKIE = "wakeful_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
LIFETIME = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class BrowserSession:
    token_hash: str
    csrf: str
    expires: int
    sid: str  # names the session so signing out can end it on the server (web.auth)


class SessionSigner:
    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"wakeful-cookie:" + secret_key.encode()).digest()

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def dumps(self, data: dict[str, Any]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode())
        return payload.decode() + "." + self._sign(payload)

    def loads(self, value: str) -> dict[str, Any] | None:
        payload, _, signature = value.partition(".")
        if not signature or not hmac.compare_digest(signature, self._sign(payload.encode())):
            return None
        try:
            data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def new_session(self, token_hash: str) -> tuple[str, BrowserSession]:
        session = BrowserSession(
            token_hash,
            secrets.token_urlsafe(24),
            int(time.time()) + LIFETIME,
            secrets.token_urlsafe(16),
        )
        value = self.dumps(
            {"h": session.token_hash, "c": session.csrf, "e": session.expires, "s": session.sid}
        )
        return value, session

    def read(self, request: Request) -> BrowserSession | None:
        raw = request.cookies.get(COOKIE)
        if not raw or len(raw) > 1000:
            return None
        data = self.loads(raw)
        if data is None:
            return None
        try:
            session = BrowserSession(
                str(data["h"]), str(data["c"]), int(data["e"]), str(data["s"])[:40]
            )
        except (KeyError, TypeError, ValueError):
            return None
        return session if session.expires > time.time() else None


def secure_request(request: Request) -> bool:
    # uvicorn has applied X-Forwarded-Proto to the scheme if, and only if, the sender is a
    # trusted proxy (FORWARDED_ALLOW_IPS); the raw header is anyone's to set.
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure_request(request),
        path="/",
    )


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected, str(given))
