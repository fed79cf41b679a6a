"""Service workers present the bot's identity (user agent and client hints) through CDP, as
its pages do.

A service worker is a CDP target of its own, which Playwright attaches at the browser level
and resumes at once (`Runtime.runIfWaitingForDebugger`, in `crServiceWorker`): the first
resume from any client starts a worker paused on start, so an override sent after attaching
would race its first script. What holds a *new* service worker is Chromium's main-script
throttle: the script of a worker registered by a page is not fetched until every session
that auto-attached it flattened under that page, with `waitForDebuggerOnStart`, has resumed
or detached it (`ThrottleServiceWorkerMainScriptFetch`; Playwright's own page session
detaches service workers at once). So each page gets two sessions here:

* a *hold* session auto-attaching service workers only, flattened and paused on start: it
  holds a new worker's script until the override is queued, then detaches;
* the page's identity session (the one that overrides the page) attaches the worker
  unflattened, the one mode whose child sessions Playwright's `CDPSession` can talk to
  (`Target.sendMessageToTarget`), and sends `Emulation.setUserAgentOverride` there. It stays
  attached: an override lasts as long as its session, and when the same worker version
  starts again in this browser, its session is restored, override first, before its script
  runs.

An installed worker is not held: one that starts for the first time in a new browser (the
profile of an earlier run) fetches no script, Playwright's resume starts it, and an override
that is late (a loaded machine) lets its first script read the browser's own brands,
HeadlessChrome among them (measured on the headless shell: 1 relaunch in 7 without delay;
every one with the override 3 s late). So a profile opens with no worker installed
(`forget_installed_workers`): WhatsApp Web registers its worker again on every load, which
is then new, and held. A takeover was like that already (the profile backup carries no
workers); the worker's caches (Cache Storage) and the HTTP cache are kept. Its fetches carry
no Sec-CH-UA either way (measured on the wire), and its user agent is the `--user-agent`
switch's."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from loguru import logger
from playwright.async_api import BrowserContext, CDPSession, Error, Page

# Only service workers: pages, frames and dedicated workers are Playwright's to resume.
SERVICE_WORKERS_ONLY = [{"type": "service_worker", "exclude": False}, {"exclude": True}]
# A held worker is released after this even if its override could not be queued: a browser
# that does not answer must not keep WhatsApp Web's service worker from ever installing.
OVERRIDE_TIMEOUT = 10.0

# Where Chromium keeps a profile's worker registrations and their scripts; the workers'
# Cache Storage beside them is data, kept.
INSTALLED_WORKERS = ("Default/Service Worker/Database", "Default/Service Worker/ScriptCache")

log = logger.bind(component="bot")


def forget_installed_workers(profile: Path) -> bool:
    """Before a browser opens `profile`: no service worker is installed in it, so each one
    the page registers is new, and held until it has the identity. True if any was."""
    found = False
    for part in INSTALLED_WORKERS:
        folder = profile / part
        if folder.is_dir():
            found = True
            shutil.rmtree(folder, ignore_errors=True)
    return found


class ServiceWorkerIdentity:
    """The service workers of one browser, each given the override once (a worker seen from
    two pages gets one session)."""

    def __init__(self, override: dict[str, Any]) -> None:
        self._override = override
        self._presented: set[str] = set()  # target ids with an override session
        self._sessions: dict[str, str] = {}  # override session id -> target id
        self._tasks: set[asyncio.Task[None]] = set()
        self._message_ids = itertools.count(1)

    async def watch(self, context: BrowserContext, page: Page, presenter: CDPSession) -> CDPSession:
        """Hold the service workers `page` registers until `presenter` (the page's identity
        session) has queued their override. Returns the hold session, which must stay open
        as long as the page does."""
        hold = await context.new_cdp_session(page)
        hold.on("Target.attachedToTarget", lambda event: self._spawn(hold, presenter, event))
        presenter.on("Target.detachedFromTarget", self._forget)
        await hold.send(
            "Target.setAutoAttach",
            {
                "autoAttach": True,
                "waitForDebuggerOnStart": True,
                "flatten": True,
                "filter": SERVICE_WORKERS_ONLY,
            },
        )
        return hold

    def _spawn(self, hold: CDPSession, presenter: CDPSession, event: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._present(hold, presenter, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _present(
        self, hold: CDPSession, presenter: CDPSession, event: dict[str, Any]
    ) -> None:
        target = str(event["targetInfo"]["targetId"])
        try:
            if event["targetInfo"]["type"] == "service_worker" and target not in self._presented:
                self._presented.add(target)
                try:
                    async with asyncio.timeout(OVERRIDE_TIMEOUT):
                        await self._override_in(presenter, target)
                except (Error, TimeoutError) as exc:  # the worker or the page went away
                    self._presented.discard(target)
                    log.debug("Service worker {} not given the identity: {!r}", target, exc)
        finally:
            # Released only now: the worker's script is fetched once every hold is gone.
            with contextlib.suppress(Error):
                await hold.send("Target.detachFromTarget", {"sessionId": event["sessionId"]})

    async def _override_in(self, presenter: CDPSession, target: str) -> None:
        attached = await presenter.send(
            "Target.attachToTarget", {"targetId": target, "flatten": False}
        )
        session = str(attached["sessionId"])
        self._sessions[session] = target
        # Queued by Chromium until the worker runs, ahead of its script; the answer comes
        # back as Target.receivedMessageFromTarget, which nothing here needs.
        message = {
            "id": next(self._message_ids),
            "method": "Emulation.setUserAgentOverride",
            "params": self._override,
        }
        await presenter.send(
            "Target.sendMessageToTarget", {"sessionId": session, "message": json.dumps(message)}
        )

    def _forget(self, event: dict[str, Any]) -> None:
        # The worker's version is gone: a later one is a new target, with a new override.
        target = self._sessions.pop(str(event.get("sessionId")), None)
        if target is not None:
            self._presented.discard(target)
