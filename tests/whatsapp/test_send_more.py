"""Sending more than text (issue 18) through real Chromium, the real driver and bridge, and a
simulator that takes media as WhatsApp Web does (prepared, consolidated, uploaded: a media
message without its upload fails), quotes only messages in the chat, reactions only to
messages it has, chat states only to a chat's wid. Each kind arrives in the simulator's
record with its fields, media with the very bytes that were sent."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from bot.content import vcard
from bot.engines.base import EngineError, EventKind
from bot.engines.simulator import Behaviour, Simulator
from bot.engines.whatsapp.driver import WhatsAppSession
from tests.whatsapp.conftest import Events, MakeEngine

BOT = "bot_00000000se01"
CUSTOMER = "15550001111"
# A real 1x1 PNG and a few bytes of an Ogg page header: what they hold does not matter to
# WhatsApp Web's preparation here, their bytes must arrive unchanged.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
OGG = b"OggS\x00\x02" + bytes(range(256)) * 40


async def linked(make_engine: MakeEngine, **values: Any) -> tuple[Simulator, WhatsAppSession]:
    engine = make_engine(**values)
    sim = engine.simulator
    assert sim is not None
    events = Events()
    session = await engine.start(BOT, events)
    await events.wait_for(EventKind.QR)
    await sim.scan(BOT)
    await events.wait_for(EventKind.READY)
    return sim, session


def media(kind: str, data: bytes, mimetype: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "data": base64.b64encode(data).decode(),
        "mimetype": mimetype,
        "filename": None,
        "text": fields.get("caption", ""),
        **fields,
    }


async def test_each_media_kind_arrives_uploaded_with_its_fields_and_bytes(make_engine: MakeEngine):
    sim, session = await linked(make_engine)
    document = b"%PDF-1.4\n" + bytes(range(256)) * 100
    sends = [
        media("image", PNG, "image/png", caption="a pixel"),
        media("video", b"\x00\x00\x00\x18ftypmp42" + bytes(2000), "video/mp4", caption="clip"),
        media("audio", OGG, "audio/ogg"),
        media("voice", OGG, "audio/ogg"),
        media("document", document, "application/pdf", filename="report.pdf", caption="Q3"),
        media("sticker", b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(64), "image/webp"),
    ]
    ids = [await session.send_content(f"+{CUSTOMER}", content) for content in sends]
    sent = sim.sent(BOT)
    assert [m.id for m in sent] == ids
    assert [m.type for m in sent] == ["image", "video", "audio", "ptt", "document", "sticker"]
    assert all(m.result == "OK" for m in sent)
    for message, content in zip(sent, sends, strict=True):
        raw = base64.b64decode(content["data"])
        assert message.media_sha256 == hashlib.sha256(raw).hexdigest()
        assert sim.media(message.media_sha256) == raw
        assert message.size == len(raw)
        assert message.mimetype == content["mimetype"]
        # To the customer's LID chat, as text goes.
        assert message.to == await sim.lid_of(BOT, CUSTOMER)
    assert [m.caption for m in sent] == ["a pixel", "clip", None, None, "Q3", None]
    assert sent[4].filename == "report.pdf"


async def test_a_reply_quotes_the_received_message(make_engine: MakeEngine):
    sim, session = await linked(make_engine)
    received = await sim.incoming(BOT, CUSTOMER, "is it open on Sunday?")
    await session.send_content(
        f"+{CUSTOMER}", {"kind": "text", "text": "Yes, 10 to 4.", "replyTo": received}
    )
    image = media("image", PNG, "image/png", caption="the map", replyTo=received)
    await session.send_content(f"+{CUSTOMER}", image)
    text, picture = sim.sent(BOT)
    assert (text.type, text.body, text.quoted_id) == ("chat", "Yes, 10 to 4.", received)
    assert text.quoted_participant == await sim.lid_of(BOT, CUSTOMER)
    assert (picture.type, picture.quoted_id) == ("image", received)


async def test_a_reply_to_a_message_the_chat_never_had_fails_and_sends_nothing(
    make_engine: MakeEngine,
):
    sim, session = await linked(make_engine)
    missing = f"false_{await sim.lid_of(BOT, CUSTOMER)}_3EB0DEADBEEF0000"
    with pytest.raises(EngineError, match="not in WhatsApp Web's history"):
        await session.send_content(
            f"+{CUSTOMER}", {"kind": "text", "text": "hello", "replyTo": missing}
        )
    assert sim.sent(BOT) == []


async def test_a_reaction_is_set_and_removed_on_the_received_message(make_engine: MakeEngine):
    sim, session = await linked(make_engine)
    received = await sim.incoming(BOT, CUSTOMER, "thanks!")
    await session.send_content(
        f"+{CUSTOMER}", {"kind": "reaction", "messageId": received, "emoji": "👍", "text": "👍"}
    )
    await session.send_content(
        f"+{CUSTOMER}", {"kind": "reaction", "messageId": received, "emoji": "", "text": ""}
    )
    # A reaction names its chat too: the message must be in it.
    with pytest.raises(EngineError, match="is not in the chat with"):
        await session.send_content(
            "+15550002222", {"kind": "reaction", "messageId": received, "emoji": "👍", "text": ""}
        )
    set_, removed = sim.sent(BOT)
    assert (set_.type, set_.reacted_to, set_.emoji) == ("reaction", received, "👍")
    assert (removed.type, removed.reacted_to, removed.emoji) == ("reaction", received, "")


async def test_a_location_and_a_contact_card_arrive_with_their_fields(make_engine: MakeEngine):
    sim, session = await linked(make_engine)
    await session.send_content(
        f"+{CUSTOMER}",
        {
            "kind": "location",
            "latitude": 48.8584,
            "longitude": 2.2945,
            "name": "Tour Eiffel",
            "address": "Champ de Mars, Paris",
            "text": "Tour Eiffel",
        },
    )
    card = vcard("Ada Lovelace", "+447700900123")
    await session.send_content(
        f"+{CUSTOMER}", {"kind": "contact", "name": "Ada Lovelace", "vcard": card, "text": "Ada"}
    )
    place, contact = sim.sent(BOT)
    assert (place.type, place.lat, place.lng) == ("location", 48.8584, 2.2945)
    assert place.loc == "Tour Eiffel\nChamp de Mars, Paris"
    assert (contact.type, contact.vcard_name) == ("vcard", "Ada Lovelace")
    assert contact.vcard == card
    assert "waid=447700900123" in (contact.vcard or "")


async def test_presence_marks_the_chat_read_then_types_or_records(make_engine: MakeEngine):
    sim, session = await linked(make_engine)
    await sim.incoming(BOT, CUSTOMER, "one")
    await sim.incoming(BOT, CUSTOMER, "two")
    await session.presence(f"+{CUSTOMER}", "typing")
    await session.presence(f"+{CUSTOMER}", "recording")
    await session.presence(f"+{CUSTOMER}", "read")
    chat = await sim.lid_of(BOT, CUSTOMER)
    assert [(p.chat, p.state, p.unread) for p in sim.presence(BOT)] == [
        (chat, "read", 2),
        (chat, "typing", 0),
        (chat, "read", 0),
        (chat, "recording", 0),
        (chat, "read", 0),
    ]


async def test_a_build_without_the_media_modules_fails_media_and_still_sends_text(
    make_engine: MakeEngine,
):
    """WhatsApp renamed its upload module: the media send says which module is missing;
    text, which needs none of them, goes on."""
    sim, session = await linked(
        make_engine, behaviour=Behaviour(withhold=("WAWebMediaMmsV4Upload",))
    )
    with pytest.raises(EngineError, match="WAWebMediaMmsV4Upload"):
        await session.send_content(f"+{CUSTOMER}", media("image", PNG, "image/png"))
    await session.send_text(f"+{CUSTOMER}", "text still goes")
    assert [(m.type, m.body) for m in sim.sent(BOT)] == [("chat", "text still goes")]
