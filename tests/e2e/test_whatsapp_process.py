"""WhatsApp bots in demo mode across real process restarts: real `python server.py`, real
Chromium, and the simulator in place of web.whatsapp.com. What a user would notice: a linked
bot comes back without a new QR, a lost profile comes back from the database backup, a phone
logout unlinks for good, and a browser killed from outside or left over by a killed server
does not keep the bot down."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bot.engines.whatsapp.browser import find_browser_process
from tests.support import ServerProcess, chromium_for_tests, kill_strays, wait_until

ADMIN = "admin-token-for-e2e-000001"
KEY = "e2e-session-encryption-key-0001"
WAIT = 30.0
SCAN_LINE = "Scan this QR code"


def demo_env(**extra: str) -> dict[str, str]:
    return {
        "ADMIN_TOKEN": ADMIN,
        "BOT_ENGINE": "whatsapp",
        "WHATSAPP_SIMULATOR": "1",
        "CHROMIUM_PATH": chromium_for_tests(),
        "SIMULATOR_QR_EVERY": "20s",
        "RECONNECT_BASE_DELAY": "200ms",
        "RECONNECT_MAX_DELAY": "1s",
        "BOT_START_STAGGER": "100ms",
        "SHUTDOWN_TIMEOUT": "10s",
        **extra,
    }


def call(server: ServerProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        server.base_url + path,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=20,
        **kw,
    )


def bot(server: ServerProcess, bot_id: str) -> dict[str, Any]:
    response = call(server, "GET", f"/api/sessions/{bot_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait_state(server: ServerProcess, bot_id: str, state: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(bot(server, bot_id))
        return found.get("state") == state

    try:
        wait_until(reached, WAIT, f"{bot_id} to be {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {found.get('state')}:\n{server.log}") from None
    return found


def simulate(server: ServerProcess, bot_id: str, action: str, **data: str) -> dict[str, Any]:
    response = call(
        server, "POST", f"/api/sessions/{bot_id}/simulator", json={"action": action, **data}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def link(server: ServerProcess, name: str) -> tuple[str, str]:
    """A new bot, linked by a scan of its first QR; returns its id and the phone number."""
    created = call(server, "POST", "/api/sessions", json={"name": name})
    assert created.status_code == 201, created.text
    bot_id: str = created.json()["id"]
    waiting = wait_state(server, bot_id, "SCAN_QR")
    assert waiting["qrAvailable"] is True
    assert call(server, "GET", f"/api/sessions/{bot_id}/qr").status_code == 200
    server.wait_for_log(SCAN_LINE)
    phone = simulate(server, bot_id, "scan")["linkedAs"]
    connected = wait_state(server, bot_id, "CONNECTED")
    assert connected["linkedAs"] == phone
    # Linked by the scan: the first sync, then connected.
    server.wait_for_log(f"[{bot_id}] State: SYNCING → CONNECTED (connected as {phone})")
    return bot_id, phone


def assert_no_new_qr(server: ServerProcess, bot_id: str) -> None:
    assert SCAN_LINE not in server.log
    assert bot(server, bot_id)["qrAvailable"] is False
    assert call(server, "GET", f"/api/sessions/{bot_id}/qr").status_code == 404


def since_shutdown(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transitions (newest first) after the bot was stopped by the last shutdown."""
    for index, entry in enumerate(history):
        if entry["to"] == "STOPPED" and entry["reason"] == "shutdown":
            return history[:index]
    raise AssertionError(f"no shutdown in the history: {history}")


def profile_of(data: Path, bot_id: str) -> Path:
    return data.resolve() / "profiles" / bot_id


def backup_rows(data: Path, bot_id: str) -> list[tuple[bytes, int]]:
    """The bot's profile backups in the SQLite database (read with the server stopped)."""
    with sqlite3.connect(data / "wakeful.db") as db:
        rows = db.execute(
            "SELECT data, encrypted FROM profile_backups WHERE session_id = ?", (bot_id,)
        ).fetchall()
    return [(bytes(blob), int(encrypted)) for blob, encrypted in rows]


