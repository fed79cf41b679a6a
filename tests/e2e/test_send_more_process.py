"""Sending more than text in real processes: `python server.py`, real Chromium, the simulator
in place of web.whatsapp.com (it takes media only uploaded the way WhatsApp Web uploads it),
a real loopback server for media URLs. Each kind sent through the API arrives in the
simulator's record with its fields, media with the very bytes; a URL outside the allowed
networks is refused by the guard; a 20 MB upload is refused before a byte of it is read; and
a SIGKILL in the middle of a drain of media messages loses none of them."""

from __future__ import annotations

import base64
import hashlib
import secrets
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx

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
    simulate,
    stop_cleanly,
    wait_sent,
)
from tests.support import ServerProcess, wait_until
from tests.web.test_send_media_api import PNG, FileServer

# Media URLs may reach this machine's 127.0.0.1 only: 127.0.0.2 is loopback too, and refused.
ENV = {"WEBHOOK_ALLOW_PRIVATE": "false", "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def queue(server: ServerProcess, bot_id: str, **body: Any) -> str:
    answer = ok(
        call(server, "POST", f"/api/sessions/{bot_id}/messages", json={"to": CUSTOMER, **body}),
        202,
    )
    message_id: str = answer["id"]
    return message_id


def media_bytes(data: Path, sha256: str) -> bytes:
    return (data / "simulator-media" / sha256).read_bytes()


def test_each_kind_arrives_in_whatsapp_with_its_fields(tmp_path: Path):
    data = tmp_path / "data"
    report = b"%PDF-1.4\n" + secrets.token_bytes(30_000)
    with FileServer() as files, ServerProcess(data, demo_env(**ENV)) as server:
        files.files["/docs/report.pdf"] = ("application/pdf", report)
        server.wait_ready()
        bot_id = create(server, "kinds")["id"]
        scan(server, bot_id)
        received = simulate(server, bot_id, "message", **{"from": CUSTOMER, "body": "Open?"})["id"]

        ids = [
            queue(server, bot_id, text="Yes, 10 to 4.", replyTo=received),
            queue(
                server,
                bot_id,
                media={
                    "type": "image",
                    "data": b64(PNG),
                    "mimetype": "image/png",
                    "caption": "map",
                },
            ),
            queue(server, bot_id, media={"type": "document", "url": files.url("/docs/report.pdf")}),
            queue(
                server,
                bot_id,
                media={"type": "voice", "data": b64(b"OggS" + bytes(500)), "mimetype": "audio/ogg"},
            ),
            queue(server, bot_id, reaction={"messageId": received, "emoji": "👍"}),
            queue(
                server,
                bot_id,
                location={"latitude": 48.8584, "longitude": 2.2945, "name": "Tour Eiffel"},
            ),
            queue(server, bot_id, contact={"name": "Ada Lovelace", "phone": "+447700900123"}),
        ]
        whatsapp_ids = [wait_sent(server, bot_id, mid)["whatsappId"] for mid in ids]

        refused = call(
            server,
            "POST",
            f"/api/sessions/{bot_id}/messages",
            json={"to": CUSTOMER, "media": {"type": "image", "url": "http://127.0.0.2:9/x.png"}},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "media.url"
        assert "is a loopback address" in refused.json()["errors"][0]["message"]
        assert [r["path"] for r in files.requests] == ["/docs/report.pdf"]
        stop_cleanly(server)

    sent = recorded(data, bot_id)
    assert [m["id"] for m in sent] == whatsapp_ids
    assert all(m["to"] == CUSTOMER_CHAT and m["result"] == "OK" for m in sent)
    reply, image, document, voice, reaction, place, contact = sent
    assert (reply["type"], reply["body"], reply["quoted_id"]) == ("chat", "Yes, 10 to 4.", received)
    assert (image["type"], image["caption"], image["mimetype"]) == ("image", "map", "image/png")
    assert media_bytes(data, image["media_sha256"]) == PNG
    assert (document["type"], document["filename"]) == ("document", "report.pdf")
    assert media_bytes(data, document["media_sha256"]) == report
    assert (voice["type"], voice["mimetype"]) == ("ptt", "audio/ogg")
    assert (reaction["reacted_to"], reaction["emoji"]) == (received, "👍")
    assert (place["type"], place["lat"], place["lng"], place["loc"]) == (
        "location",
        48.8584,
        2.2945,
        "Tour Eiffel",
    )
    assert contact["type"] == "vcard" and contact["vcard_name"] == "Ada Lovelace"
    assert "waid=447700900123" in contact["vcard"]


def test_a_20_mb_upload_is_refused_before_its_body_is_read(tmp_path: Path):
    env = demo_env(BOT_ENGINE="tests.engines:auto_engine", WHATSAPP_SIMULATOR="0")
    with ServerProcess(tmp_path / "data", env) as server:
        server.wait_ready()
        bot_id = create(server, "big")["id"]
        length = 20 * 1024 * 1024 * 4 // 3 + 100
        head = (
            f"POST /api/sessions/{bot_id}/messages HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            '{"to": "+15550001111", "media": {"type": "video", "mimetype": "video/mp4", "data": "'
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head.encode())
            answer = b""
            while chunk := sock.recv(65536):  # the server answers and closes
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 413 " in status_line, answer[:300]
        assert b"application/problem+json" in rest
        assert b"MAX_MEDIA_BYTES (16777216 bytes)" in rest
        listed = ok(call(server, "GET", f"/api/sessions/{bot_id}/messages"))
        assert listed["total"] == 0
        stop_cleanly(server)


def test_a_sigkill_mid_drain_of_media_loses_none(tmp_path: Path):
    total = 40
    data = tmp_path / "data"
    env = demo_env(SEND_RATE="60000", OUTBOX_LEASE="2s", **ENV)
    files = [secrets.token_bytes(40_000) for _ in range(total)]
    digests = {hashlib.sha256(f).hexdigest() for f in files}
    first = ServerProcess(data, env).start()
    try:
        first.wait_ready()
        bot_id = create(first, "media-bulk")["id"]
        scan(first, bot_id)
        with httpx.Client(
            base_url=first.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20
        ) as client:
            for n, file in enumerate(files):
                body = {"type": "document", "data": b64(file), "mimetype": "application/pdf"}
                answer = client.post(
                    f"/api/sessions/{bot_id}/messages",
                    json={"to": CUSTOMER, "media": {**body, "filename": f"f{n}.pdf"}},
                )
                assert answer.status_code == 202, answer.text
        wait_until(lambda: len(recorded(data, bot_id)) >= 5, WAIT, "5 files sent")
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=10) == -signal.SIGKILL
        before = recorded(data, bot_id)
        with sqlite3.connect(data / "wakeful.db") as db:
            stored = db.execute(
                "SELECT m.id, m.status, f.size FROM outbox_messages m LEFT JOIN outbox_media f "
                "ON f.message_id = m.id WHERE m.session_id = ?",
                (bot_id,),
            ).fetchall()
        rows = {mid: status for mid, status, _ in stored}
        assert len(rows) == total  # every 202 was committed
        # Each file is kept until its message is sent (then WhatsApp has it).
        assert all(size == 40_000 for _, status, size in stored if status != "sent"), stored
        # A sent one's bytes are deleted right after its mark: the kill may fall in between.
        assert sum(size is not None for _, status, size in stored if status == "sent") <= 1
        in_flight = sum(status == "sending" for status in rows.values())
        assert len(before) < total, "the drain ended before the kill; nothing was tested"

        with ServerProcess(data, env) as second:
            second.wait_ready()
            counts: dict[str, int] = {}

            def all_sent() -> bool:
                listed = ok(call(second, "GET", f"/api/sessions/{bot_id}/messages?limit=1"))
                counts.update(listed["counts"])
                return counts["sent"] == total

            try:
                wait_until(all_sent, 120, f"all {total} files sent")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; counts {counts}:\n{second.log}") from None
            stop_cleanly(second)

        after = recorded(data, bot_id)
        arrived = [m["media_sha256"] for m in after]
        assert set(arrived) == digests  # none lost
        for message in after:
            assert (
                hashlib.sha256(media_bytes(data, message["media_sha256"])).hexdigest()
                == (message["media_sha256"])
            )
        twice = len(arrived) - len(set(arrived))
        assert twice <= in_flight, (twice, in_flight)
        print(
            f"\nmedia crash test: {len(before)} of {total} arrived before the kill, "
            f"{in_flight} in flight, {twice} sent twice after the restart"
        )
    finally:
        first.__exit__(None, None, None)
