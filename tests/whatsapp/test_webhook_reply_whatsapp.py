"""Answering from the webhook end to end: a message from a (LID-migrated) contact arrives
through the real bridge in real Chromium, the bot's webhook answers with a reply after a
failed first attempt, and the simulated WhatsApp receives that reply once, in the chat the
message came from."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.web.test_sessions_api import running
from tests.web.test_webhook_reply import Answering
from tests.whatsapp.test_contacts_groups import simulator
from tests.whatsapp.test_linking_api import demo_settings, sent, simulate, wait_state

WAIT = 30.0


async def test_a_webhook_reply_reaches_the_sender_once(tmp_path: Path):
    with Answering() as receiver:
        reply = {"reply": {"text": "Thanks! We open at 9."}}
        receiver.answers = [(503, reply), (200, reply)]
        receiver.last = (200, {"ok": True})
        settings = demo_settings(tmp_path, retry_base_delay="100ms", retry_max_delay="200ms")
        async with running(settings) as api:
            created = await api.new_session(
                webhookUrl=receiver.url, webhookEvents=["message.received"]
            )
            bot = created["id"]
            await wait_state(api, bot, "SCAN_QR")
            await simulate(api, bot, "scan")
            await wait_state(api, bot, "CONNECTED")
            await simulate(api, bot, "message", **{"from": "+15550002222", "body": "open?"})
            async with asyncio.timeout(WAIT):
                while not await sent(api, bot):
                    await asyncio.sleep(0.05)
            lid = await simulator(api).lid_of(bot, "15550002222")
            (answer,) = await sent(api, bot)
            assert (answer["to"], answer["body"]) == (lid, "Thanks! We open at 9.")
            # Both attempts were the same delivery; the 503's reply was not one.
            assert len(receiver.requests) == 2
            ids = {r["headers"]["X-Wakeful-Delivery"] for r in receiver.requests}
            assert len(ids) == 1
            assert receiver.requests[0]["json"]["data"]["chat"] == lid
            # The reply quotes the message it answers, as WhatsApp shows a reply.
            (recorded,) = simulator(api).sent(bot)
            assert recorded.quoted_id == receiver.requests[0]["json"]["data"]["id"]
            await asyncio.sleep(1.0)  # room for a second (wrong) send, which must not come
            assert len(await sent(api, bot)) == 1
