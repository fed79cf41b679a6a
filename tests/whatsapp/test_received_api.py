"""What a bot receives, as its owner sees it (issue 18): webhook events for replies,
reactions, edits, deletions and group changes, and received files downloaded from our API
byte for byte. The real server in-process, the real WhatsApp engine in real Chromium, the
simulator as the phone."""

from __future__ import annotations

import asyncio
import hashlib
import os
from functools import partial
from typing import Any

from tests.support import Receiver
from tests.web.test_messages_api import eventually, send, wait_status
from tests.web.test_sessions_api import ADMIN, Api, assert_problem
from tests.whatsapp.test_bridge_today import GROUP
from tests.whatsapp.test_bridge_today_api import WAIT, demo, linked, simulator_of, wait_state

__all__ = ["demo"]  # the fixture, shared


async def linked_as(api: Api, headers: dict[str, str], **body: Any) -> str:
    bot = str((await api.new_session(headers, **body))["id"])
    await wait_state(api, bot, "SCAN_QR")
    await simulator_of(api).scan(bot)
    await wait_state(api, bot, "CONNECTED")
    return bot


def events_of(receiver: Receiver, event: str) -> list[dict[str, Any]]:
    return [r["json"]["data"] for r in receiver.requests if r["json"]["event"] == event]


async def test_a_received_image_is_described_in_the_webhook_and_downloads_byte_for_byte(
    demo: Api,
):
    alice, bob = await demo.new_user(), await demo.new_user()
    with Receiver() as receiver:
        bot = await linked_as(demo, alice.headers, webhookUrl=receiver.url())
        sim = simulator_of(demo)
        photo = os.urandom(300_000)
        message_id, uploaded = await sim.incoming_media(
            bot, "+15550002222", photo, kind="image", mimetype="image/jpeg", caption="receipt"
        )
        (data,) = await eventually(
            lambda: events_of(receiver, "message.received"), "message.received", timeout=WAIT
        )
        assert (data["id"], data["type"], data["body"]) == (message_id, "image", "receipt")
        media = data["media"]
        assert (media["mimetype"], media["size"], media["caption"]) == (
            "image/jpeg",
            300_000,
            "receipt",
        )
        assert media["url"].startswith(f"/api/sessions/{bot}/messages/")

        got = await demo.client.get(media["url"], headers=alice.headers)
        assert got.status_code == 200, got.text
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(photo).digest()
        assert got.headers["content-type"] == "image/jpeg"
        assert got.headers["content-disposition"].startswith("attachment")

        # Kept a while: asked again after WhatsApp's host dropped it, it is still there.
        sim.media_host.expire(uploaded.direct_path)
        again = await demo.client.get(media["url"], headers=ADMIN)
        assert again.status_code == 200 and again.content == got.content

        # Another user's token learns nothing, not even that the bot exists.
        refused = assert_problem(await demo.client.get(media["url"], headers=bob.headers), 404)
        assert refused["detail"].startswith("There is no bot session")


async def test_a_text_message_has_no_file_and_a_stopped_bot_cannot_fetch_one(demo: Api):
    bot = await linked(demo)
    sim = simulator_of(demo)
    text_id = await sim.incoming(bot, "+15550002222", "no attachment")
    document = os.urandom(5000)
    doc_id, _ = await sim.incoming_media(
        bot,
        "+15550002222",
        document,
        kind="document",
        mimetype="application/pdf",
        filename="menu.pdf",
    )
    url = f"/api/sessions/{bot}/messages/{{}}/media"
    none = assert_problem(await demo.client.get(url.format(text_id), headers=ADMIN), 404)
    assert "has no file" in none["detail"]
    got = await demo.client.get(url.format(doc_id), headers=ADMIN)
    assert got.status_code == 200 and got.content == document
    assert "menu.pdf" in got.headers["content-disposition"]

    assert (await demo.client.post(f"/api/sessions/{bot}/stop", headers=ADMIN)).status_code < 300
    other_id = "false_1@lid_ABCDEF"
    stopped = assert_problem(await demo.client.get(url.format(other_id), headers=ADMIN), 409)
    assert "needs a connected bot" in stopped["detail"]


