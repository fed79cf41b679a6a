"""A local stand-in for web.whatsapp.com, for the tests and for demo mode.

The real driver and the real bridge run against it in real Chromium: `attach()` routes
`https://web.whatsapp.com/` in a bot's browser context to the simulated page, which behaves
like WhatsApp Web does today as the maintained clients see it (see `whatsapp.js`, and
`Behaviour` for what the tests can switch). This class plays the phone and WhatsApp's
servers: it scans QR codes, enters pairing codes, sends messages to the bot (from LID
contacts, in groups, status updates, notifications, revoked ones), logs out, makes
conflicts and drops, crashes the page, and records every message the bot sent. Like
WhatsApp's servers it gives a linked device one connection: a second browser that opens it
conflicts the first, across processes that share the record folder (see `links.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from playwright.async_api import BrowserContext, Error, Page, Route

from bot.engines.simulator.links import Conflict, LinkRegistry, device_id
from bot.engines.simulator.media import MEDIA_HOST, MEDIA_KINDS, EncryptedMedia, MediaHost
from bot.engines.simulator.weight import PICTURES_HOST, STATIC_HOST, AssetHost, Weight

HERE = Path(__file__).resolve().parent
SIMULATOR_VERSION = "2.3000.1044999999"
SENT_BINDING = "__wakefulSimSent"
PRESENCE_BINDING = "__wakefulSimPresence"
LINK_BINDING = "__wakefulSimLink"
# The record file keeps everything; memory keeps the latest (a demo left running for weeks).
KEEP_SENT_IN_MEMORY = 10_000
WHATSAPP_URL = "https://web.whatsapp.com/"
ACTIONS = (
    "scan",
    "pair",
    "message",
    "logout",
    "conflict",
    "drop",
    "crash",
    # the phone's side of what a bot receives besides text
    "react",
    "edit",
    "revoke",
    "image",
)
# The picture the phone sends with the `image` control (16×12 PNG, a colour gradient): a
# real image a browser decodes, so the dashboard can show what a bot received.
DEMO_PICTURE = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAMCAIAAADkharWAAABVklEQVR42g3LoQHEIBAAQTpAoeMxKeFKQKHjMSnhtoM"
    "YPB5DCVdCDD4aRQv/48c5nMcduBMnuIS7cDdOcQ+u4QbOcC/uw22ccwRPOAgnQQiJcBFughIeQiMMghFewkfYhH+Inn"
    "gQT6IQE/Ei3kQlPsRGHEQjvsSPuIn/IB45kBMRJCEXciOKPEhDBmLIi3zIRv4he/JBPslCTuSLfJOV/JAbeZCN/JI/8"
    "ib/Q/GUg3JShJIoF+WmKOWhNMqgGOWlfJRN+Qf16IGeqKAJvdAbVfRBGzpQQ1/0Qzf6D9VTD+pJFWqiXtSbqtSH2qiD"
    "atSX+lE39R+6px/0ky70RL/oN13pD73RB93oL/2jb/o/mMcO7MQES9iF3ZhiD9awgRn2Yh+2sX+YnnkwT6YwE/Ni3kx"
    "lPszGHExjvsyPuZn/sDzrYJ0sYSXWxbpZynpYjTVYxnpZH2uzfu8dELwycIXjAAAAAElFTkSuQmCC"
)

log = logger.bind(component="bot")


class SimulatorError(Exception):
    """The control makes no sense now (no QR showing, no such bot page, ...)."""


@dataclass(frozen=True, slots=True)
class SentMessage:
    session_id: str
    id: str
    to: str
    body: str
    at: str
    sender: str | None = None  # the `from` the bot put on the message
    participant: str | None = None  # the key's participant (groups)
    expected_sender: str | None = None  # what WhatsApp Web itself would have put there
    ephemeral_duration: int = 0  # the message's disappearing timer
    chat_ephemeral_duration: int = 0  # the chat's
    result: str = "OK"  # the messageSendResult the page answered
    # What the message is: chat (text), image, video, audio, ptt (a voice note), document,
    # sticker, location, vcard or reaction, and that kind's fields as the server got them.
    type: str = "chat"
    caption: str | None = None
    filename: str | None = None
    mimetype: str | None = None
    size: int | None = None
    media_sha256: str | None = None  # of the uploaded bytes: `Simulator.media()` has them
    quoted_id: str | None = None  # the message a reply quotes
    quoted_participant: str | None = None
    lat: float | None = None
    lng: float | None = None
    loc: str | None = None
    vcard: str | None = None
    vcard_name: str | None = None
    reacted_to: str | None = None  # a reaction's message ("" emoji: the reaction removed)
    emoji: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """A chat state ("typing", "recording", "paused") or a read receipt ("read") the bot
    sent to a chat."""

    session_id: str
    chat: str
    state: str
    at: str
    unread: int = 0  # a read receipt: how many messages it marked read


# Demo mode's contacts: these numbers are on (simulated) WhatsApp, and the bot is in one
# group with two of them (one an admin) and a member whose number WhatsApp does not tell.
DEMO_REGISTERED = ("15550000001", "15550000002", "15550000003")
DEMO_GROUPS: tuple[dict[str, Any], ...] = (
    {
        "name": "Demo group",
        "participants": ["15550000001", "15550000002", {"phone": "15550000009", "hidden": True}],
        "admins": ["15550000001"],
        "description": "A group of the WhatsApp simulator",
    },
)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulated WhatsApp Web behaves. The defaults are what the real site does
    today; each older or stranger behaviour can be switched on by a test."""

    debug: str = "never"  # window.Debug: "never" (gated), "late" (after the sync), "early"
    loader_delay_ms: int = 300  # when `__d` / `require` appear
    module_every_ms: int = 250  # modules are defined a few at a time, this far apart
    withhold: tuple[str, ...] = ()  # modules that never appear (WhatsApp renamed them)
    adv_module: str = "WAWebUserPrefsMultiDevice"  # where the ADV secret lives
    lid_contacts: bool = True  # contacts are LID-migrated: senders and chats by LID
    minified_keys: bool = True  # message keys keep their serialized form minified
    sync_ms: int = 1500  # the first history sync after a link
    resync_ms: int = 300  # the sync of an already linked page
    pair_code_ttl_ms: int = 195_000  # a pairing code's lifetime (3.25 min)
    headless_check: bool = True  # the unsupported-browser page for HeadlessChrome
    logout_signal: str = "logout_from_bridge"  # the Cmd event a phone's unlink arrives as
    # Contacts and groups: the numbers that have a WhatsApp account (and the bot's own), the
    # groups the account is in once linked ({"name", "participants", "admins", "id"}), and
    # how many number checks in a window WhatsApp takes before it unlinks the device.
    registered: tuple[str, ...] = DEMO_REGISTERED
    groups: tuple[dict[str, Any], ...] = DEMO_GROUPS
    exists_limit: int = 30
    exists_window_ms: int = 60_000
    # What the page weighs: None, a few dozen KB of script and no files (what tests need);
    # a Weight, the real page's code, files and heap (weight.py).
    weight: Weight | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def page_config(self, qr_every_ms: int) -> dict[str, Any]:
        return {
            "weight": self.weight.page_config() if self.weight else None,
            "qrEvery": qr_every_ms,
            "qrRefs": 6,
            "version": SIMULATOR_VERSION,
            "debug": self.debug,
            "loaderDelay": self.loader_delay_ms,
            "moduleEvery": self.module_every_ms,
            "withhold": list(self.withhold),
            "advModule": self.adv_module,
            "lidContacts": self.lid_contacts,
            "minifiedKeys": self.minified_keys,
            "syncMs": self.sync_ms,
            "resyncMs": self.resync_ms,
            "pairCodeTtl": self.pair_code_ttl_ms,
            "headlessCheck": self.headless_check,
            "logoutSignal": self.logout_signal,
            "registered": list(self.registered),
            "groups": list(self.groups),
            "existsLimit": self.exists_limit,
            "existsWindowMs": self.exists_window_ms,
            **self.extra,
        }