def stop_cleanly(server: ServerProcess) -> None:
    assert server.stop(signal.SIGTERM, timeout=20) == 0, server.log
    assert "CONNECTED → STOPPED (shutdown)" in server.log
    # A clean stop closes every browser it started.
    assert kill_strays(server.data_dir) == 0


def test_a_restarted_server_brings_the_linked_bot_back_without_a_new_qr(tmp_path: Path):
    data = tmp_path / "data"
    with ServerProcess(data, demo_env()) as server:
        server.wait_ready()
        bot_id, phone = link(server, "sales")
        stop_cleanly(server)

    with ServerProcess(data, demo_env()) as server:
        server.wait_ready()
        back = wait_state(server, bot_id, "CONNECTED")
        assert back["linkedAs"] == phone
        server.wait_for_log(f"[{bot_id}] State: CONNECTING → CONNECTED (connected as {phone})")
        assert_no_new_qr(server, bot_id)
        restart = since_shutdown(back["history"])
        assert restart, back["history"]
        assert restart[0]["to"] == "CONNECTED"
        assert "SCAN_QR" not in [t["to"] for t in restart], restart
        stop_cleanly(server)


def test_a_lost_profile_is_restored_from_the_encrypted_database_backup(tmp_path: Path):
    data = tmp_path / "data"
    env = demo_env(PROFILE_BACKUP_DELAY="1s", SESSION_ENCRYPTION_KEY=KEY)
    with ServerProcess(data, env) as server:
        server.wait_ready()
        bot_id, phone = link(server, "sales")
        server.wait_for_log(f"[{bot_id}] Profile backed up to the database (")
        backed = [line for line in server.lines if "Profile backed up to the database (" in line]
        assert all(line.endswith(", encrypted)") for line in backed), backed
        assert "NOT encrypted" not in server.log
        stop_cleanly(server)

    # An ephemeral disk after a redeploy: the profiles are gone, the database is not.
    shutil.rmtree(data / "profiles")
    rows = backup_rows(data, bot_id)
    assert len(rows) == 1
    blob, encrypted = rows[0]
    assert encrypted == 1
    # A Fernet token, not the compressed profile itself: unreadable without the key.
    assert blob.startswith(b"gAAAAA")
    with pytest.raises(zlib.error):
        zlib.decompress(blob)

    with ServerProcess(data, env) as server:
        server.wait_ready()
        server.wait_for_log(f"[{bot_id}] Profile restored from the database backup (")
        back = wait_state(server, bot_id, "CONNECTED")
        assert back["linkedAs"] == phone
        assert "SCAN_QR" not in [t["to"] for t in since_shutdown(back["history"])]
        assert_no_new_qr(server, bot_id)
        assert profile_of(data, bot_id).is_dir()
        stop_cleanly(server)


def test_a_backup_under_another_key_asks_for_a_new_qr_without_crashing(tmp_path: Path):
    data = tmp_path / "data"
    env = demo_env(PROFILE_BACKUP_DELAY="1s", SESSION_ENCRYPTION_KEY=KEY)
    with ServerProcess(data, env) as server:
        server.wait_ready()
        bot_id, phone = link(server, "sales")
        server.wait_for_log(f"[{bot_id}] Profile backed up to the database (")
        stop_cleanly(server)
    shutil.rmtree(data / "profiles")
    assert len(backup_rows(data, bot_id)) == 1

    other = demo_env(PROFILE_BACKUP_DELAY="1s", SESSION_ENCRYPTION_KEY=KEY[::-1])
    with ServerProcess(data, other) as server:
        server.wait_ready()
        waiting = wait_state(server, bot_id, "SCAN_QR")
        assert waiting["qrAvailable"] is True
        server.wait_for_log(SCAN_LINE)
        warnings = [line for line in server.lines if "Profile backup not restored" in line]
        assert len(warnings) == 1, server.log
        assert "WARNING" in warnings[0]
        assert f"[{bot_id}]" in warnings[0]
        assert "SESSION_ENCRYPTION_KEY" in warnings[0]
        assert "a new QR scan is needed" in warnings[0]
        assert "Profile restored from the database backup" not in server.log
        assert "Traceback" not in server.log
        # The server lives on, and a new scan links the bot again.
        assert server.process is not None and server.process.poll() is None
        assert server.get("/health").status_code == 200
        assert simulate(server, bot_id, "scan")["linkedAs"] == phone
        assert wait_state(server, bot_id, "CONNECTED")["linkedAs"] == phone
        stop_cleanly(server)


