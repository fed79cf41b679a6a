"""Profile backups: the part of a bot's Chromium profile that holds its WhatsApp link,
kept in the database so a redeploy on an ephemeral disk does not ask for a new scan.

WhatsApp Web keeps its keys in IndexedDB and Local Storage; those two folders are packed
into a tar (in a fixed order, without times, so an unchanged profile packs to the same
bytes and is not written again), compressed, and encrypted with SESSION_ENCRYPTION_KEY when
it is set. The backup is restored before launch when the local profile is missing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from loguru import logger
from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)

from bot.store import bot_sessions
from services.database import Database, UTCDateTime, metadata, shielded

ESSENTIAL = ("Default/IndexedDB", "Default/Local Storage")
# Files LevelDB rewrites on every open without any change to the data.
VOLATILE = frozenset({"LOCK", "LOG", "LOG.old"})

log = logger.bind(component="bot")

profile_backups = Table(
    "profile_backups",
    metadata,
    Column(
        "session_id",
        String(32),
        ForeignKey("bot_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("data", LargeBinary, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("encrypted", Boolean, nullable=False),
    Column("size", Integer, nullable=False),
    Column("saved_at", UTCDateTime, nullable=False),
)


class BackupUnreadableError(Exception):
    """A stored backup that cannot be decrypted (the key changed or is missing)."""


@dataclass(frozen=True, slots=True)
class Packed:
    blob: bytes  # compressed, maybe encrypted
    digest: str  # of the tar, before compression: equal digests mean an unchanged profile
    files: int


def has_profile(profile: Path) -> bool:
    return any((profile / part).is_dir() for part in ESSENTIAL)


def _fernet(key: str) -> Fernet:
    # Any long string works as a key: HKDF turns it into the 32 bytes Fernet wants.
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"wakeful-profile", info=b"backup-v1"
    ).derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def pack(profile: Path, key: str | None) -> Packed | None:
    """Tar the essential folders; None when the profile has none of them yet."""
    buffer = io.BytesIO()
    files = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for part in ESSENTIAL:
            root = profile / part
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if not path.is_file() or path.name in VOLATILE:
                    continue
                info = tarfile.TarInfo(path.relative_to(profile).as_posix())
                data = path.read_bytes()
                info.size, info.mtime, info.mode = len(data), 0, 0o600
                tar.addfile(info, io.BytesIO(data))
                files += 1
    if files == 0:
        return None
    raw = buffer.getvalue()
    blob = zlib.compress(raw, 6)
    if key:
        blob = _fernet(key).encrypt(blob)
    return Packed(blob=blob, digest=hashlib.sha256(raw).hexdigest(), files=files)


def unpack(blob: bytes, encrypted: bool, profile: Path, key: str | None) -> int:
    """Write the folders back into an empty profile; returns the number of files."""
    if encrypted:
        if not key:
            raise BackupUnreadableError("it is encrypted and SESSION_ENCRYPTION_KEY is not set")
        try:
            blob = _fernet(key).decrypt(blob)
        except InvalidToken:
            raise BackupUnreadableError(
                "it does not decrypt with this SESSION_ENCRYPTION_KEY (was the key changed?)"
            ) from None
    raw = zlib.decompress(blob)
    profile.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, profile)
        if hasattr(tarfile, "data_filter"):
            # Python 3.11.4+: the "data" filter as a second guard (it had bypasses in some
            # releases, so the check above is the one relied on).
            tar.extractall(profile, filter="data")
        else:  # Debian 12's Python 3.11.2 has no extraction filters
            tar.extractall(profile)  # noqa: S202 - every member was checked above
    return len(members)


class UnsafeMemberError(tarfile.TarError):
    """A backup member that could write outside the profile, or is not a plain file."""


def check_member(member: tarfile.TarInfo, profile: Path) -> None:
    """Only plain files and folders, inside the profile: no absolute paths, no `..`, no
    links, no devices or fifos. Our own backups hold nothing else."""
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in parts:
        raise UnsafeMemberError(f"backup member {name!r} points outside the profile")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise UnsafeMemberError(f"backup member {name!r} is a {kind}; only files are restored")
    root = profile.resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeMemberError(f"backup member {name!r} resolves outside the profile")


class ProfileVault:
    """Backups of bot profiles in the database, one row per bot."""

    def __init__(self, db: Database, key: str | None) -> None:
        self.db = db
        self._key = key
        # The epoch under which this process runs a bot (None: it does not run it). Set by
        # the bot manager; a backup is written only under the epoch the bot still has, so a
        # node that lost a bot cannot overwrite the new owner's newer backup with its own.
        self.fence: Callable[[str], int | None] | None = None

    @property
    def encrypts(self) -> bool:
        return bool(self._key)

    async def backup(self, session_id: str, profile: Path, now: datetime) -> int | None:
        """Store the profile if it changed; returns the stored size, None if unchanged."""
        packed = await asyncio.to_thread(pack, profile, self._key)
        if packed is None:
            return None
        epoch = None if self.fence is None else self.fence(session_id)
        if self.fence is not None and epoch is None:
            log.bind(session=session_id).info("Profile backup skipped: another node runs the bot")
            return None
        if await self.stored_digest(session_id) == packed.digest:
            return None
        if not await self._save(session_id, packed, now, epoch):
            log.bind(session=session_id).warning(
                "Profile backup refused: another node took the bot (epoch {} is stale)", epoch
            )
            return None
        return len(packed.blob)

    @shielded
    async def stored_digest(self, session_id: str) -> str | None:
        query = select(profile_backups.c.digest).where(profile_backups.c.session_id == session_id)
        async with self.db.engine.connect() as conn:
            digest: str | None = (await conn.execute(query)).scalar_one_or_none()
        return digest

    @shielded
    async def _save(
        self, session_id: str, packed: Packed, now: datetime, epoch: int | None = None
    ) -> bool:
        """Store (replace) the backup; with `epoch`, only while the bot has that epoch."""
        values = {
            "data": packed.blob,
            "digest": packed.digest,
            "encrypted": self.encrypts,
            "size": len(packed.blob),
            "saved_at": now,
        }
        async with self.db.engine.begin() as conn:
            if epoch is not None:
                # A no-op write on the bot's row, under the epoch: it holds the row until
                # this transaction ends, so a new owner's acquire (epoch + 1) lands either
                # before it (the backup is refused) or after the backup is stored.
                held = await conn.execute(
                    update(bot_sessions)
                    .where(bot_sessions.c.id == session_id, bot_sessions.c.epoch == epoch)
                    .values(epoch=bot_sessions.c.epoch)
                )
                if held.rowcount != 1:
                    return False
            updated = await conn.execute(
                profile_backups.update()
                .where(profile_backups.c.session_id == session_id)
                .values(**values)
            )
            if updated.rowcount == 0:
                await conn.execute(insert(profile_backups).values(session_id=session_id, **values))
        return True

    @shielded
    async def _load(self, session_id: str) -> tuple[bytes, bool] | None:
        query = select(profile_backups.c.data, profile_backups.c.encrypted).where(
            profile_backups.c.session_id == session_id
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return (bytes(row.data), bool(row.encrypted)) if row else None

    async def restore(self, session_id: str, profile: Path) -> int:
        """Restore into a missing profile; the number of files restored (0: no backup)."""
        stored = await self._load(session_id)
        if stored is None:
            return 0
        blob, encrypted = stored
        try:
            return await asyncio.to_thread(unpack, blob, encrypted, profile, self._key)
        except BackupUnreadableError:
            shutil.rmtree(profile, ignore_errors=True)
            raise

    @shielded
    async def delete(self, session_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(profile_backups).where(profile_backups.c.session_id == session_id)
            )