UNSUPPORTED_PAGE = (
    "<!doctype html><title>WhatsApp Web: unsupported browser</title>"
    '<div id="unsupported">WhatsApp works with Google Chrome 85+. To use WhatsApp, update '
    "Chrome or use Mozilla Firefox, Safari, Microsoft Edge or Opera.</div>"
)


# What it says it is is read by its first script, as a page's checks would, and so is the
# Sec-CH-UA header of its first fetch (echoed back by /__sim/client-hints).
SERVICE_WORKER = """
const ua = navigator.userAgentData || {};
const first = {userAgent: navigator.userAgent, brands: ua.brands || [], platform: ua.platform};
const hints = fetch("/__sim/client-hints")
  .then((r) => r.json())
  .catch((e) => ({secChUa: `no answer: ${e}`}));
self.addEventListener("message", (e) => {
  hints.then((h) => e.source.postMessage({...first, secChUa: h.secChUa}));
});
"""


def _says_headless(headers: dict[str, str]) -> bool:
    return any(
        "headlesschrome" in headers.get(name, "").lower() for name in ("user-agent", "sec-ch-ua")
    )


class Simulator:
    def __init__(
        self,
        *,
        qr_every: timedelta,
        record_dir: Path | None = None,
        behaviour: Behaviour | None = None,
    ) -> None:
        self._qr_every_ms = max(int(qr_every.total_seconds() * 1000), 50)
        # Read at every page load: a test may change it between starts.
        self.behaviour = behaviour or Behaviour()
        self._pages: dict[str, Page] = {}
        self._sent: deque[SentMessage] = deque(maxlen=KEEP_SENT_IN_MEMORY)
        self._record = record_dir / "simulator-sent.jsonl" if record_dir else None
        # Uploaded files by their SHA-256: on disk beside the record (another process, the
        # test, reads them), else in memory.
        self._media_dir = record_dir / "simulator-media" if record_dir else None
        self._media: dict[str, bytes] = {}
        self._presence: deque[PresenceUpdate] = deque(maxlen=KEEP_SENT_IN_MEMORY)
        self._page_html = (HERE / "page.html").read_text(encoding="utf-8")
        self._script = (HERE / "whatsapp.js").read_text(encoding="utf-8")
        self._weight_script = (HERE / "weight.js").read_text(encoding="utf-8")
        # static.whatsapp.net and pps.whatsapp.net, routed only for a page with weight.
        self.assets = AssetHost()
        self.media_host = MediaHost()
        # WhatsApp's servers' record of which browser holds each linked device, shared with
        # the other processes through the record folder (see links.py).
        self.links = LinkRegistry(record_dir)
        self._name = uuid.uuid4().hex[:8]
        self._held: dict[str, set[str]] = {}  # page token -> devices its page holds
        if self._record is not None and self._record.exists():
            # WhatsApp's servers outlive the bot's process; so does the record of what arrived.
            for line in self._record.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._sent.append(SentMessage(**json.loads(line)))

    async def attach(self, session_id: str, context: BrowserContext) -> None:
        async def fulfil(route: Route) -> None:
            await self._fulfil(session_id, route)

        def record_sent(_source: Any, data: dict[str, Any]) -> None:
            self._record_sent(session_id, data or {})

        def record_presence(_source: Any, data: dict[str, Any]) -> None:
            self._record_presence(session_id, data or {})

        def link(source: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            return self._link(session_id, source, data or {})

        await context.route("https://web.whatsapp.com/**", fulfil)
        await context.route(f"{MEDIA_HOST}/**", self._fulfil_media)
        weight = self.behaviour.weight
        if weight is not None:

            async def fulfil_asset(route: Route) -> None:
                await self.assets.fulfil(route, weight)

            await context.route(f"{STATIC_HOST}/**", fulfil_asset)
            await context.route(f"{PICTURES_HOST}/**", fulfil_asset)
        await context.expose_binding(SENT_BINDING, record_sent)
        await context.expose_binding(PRESENCE_BINDING, record_presence)
        await context.expose_binding(LINK_BINDING, link)
        context.on("page", lambda page: self._pages.__setitem__(session_id, page))
        for page in context.pages:
            self._pages[session_id] = page

    def detach(self, session_id: str) -> None:
        self._pages.pop(session_id, None)

    def _link(
        self, session_id: str, source: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """The server's side of a page's connection as a linked device: `open` (it
        connected), `takeover` (it takes the link back after a conflict), `beat` (it is still
        there; `held` false: another browser has the link, the page gets a conflict)."""
        page: Page = source["page"]
        token = f"p{id(page):x}"
        holder = self.links.holder(self._name, token)
        device = device_id(str(data.get("secret") or ""))
        op = str(data.get("op") or "")
        if op == "beat":
            return {"held": self.links.beat(device, holder)}
        replaced = self.links.open(device, session_id, holder, takeover=op == "takeover")
        if replaced is not None:
            log.info(
                "Simulator: {} opened a linked device another browser held: conflict for {}",
                session_id,
                replaced.label(),
            )
        if token not in self._held:
            self._held[token] = set()
            page.once("close", lambda _: self._release(token))
        self._held[token].add(device)
        return {"held": True}

    def _release(self, token: str) -> None:
        holder = self.links.holder(self._name, token)
        for device in self._held.pop(token, set()):
            self.links.release(device, holder)

    def conflicts(self, session_id: str | None = None) -> list[Conflict]:
        """The conflicts WhatsApp gave because a second browser opened a linked device (in
        every process sharing the record folder)."""
        return self.links.conflicts(session_id)

    async def _fulfil(self, session_id: str, route: Route) -> None:
        request = route.request
        path = urlsplit(request.url).path
        try:
            if path == "/" and request.method == "GET":
                headers = await request.all_headers()
                if self.behaviour.headless_check and _says_headless(headers):
                    await route.fulfill(status=200, content_type="text/html", body=UNSUPPORTED_PAGE)
                    return
                config = self.behaviour.page_config(self._qr_every_ms)
                weight = '<script src="/__sim/weight.js"></script>' if config["weight"] else ""
                body = self._page_html.replace("__CONFIG__", json.dumps(config)).replace(
                    "__WEIGHT__", weight
                )
                await route.fulfill(status=200, content_type="text/html", body=body)
            elif path == "/sw.js":
                # WhatsApp Web's service worker lives here; ours says what it is told it is.
                await route.fulfill(
                    status=200, content_type="application/javascript", body=SERVICE_WORKER
                )
            elif path == "/__sim/client-hints":
                header = (await request.all_headers()).get("sec-ch-ua")
                await route.fulfill(status=200, json={"secChUa": header})
            elif path == "/__sim/weight.js":
                await route.fulfill(
                    status=200, content_type="application/javascript", body=self._weight_script
                )
            elif path == "/__sim/whatsapp.js":
                await route.fulfill(
                    status=200, content_type="application/javascript", body=self._script
                )
            else:
                await route.fulfill(status=404, body="not in the simulator")
        except Error as exc:  # the page went away while we answered
            log.debug("Simulator: request {} not answered: {}", path, exc)

    async def _fulfil_media(self, route: Route) -> None:
        url = urlsplit(route.request.url)
        found = self.media_host.get(url.path + (f"?{url.query}" if url.query else ""))
        # The media host answers WhatsApp Web's page across origins.
        cors = {"Access-Control-Allow-Origin": "https://web.whatsapp.com"}
        try:
            if found is None:
                await route.fulfill(status=404, headers=cors, body="no such media")
            else:
                await route.fulfill(
                    status=200, headers=cors, content_type="application/octet-stream", body=found
                )
        except Error as exc:
            log.debug("Simulator: media {} not answered: {}", url.path, exc)

    def _record_sent(self, session_id: str, data: dict[str, Any]) -> None:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        message = SentMessage(
            session_id=session_id,
            id=str(data.get("id", "")),
            to=str(data.get("to", "")),
            body=str(data.get("body", "")),
            at=datetime.now(UTC).isoformat(),
            sender=text("from"),
            participant=text("participant"),
            expected_sender=text("expectedFrom"),
            ephemeral_duration=int(data.get("ephemeralDuration") or 0),
            chat_ephemeral_duration=int(data.get("chatEphemeralDuration") or 0),
            result=str(data.get("result") or "OK"),
            **self._content_fields(data),
        )
        self._sent.append(message)
        if self._record is not None:
            with self._record.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(message)) + "\n")

    def _content_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """The kind's own fields of a sent message; an upload's bytes are kept by hash."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        found: dict[str, Any] = {
            "type": str(data.get("type") or "chat"),
            "caption": text("caption"),
            "filename": text("filename"),
            "mimetype": text("mimetype"),
            "size": int(data["size"]) if isinstance(data.get("size"), int) else None,
            "quoted_id": text("quotedId"),
            "quoted_participant": text("quotedParticipant"),
            "lat": number("lat"),
            "lng": number("lng"),
            "loc": text("loc"),
            "vcard": text("vcard"),
            "vcard_name": text("vcardName"),
            "reacted_to": text("reactedTo"),
            "emoji": text("emoji"),
        }
        encoded = data.get("data")
        if isinstance(encoded, str):
            raw = base64.b64decode(encoded)
            digest = hashlib.sha256(raw).hexdigest()
            found["media_sha256"] = digest
            if self._media_dir is not None:
                self._media_dir.mkdir(parents=True, exist_ok=True)
                (self._media_dir / digest).write_bytes(raw)
            else:
                self._media[digest] = raw
        return found

    def _record_presence(self, session_id: str, data: dict[str, Any]) -> None:
        self._presence.append(
            PresenceUpdate(
                session_id=session_id,
                chat=str(data.get("chat", "")),
                state=str(data.get("state", "")),
                at=datetime.now(UTC).isoformat(),
                unread=int(data.get("unread") or 0),
            )
        )

    # Controls ------------------------------------------------------------------------

    def media(self, sha256: str) -> bytes:
        """The bytes of a file a bot uploaded, by their SHA-256."""
        if self._media_dir is not None:
            return (self._media_dir / sha256).read_bytes()
        return self._media[sha256]

    def presence(self, session_id: str | None = None) -> list[PresenceUpdate]:
        return [p for p in self._presence if session_id is None or p.session_id == session_id]

    def sent(self, session_id: str | None = None) -> list[SentMessage]:
        return [m for m in self._sent if session_id is None or m.session_id == session_id]

    @staticmethod
    def phone_number_for(session_id: str) -> str:
        """A stable fake phone number per bot, so 'Connected as' reads the same each time."""
        digits = str(int(hashlib.sha256(session_id.encode()).hexdigest()[:12], 16))[-7:]
        return f"1555{digits}"

    async def status(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(session_id, "window.__waSim.status()")
        return result

    async def scan(self, session_id: str, me: str | None = None) -> str:
        phone = me or self.phone_number_for(session_id)
        await self._call(session_id, "me => window.__waSim.scan(me)", phone)
        return phone

    async def enter_code(self, session_id: str, code: str, me: str | None = None) -> str:
        phone = me or self.phone_number_for(session_id)
        await self._call(
            session_id, "([code, me]) => window.__waSim.enterCode(code, me)", [code, phone]
        )
        return phone

    async def incoming(
        self,
        session_id: str,
        sender: str,
        body: str,
        *,
        encrypted: bool = False,
        kind: str = "chat",
        group: str | None = None,
        quote: str | None = None,
        undecryptable: bool = False,
    ) -> str:
        """A message from `sender` (a phone number: it arrives by its LID, as WhatsApp sends
        them today; or a full id). `kind`: chat, status, gp2, notification_template,
        e2e_notification or revoked; `group`: the group it was written in; `quote`: the id
        of the message it replies to; `undecryptable`: it stays undecrypted until the page
        asks the phone to send it again."""
        message_id: str = await self._call(
            session_id,
            "args => window.__waSim.incoming(args)",
            {
                "from": sender.lstrip("+"),
                "body": body,
                "encrypted": encrypted,
                "kind": kind,
                "group": group,
                "quote": quote,
                "undecryptable": undecryptable,
            },
        )
        return message_id

    # The phone's side of replies, reactions, edits, revokes, media, group changes --------

    async def react(self, session_id: str, sender: str, message_id: str, reaction: str) -> str:
        """`sender` reacts to a message (an empty reaction removes theirs)."""
        reaction_id: str = await self._call(
            session_id,
            "args => window.__waSim.react(args)",
            {"from": sender.lstrip("+"), "messageId": message_id, "text": reaction},
        )
        return reaction_id

    async def edit(self, session_id: str, message_id: str, body: str) -> str:
        """The sender of a received message edits it."""
        edit_id: str = await self._call(
            session_id, "args => window.__waSim.edit(args)", {"messageId": message_id, "body": body}
        )
        return edit_id

    async def revoke(
        self,
        session_id: str,
        message_id: str,
        *,
        admin: str | None = None,
        unloaded: bool = False,
    ) -> str:
        """A received message is deleted for everyone: by its sender, or by a group `admin`;
        `unloaded`: the page no longer holds it in its chat store."""
        revoke_id: str = await self._call(
            session_id,
            "args => window.__waSim.revoke(args)",
            {
                "messageId": message_id,
                "admin": admin.lstrip("+") if admin else None,
                "unloaded": unloaded,
            },
        )
        return revoke_id

    async def incoming_media(
        self,
        session_id: str,
        sender: str,
        data: bytes,
        *,
        kind: str = "image",
        mimetype: str = "image/jpeg",
        filename: str | None = None,
        caption: str | None = None,
        group: str | None = None,
        quote: str | None = None,
    ) -> tuple[str, EncryptedMedia]:
        """A file from `sender`: encrypted onto the media host, announced to the page."""
        if kind not in MEDIA_KINDS:
            raise SimulatorError(f"unknown media kind '{kind}'; expected one of {MEDIA_KINDS}")
        uploaded = self.media_host.upload(data, kind)
        message_id: str = await self._call(
            session_id,
            "args => window.__waSim.incomingMedia(args)",
            {
                "from": sender.lstrip("+"),
                "kind": kind,
                "mimetype": mimetype,
                "filename": filename,
                "caption": caption,
                "group": group,
                "quote": quote,
                **uploaded.message_fields(),
            },
        )
        return message_id, uploaded

    async def group_event(
        self,
        session_id: str,
        group: str,
        subtype: str,
        *,
        author: str | None = None,
        participants: tuple[str, ...] = (),
    ) -> str:
        """A group notification: subtype add, invite, remove, leave, promote, demote,
        subject, description, ..."""
        event_id: str = await self._call(
            session_id,
            "args => window.__waSim.groupEvent(args)",
            {
                "group": group,
                "subtype": subtype,
                "author": author.lstrip("+") if author else None,
                "participants": [p.lstrip("+") for p in participants],
            },
        )
        return event_id

    async def receiving(self, session_id: str) -> dict[str, Any]:
        """What the page did about received messages: resend requests, reactions stored."""
        result: dict[str, Any] = await self._call(session_id, "window.__waSim.receiving()")
        return result

    async def lid_of(self, session_id: str, phone: str) -> str:
        """The LID WhatsApp knows this phone number's account by."""
        lid: str = await self._call(session_id, "p => window.__waSim.lidOf(p)", phone.lstrip("+"))
        return lid

    async def set_send_result(self, session_id: str, recipient: str, result: str | None) -> None:
        """What WhatsApp answers to sends to `recipient` (a phone number, LID or group id):
        "OK", an `ERROR_*` value, or None for the default ("OK")."""
        await self._call(
            session_id,
            "([r, v]) => window.__waSim.setSendResult(r, v)",
            [recipient.lstrip("+"), result],
        )

    async def set_disappearing(self, session_id: str, chat: str, seconds: int) -> str:
        """Turn on disappearing messages in a chat; returns the chat's id."""
        chat_id: str = await self._call(
            session_id,
            "([c, s]) => window.__waSim.setDisappearing(c, s)",
            [chat.lstrip("+"), seconds],
        )
        return chat_id

    async def set_stream_mode(self, session_id: str, mode: str) -> None:
        """WhatsApp's stream mode: MAIN, QR, SYNCING, DEPRECATED_VERSION, TOS_BLOCK, ..."""
        await self._call(session_id, "m => window.__waSim.setStreamMode(m)", mode)

    async def phone_logout(self, session_id: str) -> None:
        await self._call(session_id, "window.__waSim.phoneLogout()")

    async def conflict(self, session_id: str) -> None:
        await self._call(session_id, "window.__waSim.conflict()")

    async def drop(self, session_id: str) -> None:
        await self._call(session_id, "window.__waSim.drop()")

    async def crash(self, session_id: str) -> None:
        """Crash the renderer for real (as an out-of-memory kill would)."""
        page = self._page(session_id)
        cdp = await page.context.new_cdp_session(page)
        with contextlib.suppress(Error, TimeoutError):  # the crash takes the reply with it
            async with asyncio.timeout(2):
                await cdp.send("Page.crash")

    async def act(self, session_id: str, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """One control by name, for the HTTP API of demo mode."""
        if action == "scan":
            return {"linkedAs": "+" + await self.scan(session_id, data.get("phone"))}
        if action == "pair":
            code = str(data.get("code", ""))
            return {"linkedAs": "+" + await self.enter_code(session_id, code, data.get("phone"))}
        if action == "message":
            sender = str(data.get("from") or "15550000001")
            body = str(data.get("body", ""))
            encrypted = bool(data.get("encrypted"))
            quote = str(data["quote"]) if data.get("quote") else None
            message_id = await self.incoming(
                session_id, sender, body, encrypted=encrypted, quote=quote
            )
            return {"id": message_id}
        if action == "image":
            sender = str(data.get("from") or "15550000001")
            caption = str(data["body"]) if data.get("body") else None
            message_id, _ = await self.incoming_media(
                session_id, sender, DEMO_PICTURE, mimetype="image/png", caption=caption
            )
            return {"id": message_id}
        if action in ("react", "edit", "revoke"):
            return {"id": await self._act_on_message(session_id, action, data)}
        if action == "logout":
            await self.phone_logout(session_id)
        elif action == "conflict":
            await self.conflict(session_id)
        elif action == "drop":
            await self.drop(session_id)
        elif action == "crash":
            await self.crash(session_id)
        else:
            raise SimulatorError(f"unknown action '{action}'; expected one of {', '.join(ACTIONS)}")
        return {}

    # Contacts and groups ---------------------------------------------------------------

    async def set_registered(self, session_id: str, phones: list[str]) -> None:
        """The numbers that have a WhatsApp account from now on (the bot's own always has)."""
        await self._call(
            session_id, "p => window.__waSim.setRegistered(p)", [p.lstrip("+") for p in phones]
        )

    async def exists_queries(self, session_id: str) -> int:
        """How many number checks reached WhatsApp's servers from this bot's page."""
        count: int = await self._call(session_id, "window.__waSim.existsQueries()")
        return count

    async def add_group(
        self,
        session_id: str,
        name: str,
        participants: list[str | dict[str, Any]],
        *,
        admins: tuple[str, ...] = (),
        group_id: str | None = None,
    ) -> str:
        """A group the bot's account is in (created by it), with these members: phone
        numbers, or {"phone", "hidden": True} for a member known only by its LID."""
        created: str = await self._call(
            session_id,
            "g => window.__waSim.addGroup(g)",
            {"id": group_id, "name": name, "participants": participants, "admins": list(admins)},
        )
        return created

    async def _act_on_message(self, session_id: str, action: str, data: dict[str, Any]) -> str:
        target = str(data.get("messageId") or "")
        if action == "react":
            sender = str(data.get("from") or "15550000001")
            return await self.react(session_id, sender, target, str(data.get("reaction") or ""))
        if action == "edit":
            return await self.edit(session_id, target, str(data.get("body", "")))
        return await self.revoke(session_id, target)

    def _page(self, session_id: str) -> Page:
        page = self._pages.get(session_id)
        if page is None or page.is_closed():
            raise SimulatorError("this bot has no browser open (start it first)")
        return page

    async def _call(self, session_id: str, script: str, arg: Any = None) -> Any:
        page = self._page(session_id)
        try:
            async with asyncio.timeout(10):
                return await page.evaluate(script, arg)
        except Error as exc:
            message = str(exc).splitlines()[0].removeprefix("Error: ").strip()
            raise SimulatorError(message.removeprefix("page.evaluate: Error: ")) from None
        except TimeoutError:
            raise SimulatorError("the simulated page did not answer") from None
