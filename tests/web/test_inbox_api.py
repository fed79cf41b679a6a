"""What a bot received, through `GET /api/sessions/{id}/received`, in-process with the
scripted engine: a received image listed with the link that downloads it (and the link
works), newest first, paged, and only for the bot's owner or the admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.engines.base import EventKind, MediaFile
from tests.web.test_messages_api import eventually
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, make_settings, running

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f00f0004850180848a8c2100000000"
    "49454e44ae426082"
)


async def received(api: Api, bot: str, headers: dict[str, str] = ADMIN, **query: Any) -> Any:
    response = await api.client.get(f"/api/sessions/{bot}/received", params=query, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_received_image_is_listed_with_a_link_that_downloads_it(tmp_path: Path):
    async with running(make_settings(tmp_path)) as api:
        alice, bob = await api.new_user(), await api.new_user()
        bot = (await api.new_session(alice.headers))["id"]
        await api.wait_for(bot, "CONNECTED")
        assert await received(api, bot, alice.headers) == {"received": [], "total": 0}

        phone = api.engine.live[bot]
        image_id = "false_1020@lid_SIMIMAGE01"
        phone.media[image_id] = MediaFile(PNG, "image/png", None)
        await phone.emit(
            EventKind.MESSAGE,
            id="false_1020@lid_SIMTEXT01",
            chat="1020@lid",
            **{"from": "15550002222@c.us"},
            phone="+15550002222",
            type="chat",
            body="hello bot",
        )
        await phone.emit(
            EventKind.MESSAGE,
            id=image_id,
            chat="1020@lid",
            **{"from": "15550002222@c.us"},
            phone="+15550002222",
            type="image",
            body="receipt",
            media={
                "mimetype": "image/png",
                "size": len(PNG),
                "filename": None,
                "caption": "receipt",
            },
        )
        listed = await eventually(
            lambda: _total(api, bot, alice.headers, 2), "both messages listed"
        )
        image, text = listed["received"]
        assert (text["body"], text["type"], text["media"]) == ("hello bot", "chat", None)
        assert (image["id"], image["type"], image["body"], image["phone"]) == (
            image_id,
            "image",
            "receipt",
            "+15550002222",
        )
        url = f"/api/sessions/{bot}/messages/false_1020%40lid_SIMIMAGE01/media"
        assert image["media"] == {
            "mimetype": "image/png",
            "size": len(PNG),
            "filename": None,
            "caption": "receipt",
            "url": url,
        }
        got = await api.client.get(image["media"]["url"], headers=alice.headers)
        assert got.status_code == 200 and got.content == PNG
        assert got.headers["content-type"] == "image/png"

        paged = await received(api, bot, alice.headers, limit=1, offset=1)
        assert [m["body"] for m in paged["received"]] == ["hello bot"] and paged["total"] == 2
        assert (await received(api, bot))["total"] == 2  # the admin sees it too

        # Another user learns nothing, not even that the bot exists.
        other = await api.client.get(f"/api/sessions/{bot}/received", headers=bob.headers)
        assert assert_problem(other, 404)["detail"].startswith("There is no bot session")
        bad = await api.client.get(
            f"/api/sessions/{bot}/received", params={"limit": 51}, headers=alice.headers
        )
        assert [e["field"] for e in assert_problem(bad, 422)["errors"]] == ["limit"]

        # Deleted with its bot.
        assert (await api.client.delete(f"/api/sessions/{bot}", headers=alice.headers)).is_success
        assert await api.app.state.inbox.list_for(bot) == ([], 0)


async def _total(api: Api, bot: str, headers: dict[str, str], count: int) -> Any:
    found = await received(api, bot, headers)
    return found if found["total"] == count else None
