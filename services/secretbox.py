"""Secrets kept at rest (webhook signing secrets), encrypted.

The key is SESSION_ENCRYPTION_KEY when it is set. Without it, a random key is generated once
into DATA_DIR/.secret-key (mode 0600): outside the database, so a dump or a leak of the
database alone reveals no secret. On a disk that does not survive a redeploy that file goes
with it; set SESSION_ENCRYPTION_KEY there.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from loguru import logger

KEY_FILE = ".secret-key"


class SecretUnreadableError(Exception):
    """Encrypted under another key (SESSION_ENCRYPTION_KEY changed, or the key file is new)."""


class SecretBox:
    def __init__(self, key: str, source: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"wakeful-secrets", info=b"secrets-v1"
        ).derive(key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))
        self.source = source

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadableError(
                f"a stored secret does not decrypt with the key from {self.source}"
            ) from None


def load_secret_box(encryption_key: str | None, data_dir: Path) -> SecretBox:
    if encryption_key:
        return SecretBox(encryption_key, "SESSION_ENCRYPTION_KEY")
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        logger.bind(component="server").warning(
            "🔐 No SESSION_ENCRYPTION_KEY: webhook secrets are encrypted with a key generated "
            "in {}; if this disk does not survive a redeploy, set SESSION_ENCRYPTION_KEY",
            path,
        )
    return SecretBox(path.read_text().strip(), str(path))
