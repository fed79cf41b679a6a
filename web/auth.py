"""Tokens: the admin token and users' own tokens, stored hashed, compared in constant time.

Tokens are 32 random bytes, so a plain SHA-256 is the right hash: nothing to brute-force,
and the lookup stays one indexed query.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from loguru import logger
from starlette.requests import Request

from bot.store import ADMIN_OWNER, BotStore
from config import Settings
from services.clock import Clock
from services.secretbox import SecretBox, SecretUnreadableError
from web.errors import Problem
from web.websession import (
    CSRF_HEADER,
    SAFE_METHODS,
    BrowserSession,
    SessionSigner,
    csrf_matches,
)

log = logger.bind(component="auth")
# A verified user token is remembered this long (its hash → who), so a client sending many
# requests is looked up once, not once a request. A rotation or a deletion on this node
# forgets it at once; on another node of a cluster it holds at most this long there.
KNOWN_TOKEN_SECONDS = 5.0
KNOWN_TOKENS_MAX = 1024  # bounded: many users at once only means more look-ups
ADMIN_HASH_KEY = "admin_token_sha256"
SIGNED_OUT_PREFIX = "signed_out:"
TOKEN_PREFIX = "wk_"  # noqa: S105 - a prefix that makes leaked tokens greppable


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    is_admin: bool
    user_id: str | None
    name: str

    @property
    def owner_scope(self) -> str | None:
        """Whose bots this caller sees: None means everyone's (the admin)."""
        return None if self.is_admin else self.user_id

    @property
    def label(self) -> str:
        return ADMIN_OWNER if self.is_admin else f"user:{self.user_id} ({self.name})"


def token_from(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    def __init__(
        self,
        admin_hash: str,
        store: BotStore,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admin_hash = admin_hash
        self._store = store
        self._monotonic = monotonic
        self._known: dict[str, tuple[Principal, float]] = {}  # token hash: (who, until)
        self.signer: SessionSigner | None = None  # the dashboard's cookies, once configured

    async def authenticate(self, request: Request) -> Principal | None:
        """A token in the headers; else the dashboard's session cookie, which for anything
        but a read also needs the page's CSRF token in X-CSRF-Token."""
        token = token_from(request)
        if token is None:
            return await self._from_cookie(request)
        if len(token) > 200:
            return None
        return await self.principal_for(hash_token(token))

    async def browser_session(self, request: Request) -> BrowserSession | None:
        """The dashboard's session from the cookie, unless it expired or was signed out."""
        if self.signer is None:
            return None
        session = self.signer.read(request)
        if session is None:
            return None
        if await self._store.get_secret(SIGNED_OUT_PREFIX + session.sid) is not None:
            return None
        return session

    async def end_browser_session(self, session: BrowserSession, now: datetime) -> None:
        """Signing out ends the session here, not only in the browser: a copy of the cookie
        is refused from now on."""
        await self._store.put_secret_if_absent(
            SIGNED_OUT_PREFIX + session.sid, str(session.expires), now
        )

    async def _from_cookie(self, request: Request) -> Principal | None:
        if "authorization" in request.headers:
            return None
        session = await self.browser_session(request)
        if session is None:
            return None
        if request.method not in SAFE_METHODS and not csrf_matches(
            session.csrf, request.headers.get(CSRF_HEADER)
        ):
            raise Problem(
                403,
                "This request came with the dashboard's cookie but without its CSRF token "
                "(X-CSRF-Token); reload the page and try again.",
            )
        return await self.principal_for(session.token_hash)

    async def principal_for(self, digest: str) -> Principal | None:
        if hmac.compare_digest(digest, self._admin_hash):
            return Principal(is_admin=True, user_id=None, name=ADMIN_OWNER)
        now = self._monotonic()
        known = self._known.get(digest)
        if known is not None and now < known[1]:
            return known[0]
        user = await self._store.user_by_token_hash(digest)
        if user is None:  # unknown tokens are not remembered: nobody can fill this
            self._known.pop(digest, None)
            return None
        who = Principal(is_admin=False, user_id=user.id, name=user.name)
        if len(self._known) >= KNOWN_TOKENS_MAX:
            self._known.clear()
        self._known[digest] = (who, now + KNOWN_TOKEN_SECONDS)
        return who

    def forget_user(self, user_id: str) -> None:
        """The user's token was rotated or the user deleted: no remembered answer for it."""
        for digest in [d for d, (who, _) in self._known.items() if who.user_id == user_id]:
            del self._known[digest]


async def ensure_admin_token(settings: Settings, store: BotStore, clock: Clock) -> str:
    """The admin token's hash: from ADMIN_TOKEN, else generated once at first start and
    printed that once (only its hash is stored), else the stored hash."""
    if settings.admin_token is not None:
        return hash_token(settings.admin_token.get_secret_value())
    stored = await store.get_secret(ADMIN_HASH_KEY)
    if stored is not None:
        log.info("Using the admin token generated at first start (set ADMIN_TOKEN to replace it)")
        return stored
    token = new_token()
    digest = hash_token(token)
    if await store.put_secret_if_absent(ADMIN_HASH_KEY, digest, clock.now()):
        log.warning(
            "🔑 No ADMIN_TOKEN is set, so one was generated. It is shown this once and only its "
            "hash is stored:\n    {}\n   Save it now, or set ADMIN_TOKEN and restart.",
            token,
        )
        return digest
    # Another replica generated one at the same moment: theirs was printed in their log.
    raced = await store.get_secret(ADMIN_HASH_KEY)
    assert raced is not None
    return raced


SECRET_KEY_NAME = "dashboard_secret_key_sealed"  # noqa: S105 - a row name, not a secret


async def dashboard_secret_key(
    settings: Settings, store: BotStore, box: SecretBox, clock: Clock
) -> str:
    """SECRET_KEY, else one generated once and stored sealed (cookies survive restarts)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    sealed = await store.get_secret(SECRET_KEY_NAME)
    if sealed is not None:
        try:
            return box.open(sealed)
        except SecretUnreadableError:
            log.warning("The stored SECRET_KEY cannot be read any more; signing in again is needed")
            await store.delete_secret(SECRET_KEY_NAME)
    key = secrets.token_urlsafe(32)
    if not await store.put_secret_if_absent(SECRET_KEY_NAME, box.seal(key), clock.now()):
        raced = await store.get_secret(SECRET_KEY_NAME)
        assert raced is not None
        return box.open(raced)
    return key
