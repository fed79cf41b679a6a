"""Sending more than text through the API, in-process with the scripted engine: media from
base64 and from a URL on a real loopback server (through the address guard), replies,
reactions, locations and contact cards, what each refusal says (413, 415, 422) and that a
refusal stores nothing, idempotent retries, and presence before a send."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot.mediastore import MediaStore
from tests.web.test_messages_api import (
    connected_bot,
    eventually,
    fast,
    send,
    wait_status,
)
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, running

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
RECEIVED = "false_123456789012345@lid_3EB0AABBCCDDEEFF0011"
TO = "+15550001111"


class FileServer:
    """A real HTTP server on loopback that serves files: path → (content type, bytes)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append({"path": self.path, "accept": self.headers.get("Accept", "")})
                if self.path.startswith("/moved/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/moved"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                found = outer.files.get(self.path)
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content_type, data = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async with running(fast(tmp_path)) as found:
        yield found


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def listed(api: Api, bot: str) -> int:
    response = await api.client.get(f"/api/sessions/{bot}/messages", headers=ADMIN)
    total: int = response.json()["total"]
    return total


async def test_an_image_in_base64_is_stored_then_sent_with_its_bytes(api: Api):
    bot = (await connected_bot(api))["id"]
    image = {"type": "image", "data": b64(PNG), "mimetype": "image/png", "caption": "a pixel"}
    response = await send(api, bot, to=TO, media=image)
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["kind"] == "image" and queued["text"] == "a pixel"
    assert queued["media"] == {
        "type": "image",
        "caption": "a pixel",
        "mimetype": "image/png",
        "size": len(PNG),
        "sha256": hashlib.sha256(PNG).hexdigest(),
    }
    await wait_status(api, bot, queued["id"], "sent")
    ((_, to, content),) = api.engine.contents
    assert to == "15550001111"
    assert content["kind"] == "image" and content["caption"] == "a pixel"
    assert base64.b64decode(content["data"]) == PNG
    assert content["mimetype"] == "image/png"
    # Sent: the file is WhatsApp's now, and its bytes leave the database (right after the
    # mark that says so).
    store = MediaStore(api.app.state.outbox)

    async def forgotten() -> bool:
        return await store.load(queued["id"]) is None

    await eventually(forgotten, "the sent file's bytes to be deleted")


async def test_media_from_a_url_is_fetched_once_at_accept_and_survives_as_bytes(
    api: Api, files: FileServer
):
    bot = (await connected_bot(api))["id"]
    report = b"%PDF-1.4\n" + bytes(range(256)) * 50
    files.files["/files/report.pdf"] = ("application/pdf", report)
    response = await send(
        api, bot, to=TO, media={"type": "document", "url": files.url("/moved/files/report.pdf")}
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["media"]["filename"] == "report.pdf"
    assert queued["media"]["mimetype"] == "application/pdf"
    assert queued["media"]["url"] == files.url("/moved/files/report.pdf")
    # The redirect was followed (each hop through the guard), the file asked for once.
    assert [r["path"] for r in files.requests] == ["/moved/files/report.pdf", "/files/report.pdf"]
    del files.files["/files/report.pdf"]  # the send needs the stored bytes, not the URL
    await wait_status(api, bot, queued["id"], "sent")
    ((_, _, content),) = api.engine.contents
    assert base64.b64decode(content["data"]) == report
    assert content["filename"] == "report.pdf"


async def test_a_url_into_our_own_network_is_refused_by_the_guard(
    tmp_path: Path, files: FileServer
):
    files.files["/cat.png"] = ("image/png", PNG)
    async with running(fast(tmp_path, webhook_allow_private=False)) as api:
        bot = (await connected_bot(api))["id"]
        response = await send(
            api, bot, to=TO, media={"type": "image", "url": files.url("/cat.png")}
        )
        problem = assert_problem(response, 422)
        (error,) = problem["errors"]
        assert error["field"] == "media.url"
        assert "is a loopback address" in error["message"]
        assert "WEBHOOK_ALLOW_PRIVATE" in error["message"]
        assert files.requests == []  # refused before a connection was made
        assert await listed(api, bot) == 0


async def test_files_over_max_media_bytes_are_refused_with_413(tmp_path: Path, files: FileServer):
    async with running(fast(tmp_path, max_media_bytes=4096)) as api:
        bot = (await connected_bot(api))["id"]
        big = bytes(4097)
        inline = await send(
            api, bot, to=TO, media={"type": "document", "data": b64(big), "mimetype": "a/b"}
        )
        assert "MAX_MEDIA_BYTES (4096 bytes)" in assert_problem(inline, 413)["detail"]
        files.files["/big.bin"] = ("application/octet-stream", big)
        fetched = await send(
            api, bot, to=TO, media={"type": "document", "url": files.url("/big.bin")}
        )
        assert "MAX_MEDIA_BYTES is 4096" in assert_problem(fetched, 413)["detail"]
        exact = await send(
            api, bot, to=TO, media={"type": "document", "data": b64(bytes(4096)), "mimetype": "a/b"}
        )
        assert exact.status_code == 202, exact.text
        assert await listed(api, bot) == 1


async def test_a_20_mb_upload_is_refused_before_it_is_read(api: Api):
    bot = (await connected_bot(api))["id"]
    huge = b64(bytes(20 * 1024 * 1024))
    response = await send(
        api, bot, to=TO, media={"type": "video", "data": huge, "mimetype": "video/mp4"}
    )
    problem = assert_problem(response, 413)
    assert "MAX_MEDIA_BYTES (16777216 bytes)" in problem["detail"]
    assert await listed(api, bot) == 0


async def test_a_type_the_kind_cannot_carry_is_refused_with_415(api: Api, files: FileServer):
    bot = (await connected_bot(api))["id"]
    inline = await send(
        api, bot, to=TO, media={"type": "image", "data": b64(PNG), "mimetype": "text/plain"}
    )
    assert "image/jpeg, image/png, image/webp" in assert_problem(inline, 415)["detail"]
    files.files["/page"] = ("text/html; charset=utf-8", b"<html></html>")
    fetched = await send(api, bot, to=TO, media={"type": "image", "url": files.url("/page")})
    assert "the URL sent text/html" in assert_problem(fetched, 415)["detail"]
    assert files.requests[0]["accept"].startswith("image/jpeg, image/png, image/webp")
    sticker = await send(
        api, bot, to=TO, media={"type": "sticker", "data": b64(PNG), "mimetype": "image/png"}
    )
    assert_problem(sticker, 415)
    # The server's wrong type can be corrected by the caller.
    files.files["/pixel"] = ("application/octet-stream", PNG)
    corrected = await send(
        api,
        bot,
        to=TO,
        media={"type": "image", "url": files.url("/pixel"), "mimetype": "image/png"},
    )
    assert corrected.status_code == 202, corrected.text
    assert await listed(api, bot) == 1


async def test_bad_fields_are_refused_with_each_one_named_and_nothing_stored(
    api: Api, files: FileServer
):
    bot = (await connected_bot(api))["id"]
    image = {"type": "image", "data": b64(PNG), "mimetype": "image/png"}
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"media": {**image, "data": "not base64!"}}, ["media.data"]),
        ({"media": {**image, "data": "QUJD="}}, ["media.data"]),
        ({"media": {"type": "image", "data": b64(PNG)}}, ["media.mimetype"]),
        ({"media": {**image, "url": files.url("/x.png")}}, ["media.url"]),
        ({"media": {**image, "type": "gif"}}, ["media.type"]),
        ({"media": {**image, "size": 3}}, ["media.size"]),
        ({"media": {"type": "voice", "url": "ftp://x/y.ogg"}}, ["media.url"]),
        (
            {
                "media": {
                    "type": "voice",
                    "data": b64(b"OggS"),
                    "mimetype": "audio/ogg",
                    "caption": "",
                }
            },
            ["media.caption"],
        ),
        ({"media": "cat.png"}, ["media"]),
        ({"text": "hi", "media": image}, ["media"]),
        ({}, ["text"]),
        ({"text": "hi", "replyTo": "3EB0ABC"}, ["replyTo"]),
        ({"reaction": {"messageId": RECEIVED, "emoji": "👍"}, "replyTo": RECEIVED}, ["replyTo"]),
        (
            {"reaction": {"messageId": "nope", "emoji": "x" * 17}},
            ["reaction.messageId", "reaction.emoji"],
        ),
        ({"reaction": {"messageId": RECEIVED}}, ["reaction.emoji"]),
        (
            {"location": {"latitude": 91, "longitude": True}},
            ["location.latitude", "location.longitude"],
        ),
        ({"location": {"latitude": 1, "longitude": 2, "zoom": 3}}, ["location.zoom"]),
        ({"contact": {"name": " ", "phone": "12"}}, ["contact.name", "contact.phone"]),
    ]
    for body, named in cases:
        problem = assert_problem(await send(api, bot, to=TO, **body), 422)
        assert sorted(e["field"] for e in problem["errors"]) == sorted(named), (body, problem)
    assert files.requests == []
    assert await listed(api, bot) == 0


