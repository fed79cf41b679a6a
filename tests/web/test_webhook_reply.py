"""Answering from the webhook, in-process with the scripted engine and a real receiver on
loopback: a `message.received` delivery answered with {"reply": {...}} queues that message
once per delivery id, through retries and through a re-delivery after a crash."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot.webhooks import webhook_deliveries
from tests.web.test_messages_api import eventually, fast
from tests.web.test_sessions_api import ADMIN, Api, running


class Answering:
    """A receiver that answers each POST with the next (status, body) of `answers`, then
    with `last` (a bot written as one small HTTP handler)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any] | str]] = []
        self.last: tuple[int, dict[str, Any] | str] = (204, "")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                outer.requests.append({"headers": dict(self.headers), "json": body})
                status, answer = outer.answers.pop(0) if outer.answers else outer.last
                raw = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/bot"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Answering:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Answering]:
    with Answering() as found:
        yield found


async def received(api: Api, bot: str, text: str, message_id: str = "in-1") -> None:
    await api.manager.sessions[bot].emit(
        "message.received",
        {"id": message_id, "chat": "15550002222@c.us", "from": "15550002222@c.us", "body": text},
    )


async def deliveries(api: Api, bot: str) -> list[dict[str, Any]]:
    listing = await api.client.get(f"/api/sessions/{bot}/deliveries", headers=ADMIN)
    found: list[dict[str, Any]] = listing.json()["deliveries"]
    return found


async def messages(api: Api, bot: str) -> list[dict[str, Any]]:
    listing = await api.client.get(f"/api/sessions/{bot}/messages", headers=ADMIN)
    found: list[dict[str, Any]] = listing.json()["messages"]
    return found


async def test_a_reply_is_queued_once_across_a_retried_and_a_redelivered_delivery(
    tmp_path: Path, receiver: Answering
):
    async with running(fast(tmp_path)) as api:
        bot = (await api.new_session(webhookUrl=receiver.url, webhookEvents=["message.received"]))[
            "id"
        ]
        await api.wait_for(bot, "CONNECTED")
        reply = {"reply": {"text": "Thanks, we got your message!"}}
        # The receiver fails once (a reply in a 503 is not one), then answers with its reply.
        receiver.answers = [(503, {"reply": {"text": "not this one"}}), (200, reply)]
        receiver.last = (200, reply)
        await received(api, bot, "hello")
        await eventually(
            lambda: any(
                s == (bot, "15550002222@c.us", reply["reply"]["text"]) for s in api.engine.sent
            ),
            "the reply to be sent",
        )
        (delivery,) = await deliveries(api, bot)
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
        assert delivery["lastError"] is None

        # A crash between the answer and the mark leaves the delivery `sending` with a lease
        # that runs out: it is delivered again (same id), the receiver answers again...
        db = api.app.state.db
        async with db.engine.begin() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery["id"])
                .values(status="sending", lease_until=api.manager.clock.now())
            )
        api.app.state.webhooks.wake()
        await eventually(lambda: len(receiver.requests) == 3, "the delivery to come again")
        ids = {r["headers"]["X-Wakeful-Delivery"] for r in receiver.requests}
        assert ids == {delivery["id"]}

        async def delivered_again() -> bool:
            (again,) = await deliveries(api, bot)
            return bool(again["status"] == "delivered" and again["attempts"] == 3)

        await eventually(delivered_again, "the re-delivery to be marked")
        # ...and its reply is still one message, sent once.
        queued = await messages(api, bot)
        assert [(m["to"], m["text"]) for m in queued] == [
            ("15550002222@c.us", "Thanks, we got your message!")
        ]
        replies = [s for s in api.engine.sent if s[0] == bot]
        assert len(replies) == 1


async def test_answers_that_are_not_replies_and_replies_that_cannot_be_sent(
    tmp_path: Path, receiver: Answering
):
    async with running(fast(tmp_path)) as api:
        bot = (await api.new_session(webhookUrl=receiver.url, webhookEvents=["message.received"]))[
            "id"
        ]
        await api.wait_for(bot, "CONNECTED")
        receiver.answers = [
            (200, "OK"),  # an acknowledgement, not JSON
            (200, {"ok": True}),  # JSON without a reply
            (200, {"reply": {"text": "  "}}),
            (200, {"reply": {"text": "hi", "to": "not a number"}}),
            (200, {"reply": {"text": "to another chat", "to": "+1 555 000 3333"}}),
        ]
        for n in range(5):
            await received(api, bot, f"message {n}", message_id=f"in-{n}")

        async def all_delivered() -> list[dict[str, Any]] | None:
            found = await deliveries(api, bot)
            done = len(found) == 5 and all(d["status"] == "delivered" for d in found)
            return found if done else None

        found = await eventually(all_delivered, "five deliveries")
        notes = sorted(d["lastError"] or "" for d in found)
        assert notes == [
            "",
            "",
            "",
            "reply refused: reply.text: required; a non-empty string",
            "reply refused: reply.to: expected a phone number in international form "
            "(+15551234567) or a WhatsApp chat id (15551234567@c.us, 1203630xxxxxxx@g.us)",
        ]
        await eventually(lambda: len(api.engine.sent) == 1, "the one valid reply")
        assert api.engine.sent == [(bot, "15550003333", "to another chat")]
