"""WhatsApp's media host, as the simulator plays it: files encrypted the way WhatsApp
encrypts them (a random media key expanded with HKDF-SHA256 into an IV, an AES-256-CBC key
and an HMAC key; the file's hash and the encrypted file's hash beside it), served from
`https://mmg.whatsapp.net/…` to the bot's browser, where WhatsApp Web's download manager
(the simulator's, in whatsapp.js) fetches, checks and decrypts them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MEDIA_HOST = "https://mmg.whatsapp.net"
MEDIA_KINDS = ("image", "video", "audio", "ptt", "document", "sticker")
APP_INFO = {
    "image": b"WhatsApp Image Keys",
    "sticker": b"WhatsApp Image Keys",
    "video": b"WhatsApp Video Keys",
    "audio": b"WhatsApp Audio Keys",
    "ptt": b"WhatsApp Audio Keys",
    "document": b"WhatsApp Document Keys",
}
# WhatsApp's servers keep files for a while; a demo left running keeps the newest.
KEEP_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EncryptedMedia:
    direct_path: str
    media_key: str  # base64
    filehash: str  # base64 SHA-256 of the file
    enc_filehash: str  # base64 SHA-256 of what the host serves
    size: int

    def message_fields(self) -> dict[str, Any]:
        """What a media message carries about its file."""
        return {
            "directPath": self.direct_path,
            "mediaKey": self.media_key,
            "filehash": self.filehash,
            "encFilehash": self.enc_filehash,
            "size": self.size,
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encrypt(data: bytes, kind: str, media_key: bytes | None = None) -> tuple[bytes, bytes]:
    """The bytes the media host serves for `data`, and the media key that opens them."""
    key = media_key or os.urandom(32)
    expanded = HKDF(algorithm=hashes.SHA256(), length=112, salt=None, info=APP_INFO[kind]).derive(
        key
    )
    iv, cipher_key, mac_key = expanded[:16], expanded[16:48], expanded[48:80]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    mac = hmac.new(mac_key, iv + ciphertext, hashlib.sha256).digest()[:10]
    return ciphertext + mac, key


class MediaHost:
    """The encrypted files by path, the newest kept up to KEEP_BYTES."""

    def __init__(self, keep_bytes: int = KEEP_BYTES) -> None:
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._keep = keep_bytes

    def upload(self, data: bytes, kind: str) -> EncryptedMedia:
        if kind not in APP_INFO:
            raise ValueError(f"unknown media kind '{kind}'; expected one of {list(MEDIA_KINDS)}")
        enc, key = encrypt(data, kind)
        path = f"/v/t62.7118-24/{secrets.token_hex(16)}.enc?ccb=11-4"
        self._files[path] = enc
        self._bytes += len(enc)
        while self._bytes > self._keep and len(self._files) > 1:
            _, dropped = self._files.popitem(last=False)
            self._bytes -= len(dropped)
        return EncryptedMedia(
            direct_path=path,
            media_key=_b64(key),
            filehash=_b64(hashlib.sha256(data).digest()),
            enc_filehash=_b64(hashlib.sha256(enc).digest()),
            size=len(data),
        )

    def get(self, path_and_query: str) -> bytes | None:
        return self._files.get(path_and_query)

    def expire(self, direct_path: str) -> None:
        """The host no longer has the file (WhatsApp keeps media for a limited time)."""
        dropped = self._files.pop(direct_path, None)
        if dropped is not None:
            self._bytes -= len(dropped)
