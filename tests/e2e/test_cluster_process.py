"""Several processes, one truth: two real `python server.py` nodes on one Postgres database,
as a platform's deploy runs them (the new one starts and passes its health check before the
old one gets its signal), in demo mode with real Chromium and the simulator.

What a user would notice: after the deploy every linked bot is CONNECTED on the new node
without a new QR; no message is lost or sent twice; the new node never starts a bot while the
old one still runs it; both APIs and the database agree on who runs each bot."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from bot.engines.simulator.links import LinkRegistry
from tests.e2e.test_whatsapp_process import ADMIN, bot, call, demo_env
from tests.support import ServerProcess, fresh_postgres_database, wait_until

KEY = "cluster-session-encryption-key-01"
WAIT = 45.0
SCAN_LINE = "Scan this QR code"
# Each bot's messages: "before 0".."before 2", "overlap 0", ... (bodies as WhatsApp got them).
MESSAGES = (("before", 3), ("overlap", 2), ("after", 2))
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    with fresh_postgres_database(postgres_url, "wakeful_cluster") as name:
        url = make_url(postgres_url).set(drivername="postgresql", database=name)
        yield url.render_as_string(hide_password=False)


def node_env(database_url: str, **extra: str) -> dict[str, str]:
    # The demo settings every real-process test uses, plus one shared database and key, and
    # leases short enough for a takeover within the test.
    return demo_env(
        SESSION_ENCRYPTION_KEY=KEY,
        DATABASE_URL=database_url,
        PROFILE_BACKUP_DELAY="1s",
        SHUTDOWN_TIMEOUT="20s",
        NODE_LEASE="6s",
        NODE_RENEW_INTERVAL="2s",
        SEND_RATE="600",
        **extra,
    )


def wait_state(server: ServerProcess, bot_id: str, state: str, node: str | None = None) -> None:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(bot(server, bot_id))
        return seen["state"] == state and (node is None or seen["node"] == node)

    try:
        wait_until(reached, WAIT, f"{bot_id} to be {state} on {node or 'any node'}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {seen}:\n{server.log[-6000:]}") from None


def link(server: ServerProcess, name: str) -> str:
    created = call(server, "POST", "/api/sessions", json={"name": name})
    assert created.status_code == 201, created.text
    bot_id: str = created.json()["id"]
    wait_state(server, bot_id, "SCAN_QR")
    scanned = call(server, "POST", f"/api/sessions/{bot_id}/simulator", json={"action": "scan"})
    assert scanned.status_code == 200, scanned.text
    wait_state(server, bot_id, "CONNECTED")
    return bot_id


def send(server: ServerProcess, bot_id: str, text: str) -> str:
    sent = call(
        server,
        "POST",
        f"/api/sessions/{bot_id}/messages",
        json={"to": "+15550001111", "text": text},
    )
    assert sent.status_code == 202, sent.text
    message: str = sent.json()["id"]
    return message


def stored(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def first_time(server: ServerProcess, text: str) -> datetime:
    for line in server.lines:
        if text in line:
            match = LOG_TIME.match(line)
            assert match, line
            return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
    raise AssertionError(f"{text!r} not in the log:\n{server.log[-4000:]}")


def node_of(server: ServerProcess) -> str:
    for line in server.lines:
        found = re.search(r"Node (\S+) joined the cluster", line)
        if found:
            return found.group(1)
    raise AssertionError(f"no node id in the log:\n{server.log[-4000:]}")


# Railway's default draining time: SIGKILL follows SIGTERM within 3 s (our railway.ts asks
# for 45 s, but a user's service may keep the default).
RAILWAY_DEFAULT_DRAIN = 3.0


def deploy(tmp_path: Path, database: str, sig: int, *, kill_after: float | None = None) -> None:
    """A deploy's overlap, then `sig` to the old node; with `kill_after`, a SIGKILL that
    many seconds after the SIGTERM if the old node is still there (a platform's drain)."""
    # The simulator's phone side is shared by the two nodes, as WhatsApp's servers are: a
    # second browser on a linked device would get (and count) a conflict.
    phone_side = tmp_path / "whatsapp"
    env = node_env(database, WHATSAPP_SIMULATOR_DIR=str(phone_side))
    old = ServerProcess(tmp_path / "old", env).start()
    new = ServerProcess(tmp_path / "new", env)
    try:
        old.wait_ready(timeout=30)
        old_node = node_of(old)
        bots = [link(old, name) for name in ("sales", "support", "billing")]
        messages = [send(old, b, f"before {n}") for n in range(3) for b in bots]

        new.start()
        new.wait_ready(timeout=30)
        new_node = node_of(new)
        assert new_node != old_node
        # The overlap: the new node answers for bots the old one runs, and starts none.
        for bot_id in bots:
            wait_state(new, bot_id, "CONNECTED", node=old_node)
            assert bot(old, bot_id)["node"] == old_node
        messages += [send(new, b, f"overlap {n}") for n in range(2) for b in bots]
        assert "taken over" not in new.log
        assert SCAN_LINE not in new.log

        signalled = time.monotonic()
        cut_short = False
        if sig == signal.SIGTERM and kill_after is not None:
            process = old.process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
                cut_short = True
            print(f"\nold node {'SIGKILLed mid-handover' if cut_short else 'done in time'}")
        elif sig == signal.SIGTERM:
            assert old.stop(signal.SIGTERM, timeout=30) == 0, old.log[-6000:]
        else:
            old.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            assert old.process.wait(timeout=10) == -signal.SIGKILL  # type: ignore[union-attr]
        messages += [send(new, b, f"after {n}") for n in range(2) for b in bots]
        for bot_id in bots:
            wait_state(new, bot_id, "CONNECTED", node=new_node)
        print(
            f"\n{signal.Signals(sig).name}: every bot CONNECTED on the new node "
            f"{time.monotonic() - signalled:.1f}s after the signal"
        )
        # Restored from the old node's backup: linked, no new QR.
        assert SCAN_LINE not in new.log
        for bot_id in bots:
            document = bot(new, bot_id)
            assert document["linkedAs"], document
            recent = [(t["to"], t["reason"]) for t in document["history"][:5]]
            assert "SCAN_QR" not in [to for to, _ in recent[:4]], (
                f"{bot_id}: {recent}\n{new.log[-6000:]}"
            )
        if sig == signal.SIGTERM and kill_after is None:
            # The new node started no browser before the old one had closed its own and
            # released the bots: never two browsers on one link.
            released = first_time(old, "Released 3 bot session(s)")
            adopted = first_time(new, "→ CONNECTING (taken over from another node)")
            assert adopted >= released, (released, adopted)
            assert old.log.count("CONNECTED → STOPPED (shutdown)") == 3
        elif sig == signal.SIGKILL:
            reasons = [t["reason"] for t in bot(new, bots[0])["history"]]
            assert "the process ended while it was running" in reasons

        def all_sent() -> bool:
            rows = stored(database, "SELECT status FROM outbox_messages")
            return len(rows) == len(messages) and all(r[0] == "sent" for r in rows)

        try:
            wait_until(all_sent, WAIT, "every message sent")
        except AssertionError:
            unsent = stored(
                database,
                "SELECT id, status, attempts, last_error, due_at, lease_until"
                " FROM outbox_messages WHERE status != 'sent'",
            )
            raise AssertionError(
                f"{len(messages)} sent for, not sent: {unsent}\n{new.log[-8000:]}"
            ) from None
        # None lost, none sent twice (one WhatsApp id each; the simulator gives a new id
        # to every send).
        rows = stored(database, "SELECT id, engine_message_id, attempts FROM outbox_messages")
        assert sorted(r[0] for r in rows) == sorted(messages)
        assert len({r[1] for r in rows}) == len(messages)
        if sig == signal.SIGTERM and not cut_short:
            assert all(r[2] == 1 for r in rows), rows
        # What WhatsApp's servers saw: no second browser on any link at any moment (the
        # old node's browsers closed, or its process died, before the new node's opened),
        # and every message arrived, once after a SIGTERM.
        registry = LinkRegistry(phone_side)
        assert registry.conflicts() == []
        # ... and it did watch: each bot's device is held by the new node's browser now.
        devices = [f.stem for f in (phone_side / "simulator-links").glob("*.json")]
        holders = [registry.held_by(device) for device in devices]
        assert [h.pid if h else None for h in holders] == [new.process.pid] * 3  # type: ignore[union-attr]
        arrived = Counter(
            (m["session_id"], m["body"])
            for m in map(json.loads, (phone_side / "simulator-sent.jsonl").read_text().splitlines())
        )
        assert sum(arrived.values()) >= len(messages)
        assert {
            (b, f"{when} {n}") for b in bots for when, count in MESSAGES for n in range(count)
        } <= set(arrived)
        if sig == signal.SIGTERM and not cut_short:
            assert set(arrived.values()) == {1}, arrived
        # The database agrees with the API.
        owners = stored(
            database,
            "SELECT id, state, owner_node FROM bot_sessions ORDER BY id",
        )
        assert owners == [(b, "CONNECTED", new_node) for b in sorted(bots)]
        assert new.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        new.__exit__(None, None, None)
        old.__exit__(None, None, None)


def test_a_sigterm_deploy_hands_linked_bots_to_the_new_node(tmp_path: Path, database: str):
    deploy(tmp_path, database, signal.SIGTERM)


def test_a_sigkilled_node_loses_its_bots_to_the_survivor_once_the_leases_expire(
    tmp_path: Path, database: str
):
    deploy(tmp_path, database, signal.SIGKILL)


def test_a_deploy_with_railway_s_default_3s_drain_still_hands_every_bot_over(
    tmp_path: Path, database: str
):
    """SIGKILL 3 s after SIGTERM, as Railway does by default: whatever the old node
    released is adopted at once, the rest once its leases expire; every bot ends
    CONNECTED on the new node with no new QR, and no message is lost."""
    deploy(tmp_path, database, signal.SIGTERM, kill_after=RAILWAY_DEFAULT_DRAIN)


def scripted_env(database_url: str) -> dict[str, str]:
    return {
        "ADMIN_TOKEN": ADMIN,
        "SESSION_ENCRYPTION_KEY": KEY,
        "DATABASE_URL": database_url,
        "BOT_ENGINE": "tests.engines:auto_engine",
        "BOT_START_STAGGER": "100ms",
        "NODE_LEASE": "6s",
        "NODE_RENEW_INTERVAL": "2s",
        "MAX_SESSIONS_PER_USER": "3",
    }


def test_bots_created_or_deleted_through_one_node_are_seen_by_the_other_at_once(
    tmp_path: Path, database: str
):
    from concurrent.futures import ThreadPoolExecutor

    env = scripted_env(database)
    with (
        ServerProcess(tmp_path / "a", env) as a,
        ServerProcess(tmp_path / "b", env) as b,
    ):
        a.wait_ready(timeout=60)
        b.wait_ready(timeout=60)
        node_a, node_b = node_of(a), node_of(b)
        user = call(a, "POST", "/api/users", json={"name": "ann"}).json()
        token = {"Authorization": f"Bearer {user['token']}"}

        # Created (not started) through A: B answers for it at once, and starts it itself.
        created = call(a, "POST", "/api/sessions", json={"name": "shop", "start": False})
        assert created.status_code == 201, created.text
        shop = created.json()["id"]
        wait_until(
            lambda: call(b, "GET", f"/api/sessions/{shop}").status_code == 200,
            10,
            "B to see the bot created through A",
        )
        assert call(b, "GET", "/api/sessions").json()["total"] == 1
        started = call(b, "POST", f"/api/sessions/{shop}/start")
        assert started.status_code == 200, started.text
        wait_state(b, shop, "CONNECTED", node=node_b)
        wait_state(a, shop, "CONNECTED", node=node_b)
        # Stopped through A while B runs it: the stop reaches B, A answers with B's result.
        stopped = call(a, "POST", f"/api/sessions/{shop}/stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["state"] == "STOPPED"
        b.wait_for_log(f"[{shop}] State: CONNECTED → STOPPED (stopped by its owner)", timeout=10)
        # Nobody runs it now: started through A, it runs on A.
        assert call(a, "POST", f"/api/sessions/{shop}/start").status_code == 200
        wait_state(b, shop, "CONNECTED", node=node_a)

        # Deleted through B while A runs it: gone on both, A's browser closed.
        assert call(b, "DELETE", f"/api/sessions/{shop}").status_code == 204
        wait_until(
            lambda: call(a, "GET", f"/api/sessions/{shop}").status_code == 404,
            10,
            "A to forget the bot deleted through B",
        )
        a.wait_for_log(f"[{shop}] Lost the lease on this bot", timeout=10)
        assert stored(database, "SELECT id FROM bot_sessions") == []

        # MAX_SESSIONS_PER_USER=3 holds across both nodes under concurrent creates.
        def create(n: int) -> int:
            server = a if n % 2 else b
            return httpx.post(
                server.base_url + "/api/sessions",
                headers=token,
                json={"name": f"bot{n}", "start": False},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(create, range(8)))
        assert sorted(codes) == [201, 201, 201, 409, 409, 409, 409, 409], codes
        count = stored(database, "SELECT count(*) FROM bot_sessions")[0][0]
        assert count == 3
        for server in (a, b):

            def lists_three(server: ServerProcess = server) -> bool:
                listed = httpx.get(server.base_url + "/api/sessions", headers=token, timeout=10)
                return bool(listed.json()["total"] == 3)

            wait_until(lists_three, 10, "both nodes to list the three bots")
        assert node_a != node_b
        assert a.stop(signal.SIGTERM, timeout=30) == 0
        assert b.stop(signal.SIGTERM, timeout=30) == 0


def owners(servers: list[ServerProcess], bots: list[str]) -> dict[str, str | None]:
    """{bot: the node that runs it}, as each server's API says (they must agree)."""
    seen = [{b: bot(server, b)["node"] for b in bots} for server in servers]
    assert all(view == seen[0] for view in seen), seen
    return seen[0]


def test_three_nodes_six_bots_a_killed_node_s_bots_come_back_on_the_others(
    tmp_path: Path, database: str
):
    """Six linked bots spread over three nodes; one node is SIGKILLed. Its bots come back
    on the two others within the lease plus a start, and every owner action works through
    any node before and after: the action reaches the node that runs the bot."""
    # No boot preflight: three trial browsers at once are minutes on a loaded 2-core machine,
    # and the bots' own browsers prove the same.
    env = node_env(database, BOOT_PREFLIGHT="false")
    servers = [ServerProcess(tmp_path / name, env) for name in ("a", "b", "c")]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout=90)
        a, b, c = servers
        node_ids = [node_of(server) for server in servers]
        wait_until(
            lambda: len(call(a, "GET", "/api/metrics").json()["cluster"]["nodes"]) == 3,
            15,
            "A to see the three nodes",
        )
        # Created and linked through A only: placed where there is most room (two each),
        # each QR scanned through A on the node that shows it. All created first, so the
        # three nodes start their browsers side by side.
        bots = []
        for n in range(6):
            created = call(a, "POST", "/api/sessions", json={"name": f"bot{n}"})
            assert created.status_code == 201, created.text
            bots.append(created.json()["id"])
        for bot_id in bots:
            wait_state(a, bot_id, "SCAN_QR")
            scanned = call(a, "POST", f"/api/sessions/{bot_id}/simulator", json={"action": "scan"})
            assert scanned.status_code == 200, scanned.text
        for bot_id in bots:
            wait_state(a, bot_id, "CONNECTED")
        placed = owners(servers, bots)
        assert sorted(str(node) for node in placed.values()) == sorted(node_ids * 2), placed
        # An owner's action through a node that does not run the bot: done by its owner.
        on_c = [bot_id for bot_id, node in placed.items() if node == node_ids[2]]
        restarted = call(a, "POST", f"/api/sessions/{on_c[0]}/restart")
        assert restarted.status_code == 200, restarted.text
        c.wait_for_log(f"[{on_c[0]}] State: CONNECTED → STOPPED (restarted by its owner)")
        wait_state(b, on_c[0], "CONNECTED", node=node_ids[2])

        logged = {server: len(server.lines) for server in (a, b)}
        killed = time.monotonic()
        c.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert c.process.wait(timeout=10) == -signal.SIGKILL  # type: ignore[union-attr]

        def back_on_a_or_b(bot_id: str) -> bool:
            document = bot(a, bot_id)
            return bool(document["state"] == "CONNECTED" and document["node"] in node_ids[:2])

        for bot_id in on_c:
            wait_until(partial(back_on_a_or_b, bot_id), WAIT, f"{bot_id} on A or B")
        print(f"\nC's {len(on_c)} bot(s) CONNECTED on A or B {time.monotonic() - killed:.1f}s")
        # Within the lease (6 s) plus a start (the bound every state wait here has).
        assert time.monotonic() - killed < 6 + WAIT
        moved = owners([a, b], bots)
        assert set(moved.values()) <= set(node_ids[:2])
        # Back from the backup C took: linked, no new QR.
        for server, before in logged.items():
            assert not [line for line in server.lines[before:] if SCAN_LINE in line]
        # Actions through the node that does not run the bot, after the takeover too: a
        # message the phone sends reaches the bot's page on its new node, and a stop its
        # browser (the bots' browsers are the test's time: no restart here).
        first, second = on_c[0], on_c[-1]
        other = b if moved[first] == node_ids[0] else a
        incoming = call(
            other,
            "POST",
            f"/api/sessions/{first}/simulator",
            json={"action": "message", "from": "+15550003333", "body": "still there?"},
        )
        assert incoming.status_code == 200, incoming.text
        assert incoming.json()["id"], incoming.text  # the id the owner's page gave it
        other = b if moved[second] == node_ids[0] else a
        stopped = call(other, "POST", f"/api/sessions/{second}/stop")
        assert stopped.status_code == 200 and stopped.json()["state"] == "STOPPED", stopped.text
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def test_a_qr_scanned_through_the_new_node_as_the_old_one_hands_over_links_the_bot(
    tmp_path: Path, database: str
):
    """The phone scans the QR the old node shows (through the new node: the scan reaches the
    old one) and the deploy's SIGTERM lands while the bot is linking: the new node brings
    the bot up linked, without asking for another QR."""
    import threading

    env = node_env(database)
    old = ServerProcess(tmp_path / "old", env).start()
    new = ServerProcess(tmp_path / "new", env)
    try:
        old.wait_ready(timeout=60)
        created = call(old, "POST", "/api/sessions", json={"name": "shop"})
        assert created.status_code == 201, created.text
        bot_id = created.json()["id"]
        wait_state(old, bot_id, "SCAN_QR")
        new.start()
        new.wait_ready(timeout=60)
        new_node = node_of(new)
        wait_state(new, bot_id, "SCAN_QR", node=node_of(old))
        answers: list[httpx.Response] = []
        scan = threading.Thread(
            target=lambda: answers.append(
                call(new, "POST", f"/api/sessions/{bot_id}/simulator", json={"action": "scan"})
            )
        )
        scan.start()
        old.wait_for_log(f"[{bot_id}] State: SCAN_QR → ", timeout=WAIT)
        assert old.stop(signal.SIGTERM, timeout=30) == 0, old.log[-6000:]
        scan.join(timeout=WAIT)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        phone = answers[0].json()["linkedAs"]
        wait_state(new, bot_id, "CONNECTED", node=new_node)
        document = bot(new, bot_id)
        assert document["linkedAs"] == phone
        # Linked once, by that scan: the new node never asked for a QR.
        assert SCAN_LINE not in new.log
        after_handover = [t["to"] for t in document["history"][:3]]
        assert "SCAN_QR" not in after_handover, document["history"]
        assert new.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        new.__exit__(None, None, None)
        old.__exit__(None, None, None)
