"""The bot store on SQLite and on Postgres: the same suite on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.states import SessionState
from bot.store import BotStore, DuplicateNameError, SessionRecord, UserRecord
from services.database import Database

S = SessionState
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[BotStore]:
    db = Database(database_url)
    await db.migrate()
    yield BotStore(db)
    await db.dispose()


def record(session_id: str, name: str, user_id: str | None = None, **values: object):
    return SessionRecord(
        id=session_id,
        user_id=user_id,
        name=name,
        state=S.IDLE,
        state_changed_at=T0,
        created_at=T0,
        **values,  # type: ignore[arg-type]
    )


async def test_sessions_round_trip_with_metadata_and_aware_times(store: BotStore):
    await store.create_user(UserRecord("usr_000000000001", "alice", T0), "a" * 64)
    await store.insert_session(
        record(
            "bot_000000000001",
            "shop",
            "usr_000000000001",
            metadata={"team": "sales", "n": 3},
            webhook_url="https://hooks.example.test/x",
            last_activity_at=T0 + timedelta(minutes=1),
        ),
        "created",
    )
    (loaded,) = await store.all_sessions()
    assert loaded.metadata == {"team": "sales", "n": 3}
    assert loaded.state is S.IDLE
    assert loaded.last_activity_at == T0 + timedelta(minutes=1)
    assert loaded.created_at.tzinfo is not None
    assert loaded.user_id == "usr_000000000001"
    assert [t.to_state for t in await store.history(loaded.id)] == ["IDLE"]


async def test_names_are_unique_per_owner(store: BotStore):
    await store.create_user(UserRecord("usr_000000000001", "alice", T0), "a" * 64)
    await store.insert_session(record("bot_000000000001", "shop", "usr_000000000001"), "created")
    await store.insert_session(record("bot_000000000002", "shop"), "created")  # the admin's
    with pytest.raises(DuplicateNameError):
        await store.insert_session(
            record("bot_000000000003", "shop", "usr_000000000001"), "created"
        )
    with pytest.raises(DuplicateNameError):
        await store.insert_session(record("bot_000000000004", "shop"), "created")
    assert len(await store.all_sessions()) == 2


async def test_transition_is_guarded_by_the_state_it_expects(store: BotStore):
    await store.insert_session(record("bot_000000000001", "shop"), "created")
    at = T0 + timedelta(seconds=1)
    assert await store.transition(
        "bot_000000000001", S.IDLE, S.CONNECTING, "started", at, want_running=True
    )
    # A second writer that still believes the session is IDLE loses, and writes nothing.
    assert not await store.transition("bot_000000000001", S.IDLE, S.STOPPED, "late", at)
    (loaded,) = await store.all_sessions()
    assert loaded.state is S.CONNECTING
    assert loaded.want_running is True
    assert loaded.state_reason == "started"
    history = await store.history("bot_000000000001")
    assert [(t.from_state, t.to_state, t.reason) for t in history] == [
        ("IDLE", "CONNECTING", "started"),
        (None, "IDLE", "created"),
    ]


async def test_concurrent_writers_exactly_one_wins(store: BotStore):
    await store.insert_session(record("bot_000000000001", "shop"), "created")
    results = await asyncio.gather(
        *(
            store.transition("bot_000000000001", S.IDLE, S.CONNECTING, f"writer {n}", T0)
            for n in range(5)
        )
    )
    assert sorted(results) == [False, False, False, False, True]
    assert len(await store.history("bot_000000000001", 100)) == 2


async def test_history_is_newest_first_and_bounded(store: BotStore):
    await store.insert_session(record("bot_000000000001", "shop"), "created")
    state = S.IDLE
    for n in range(30):
        target = S.STOPPED if state is S.CONNECTING else S.CONNECTING
        assert await store.transition(
            "bot_000000000001", state, target, f"move {n}", T0 + timedelta(seconds=n)
        )
        state = target
    history = await store.history("bot_000000000001", 20)
    assert len(history) == 20
    assert history[0].reason == "move 29"
    assert history[-1].reason == "move 10"


async def test_stop_many_moves_only_rows_still_in_the_state_seen(store: BotStore):
    for n in range(3):
        await store.insert_session(record(f"bot_00000000000{n}", f"b{n}"), "created")
        await store.transition(f"bot_00000000000{n}", S.IDLE, S.CONNECTING, "start", T0)
    await store.transition("bot_000000000002", S.CONNECTING, S.SCAN_QR, "qr", T0)
    moves = [(f"bot_00000000000{n}", S.CONNECTING, 0) for n in range(3)]
    moved = await store.stop_many(moves, S.STOPPED, "shutdown", T0 + timedelta(seconds=5))
    assert moved == {"bot_000000000000", "bot_000000000001"}
    states = {r.id: r.state for r in await store.all_sessions()}
    assert states == {
        "bot_000000000000": S.STOPPED,
        "bot_000000000001": S.STOPPED,
        "bot_000000000002": S.SCAN_QR,
    }
    assert (await store.history("bot_000000000000"))[0].reason == "shutdown"
    assert (await store.history("bot_000000000002"))[0].reason == "qr"


async def test_users_tokens_and_cascading_delete(store: BotStore):
    alice = UserRecord("usr_000000000001", "alice", T0)
    await store.create_user(alice, "f" * 64)
    assert await store.user_by_token_hash("f" * 64) == alice
    assert await store.user_by_token_hash("0" * 64) is None
    await store.insert_session(record("bot_000000000001", "shop", alice.id), "created")
    await store.transition("bot_000000000001", S.IDLE, S.CONNECTING, "start", T0)
    assert await store.delete_user(alice.id)
    assert await store.all_sessions() == []
    assert await store.history("bot_000000000001") == []
    assert not await store.delete_user(alice.id)


async def test_audit_log_and_secrets_stored_once(store: BotStore):
    await store.audit(T0, "admin", "job.run", "cleanup", None)
    await store.audit(
        T0 + timedelta(seconds=1), "user:usr_1 (alice)", "session.stop", "bot_1", None
    )
    entries = await store.audit_entries()
    assert [e["action"] for e in entries] == ["session.stop", "job.run"]
    assert await store.put_secret_if_absent("k", "first", T0)
    assert not await store.put_secret_if_absent("k", "second", T0)
    assert await store.get_secret("k") == "first"
    assert await store.get_secret("missing") is None
