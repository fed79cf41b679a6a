"""The outbox and the webhooks in real processes: real `python server.py`, real Chromium, the
simulator in place of web.whatsapp.com, and a real HTTP receiver that checks every signature
with the secret the API showed once. What a user would notice: a message accepted is sent
exactly once (or, after a crash, at least once and never lost), it waits while the bot is
offline, a retried POST does not send twice, webhooks are signed, retried when the receiver
fails and given up when it refuses."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import Receiver, ServerProcess, chromium_for_tests, kill_strays, wait_until

ADMIN = "admin-token-for-outbox-e2e-0001"
WAIT = 30.0
CUSTOMER = "+15550001111"
# WhatsApp redirects a number to its account's LID chat: the simulator's LID for CUSTOMER.
CUSTOMER_CHAT = "102091210822028@lid"
FRIEND = "+15550002222"
FRIEND_CHAT = "15550002222@c.us"


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
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "SEND_RATE": "600",
        "MAX_RETRY_ATTEMPTS": "5",
        "RETRY_BASE_DELAY": "200ms",
        "RETRY_MAX_DELAY": "2s",
        **extra,
    }


# The API ---------------------------------------------------------------------------------


def call(server: ServerProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        server.base_url + path,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=20,
        **kw,
    )


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    found: dict[str, Any] = response.json()
    return found


def create(server: ServerProcess, name: str, **fields: Any) -> dict[str, Any]:
    """A new bot; the 201 is the one answer that shows its webhook secret."""
    created = ok(call(server, "POST", "/api/sessions", json={"name": name, **fields}), 201)
    assert isinstance(created.get("webhookSecret"), str) and len(created["webhookSecret"]) >= 32
    return created


def state_of(server: ServerProcess, bot_id: str) -> str:
    state: str = ok(call(server, "GET", f"/api/sessions/{bot_id}"))["state"]
    return state


def wait_state(server: ServerProcess, bot_id: str, state: str) -> None:
    seen: list[str] = []

    def reached() -> bool:
        seen.append(state_of(server, bot_id))
        return seen[-1] == state

    try:
        wait_until(reached, WAIT, f"{bot_id} to be {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {seen[-1:]}:\n{server.log}") from None


def simulate(server: ServerProcess, bot_id: str, action: str, **data: str) -> dict[str, Any]:
    body = {"action": action, **data}
    return ok(call(server, "POST", f"/api/sessions/{bot_id}/simulator", json=body))


def scan(server: ServerProcess, bot_id: str) -> None:
    """Link a started bot by scanning its QR with the simulated phone."""
    wait_state(server, bot_id, "SCAN_QR")
    simulate(server, bot_id, "scan")
    wait_state(server, bot_id, "CONNECTED")


def send(server: ServerProcess, bot_id: str, to: str, text: str, **extra: str) -> httpx.Response:
    body = {"to": to, "text": text, **extra}
    return call(server, "POST", f"/api/sessions/{bot_id}/messages", json=body)


def message(server: ServerProcess, bot_id: str, message_id: str) -> dict[str, Any]:
    return ok(call(server, "GET", f"/api/sessions/{bot_id}/messages/{message_id}"))


def wait_sent(server: ServerProcess, bot_id: str, message_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def sent() -> bool:
        found.update(message(server, bot_id, message_id))
        return bool(found["status"] == "sent")

    try:
        wait_until(sent, WAIT, f"message {message_id} to be sent")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {found}:\n{server.log}") from None
    return found


def simulator_sent(server: ServerProcess, bot_id: str) -> list[dict[str, Any]]:
    """What the simulated WhatsApp received from the bot."""
    found: list[dict[str, Any]] = ok(call(server, "GET", f"/api/sessions/{bot_id}/simulator/sent"))[
        "messages"
    ]
    return found


def arrived(server: ServerProcess, bot_id: str, text: str) -> list[dict[str, Any]]:
    return [m for m in simulator_sent(server, bot_id) if m["body"] == text]


def arrived_once(server: ServerProcess, bot_id: str, text: str, chat: str) -> dict[str, Any]:
    """The message reached WhatsApp exactly once: waited for, then a moment for a second."""
    wait_until(lambda: bool(arrived(server, bot_id, text)), WAIT, f"{text!r} to arrive")
    time.sleep(1.0)  # the outbox would have sent a duplicate by now
    copies = arrived(server, bot_id, text)
    assert len(copies) == 1, copies
    assert copies[0]["to"] == chat
    return copies[0]


def assert_waits(server: ServerProcess, bot_id: str, message_id: str, text: str) -> None:
    """A message for a bot that is not connected stays queued, untried and unsent."""
    time.sleep(2.5)
    waiting = message(server, bot_id, message_id)
    assert waiting["status"] == "queued", waiting
    assert waiting["attempts"] == 0, waiting
    assert waiting["sentAt"] is None
    assert arrived(server, bot_id, text) == []


def deliveries(server: ServerProcess, bot_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ok(call(server, "GET", f"/api/sessions/{bot_id}/deliveries"))[
        "deliveries"
    ]
    return found


def stop_cleanly(server: ServerProcess) -> None:
    assert server.stop(signal.SIGTERM, timeout=30) == 0, server.log
    assert "Traceback" not in server.log, server.log
    assert kill_strays(server.data_dir) == 0  # every browser it started was closed


# The receiving end of the webhooks ---------------------------------------------------------


def header(request: dict[str, Any], name: str) -> str:
    for key, value in request["headers"].items():
        if key.lower() == name.lower():
            return str(value)
    raise AssertionError(f"no {name} header in {request['headers']}")


def signature_valid(
    request: dict[str, Any], secret: str, body: bytes | None = None, timestamp: str | None = None
) -> bool:
    """What a receiver does (written here from the documented scheme, not the server's code):
    HMAC-SHA256 of '<X-Wakeful-Timestamp>.<raw body>' with the secret, compared in constant
    time with X-Wakeful-Signature. `body` and `timestamp` stand in for tampered ones."""
    raw: bytes = request["body"] if body is None else body
    stamp = header(request, "X-Wakeful-Timestamp") if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + digest, header(request, "X-Wakeful-Signature"))


def assert_signed(request: dict[str, Any], secret: str, bot_id: str) -> None:
    assert signature_valid(request, secret), request
    envelope = request["json"]
    assert isinstance(envelope, dict), request
    assert header(request, "X-Wakeful-Event") == envelope["event"]
    assert header(request, "X-Wakeful-Delivery").startswith("dlv_")
    assert header(request, "Content-Type").startswith("application/json")
    assert abs(int(header(request, "X-Wakeful-Timestamp")) - time.time()) < 300
    assert envelope["sessionId"] == bot_id


def hooks_for(receiver: Receiver, event: str) -> list[dict[str, Any]]:
    return [r for r in list(receiver.requests) if header(r, "X-Wakeful-Event") == event]


def wait_hook(receiver: Receiver, event: str, **data: Any) -> dict[str, Any]:
    """The first delivery of `event` whose data has these values."""

    def matching() -> list[dict[str, Any]]:
        return [
            r
            for r in hooks_for(receiver, event)
            if all(r["json"]["data"].get(k) == v for k, v in data.items())
        ]

    wait_until(lambda: bool(matching()), WAIT, f"a {event} webhook with {data}")
    return matching()[0]


# The tests ---------------------------------------------------------------------------------


def test_a_message_is_sent_once_and_the_signed_webhooks_tell_about_it(tmp_path: Path):
    with Receiver() as receiver, ServerProcess(tmp_path / "data", demo_env()) as server:
        server.wait_ready()
        created = create(server, "sales", webhookUrl=receiver.url())
        bot_id, secret = created["id"], created["webhookSecret"]
        assert created["webhookUrl"] == receiver.url()
        assert "webhookSecret" not in ok(call(server, "GET", f"/api/sessions/{bot_id}"))
        scan(server, bot_id)

        text = f"Your order {secrets.token_hex(4)} has shipped"
        accepted = send(server, bot_id, CUSTOMER, text)
        assert accepted.status_code == 202, accepted.text
        queued = accepted.json()
        assert queued["status"] == "queued"
        assert queued["to"] == "15550001111"
        assert queued["text"] == text
        message_id = queued["id"]
        assert accepted.headers["Location"] == f"/api/sessions/{bot_id}/messages/{message_id}"

        sent = wait_sent(server, bot_id, message_id)
        assert sent["sentAt"] is not None
        assert sent["attempts"] == 1
        assert sent["lastError"] is None
        copy = arrived_once(server, bot_id, text, CUSTOMER_CHAT)
        assert copy["id"] == sent["whatsappId"]

        hook = wait_hook(receiver, "message.sent", id=message_id)
        assert_signed(hook, secret, bot_id)
        assert hook["json"]["data"]["to"] == "15550001111"
        assert hook["json"]["data"]["whatsappId"] == sent["whatsappId"]
        assert len(hooks_for(receiver, "message.sent")) == 1

        statuses = hooks_for(receiver, "session.status")
        assert "CONNECTED" in [r["json"]["data"]["to"] for r in statuses], statuses
        for request in statuses:
            assert_signed(request, secret, bot_id)

        body = f"Where is my parcel? {secrets.token_hex(4)}"
        simulate(server, bot_id, "message", **{"from": FRIEND, "body": body})
        received = wait_hook(receiver, "message.received", body=body)
        assert_signed(received, secret, bot_id)
        assert received["json"]["data"]["from"] == FRIEND_CHAT

        # Every delivery is on record as delivered, was received once, and was signed.
        def all_delivered() -> bool:
            listed = deliveries(server, bot_id)
            ids = {header(r, "X-Wakeful-Delivery") for r in receiver.requests}
            return {d["id"] for d in listed} == ids and all(
                d["status"] == "delivered" and d["lastStatus"] == 200 for d in listed
            )

        wait_until(all_delivered, 10, "every delivery listed as delivered")
        ids = [header(r, "X-Wakeful-Delivery") for r in receiver.requests]
        assert len(ids) == len(set(ids)), ids
        for request in receiver.requests:
            assert_signed(request, secret, bot_id)
        stop_cleanly(server)


def test_a_message_waits_while_the_bot_is_not_connected_and_goes_once_it_is(tmp_path: Path):
    with ServerProcess(tmp_path / "data", demo_env()) as server:
        server.wait_ready()
        created = create(server, "later", start=False)
        bot_id = created["id"]
        assert created["state"] != "CONNECTED"

        early = f"Sent before the bot ever ran {secrets.token_hex(4)}"
        accepted = send(server, bot_id, CUSTOMER, early)
        assert accepted.status_code == 202, accepted.text
        early_id = accepted.json()["id"]
        assert_waits(server, bot_id, early_id, early)

        ok(call(server, "POST", f"/api/sessions/{bot_id}/start"))
        scan(server, bot_id)
        assert wait_sent(server, bot_id, early_id)["attempts"] == 1
        arrived_once(server, bot_id, early, CUSTOMER_CHAT)

        # Linked, then stopped by its owner: the same.
        ok(call(server, "POST", f"/api/sessions/{bot_id}/stop"))
        wait_state(server, bot_id, "STOPPED")
        late = f"Sent while the bot was stopped {secrets.token_hex(4)}"
        accepted = send(server, bot_id, CUSTOMER, late)
        assert accepted.status_code == 202, accepted.text
        late_id = accepted.json()["id"]
        assert_waits(server, bot_id, late_id, late)

        ok(call(server, "POST", f"/api/sessions/{bot_id}/start"))
        wait_state(server, bot_id, "CONNECTED")  # no new scan: still linked
        assert wait_sent(server, bot_id, late_id)["attempts"] == 1
        arrived_once(server, bot_id, late, CUSTOMER_CHAT)
        assert len(arrived(server, bot_id, early)) == 1
        stop_cleanly(server)


def test_a_repeated_post_with_the_same_idempotency_key_sends_once(tmp_path: Path):
    with ServerProcess(tmp_path / "data", demo_env()) as server:
        server.wait_ready()
        bot_id = create(server, "sales")["id"]
        scan(server, bot_id)

        text = f"Invoice {secrets.token_hex(4)} is ready"
        first = send(server, bot_id, CUSTOMER, text, idempotencyKey="invoice-42")
        again = send(server, bot_id, CUSTOMER, text, idempotencyKey="invoice-42")
        assert first.status_code == 202, first.text
        assert again.status_code == 200, again.text
        message_id = first.json()["id"]
        assert again.json()["id"] == message_id
        assert again.json()["idempotencyKey"] == "invoice-42"

        # The same key for another message is a mistake the caller hears about.
        other = send(server, bot_id, CUSTOMER, text + " (edited)", idempotencyKey="invoice-42")
        assert other.status_code == 409, other.text

        wait_sent(server, bot_id, message_id)
        arrived_once(server, bot_id, text, CUSTOMER_CHAT)
        # A retry after the send changes nothing either.
        late = send(server, bot_id, CUSTOMER, text, idempotencyKey="invoice-42")
        assert late.status_code == 200, late.text
        assert late.json()["id"] == message_id
        assert late.json()["status"] == "sent"
        time.sleep(1.0)
        assert len(arrived(server, bot_id, text)) == 1
        listed = ok(call(server, "GET", f"/api/sessions/{bot_id}/messages"))
        assert listed["total"] == 1
        assert [m["id"] for m in listed["messages"]] == [message_id]
        assert listed["counts"]["sent"] == 1
        stop_cleanly(server)


def test_a_failing_webhook_receiver_is_retried_and_a_refusing_one_is_given_up(tmp_path: Path):
    with (
        Receiver() as receiver,
        Receiver() as refusing,
        ServerProcess(tmp_path / "data", demo_env()) as server,
    ):
        server.wait_ready()
        created = create(
            server, "sales", webhookUrl=receiver.url(), webhookEvents=["message.received"]
        )
        bot_id, secret = created["id"], created["webhookSecret"]
        scan(server, bot_id)
        time.sleep(0.5)
        assert receiver.requests == []  # session.status was not asked for

        receiver.statuses = [503, 503]
        body = f"First try {secrets.token_hex(4)}"
        simulate(server, bot_id, "message", **{"from": FRIEND, "body": body})
        wait_until(lambda: len(receiver.requests) >= 3, WAIT, "three attempts")
        time.sleep(1.0)  # and no fourth
        assert len(receiver.requests) == 3
        assert receiver.statuses == []  # both 503s were served, then the 200
        delivery_id = header(receiver.requests[0], "X-Wakeful-Delivery")
        for attempt in receiver.requests:
            assert header(attempt, "X-Wakeful-Delivery") == delivery_id
            assert attempt["body"] == receiver.requests[0]["body"]
            assert attempt["json"]["data"]["body"] == body
            assert_signed(attempt, secret, bot_id)

        def delivered() -> dict[str, Any] | None:
            return next(
                (
                    d
                    for d in deliveries(server, bot_id)
                    if d["id"] == delivery_id and d["status"] == "delivered"
                ),
                None,
            )

        wait_until(lambda: delivered() is not None, 10, "the delivery listed as delivered")
        listed = delivered()
        assert listed is not None
        assert listed["attempts"] == 3
        assert listed["lastStatus"] == 200
        assert listed["event"] == "message.received"

        # A receiver that answers 404 gets one attempt: a 4xx is not retried.
        refusing.status = 404
        change = {"webhookUrl": refusing.url()}
        ok(call(server, "PATCH", f"/api/sessions/{bot_id}", json=change))
        body = f"Nobody home {secrets.token_hex(4)}"
        simulate(server, bot_id, "message", **{"from": FRIEND, "body": body})
        wait_until(lambda: len(refusing.requests) >= 1, WAIT, "an attempt at the 404 receiver")
        dead_id = header(refusing.requests[0], "X-Wakeful-Delivery")
        assert refusing.requests[0]["json"]["data"]["body"] == body
        assert_signed(refusing.requests[0], secret, bot_id)

        def dead() -> dict[str, Any] | None:
            return next(
                (
                    d
                    for d in deliveries(server, bot_id)
                    if d["id"] == dead_id and d["status"] == "dead"
                ),
                None,
            )

        wait_until(lambda: dead() is not None, 10, "the delivery listed as dead")
        time.sleep(1.5)  # several retry delays: there is no second attempt
        assert len(refusing.requests) == 1
        gave_up = dead()
        assert gave_up is not None
        assert gave_up["attempts"] == 1
        assert gave_up["lastStatus"] == 404
        assert gave_up["url"] == refusing.url()
        assert "404" in (gave_up["lastError"] or "")
        assert len(receiver.requests) == 3  # the old URL got nothing more
        server.wait_for_log(f"Webhook {dead_id} for message.received is dead")
        stop_cleanly(server)


def test_signatures_do_not_verify_tampered_and_follow_a_rotated_secret(tmp_path: Path):
    with Receiver() as receiver, ServerProcess(tmp_path / "data", demo_env()) as server:
        server.wait_ready()
        created = create(
            server, "sales", webhookUrl=receiver.url(), webhookEvents=["message.received"]
        )
        bot_id, old = created["id"], created["webhookSecret"]
        scan(server, bot_id)

        body = f"Before the rotation {secrets.token_hex(4)}"
        simulate(server, bot_id, "message", **{"from": FRIEND, "body": body})
        before = wait_hook(receiver, "message.received", body=body)
        assert_signed(before, old, bot_id)
        # The check is real: anything changed, and it fails.
        raw: bytes = before["body"]
        assert body.encode() in raw
        tampered = raw.replace(body.encode(), body.upper().encode())
        assert tampered != raw
        assert not signature_valid(before, old, body=tampered)
        assert not signature_valid(before, old, body=raw + b" ")
        stamp = header(before, "X-Wakeful-Timestamp")
        assert not signature_valid(before, old, timestamp=str(int(stamp) + 1))
        assert not signature_valid(before, "whsec_" + secrets.token_urlsafe(32))
        assert not signature_valid(before, old[:-1])

        rotated = call(server, "POST", f"/api/sessions/{bot_id}/webhook-secret")
        new = ok(rotated)["webhookSecret"]
        assert rotated.headers["Cache-Control"] == "no-store"
        assert isinstance(new, str) and len(new) >= 32 and new != old
        assert new not in json.dumps(ok(call(server, "GET", f"/api/sessions/{bot_id}")))

        for n in range(2):
            body = f"After the rotation {n} {secrets.token_hex(4)}"
            simulate(server, bot_id, "message", **{"from": FRIEND, "body": body})
            after = wait_hook(receiver, "message.received", body=body)
            assert_signed(after, new, bot_id)
            assert not signature_valid(after, old)
        assert len(receiver.requests) == 3
        stop_cleanly(server)


def recorded(data: Path, bot_id: str) -> list[dict[str, Any]]:
    """The simulator's record of what the bot sent, read from its file (the server may be
    dead); a line cut short by a kill is not a message that arrived."""
    path = data / "simulator-sent.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry["session_id"] == bot_id:
            found.append(entry)
    return found


def outbox_rows(data: Path, bot_id: str) -> dict[str, str]:
    """Each message's text → its status, straight from the database (server stopped)."""
    with sqlite3.connect(data / "wakeful.db") as db:
        rows = db.execute(
            "SELECT text, status FROM outbox_messages WHERE session_id = ?", (bot_id,)
        ).fetchall()
    return {str(text): str(status) for text, status in rows}