def test_a_phone_logout_unlinks_the_bot_and_deletes_its_profile_and_backup(tmp_path: Path):
    data = tmp_path / "data"
    env = demo_env(PROFILE_BACKUP_DELAY="1s", SESSION_ENCRYPTION_KEY=KEY)
    with ServerProcess(data, env) as server:
        server.wait_ready()
        bot_id, _ = link(server, "sales")
        server.wait_for_log(f"[{bot_id}] Profile backed up to the database (")
        assert profile_of(data, bot_id).is_dir()

        logout = {"action": "logout"}
        answer = call(server, "POST", f"/api/sessions/{bot_id}/simulator", json=logout)
        assert answer.status_code == 200, answer.text
        assert answer.json()["session"]["state"] == "LOGGED_OUT"
        out = wait_state(server, bot_id, "LOGGED_OUT")
        assert "phone" in out["stateReason"].lower(), out["stateReason"]
        assert out["linkedAs"] is None
        server.wait_for_log(f"[{bot_id}] Profile deleted (and its backup)")
        assert not profile_of(data, bot_id).exists()
        # Unlinked stays unlinked: no browser is started again by itself.
        assert find_browser_process(profile_of(data, bot_id)) is None
        assert bot(server, bot_id)["state"] == "LOGGED_OUT"
        assert server.stop(signal.SIGTERM, timeout=20) == 0, server.log
        assert kill_strays(data) == 0

    assert backup_rows(data, bot_id) == []
    assert not profile_of(data, bot_id).exists()


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_browser_killed_from_outside_comes_back_connected_by_itself(tmp_path: Path):
    data = tmp_path / "data"
    with ServerProcess(data, demo_env()) as server:
        server.wait_ready()
        bot_id, phone = link(server, "sales")
        browser = find_browser_process(profile_of(data, bot_id))
        assert browser is not None
        killed = browser.pid

        browser.kill()
        wait_until(lambda: gone(browser), 10, "the killed browser to be gone")

        def back_after_a_disconnect() -> bool:
            found = bot(server, bot_id)
            dropped = any(t["to"] == "DISCONNECTED" for t in found["history"])
            return dropped and found["state"] == "CONNECTED"

        wait_until(back_after_a_disconnect, WAIT, "DISCONNECTED, then CONNECTED again")
        back = bot(server, bot_id)
        assert back["linkedAs"] == phone
        steps = [t["to"] for t in back["history"]]
        assert steps.index("CONNECTED") < steps.index("DISCONNECTED")
        assert "SCAN_QR" not in steps[: steps.index("DISCONNECTED")]
        assert server.log.count(SCAN_LINE) == 1  # only the first link's
        assert server.log.count(f"SYNCING → CONNECTED (connected as {phone})") == 1
        assert server.log.count(f"CONNECTING → CONNECTED (connected as {phone})") == 1
        relaunched = find_browser_process(profile_of(data, bot_id))
        assert relaunched is not None and relaunched.pid != killed

        simulate(server, bot_id, "message", **{"from": "+15550001234", "body": "!ping"})

        def replied() -> bool:
            sent = call(server, "GET", f"/api/sessions/{bot_id}/simulator/sent").json()
            return any(m["body"] == "pong" for m in sent["messages"])

        wait_until(replied, WAIT, "a pong to !ping")
        sent = call(server, "GET", f"/api/sessions/{bot_id}/simulator/sent").json()["messages"]
        pong = [m for m in sent if m["body"] == "pong"]
        assert len(pong) == 1
        # The sender's account is LID-migrated, as WhatsApp's are: answered in its LID chat.
        assert pong[0]["to"].endswith("@lid")
        stop_cleanly(server)


