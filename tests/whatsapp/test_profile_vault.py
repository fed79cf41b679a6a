"""Profile backups on SQLite and on Postgres: what is packed, that an
unchanged profile is not written again, encryption, and restoring into a missing profile."""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.engines.whatsapp.profile import (
    BackupUnreadableError,
    ProfileVault,
    UnsafeMemberError,
    has_profile,
    pack,
    profile_backups,
    unpack,
)
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from services.database import Database

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BOT = "bot_0000000000aa"
KEY = "a-long-encryption-key-for-tests"


def fake_profile(root: Path, secret: bytes = b"noise-key-of-15550001111") -> Path:
    """The layout Chromium uses, with a cache beside it that must not be backed up."""
    idb = root / "Default" / "IndexedDB" / "https_web.whatsapp.com_0.indexeddb.leveldb"
    idb.mkdir(parents=True)
    (idb / "000003.log").write_bytes(secret)
    (idb / "MANIFEST-000001").write_bytes(b"manifest")
    (idb / "LOCK").write_bytes(b"")
    (idb / "LOG").write_bytes(b"opened at 12:00")
    local = root / "Default" / "Local Storage" / "leveldb"
    local.mkdir(parents=True)
    (local / "000004.ldb").write_bytes(b"last-wid-md")
    cache = root / "Default" / "Cache" / "Cache_Data"
    cache.mkdir(parents=True)
    (cache / "data_1").write_bytes(b"x" * 10_000)
    return root


@pytest.fixture
async def vault(database_url: str) -> AsyncIterator[ProfileVault]:
    db = Database(database_url)
    await db.migrate()
    record = SessionRecord(
        id=BOT,
        user_id=None,
        name="shop",
        state=SessionState.IDLE,
        state_changed_at=T0,
        created_at=T0,
    )
    await BotStore(db).insert_session(record, "created")
    yield ProfileVault(db, KEY)
    await db.dispose()


def test_only_the_link_stores_are_packed_without_lock_files(tmp_path: Path):
    profile = fake_profile(tmp_path / "p")
    packed = pack(profile, None)
    assert packed is not None
    with tarfile.open(fileobj=io.BytesIO(zlib.decompress(packed.blob))) as tar:
        names = sorted(tar.getnames())
    assert names == [
        "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/000003.log",
        "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/MANIFEST-000001",
        "Default/Local Storage/leveldb/000004.ldb",
    ]
    assert pack(tmp_path / "empty", None) is None


def test_an_unchanged_profile_packs_to_the_same_digest_whatever_the_file_times(tmp_path: Path):
    profile = fake_profile(tmp_path / "p")
    first = pack(profile, KEY)
    log = profile / "Default" / "IndexedDB" / "https_web.whatsapp.com_0.indexeddb.leveldb" / "LOG"
    log.write_bytes(b"opened again at 13:00")  # LevelDB rewrites it on every open
    (profile / "Default" / "Local Storage" / "leveldb" / "000004.ldb").touch()
    second = pack(profile, KEY)
    assert first is not None and second is not None
    assert first.digest == second.digest
    assert first.blob != second.blob  # encryption is randomised; the digest decides
    (profile / "Default" / "Local Storage" / "leveldb" / "000005.ldb").write_bytes(b"new")
    third = pack(profile, KEY)
    assert third is not None and third.digest != first.digest


def test_encrypted_backups_hide_the_keys_and_need_the_same_key(tmp_path: Path):
    profile = fake_profile(tmp_path / "p", secret=b"identity-key-15550001111")
    packed = pack(profile, KEY)
    assert packed is not None
    assert b"15550001111" not in packed.blob
    plain = pack(profile, None)
    assert plain is not None and b"15550001111" in zlib.decompress(plain.blob)  # it was there
    with pytest.raises(BackupUnreadableError, match="SESSION_ENCRYPTION_KEY is not set"):
        unpack(packed.blob, True, tmp_path / "r1", None)
    with pytest.raises(BackupUnreadableError, match="was the key changed"):
        unpack(packed.blob, True, tmp_path / "r2", "another-key-of-sixteen+")
    assert unpack(packed.blob, True, tmp_path / "r3", KEY) == 3
    restored = tmp_path / "r3" / "Default" / "IndexedDB"
    assert (
        restored / "https_web.whatsapp.com_0.indexeddb.leveldb" / "000003.log"
    ).read_bytes() == b"identity-key-15550001111"


