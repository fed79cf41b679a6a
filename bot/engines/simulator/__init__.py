"""A local stand-in for web.whatsapp.com, for the tests and for demo mode.

The real driver and the real bridge run against it in real Chromium: `attach()` routes
`https://web.whatsapp.com/` in a bot's browser context to the simulated page, which serves
the module surface the bridge reads (see `whatsapp.js`). This class plays the phone and
WhatsApp's servers: it scans QR codes, enters pairing codes, sends messages to the bot, logs
out, makes conflicts and drops, crashes the page, and records every message the bot sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from playwright.async_api import BrowserContext, Error, Page, Route

HERE = Path(__file__).resolve().parent
SIMULATOR_VERSION = "2.3000.0-simulator"
SENT_BINDING = "__wakefulSimSent"
# The record file keeps everything; memory keeps the latest (a demo left running for weeks).
KEEP_SENT_IN_MEMORY = 10_000
WHATSAPP_URL = "https://web.whatsapp.com/"
ACTIONS = ("scan", "pair", "message", "logout", "conflict", "drop", "crash")

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


class Simulator:
    def __init__(self, *, qr_every: timedelta, record_dir: Path | None = None) -> None:
        self._qr_every_ms = max(int(qr_every.total_seconds() * 1000), 50)
        self._pages: dict[str, Page] = {}
        self._sent: deque[SentMessage] = deque(maxlen=KEEP_SENT_IN_MEMORY)
        self._record = record_dir / "simulator-sent.jsonl" if record_dir else None
        self._page_html = (HERE / "page.html").read_text(encoding="utf-8")
        self._script = (HERE / "whatsapp.js").read_text(encoding="utf-8")
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

        await context.route("https://web.whatsapp.com/**", fulfil)
        await context.expose_binding(SENT_BINDING, record_sent)
        context.on("page", lambda page: self._pages.__setitem__(session_id, page))
        for page in context.pages:
            self._pages[session_id] = page

    def detach(self, session_id: str) -> None:
        self._pages.pop(session_id, None)

    async def _fulfil(self, session_id: str, route: Route) -> None:
        request = route.request
        path = urlsplit(request.url).path
        try:
            if path == "/" and request.method == "GET":
                config = {"qrEvery": self._qr_every_ms, "qrRefs": 6, "version": SIMULATOR_VERSION}
                body = self._page_html.replace("__CONFIG__", json.dumps(config))
                await route.fulfill(status=200, content_type="text/html", body=body)
            elif path == "/__sim/whatsapp.js":
                await route.fulfill(
                    status=200, content_type="application/javascript", body=self._script
                )
            else:
                await route.fulfill(status=404, body="not in the simulator")
        except Error as exc:  # the page went away while we answered
            log.debug("Simulator: request {} not answered: {}", path, exc)

    def _record_sent(self, session_id: str, data: dict[str, Any]) -> None:
        message = SentMessage(
            session_id=session_id,
            id=str(data.get("id", "")),
            to=str(data.get("to", "")),
            body=str(data.get("body", "")),
            at=datetime.now(UTC).isoformat(),
        )
        self._sent.append(message)
        if self._record is not None:
            with self._record.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(message)) + "\n")

    # Controls ------------------------------------------------------------------------

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
        self, session_id: str, sender: str, body: str, *, encrypted: bool = False
    ) -> str:
        sender = sender.lstrip("+")
        wid = sender if "@" in sender else f"{sender}@c.us"
        message_id: str = await self._call(
            session_id,
            "([f, b, e]) => window.__waSim.incoming(f, b, e)",
            [wid, body, encrypted],
        )
        return message_id

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
            await asyncio.wait_for(cdp.send("Page.crash"), timeout=2)

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
            return {"id": await self.incoming(session_id, sender, body, encrypted=encrypted)}
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

    def _page(self, session_id: str) -> Page:
        page = self._pages.get(session_id)
        if page is None or page.is_closed():
            raise SimulatorError("this bot has no browser open (start it first)")
        return page

    async def _call(self, session_id: str, script: str, arg: Any = None) -> Any:
        page = self._page(session_id)
        try:
            return await asyncio.wait_for(page.evaluate(script, arg), timeout=10)
        except Error as exc:
            message = str(exc).splitlines()[0].removeprefix("Error: ").strip()
            raise SimulatorError(message.removeprefix("page.evaluate: Error: ")) from None
        except TimeoutError:
            raise SimulatorError("the simulated page did not answer") from None