def assert_back_after_a_crash(server: ServerProcess, bot_id: str, phone: str) -> None:
    """Connected again with the link the killed process had: no new QR."""
    back = wait_state(server, bot_id, "CONNECTED")
    assert back["linkedAs"] == phone
    server.wait_for_log(f"[{bot_id}] State: CONNECTING → CONNECTED (connected as {phone})")
    reasons = [t["reason"] for t in back["history"]]
    assert "the process ended while it was running" in reasons, back["history"]
    crash = reasons.index("the process ended while it was running")
    assert "SCAN_QR" not in [t["to"] for t in back["history"][:crash]], back["history"]
    assert_no_new_qr(server, bot_id)


def test_a_sigkilled_server_brings_the_linked_bot_back_without_a_new_qr(tmp_path: Path):
    data = tmp_path / "data"
    first = ServerProcess(data, demo_env()).start()
    try:
        first.wait_ready()
        bot_id, phone = link(first, "sales")
        browser = find_browser_process(profile_of(data, bot_id))
        assert browser is not None
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert "→ STOPPED" not in first.log  # no shutdown ran

        with ServerProcess(data, demo_env()) as second:
            second.wait_ready()
            assert_back_after_a_crash(second, bot_id, phone)
            # One browser on the profile: the killed server's did not outlive it.
            assert gone(browser)
            live = find_browser_process(profile_of(data, bot_id))
            assert live is not None and live.pid != browser.pid
            stop_cleanly(second)
    finally:
        first.__exit__(None, None, None)


def test_a_hung_browser_orphaned_by_a_killed_server_is_killed_at_the_next_start(
    tmp_path: Path,
):
    """A browser that hangs while its server and Playwright driver are SIGKILLed together
    (as a kill of the server's process group does) outlives them: Chromium runs in its own
    process group, and a hung one does not notice its closed pipe. Two browsers on one
    profile would corrupt it, so the next start kills it first."""
    data = tmp_path / "data"
    first = ServerProcess(data, demo_env()).start()
    drivers: list[psutil.Process] = []
    try:
        first.wait_ready()
        bot_id, phone = link(first, "sales")
        orphan = find_browser_process(profile_of(data, bot_id))
        assert orphan is not None
        assert first.process is not None
        drivers += [
            child
            for child in psutil.Process(first.process.pid).children()
            if child.pid != orphan.pid and "playwright" in " ".join(child.cmdline())
        ]
        assert drivers, "no Playwright driver under the server"
        orphan.suspend()  # hung
        for driver in drivers:
            driver.suspend()  # killed with the server: no time to close its browsers
        # Not `first.stop()`: that waits for the end of the log, which the orphan, holding
        # the server's stdout, delays.
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        for driver in drivers:
            driver.kill()
        # Orphans are reaped by whatever runs as pid 1, if anything: a zombie counts as gone.
        wait_until(lambda: all(gone(d) for d in drivers), 10, "the Playwright driver to die")
        assert not gone(orphan)
        assert find_browser_process(profile_of(data, bot_id)) == orphan

        with ServerProcess(data, demo_env()) as second:
            second.wait_ready()
            second.wait_for_log(f"[{bot_id}] Killing an orphaned browser (pid {orphan.pid})")
            assert_back_after_a_crash(second, bot_id, phone)
            wait_until(lambda: gone(orphan), 10, "the orphaned browser to be gone")
            live = find_browser_process(profile_of(data, bot_id))
            assert live is not None and live.pid != orphan.pid
            stop_cleanly(second)
    finally:
        for driver in drivers:  # a failure before the kill must not leave it stopped
            with contextlib.suppress(psutil.Error):
                driver.kill()
        first.__exit__(None, None, None)