async def test_replies_reactions_locations_and_contacts_reach_the_engine_with_their_fields(
    api: Api,
):
    bot = (await connected_bot(api))["id"]
    bodies: list[dict[str, Any]] = [
        {"text": "Yes, 10 to 4.", "replyTo": RECEIVED},
        {"reaction": {"messageId": RECEIVED, "emoji": "👍"}},
        {"reaction": {"messageId": RECEIVED, "emoji": ""}},
        {"location": {"latitude": 48.8584, "longitude": 2.2945, "name": "Tour Eiffel"}},
        {"contact": {"name": "Ada Lovelace", "phone": "+44 7700900123".replace(" ", "")}},
        {
            "media": {"type": "image", "data": b64(PNG), "mimetype": "image/png"},
            "replyTo": RECEIVED,
        },
    ]
    ids = []
    for body in bodies:
        response = await send(api, bot, to=TO, **body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    for mid in ids:
        await wait_status(api, bot, mid, "sent")
    contents = [content for _, _, content in api.engine.contents]
    assert [c["kind"] for c in contents] == [
        "text",
        "reaction",
        "reaction",
        "location",
        "contact",
        "image",
    ]
    assert contents[0]["replyTo"] == RECEIVED and contents[0]["text"] == "Yes, 10 to 4."
    assert (contents[1]["messageId"], contents[1]["emoji"]) == (RECEIVED, "👍")
    assert contents[2]["emoji"] == ""
    assert (contents[3]["latitude"], contents[3]["longitude"]) == (48.8584, 2.2945)
    assert "waid=447700900123" in contents[4]["vcard"]
    assert contents[5]["replyTo"] == RECEIVED
    shown = (await api.client.get(f"/api/sessions/{bot}/messages/{ids[3]}", headers=ADMIN)).json()
    assert shown["location"] == {"latitude": 48.8584, "longitude": 2.2945, "name": "Tour Eiffel"}


async def test_an_idempotent_media_retry_is_the_same_message_and_another_file_a_conflict(
    api: Api, files: FileServer
):
    bot = (await connected_bot(api))["id"]
    files.files["/cat.png"] = ("image/png", PNG)
    body = {"type": "image", "url": files.url("/cat.png"), "caption": "cat"}
    first = await send(api, bot, to=TO, media=body, idempotencyKey="cat-1")
    again = await send(api, bot, to=TO, media=body, idempotencyKey="cat-1")
    assert first.status_code == 202 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert len(files.requests) == 1  # the retry did not fetch the file again
    other = await send(api, bot, to=TO, media={**body, "caption": "dog"}, idempotencyKey="cat-1")
    assert_problem(other, 409)
    inline = {"type": "image", "data": b64(PNG), "mimetype": "image/png"}
    second = await send(api, bot, to=TO, media=inline, idempotencyKey="cat-2")
    same = await send(api, bot, to=TO, media=inline, idempotencyKey="cat-2")
    assert same.status_code == 200 and same.json()["id"] == second.json()["id"]
    changed = {**inline, "data": b64(PNG + b"\x00")}
    assert_problem(await send(api, bot, to=TO, media=changed, idempotencyKey="cat-2"), 409)
    assert await listed(api, bot) == 2


async def test_presence_comes_before_each_send_and_only_when_asked(tmp_path: Path):
    # 600 a minute: gaps of 0.05 to 0.15 s, so "typing" lasts at most 0.05 s here.
    async with running(fast(tmp_path, send_rate=600)) as api:
        bot = (await connected_bot(api))["id"]
        text = (await send(api, bot, to=TO, text="hello")).json()["id"]
        voice = {"type": "voice", "data": b64(b"OggS" + bytes(60)), "mimetype": "audio/ogg"}
        note = (await send(api, bot, to=TO, media=voice)).json()["id"]
        react = {"messageId": RECEIVED, "emoji": "👍"}
        reaction = (await send(api, bot, to=TO, reaction=react)).json()["id"]
        for mid in (text, note, reaction):
            await wait_status(api, bot, mid, "sent")
        assert api.engine.presences == [
            (bot, "15550001111", "typing"),
            (bot, "15550001111", "recording"),
            (bot, "15550001111", "read"),  # nobody types a reaction
        ]
    async with running(fast(tmp_path / "quiet", send_rate=600, send_presence=False)) as api:
        bot = (await connected_bot(api))["id"]
        mid = (await send(api, bot, to=TO, text="hello")).json()["id"]
        await wait_status(api, bot, mid, "sent")
        await eventually(lambda: api.engine.sent, "the send")
        assert api.engine.presences == []


async def test_a_users_unsent_files_stay_within_their_share(tmp_path: Path):
    async with running(fast(tmp_path, max_stored_media_bytes_per_user=10_000)) as api:
        alice = await api.new_user("alice")
        bot = (await api.new_session(alice.headers, start=False))["id"]  # nothing is sent
        doc = {"type": "document", "mimetype": "application/pdf"}
        first = await send(api, bot, alice.headers, to=TO, media={**doc, "data": b64(bytes(6000))})
        assert first.status_code == 202, first.text
        over = await send(api, bot, alice.headers, to=TO, media={**doc, "data": b64(bytes(4001))})
        problem = assert_problem(over, 429)
        assert "MAX_STORED_MEDIA_BYTES_PER_USER=10000" in problem["detail"]
        assert "6000 bytes" in problem["detail"]
        assert over.headers["retry-after"] == "60"
        fits = await send(api, bot, alice.headers, to=TO, media={**doc, "data": b64(bytes(4000))})
        assert fits.status_code == 202, fits.text
        # Text takes no share of it; the admin's own bots are not limited.
        assert (await send(api, bot, alice.headers, to=TO, text="hi")).status_code == 202
        admins = (await api.new_session(start=False))["id"]
        big = await send(api, admins, to=TO, media={**doc, "data": b64(bytes(20_000))})
        assert big.status_code == 202, big.text


async def test_a_streamed_body_past_the_send_routes_bound_is_cut_off(tmp_path: Path):
    """Without a Content-Length the body is counted as it arrives: past MAX_BODY_BYTES plus
    MAX_MEDIA_BYTES as base64, a 413, and nothing stored."""
    async with running(fast(tmp_path, max_media_bytes=4096)) as api:
        bot = (await connected_bot(api))["id"]
        raw = json.dumps(
            {"to": TO, "media": {"type": "document", "mimetype": "a/b", "data": "A" * 80_000}}
        ).encode()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(raw), 4096):
                yield raw[start : start + 4096]

        response = await api.client.post(
            f"/api/sessions/{bot}/messages",
            content=chunks(),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        problem = assert_problem(response, 413)
        assert "MAX_MEDIA_BYTES (4096 bytes)" in problem["detail"], problem
        assert await listed(api, bot) == 0


async def test_typing_ends_where_the_pacing_gap_does_so_the_rate_holds(tmp_path: Path):
    """SEND_RATE=20: sends at least 1.5 s apart, with or without presence; a short text is
    typed for about a second, a long one for the whole 1.5 s, and neither brings its send
    forward."""
    async with running(fast(tmp_path, send_rate=20)) as api:
        bot = (await connected_bot(api))["id"]
        texts = ["ok", "x" * 120, "ok", "x" * 120]
        ids = [(await send(api, bot, to=TO, text=t)).json()["id"] for t in texts]
        sent = [await wait_status(api, bot, mid, "sent") for mid in ids]
        times = [datetime.fromisoformat(m["sentAt"]) for m in sent]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(gap >= 1.49 for gap in gaps), gaps
        assert [state for _, _, state in api.engine.presences] == ["typing"] * 4
