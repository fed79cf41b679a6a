"""Tokens: the admin token and users' own tokens, stored hashed, compared in constant time.

Tokens are 32 random bytes, so a plain SHA-256 is the right hash: nothing to brute-force,
and the lookup stays one indexed query.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from loguru import logger
from starlette.requests import Request

from bot.store import ADMIN_OWNER, BotStore
from config import Settings
from services.clock import Clock

log = logger.bind(component="auth")
ADMIN_HASH_KEY = "admin_token_sha256"
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
    def __init__(self, admin_hash: str, store: BotStore) -> None:
        self._admin_hash = admin_hash
        self._store = store

    async def authenticate(self, request: Request) -> Principal | None:
        token = token_from(request)
        if token is None or len(token) > 200:
            return None
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return Principal(is_admin=True, user_id=None, name=ADMIN_OWNER)
        user = await self._store.user_by_token_hash(digest)
        if user is None:
            return None
        return Principal(is_admin=False, user_id=user.id, name=user.name)


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
