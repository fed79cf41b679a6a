"""What a bot receives besides text (issue 18), through real Chromium, the real driver and
bridge, and the simulator playing the phone: replies with the quoted message's id,
reactions, edits, deletions, group notifications, media files downloaded and decrypted
through WhatsApp Web, and messages the page could not decrypt asked of the phone again."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import replace

import pytest

from bot.engines.base import EngineError, EventKind, MediaNotFoundError
from tests.whatsapp.conftest import SERVICE_WORKER_IDENTITY, TEST_BRIDGE, WAIT_SW, MakeEngine
from tests.whatsapp.test_bridge_today import GROUP, linked

QUICK_RESEND = replace(TEST_BRIDGE, resend_ms=300)


async def test_a_reply_carries_the_id_of_the_message_it_quotes(make_engine: MakeEngine):
    bot = "bot_00000000c001"
    sim, events, session = await linked(make_engine, bot)
    ours = await session.send_text("+15550002222", "your order has shipped")
    await sim.incoming(bot, "+15550002222", "thanks!", quote=ours)
    reply = (await events.wait_for(EventKind.MESSAGE)).data
    assert reply["body"] == "thanks!"
    assert reply["quotedMessageId"] == ours  # the id our send returned, as stored

    first = await sim.incoming(bot, "+15550003333", "question one", group=GROUP)
    await events.wait_for(EventKind.MESSAGE, count=2)
    await sim.incoming(bot, "+15550004444", "about that", group=GROUP, quote=first)
    in_group = (await events.wait_for(EventKind.MESSAGE, count=3)).data
    assert in_group["quotedMessageId"] == first
    assert (await events.wait_for(EventKind.MESSAGE, count=2)).data["quotedMessageId"] is None


async def test_reactions_arrive_and_a_removed_reaction_says_so(make_engine: MakeEngine):
    bot = "bot_00000000c002"
    sim, events, session = await linked(make_engine, bot)
    ours = await session.send_text("+15550002222", "how was it?")
    await sim.react(bot, "+15550002222", ours, "👍")
    reaction = (await events.wait_for(EventKind.REACTION)).data
    assert (reaction["messageId"], reaction["reaction"], reaction["removed"]) == (ours, "👍", False)
    assert (reaction["from"], reaction["phone"]) == ("15550002222@c.us", "+15550002222")
    assert reaction["chat"] == await sim.lid_of(bot, "15550002222")

    await sim.react(bot, "+15550002222", ours, "")
    removed = (await events.wait_for(EventKind.REACTION, count=2)).data
    assert (removed["reaction"], removed["removed"]) == ("", True)
    # WhatsApp Web stored them too: the bridge listens, it does not swallow.
    assert (await sim.receiving(bot))["reactions"] == 2


async def test_an_edit_arrives_with_the_new_and_the_previous_text(make_engine: MakeEngine):
    bot = "bot_00000000c003"
    sim, events, _session = await linked(make_engine, bot)
    original = await sim.incoming(bot, "+15550002222", "meet at 5")
    await events.wait_for(EventKind.MESSAGE)
    await sim.edit(bot, original, "meet at 6")
    edited = (await events.wait_for(EventKind.EDITED)).data
    assert (edited["id"], edited["body"], edited["previousBody"]) == (
        original,
        "meet at 6",
        "meet at 5",
    )
    assert edited["phone"] == "+15550002222"
    assert len(events.of(EventKind.MESSAGE)) == 1  # an edit is not a new message


async def test_a_deletion_arrives_once_whether_or_not_the_page_still_holds_the_message(
    make_engine: MakeEngine,
):
    bot = "bot_00000000c004"
    sim, events, _session = await linked(make_engine, bot)
    loaded = await sim.incoming(bot, "+15550002222", "oops")
    gone = await sim.incoming(bot, "+15550002222", "oops again")
    in_group = await sim.incoming(bot, "+15550003333", "spam", group=GROUP)
    await events.wait_for(EventKind.MESSAGE, count=3)

    await sim.revoke(bot, loaded)
    first = (await events.wait_for(EventKind.REVOKED)).data
    assert (first["id"], first["by"], first["phone"]) == (loaded, "sender", "+15550002222")

    await sim.revoke(bot, gone, unloaded=True)  # only the protocol message says what went
    second = (await events.wait_for(EventKind.REVOKED, count=2)).data
    assert second["id"] == gone

    await sim.revoke(bot, in_group, admin="+15550009999")
    third = (await events.wait_for(EventKind.REVOKED, count=3)).data
    assert (third["id"], third["chat"], third["by"]) == (in_group, GROUP, "admin")
    assert third["phone"] == "+15550009999"

    await asyncio.sleep(0.5)
    assert len(events.of(EventKind.REVOKED)) == 3  # seen two ways, reported once each
    assert len(events.of(EventKind.MESSAGE)) == 3


async def test_group_notifications_are_events_of_their_own(make_engine: MakeEngine):
    bot = "bot_00000000c005"
    sim, events, _session = await linked(make_engine, bot)
    await sim.group_event(bot, GROUP, "add", author="+15550001111", participants=("+15550002222",))
    await sim.group_event(
        bot, GROUP, "leave", author="+15550003333", participants=("+15550003333",)
    )
    await sim.group_event(bot, GROUP, "subject", author="+15550001111")
    joined, left, changed = [
        (await events.wait_for(EventKind.GROUP, count=n)).data for n in (1, 2, 3)
    ]
    assert (joined["action"], joined["chat"], joined["participants"]) == (
        "join",
        GROUP,
        ["15550002222@c.us"],
    )
    assert joined["author"] == "15550001111@c.us"
    assert (left["action"], left["subtype"]) == ("leave", "leave")
    assert (changed["action"], changed["subtype"]) == ("update", "subject")
    assert events.of(EventKind.MESSAGE) == []


@pytest.mark.parametrize(
    ("kind", "mimetype", "filename", "caption", "size"),
    [
        ("image", "image/jpeg", None, "the invoice", 180_000),
        ("document", "application/pdf", "invoice-1042.pdf", None, 2_500_001),
        ("ptt", "audio/ogg; codecs=opus", None, None, 9_999),
    ],
)
async def test_media_arrives_described_and_downloads_byte_for_byte(
    make_engine: MakeEngine,
    kind: str,
    mimetype: str,
    filename: str | None,
    caption: str | None,
    size: int,
):
    bot = f"bot_00000000c0{kind[:2]}"
    sim, events, session = await linked(make_engine, bot)
    data = os.urandom(size)
    message_id, _uploaded = await sim.incoming_media(
        bot, "+15550002222", data, kind=kind, mimetype=mimetype, filename=filename, caption=caption
    )
    received = (await events.wait_for(EventKind.MESSAGE)).data
    assert (received["id"], received["type"]) == (message_id, kind)
    assert received["body"] == (caption or "")  # never the thumbnail WhatsApp keeps in body
    assert received["media"] == {
        "mimetype": mimetype,
        "size": size,
        "filename": filename,
        "caption": caption,
    }
    got = await session.download_media(message_id)
    assert hashlib.sha256(got.data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert (got.mimetype, got.filename) == (mimetype, filename)


async def test_a_text_message_or_an_unknown_id_has_no_file_and_an_expired_file_says_so(
    make_engine: MakeEngine,
):
    bot = "bot_00000000c007"
    sim, events, session = await linked(make_engine, bot)
    text_id = await sim.incoming(bot, "+15550002222", "just text")
    await events.wait_for(EventKind.MESSAGE)
    with pytest.raises(MediaNotFoundError, match="no file"):
        await session.download_media(text_id)
    with pytest.raises(MediaNotFoundError, match="no such message"):
        await session.download_media("false_1@lid_NOPE")
    image_id, uploaded = await sim.incoming_media(bot, "+15550002222", b"\xff\xd8 tiny")
    await events.wait_for(EventKind.MESSAGE, count=2)
    sim.media_host.expire(uploaded.direct_path)
    with pytest.raises((MediaNotFoundError, EngineError)):
        await session.download_media(image_id)


async def test_a_message_the_page_cannot_decrypt_is_asked_of_the_phone_again(
    make_engine: MakeEngine,
):
    bot = "bot_00000000c008"
    sim, events, _session = await linked(make_engine, bot, bridge=QUICK_RESEND)
    await sim.incoming(bot, "+15550002222", "can you read me?", undecryptable=True)
    message = (await events.wait_for(EventKind.MESSAGE, timeout=15)).data
    assert message["body"] == "can you read me?"
    assert (await sim.receiving(bot))["resendRequests"] == 1


# Issue 16: what the browser says it is, in workers too ------------------------------------

WORKER_IDENTITY = """async () => {
  const source = "postMessage({userAgent: navigator.userAgent, "
    + "brands: navigator.userAgentData.brands})";
  const url = URL.createObjectURL(new Blob([source], {type: "application/javascript"}));
  const worker = new Worker(url);
  return await new Promise((resolve) => { worker.onmessage = (e) => resolve(e.data); });
}"""


async def test_a_worker_presents_the_same_user_agent_and_client_hints_as_its_page(
    make_engine: MakeEngine,
):
    bot = "bot_00000000c009"
    _sim, _events, session = await linked(make_engine, bot)
    page = session.page
    assert page is not None
    in_page = await page.evaluate(
        "({userAgent: navigator.userAgent, brands: navigator.userAgentData.brands})"
    )
    assert not any("Headless" in b["brand"] for b in in_page["brands"])
    # Playwright's own user agent override left workers with no brands at all.
    assert await page.evaluate(WORKER_IDENTITY) == in_page
    # A service worker too, from its first script (it is a target of its own: see
    # worker_identity.py); more in test_bridge_today.py.
    service_worker = await asyncio.wait_for(page.evaluate(SERVICE_WORKER_IDENTITY), WAIT_SW)
    assert service_worker["userAgent"] == in_page["userAgent"]
    assert service_worker["brands"] == in_page["brands"]


async def test_a_file_over_the_download_limit_is_refused_before_it_is_fetched(
    make_engine: MakeEngine,
):
    bot = "bot_00000000c010"
    limit = replace(TEST_BRIDGE, max_download_bytes=100_000)
    sim, events, session = await linked(make_engine, bot, bridge=limit)
    big_id, _ = await sim.incoming_media(bot, "+15550002222", os.urandom(200_000))
    small = os.urandom(99_000)
    small_id, _ = await sim.incoming_media(bot, "+15550002222", small)
    await events.wait_for(EventKind.MESSAGE, count=2)
    with pytest.raises(EngineError, match=r"the file is 0\.2 MB, over the 0\.1 MB limit"):
        await session.download_media(big_id)
    assert (await session.download_media(small_id)).data == small