async def test_replies_reactions_edits_and_deletions_reach_the_webhook_as_chosen(demo: Api):
    chosen = ["message.received", "message.reaction", "message.edited", "message.revoked"]
    with Receiver() as receiver:
        bot = await linked(demo, webhookUrl=receiver.url(), webhookEvents=chosen)
        sim = simulator_of(demo)
        mid = (await send(demo, bot, to="+15550002222", text="your table is ready")).json()["id"]
        ours = (await wait_status(demo, bot, mid, "sent"))["whatsappId"]

        reply_id = await sim.incoming(bot, "+15550002222", "on my way", quote=ours)
        (reply,) = await eventually(
            lambda: events_of(receiver, "message.received"), "the reply", timeout=WAIT
        )
        assert (reply["quotedMessageId"], reply["media"]) == (ours, None)

        await sim.react(bot, "+15550002222", ours, "❤️")
        (reaction,) = await eventually(
            lambda: events_of(receiver, "message.reaction"), "the reaction", timeout=WAIT
        )
        assert (reaction["messageId"], reaction["reaction"]) == (ours, "❤️")
        assert reaction["phone"] == "+15550002222"

        await sim.edit(bot, reply_id, "on my way, 5 min")
        (edited,) = await eventually(
            lambda: events_of(receiver, "message.edited"), "the edit", timeout=WAIT
        )
        assert (edited["id"], edited["body"]) == (reply_id, "on my way, 5 min")

        await sim.revoke(bot, reply_id)
        (revoked,) = await eventually(
            lambda: events_of(receiver, "message.revoked"), "the deletion", timeout=WAIT
        )
        assert revoked["id"] == reply_id

        # Not chosen: a group change is not delivered.
        await sim.group_event(bot, GROUP, "add", participants=("+15550003333",))
        await asyncio.sleep(1.0)
        assert {r["json"]["event"] for r in receiver.requests} == set(chosen)


async def test_group_changes_reach_the_webhook(demo: Api):
    with Receiver() as receiver:
        bot = await linked(
            demo, webhookUrl=receiver.url(), webhookEvents=["group.join", "group.leave"]
        )
        sim = simulator_of(demo)
        await sim.group_event(bot, GROUP, "invite", participants=("+15550003333",))
        await sim.group_event(
            bot, GROUP, "remove", author="+15550001111", participants=("+15550003333",)
        )
        await sim.group_event(bot, GROUP, "subject", author="+15550001111")
        (joined,) = await eventually(
            lambda: events_of(receiver, "group.join"), "join", timeout=WAIT
        )
        (left,) = await eventually(
            lambda: events_of(receiver, "group.leave"), "leave", timeout=WAIT
        )
        assert joined["participants"] == left["participants"] == ["15550003333@c.us"]
        assert left["author"] == "15550001111@c.us"
        await asyncio.sleep(1.0)
        assert events_of(receiver, "group.update") == []


async def test_demo_mode_plays_the_phone_replying_reacting_editing_and_deleting(demo: Api):
    with Receiver() as receiver:
        bot = await linked(demo, webhookUrl=receiver.url())
        url = f"/api/sessions/{bot}/simulator"

        async def phone(**body: Any) -> dict[str, Any]:
            response = await demo.client.post(url, json=body, headers=ADMIN)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        first = (await phone(action="message", **{"from": "+15550002222"}, body="hi"))["id"]
        await phone(action="message", **{"from": "+15550002222"}, body="re: hi", quote=first)
        await phone(action="react", **{"from": "+15550002222"}, messageId=first, reaction="👍")
        await phone(action="edit", messageId=first, body="hello")
        await phone(action="revoke", messageId=first)
        for event in ("message.reaction", "message.edited", "message.revoked"):
            await eventually(partial(events_of, receiver, event), event, timeout=WAIT)
        replies = [m for m in events_of(receiver, "message.received") if m["quotedMessageId"]]
        assert [m["quotedMessageId"] for m in replies] == [first]

        missing = await demo.client.post(url, json={"action": "edit", "body": "x"}, headers=ADMIN)
        assert "messageId" in {e["field"] for e in assert_problem(missing, 422)["errors"]}
        unknown = await demo.client.post(
            url, json={"action": "revoke", "messageId": "false_1@lid_NOPE"}, headers=ADMIN
        )
        assert "no message" in assert_problem(unknown, 409)["detail"]