def test_a_sigkill_mid_drain_loses_no_message_and_resends_at_most_the_one_in_flight(
    tmp_path: Path,
):
    total = 500
    data = tmp_path / "data"
    env = demo_env(SEND_RATE="60000", OUTBOX_LEASE="2s")
    run = secrets.token_hex(3)
    texts = [f"Bulk {run} #{n:03d}" for n in range(total)]
    first = ServerProcess(data, env).start()
    try:
        first.wait_ready()
        bot_id = create(first, "bulk")["id"]
        scan(first, bot_id)

        started = time.monotonic()
        with httpx.Client(
            base_url=first.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20
        ) as client:
            for text in texts:
                answer = client.post(
                    f"/api/sessions/{bot_id}/messages", json={"to": CUSTOMER, "text": text}
                )
                assert answer.status_code == 202, answer.text
        queued_in = time.monotonic() - started
        at_queued = len(recorded(data, bot_id))
        target = min(max(at_queued + 20, 100), total - 1)
        wait_until(lambda: len(recorded(data, bot_id)) >= target, WAIT, f"{target} sent")
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        before = recorded(data, bot_id)
        assert 0 < len(before) < total, f"{len(before)} sent before the kill"
        rows = outbox_rows(data, bot_id)
        assert len(rows) == total  # every 202 was a committed row
        in_flight = [text for text, status in rows.items() if status == "sending"]
        marked = sum(status == "sent" for status in rows.values())
        assert len(in_flight) <= 1, in_flight  # one send at a time per bot

        with ServerProcess(data, env) as second:
            restarted = time.monotonic()
            second.wait_ready()
            wait_until(lambda: len(recorded(data, bot_id)) > len(before), 60, "sending to resume")
            resumed_in = time.monotonic() - restarted

            counts: dict[str, int] = {}

            def all_sent() -> bool:
                listed = ok(call(second, "GET", f"/api/sessions/{bot_id}/messages?limit=1"))
                counts.update(listed["counts"])
                return counts["sent"] == total

            try:
                wait_until(all_sent, 120, f"all {total} messages sent")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; counts {counts}:\n{second.log}") from None
            drained_in = time.monotonic() - restarted
            assert counts == {"queued": 0, "sending": 0, "sent": total, "dead": 0}
            after = recorded(data, bot_id)
            stop_cleanly(second)

        bodies = [m["body"] for m in after]
        missing = set(texts) - set(bodies)
        assert not missing, f"{len(missing)} never arrived: {sorted(missing)[:5]}"
        assert set(bodies) == set(texts)
        assert all(m["to"] == CUSTOMER_CHAT for m in after)
        twice = sorted({b for b in bodies if bodies.count(b) > 1})
        print(
            f"\ncrash test: {total} queued in {queued_in:.1f}s; killed with {len(before)} "
            f"arrived, {marked} marked sent, {len(in_flight)} in flight; after the restart "
            f"sending resumed in {resumed_in:.1f}s and all were sent in {drained_in:.1f}s; "
            f"{len(bodies)} arrivals, {len(twice)} sent twice {twice}"
        )
        assert len(bodies) == total + len(twice)
        assert all(bodies.count(b) == 2 for b in twice)
        assert len(twice) <= len(in_flight), (twice, in_flight)
        # What arrived twice was the one claimed but not marked when the process died.
        assert set(twice) <= set(in_flight)
        # Arrived but not marked: only the one in flight.
        assert 0 <= len(before) - marked <= len(in_flight), (len(before), marked, in_flight)
    finally:
        first.__exit__(None, None, None)
