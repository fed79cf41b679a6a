"""Engine events named for the webhook, with what only the server adds (the file's URL)."""

from __future__ import annotations

from bot.engines.base import EventKind
from bot.received import webhook_event
from bot.webhooks import EVENTS


def test_a_media_message_gets_the_url_of_its_file_with_the_id_quoted():
    name, data = webhook_event(
        "bot_0123456789ab",
        EventKind.MESSAGE,
        {"id": "false_1020@lid_SIMM1", "type": "image", "media": {"mimetype": "image/jpeg"}},
    )
    assert name == "message.received"
    assert data["media"] == {
        "mimetype": "image/jpeg",
        "url": "/api/sessions/bot_0123456789ab/messages/false_1020%40lid_SIMM1/media",
    }
    assert data["quotedMessageId"] is None


def test_a_text_message_has_no_media_and_keeps_its_quote():
    _, data = webhook_event("bot_a", EventKind.MESSAGE, {"id": "x", "quotedMessageId": "q"})
    assert (data["media"], data["quotedMessageId"]) == (None, "q")


def test_each_received_kind_is_an_event_a_webhook_can_choose():
    names = {
        webhook_event("bot_a", EventKind.REACTION, {})[0],
        webhook_event("bot_a", EventKind.EDITED, {})[0],
        webhook_event("bot_a", EventKind.REVOKED, {})[0],
        *(
            webhook_event("bot_a", EventKind.GROUP, {"action": action})[0]
            for action in ("join", "leave", "update", "something new")
        ),
    }
    assert names == {
        "message.reaction",
        "message.edited",
        "message.revoked",
        "group.join",
        "group.leave",
        "group.update",
    }
    assert names <= set(EVENTS)
