"""Messages and webhooks through the API, in-process, with the scripted engine (bots connect
by themselves; sends are instant) and a real webhook receiver on loopback that checks the
signatures."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bot.webhooks import sign
from tests.support import Receiver
from tests.web.test_sessions_api import (
    ADMIN,
    Api,
    User,
    assert_problem,
    make_settings,
    running,
)

WAIT = 10.0


def fast(tmp_path: Path, **values: Any) -> Any:
    return make_settings(
        tmp_path,
        **{
            "send_rate": 0,
            "retry_base_delay": "50ms",
            "retry_max_delay": "200ms",
            "max_retry_attempts": 3,
            "max_body_bytes": 65_536,  # a 4,096-character text fits, even in emoji
            **values,
        },
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(fast(tmp_path)) as found:
        yield found


@pytest.fixture
def receiver() -> Any:
    with Receiver() as found:
        yield found


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = check()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def connected_bot(api: Api, **fields: Any) -> dict[str, Any]:
    bot = await api.new_session(**fields)
    await api.wait_for(bot["id"], "CONNECTED")
    return bot


async def send(api: Api, bot: str, headers: dict[str, str] = ADMIN, **body: Any) -> Any:
    return await api.client.post(f"/api/sessions/{bot}/messages", json=body, headers=headers)


async def message(api: Api, bot: str, mid: str) -> dict[str, Any]:
    response = await api.client.get(f"/api/sessions/{bot}/messages/{mid}", headers=ADMIN)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def wait_status(api: Api, bot: str, mid: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        found = await message(api, bot, mid)
        return found if found["status"] == status else None

    result: dict[str, Any] = await eventually(reached, f"{mid} to be {status}")
    return result


async def test_a_message_is_stored_then_sent_once(api: Api):
    bot = (await connected_bot(api))["id"]
    response = await send(api, bot, to="+1 (555) 000-1111", text="hello")
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued" and queued["to"] == "15550001111"
    assert response.headers["location"] == f"/api/sessions/{bot}/messages/{queued['id']}"
    sent = await wait_status(api, bot, queued["id"], "sent")
    assert sent["attempts"] == 1 and sent["sentAt"] and sent["whatsappId"]
    assert api.engine.sent == [(bot, "15550001111", "hello")]
    listing = await api.client.get(f"/api/sessions/{bot}/messages", headers=ADMIN)
    assert listing.json()["counts"]["sent"] == 1
    assert (await api.get(bot))["lastActivity"] is not None


async def test_chat_ids_are_accepted_as_they_are(api: Api):
    bot = (await connected_bot(api))["id"]
    for to in ("15550001111@c.us", "120363012345678901@g.us"):
        response = await send(api, bot, to=to, text="hi")
        assert response.status_code == 202, response.text
        assert response.json()["to"] == to


async def test_bad_messages_are_refused_with_every_field_named_and_nothing_stored(api: Api):
    bot = (await connected_bot(api))["id"]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"to": "12", "text": "hi"}, ["to"]),
        ({"to": "+15550001111", "text": ""}, ["text"]),
        ({"to": "+15550001111", "text": "x" * 4097}, ["text"]),
        ({"to": "someone@example.com", "text": "   "}, ["to", "text"]),
        ({"text": "hi"}, ["to"]),
        ({"to": "+15550001111", "text": "hi", "priority": 1}, ["priority"]),
        ({"to": "+15550001111", "text": "hi", "idempotencyKey": "has space"}, ["idempotencyKey"]),
        ({"to": ["+15550001111"], "text": 5}, ["to", "text"]),
    ]
    for body, named in cases:
        problem = assert_problem(await send(api, bot, **body), 422)
        assert sorted(e["field"] for e in problem["errors"]) == sorted(named), (body, problem)
    accepted_max = await send(api, bot, to="+15550001111", text="x" * 4096)
    assert accepted_max.status_code == 202
    listing = await api.client.get(f"/api/sessions/{bot}/messages", headers=ADMIN)
    assert listing.json()["total"] == 1


async def test_the_same_idempotency_key_never_sends_twice(api: Api):
    bot = (await connected_bot(api))["id"]
    first = await send(api, bot, to="+15550001111", text="pay 10", idempotencyKey="order-7")
    again = await send(api, bot, to="+15550001111", text="pay 10", idempotencyKey="order-7")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = await send(api, bot, to="+15550001111", text="pay 20", idempotencyKey="order-7")
    assert "already used" in assert_problem(other, 409)["detail"]
    header = await api.client.post(
        f"/api/sessions/{bot}/messages",
        json={"to": "+15550001111", "text": "pay 10"},
        headers={**ADMIN, "Idempotency-Key": "order-7"},
    )
    assert header.status_code == 200 and header.json()["id"] == first.json()["id"]
    await wait_status(api, bot, first.json()["id"], "sent")
    await asyncio.sleep(0.2)
    assert [text for _, _, text in api.engine.sent] == ["pay 10"]


async def test_messages_wait_for_a_bot_that_is_not_connected(api: Api):
    bot = (await api.new_session(start=False))["id"]
    mid = (await send(api, bot, to="+15550001111", text="later")).json()["id"]
    await asyncio.sleep(0.5)
    assert (await message(api, bot, mid))["status"] == "queued"
    assert api.engine.sent == []
    assert (await api.act(bot, "start")).status_code == 200
    await wait_status(api, bot, mid, "sent")
    assert api.engine.sent == [(bot, "15550001111", "later")]


async def test_failures_retry_then_die_then_retry_dead_sends_them(api: Api):
    bot = (await connected_bot(api))["id"]
    api.engine.fail_sends = 3  # MAX_RETRY_ATTEMPTS=3 in these tests
    mid = (await send(api, bot, to="+15550001111", text="stubborn")).json()["id"]
    dead = await wait_status(api, bot, mid, "dead")
    assert dead["attempts"] == 3
    assert dead["lastError"] == "WhatsApp refused the message (scripted)"
    listed = await api.client.get(f"/api/sessions/{bot}/messages?status=dead", headers=ADMIN)
    assert [m["id"] for m in listed.json()["messages"]] == [mid]
    retry = await api.client.post(f"/api/sessions/{bot}/messages/retry-dead", headers=ADMIN)
    assert retry.json() == {"requeued": 1}
    sent = await wait_status(api, bot, mid, "sent")
    assert sent["attempts"] == 1
    assert api.engine.sent == [(bot, "15550001111", "stubborn")]


async def test_sending_is_paced_by_send_rate(tmp_path: Path):
    async with running(fast(tmp_path, send_rate=120)) as api:  # 0.25 to 0.75 s apart
        bot = (await connected_bot(api))["id"]
        ids = [
            (await send(api, bot, to="+15550001111", text=f"m{i}")).json()["id"] for i in range(4)
        ]
        sent = [await wait_status(api, bot, mid, "sent") for mid in ids]
        times = [datetime.fromisoformat(m["sentAt"]) for m in sent]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(0.24 <= gap <= 1.0 for gap in gaps), gaps


async def test_another_users_messages_are_out_of_reach(api: Api):
    alice: User = await api.new_user("alice")
    bob: User = await api.new_user("bob")
    bot = (await connected_bot(api))["id"]
    response = await api.client.post("/api/sessions", json={"name": "bobs"}, headers=bob.headers)
    bobs = response.json()["id"]
    mid = (await send(api, bobs, bob.headers, to="+15550001111", text="private")).json()["id"]
    for path in (f"/api/sessions/{bobs}/messages/{mid}", f"/api/sessions/{bobs}/messages"):
        assert_problem(await api.client.get(path, headers=alice.headers), 404)
    assert_problem(await send(api, bobs, alice.headers, to="+15550001111", text="x"), 404)
    # A message id of another bot is not found through one's own bot either.
    assert_problem(await api.client.get(f"/api/sessions/{bot}/messages/{mid}", headers=ADMIN), 404)


# Webhooks ---------------------------------------------------------------------------------


def verified(request: dict[str, Any], secret: str) -> bool:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    expected = (
        "sha256="
        + hmac.new(
            secret.encode(),
            headers["x-wakeful-timestamp"].encode() + b"." + request["body"],
            hashlib.sha256,
        ).hexdigest()
    )
    return hmac.compare_digest(expected, headers["x-wakeful-signature"])


def events_of(receiver: Receiver) -> list[str]:
    return [r["json"]["event"] for r in receiver.requests]


async def test_webhooks_are_signed_and_carry_the_bots_events(api: Api, receiver: Receiver):
    created = await api.new_session(webhookUrl=receiver.url())
    secret = created["webhookSecret"]
    assert secret.startswith("whsec_")
    bot = created["id"]
    await api.wait_for(bot, "CONNECTED")
    mid = (await send(api, bot, to="+15550001111", text="hello")).json()["id"]
    await eventually(lambda: "message.sent" in events_of(receiver), "message.sent")
    session = api.manager.sessions[bot]
    await session.emit(
        "message.received", {"id": "in-1", "from": "15550002222@c.us", "body": "hi", "timestamp": 1}
    )
    await eventually(lambda: "message.received" in events_of(receiver), "message.received")
    assert {"session.status", "qr", "message.sent", "message.received"} <= set(events_of(receiver))
    for request in receiver.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert verified(request, secret), request
        assert not verified(request, secret + "x")
        assert headers["x-wakeful-event"] == request["json"]["event"]
        assert headers["x-wakeful-delivery"].startswith("dlv_")
        assert request["json"]["sessionId"] == bot
    sent_event = next(r["json"] for r in receiver.requests if r["json"]["event"] == "message.sent")
    assert sent_event["data"]["id"] == mid
    # The secret is shown once: never again in the bot's document.
    document = await api.client.get(f"/api/sessions/{bot}", headers=ADMIN)
    assert secret not in document.text and "webhookSecret" not in document.json()


async def test_a_tampered_body_does_not_verify(receiver: Receiver):
    body = b'{"event":"message.sent"}'
    signature = sign("whsec_abc", "1700000000", body)
    tampered = {
        "headers": {"X-Wakeful-Timestamp": "1700000000", "X-Wakeful-Signature": signature},
        "body": body.replace(b"sent", b"lost"),
    }
    assert not verified(tampered, "whsec_abc")
    tampered["body"] = body
    assert verified(tampered, "whsec_abc")


async def test_webhook_events_can_be_chosen_per_bot(api: Api, receiver: Receiver):
    created = await api.new_session(webhookUrl=receiver.url(), webhookEvents=["message.sent"])
    bot = created["id"]
    assert created["webhookEvents"] == ["message.sent"]
    await api.wait_for(bot, "CONNECTED")
    await send(api, bot, to="+15550001111", text="only this")
    await eventually(lambda: receiver.requests, "a delivery")
    await asyncio.sleep(0.3)
    assert events_of(receiver) == ["message.sent"]
    bad = await api.client.post(
        "/api/sessions", json={"name": "x", "webhookEvents": ["message.lost"]}, headers=ADMIN
    )
    assert assert_problem(bad, 422)["errors"][0]["field"] == "webhookEvents"


async def test_a_503_is_retried_until_delivered(api: Api, receiver: Receiver):
    receiver.statuses = [503, 503]
    created = await api.new_session(webhookUrl=receiver.url(), webhookEvents=["message.sent"])
    bot = created["id"]
    await api.wait_for(bot, "CONNECTED")
    await send(api, bot, to="+15550001111", text="hi")
    await eventually(lambda: len(receiver.requests) >= 3, "three attempts")
    ids = {r["headers"]["X-Wakeful-Delivery"] for r in receiver.requests}
    assert len(ids) == 1, "a retry must be the same delivery"

    async def delivered() -> list[dict[str, Any]] | None:
        listing = await api.client.get(f"/api/sessions/{bot}/deliveries", headers=ADMIN)
        found: list[dict[str, Any]] = listing.json()["deliveries"]
        return found if found and found[0]["status"] == "delivered" else None

    (delivery,) = await eventually(delivered, "the delivery to be delivered")
    assert delivery["attempts"] == 3 and delivery["lastStatus"] == 200


async def test_a_4xx_is_permanent_and_listed_dead(api: Api, receiver: Receiver):
    receiver.status = 410
    created = await api.new_session(webhookUrl=receiver.url(), webhookEvents=["message.sent"])
    bot = created["id"]
    await api.wait_for(bot, "CONNECTED")
    await send(api, bot, to="+15550001111", text="hi")

    async def dead() -> list[dict[str, Any]] | None:
        listing = await api.client.get(f"/api/sessions/{bot}/deliveries?status=dead", headers=ADMIN)
        found: list[dict[str, Any]] = listing.json()["deliveries"]
        return found or None

    (delivery,) = await eventually(dead, "a dead delivery")
    assert delivery["attempts"] == 1 and delivery["lastStatus"] == 410
    assert "not retried" in delivery["lastError"]
    assert len(receiver.requests) == 1


async def test_dead_deliveries_are_queued_again_on_request_and_delivered(
    api: Api, receiver: Receiver
):
    receiver.status = 410
    created = await api.new_session(webhookUrl=receiver.url(), webhookEvents=["message.sent"])
    bot = created["id"]
    await api.wait_for(bot, "CONNECTED")
    await send(api, bot, to="+15550001111", text="hi")

    async def listed(status: str) -> list[dict[str, Any]] | None:
        listing = await api.client.get(
            f"/api/sessions/{bot}/deliveries?status={status}", headers=ADMIN
        )
        found: list[dict[str, Any]] = listing.json()["deliveries"]
        return found or None

    (dead,) = await eventually(lambda: listed("dead"), "a dead delivery")
    receiver.status = 200  # the receiver is fixed
    retried = await api.client.post(f"/api/sessions/{bot}/deliveries/retry-dead", headers=ADMIN)
    assert retried.status_code == 200 and retried.json() == {"requeued": 1}
    (delivered,) = await eventually(lambda: listed("delivered"), "the delivery delivered")
    assert delivered["id"] == dead["id"] and delivered["attempts"] == 1
    assert len(receiver.requests) == 2
    again = await api.client.post(f"/api/sessions/{bot}/deliveries/retry-dead", headers=ADMIN)
    assert again.json() == {"requeued": 0}


async def test_rotating_the_secret_signs_with_the_new_one(api: Api, receiver: Receiver):
    created = await api.new_session(webhookUrl=receiver.url(), webhookEvents=["message.sent"])
    bot = created["id"]
    await api.wait_for(bot, "CONNECTED")
    rotated = await api.client.post(f"/api/sessions/{bot}/webhook-secret", headers=ADMIN)
    new_secret = rotated.json()["webhookSecret"]
    assert new_secret != created["webhookSecret"]
    await send(api, bot, to="+15550001111", text="hi")
    await eventually(lambda: receiver.requests, "a delivery")
    assert verified(receiver.requests[0], new_secret)
    assert not verified(receiver.requests[0], created["webhookSecret"])


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.5/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("ftp://example.com/hook", None),
    ],
)
async def test_webhook_urls_into_our_own_network_are_refused(
    tmp_path: Path, url: str, kind: str | None
):
    async with running(fast(tmp_path, webhook_allow_private=False)) as api:
        response = await api.client.post(
            "/api/sessions", json={"name": "guarded", "webhookUrl": url}, headers=ADMIN
        )
        problem = assert_problem(response, 422)
        (error,) = problem["errors"]
        assert error["field"] == "webhookUrl"
        if kind is not None:
            assert f"is a {kind}" in error["message"], error
            assert "WEBHOOK_ALLOW_PRIVATE" in error["message"]
        assert await api.stored() == 0  # nothing was created
        # Nor can an existing bot be pointed there.
        bot = (await api.new_session(start=False))["id"]
        patched = await api.client.patch(
            f"/api/sessions/{bot}", json={"webhookUrl": url}, headers=ADMIN
        )
        assert_problem(patched, 422)
        assert (await api.get(bot))["webhookUrl"] is None


async def test_the_queue_is_reported_in_health_metrics_and_prometheus(api: Api):
    bot = (await connected_bot(api))["id"]
    mid = (await send(api, bot, to="+15550001111", text="count me")).json()["id"]
    await wait_status(api, bot, mid, "sent")
    metrics = (await api.client.get("/api/metrics")).json()
    assert metrics["outbox"]["byStatus"]["sent"] == 1
    assert set(metrics["webhookDeliveries"]) == {"delivered", "retried", "dead"}
    text = (await api.client.get("/metrics")).text
    assert 'outbox_messages{status="sent"} 1.0' in text
    assert "outbox_send_duration_seconds_count 1.0" in text
    assert 'webhook_deliveries_total{result="delivered"}' in text
    await eventually(
        lambda: api.app.state.metrics.outbox_counts.get("sent") == 1, "the counts refresh"
    )
    health = (await api.client.get("/health")).json()
    assert health["outbox"]["sent"] == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/latest/meta-data",  # shared address space: a cloud's metadata
        "http://[2002:7f00:1::]/hook",  # 6to4 for 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 for 169.254.169.254
        "http://[fec0::1]/hook",
        "http://0.0.0.0/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
    ],
)
async def test_disguised_internal_addresses_are_refused_too(tmp_path: Path, url: str):
    async with running(fast(tmp_path, webhook_allow_private=False)) as api:
        response = await api.client.post(
            "/api/sessions", json={"name": "guarded", "webhookUrl": url}, headers=ADMIN
        )
        assert assert_problem(response, 422)["errors"][0]["field"] == "webhookUrl"


async def test_a_public_nat64_address_is_allowed():
    from services.netguard import check_url

    await check_url("http://[64:ff9b::808:808]/hook", allow_private=False)  # 8.8.8.8


async def test_a_password_in_a_webhook_url_is_never_echoed(api: Api, receiver: Receiver):
    url = receiver.url().replace("http://", "http://hooks:s3cr3t-pass@")
    created = await api.new_session(webhookUrl=url, webhookEvents=["session.status"])
    assert "s3cr3t-pass" not in json.dumps(
        {k: v for k, v in created.items() if k != "webhookSecret"}
    )
    assert created["webhookUrl"] == url.replace("s3cr3t-pass", "***")
    await eventually(lambda: receiver.requests, "a delivery")
    listing = await api.client.get(f"/api/sessions/{created['id']}/deliveries", headers=ADMIN)
    assert "s3cr3t-pass" not in listing.text
    assert receiver.requests[0]["headers"]["Authorization"].startswith("Basic ")


async def test_a_bot_without_a_secret_gets_one_when_its_webhook_is_set(api: Api):
    bot = (await api.new_session(start=False))["id"]
    api.manager.sessions[bot].record.webhook_secret = None  # a bot from before signing
    await api.manager.store.save_fields(bot, webhook_secret=None)
    patched = await api.client.patch(
        f"/api/sessions/{bot}", json={"webhookUrl": "http://127.0.0.1:9/hook"}, headers=ADMIN
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["webhookSecret"].startswith("whsec_")
    again = await api.client.patch(
        f"/api/sessions/{bot}", json={"webhookEvents": []}, headers=ADMIN
    )
    assert "webhookSecret" not in again.json()
    assert again.json()["webhookEvents"] == []


async def test_a_wake_up_is_not_lost_while_the_worker_looks(api: Api):
    """Messages sent one after another each go at once, not after an idle poll."""
    bot = (await connected_bot(api))["id"]
    for i in range(5):
        mid = (await send(api, bot, to="+15550001111", text=f"m{i}")).json()["id"]
        await wait_status(api, bot, mid, "sent")  # WAIT is far below the 30 s idle poll