def test_a_backup_cannot_write_outside_the_profile(tmp_path: Path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    blob = zlib.compress(buffer.getvalue())
    with pytest.raises(tarfile.TarError):
        unpack(blob, False, tmp_path / "deep" / "profile", None)
    assert not (tmp_path / "escaped.txt").exists()


async def test_backup_writes_once_per_change_and_restores_into_a_missing_profile(
    vault: ProfileVault, tmp_path: Path
):
    profile = fake_profile(tmp_path / "p")
    size = await vault.backup(BOT, profile, T0)
    assert size is not None and size > 0
    assert await vault.backup(BOT, profile, T0 + timedelta(minutes=10)) is None
    (profile / "Default" / "Local Storage" / "leveldb" / "000005.ldb").write_bytes(b"more")
    assert await vault.backup(BOT, profile, T0 + timedelta(minutes=20)) is not None

    async with vault.db.engine.connect() as conn:
        row = (await conn.execute(select(profile_backups))).one()
    assert row.encrypted is True
    assert row.saved_at == T0 + timedelta(minutes=20)
    assert b"15550001111" not in bytes(row.data)

    target = tmp_path / "new-disk" / BOT
    assert not has_profile(target)
    assert await vault.restore(BOT, target) == 4
    assert has_profile(target)
    assert (target / "Default" / "Local Storage" / "leveldb" / "000005.ldb").read_bytes() == b"more"


async def test_a_backup_under_another_key_is_refused_and_leaves_no_half_profile(
    vault: ProfileVault, tmp_path: Path
):
    await vault.backup(BOT, fake_profile(tmp_path / "p"), T0)
    other = ProfileVault(vault.db, "a-different-key-entirely")
    target = tmp_path / "restore" / BOT
    with pytest.raises(BackupUnreadableError):
        await other.restore(BOT, target)
    assert not target.exists()


async def test_delete_and_cascade(vault: ProfileVault, tmp_path: Path):
    await vault.backup(BOT, fake_profile(tmp_path / "p"), T0)
    await vault.delete(BOT)
    assert await vault.stored_digest(BOT) is None
    assert await vault.restore(BOT, tmp_path / "nothing") == 0
    await vault.backup(BOT, tmp_path / "p", T0)
    await BotStore(vault.db).delete_session(BOT)
    assert await vault.stored_digest(BOT) is None


async def test_a_backup_under_a_stale_epoch_is_refused_and_keeps_the_newer_one(
    vault: ProfileVault, tmp_path: Path
):
    """A node that lost the bot (another took it: epoch + 1) must not overwrite the new
    owner's backup with its own older copy, not even at its shutdown."""
    from bot.ownership import OwnershipStore

    leases = OwnershipStore(vault.db)
    old = await leases.acquire(BOT, "node-a", T0, timedelta(seconds=15))
    assert old is not None
    epochs = {BOT: old.epoch}
    vault.fence = epochs.get
    assert await vault.backup(BOT, fake_profile(tmp_path / "old"), T0) is not None

    new = await leases.acquire(BOT, "node-b", T0 + timedelta(seconds=20), timedelta(seconds=15))
    assert new is not None and new.epoch == old.epoch + 1
    newer = fake_profile(tmp_path / "new")
    (newer / "Default" / "Local Storage" / "leveldb" / "000009.ldb").write_bytes(b"newer")
    new_owner = ProfileVault(vault.db, KEY)
    new_owner.fence = {BOT: new.epoch}.get
    assert await new_owner.backup(BOT, newer, T0 + timedelta(seconds=21)) is not None
    digest = await vault.stored_digest(BOT)

    stale = fake_profile(tmp_path / "stale")
    (stale / "Default" / "Local Storage" / "leveldb" / "000010.ldb").write_bytes(b"stale")
    assert await vault.backup(BOT, stale, T0 + timedelta(seconds=22)) is None
    assert await vault.stored_digest(BOT) == digest
    # A process that does not run the bot at all writes nothing either.
    nobody: dict[str, int] = {}
    vault.fence = nobody.get
    assert await vault.backup(BOT, stale, T0 + timedelta(seconds=23)) is None
    assert await vault.stored_digest(BOT) == digest


def _tar_with(tmp_path: Path, *members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    return zlib.compress(buffer.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("/etc/escaped.txt"),
        _member("Default/../../escaped.txt"),
        _member("Default/link", tarfile.SYMTYPE, "../../../escaped.txt"),
        _member("Default/hard", tarfile.LNKTYPE, "/etc/passwd"),
        _member("Default/dev", tarfile.CHRTYPE),
        _member("Default/fifo", tarfile.FIFOTYPE),
    ],
    ids=["absolute", "dotdot", "symlink-out", "hardlink", "device", "fifo"],
)
def test_every_member_is_checked_before_anything_is_written(
    tmp_path: Path, member: tarfile.TarInfo
):
    blob = _tar_with(tmp_path, _member("Default/IndexedDB/ok.log"), member)
    profile = tmp_path / "deep" / "profile"
    with pytest.raises(UnsafeMemberError):
        unpack(blob, False, profile, None)
    # Refused as a whole: not even the good member was written.
    assert not (profile / "Default" / "IndexedDB" / "ok.log").exists()
    assert not (tmp_path / "escaped.txt").exists()
