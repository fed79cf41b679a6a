"""Faults from outside, on a real `python server.py` in demo mode with real Chromium: every
browser killed at once under load, and SIGTERM while sending and while restoring at boot.
What a user would notice: the bots come back by themselves, every accepted message is sent,
and a redeploy's SIGTERM ends the process cleanly within SHUTDOWN_TIMEOUT."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil

from bot.engines.whatsapp.browser import find_browser_process
from tests.e2e.test_outbox_process import (
    ADMIN,
    CUSTOMER,
    CUSTOMER_CHAT,
    WAIT,
    call,
    create,
    demo_env,
    ok,
    recorded,
    scan,
    stop_cleanly,
    wait_state,
)
from tests.support import Receiver, ServerProcess, wait_until

SHUTDOWN_TIMEOUT = 8.0


def queue(server: ServerProcess, bot_id: str, texts: list[str]) -> None:
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20
    ) as client:
        for text in texts:
            answer = client.post(
                f"/api/sessions/{bot_id}/messages", json={"to": CUSTOMER, "text": text}
            )
            assert answer.status_code == 202, answer.text


def counts(server: ServerProcess, bot_id: str) -> dict[str, int]:
    found: dict[str, int] = ok(call(server, "GET", f"/api/sessions/{bot_id}/messages?limit=1"))[
        "counts"
    ]
    return found


def wait_all_sent(server: ServerProcess, bot_id: str, total: int) -> None:
    seen: dict[str, int] = {}

    def done() -> bool:
        seen.update(counts(server, bot_id))
        return seen["sent"] == total

    try:
        wait_until(done, 90, f"all {total} messages of {bot_id} sent")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counts {seen}:\n{server.log}") from None
    assert seen == {"queued": 0, "sending": 0, "sent": total, "dead": 0}


def assert_each_arrived(data: Path, bot_id: str, texts: list[str], resent_at_most: int) -> None:
    """Every text reached WhatsApp; at most `resent_at_most` of them twice (a send cut off
    by the fault after WhatsApp took it, which the outbox cannot know)."""
    bodies = [m["body"] for m in recorded(data, bot_id)]
    missing = set(texts) - set(bodies)
    assert not missing, f"{len(missing)} never arrived: {sorted(missing)[:5]}"
    assert all(m["to"] == CUSTOMER_CHAT for m in recorded(data, bot_id))
    twice = sorted({b for b in bodies if bodies.count(b) > 1})
    assert len(bodies) == len(texts) + len(twice), "a message arrived three times"
    assert len(twice) <= resent_at_most, twice


def stop_within_the_bound(server: ServerProcess) -> float:
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + 10)
    elapsed = time.monotonic() - started
    assert code == 0, server.log
    assert elapsed < SHUTDOWN_TIMEOUT, f"took {elapsed:.1f}s:\n{server.log}"
    assert "Shutdown complete" in server.log
    assert "Traceback" not in server.log, server.log
    return elapsed


def test_every_browser_killed_under_load_comes_back_and_no_message_is_lost(tmp_path: Path):
    data = tmp_path / "data"
    env = demo_env(SEND_RATE="120", SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:.0f}s")
    with ServerProcess(data, env) as server:
        server.wait_ready()
        bots = [create(server, name)["id"] for name in ("sales", "support", "billing")]
        for bot_id in bots:
            scan(server, bot_id)
        texts = {b: [f"{b} before #{n:02d}" for n in range(20)] for b in bots}
        for bot_id in bots:
            queue(server, bot_id, texts[bot_id])
        # Kill while each bot is part-way through its queue (2 a second per bot).
        wait_until(lambda: all(len(recorded(data, b)) >= 2 for b in bots), WAIT, "sending to start")
        browsers = [find_browser_process(data.resolve() / "profiles" / b) for b in bots]
        assert all(len(recorded(data, b)) < 20 for b in bots), "all sent before the kill"
        assert all(browsers), browsers
        for browser in browsers:
            assert browser is not None
            browser.kill()
        _, alive = psutil.wait_procs([b for b in browsers if b], timeout=10)
        assert not alive
        # Accepted while the bots are down: they wait for their bot, then go.
        for bot_id in bots:
            later = [f"{bot_id} during #{n:02d}" for n in range(5)]
            queue(server, bot_id, later)
            texts[bot_id] += later

        for bot_id in bots:

            def back(b: str = bot_id) -> bool:
                found = ok(call(server, "GET", f"/api/sessions/{b}"))
                dropped = any(t["to"] == "DISCONNECTED" for t in found["history"])
                return dropped and found["state"] == "CONNECTED"

            wait_until(back, WAIT, f"{bot_id} DISCONNECTED, then CONNECTED again")
            reasons = [
                t["reason"] for t in ok(call(server, "GET", f"/api/sessions/{bot_id}"))["history"]
            ]
            assert all("scan" not in (r or "") for r in reasons[:3]), reasons
        for bot_id in bots:
            wait_all_sent(server, bot_id, len(texts[bot_id]))
            assert_each_arrived(data, bot_id, texts[bot_id], resent_at_most=1)
        assert server.log.count("Scan this QR code") == 3  # only the first links'
        stop_cleanly(server)


def test_sigterm_while_sending_exits_within_the_bound_and_loses_nothing(tmp_path: Path):
    data = tmp_path / "data"
    env = demo_env(SEND_RATE="600", SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:.0f}s")
    texts = [f"Redeploy #{n:03d}" for n in range(150)]
    with ServerProcess(data, env) as server:
        server.wait_ready()
        bot_id = create(server, "bulk")["id"]
        scan(server, bot_id)
        queue(server, bot_id, texts)
        wait_until(lambda: len(recorded(data, bot_id)) >= 20, WAIT, "sending under way")
        stop_within_the_bound(server)
    before = len(recorded(data, bot_id))
    assert before < len(texts), "all were sent before the SIGTERM: the test proves nothing"

    with ServerProcess(data, env) as server:
        server.wait_ready()
        wait_state(server, bot_id, "CONNECTED")
        wait_all_sent(server, bot_id, len(texts))
        # A graceful stop lets the send in flight finish and be marked: nothing twice.
        assert_each_arrived(data, bot_id, texts, resent_at_most=0)
        stop_cleanly(server)


def test_sigterm_during_boot_restore_exits_within_the_bound_and_keeps_every_link(
    tmp_path: Path,
):
    data = tmp_path / "data"
    env = demo_env(SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:.0f}s")
    with ServerProcess(data, env) as server:
        server.wait_ready()
        bots = [create(server, name)["id"] for name in ("one", "two", "three")]
        for bot_id in bots:
            scan(server, bot_id)
        phones = {b: ok(call(server, "GET", f"/api/sessions/{b}"))["linkedAs"] for b in bots}
        stop_cleanly(server)

    # Restored one every 3 s: the SIGTERM lands with one bot back, one starting, one waiting.
    slow = {**env, "BOT_START_STAGGER": "3s"}
    queued: dict[str, list[str]] = {}
    with ServerProcess(data, slow) as server:
        server.wait_ready()
        for bot_id in bots:  # accepted during the restore, for bots not back yet
            queued[bot_id] = [f"{bot_id} at boot #{n}" for n in range(3)]
            queue(server, bot_id, queued[bot_id])
        server.wait_for_log("restored at boot", timeout=WAIT)
        states = [ok(call(server, "GET", f"/api/sessions/{b}"))["state"] for b in bots]
        assert states.count("CONNECTED") < 3, states
        stop_within_the_bound(server)
        assert server.log.count("State: STOPPED → CONNECTING (restored at boot)") < 3

    with ServerProcess(data, env) as server:
        server.wait_ready()
        for bot_id in bots:
            wait_state(server, bot_id, "CONNECTED")
            assert ok(call(server, "GET", f"/api/sessions/{bot_id}"))["linkedAs"] == phones[bot_id]
            wait_all_sent(server, bot_id, len(queued[bot_id]))
            assert_each_arrived(data, bot_id, queued[bot_id], resent_at_most=0)
        assert "Scan this QR code" not in server.log  # no link was lost
        stop_cleanly(server)


def test_a_flapping_keepalive_target_gives_one_alert_and_one_resolved_per_incident(
    tmp_path: Path,
):
    # Each ping takes the next answer: two incidents of 3+ failures, and a blip of 2 between
    # them that must stay quiet.
    script = [200, 503, 503, 503, 200, 200, 503, 503, 200, 503, 503, 503, 503, 200, 200]
    with Receiver() as target, Receiver() as channel:
        target.statuses = list(script)
        env = {
            "KEEP_ALIVE_ENABLED": "true",
            "KEEPALIVE_URL": target.url(path="/health"),
            "KEEP_ALIVE_INTERVAL": "1s",
            "KEEP_ALIVE_TIMEOUT": "900ms",
            "KEEP_ALIVE_START_DELAY": "0",
            "ALERT_URLS": channel.url("json", "/alerts"),
        }
        with ServerProcess(tmp_path / "data", env) as server:
            server.wait_ready()
            wait_until(lambda: len(target.requests) >= len(script), 45, "the whole script")
            wait_until(lambda: len(channel.requests) >= 4, 10, "four notifications")
            time.sleep(1.0)  # a fifth would have come by now
            notes = [(r["json"]["type"], r["json"]["message"]) for r in channel.requests]
            assert [kind for kind, _ in notes] == ["failure", "success", "failure", "success"]
            assert "3 consecutive keep-alive failures" in notes[0][1]
            assert "after 3 consecutive failures" in notes[1][1]
            assert "after 4 consecutive failures" in notes[3][1]
            body = server.get("/api/keepalive").json()
            assert body["alerting"] is False
            assert body["failedPings"] == script.count(503)
            assert server.stop(signal.SIGTERM) == 0
        log = server.log
        assert log.count("🚨 ALERT:") == 2, log
        assert log.count("✅ RESOLVED:") == 2, log
