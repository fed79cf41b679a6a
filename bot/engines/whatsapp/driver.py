"""The WhatsApp engine: one persistent Chromium profile per bot, driven by Playwright.

The driver knows browsers, not WhatsApp: what WhatsApp Web does is read by `bridge.js`
inside the page and arrives here as normalised events through one binding. Crashes of the
page, a closed context and a killed browser become `crash` events, which send the session
down its backoff path. The profile is backed up to the database after `ready` and then
whenever it changed (see `profile.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from loguru import logger
from playwright.async_api import (
    BrowserContext,
    CDPSession,
    Error,
    Page,
    Playwright,
    async_playwright,
)

from bot.engines.base import (
    EngineError,
    EngineEvent,
    EventKind,
    EventSink,
    Heartbeat,
    MediaFile,
    MediaNotFoundError,
)
from bot.engines.simulator import WHATSAPP_URL, Behaviour, Simulator
from bot.engines.simulator.weight import REAL_WEIGHT, Weight
from bot.engines.whatsapp.browser import (
    BLOCKED_URLS,
    LEAN_FLAGS,
    SINGLE_PROCESS,
    ChromiumChoice,
    block_unneeded_requests,
    browser_flags,
    driver_environment,
    find_browser_process,
    find_chromium,
    kill_tree,
    remove_stale_locks,
    tree_memory_bytes,
)
from bot.engines.whatsapp.identity import BrowserIdentity, browser_version, build_identity
from bot.engines.whatsapp.profile import BackupUnreadableError, ProfileVault, has_profile
from bot.engines.whatsapp.worker_identity import ServiceWorkerIdentity, forget_installed_workers
from config import DEFAULT_USER_AGENT, Settings
from services.clock import Clock, SystemClock
from services.database import Database
from services.memory import MemoryBudget, read_limit

BRIDGE = Path(__file__).resolve().parent / "bridge.js"
BINDING = "__wakefulEmit"
PAGE_EVENTS = frozenset(
    {
        "qr",
        "pair_code",
        "authenticated",
        "sync",
        "ready",
        "message",
        "reaction",
        "edited",
        "revoked",
        "group",
        "state",
        "logout",
        "bridge_outdated",
    }
)
CLOSE_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0
# A file is fetched from WhatsApp's servers and decrypted in the page: room for a large video.
DOWNLOAD_TIMEOUT = 120.0

log = logger.bind(component="bot")


@dataclass(frozen=True, slots=True)
class BridgeTimings:
    """How long the bridge waits for WhatsApp Web's modules, and how often it replaces a
    pairing code (see bridge.js). Tests shorten them; the defaults suit the real site."""

    quiet_ms: int = 750
    give_up_ms: int = 60_000
    pair_refresh_ms: int = 180_000
    pair_refreshes: int = 5
    resend_ms: int = 5000  # undecryptable messages batched this long before asking the phone
    max_download_bytes: int = 16 * 1024 * 1024  # a received file larger is not fetched

    def script(self) -> str:
        values = {
            "quietMs": self.quiet_ms,
            "giveUpMs": self.give_up_ms,
            "pairRefreshMs": self.pair_refresh_ms,
            "pairRefreshes": self.pair_refreshes,
            "resendMs": self.resend_ms,
            "maxDownloadBytes": self.max_download_bytes,
        }
        return f"window.__wakefulConfig = {json.dumps(values)};"


@dataclass(frozen=True, slots=True)
class DriverOptions:
    profiles_dir: Path
    chromium: ChromiumChoice
    user_agent: str
    max_memory_mb: int = 0  # 0: no watchdog
    memory_check_every: timedelta = timedelta(seconds=30)
    backup_delay: timedelta = timedelta(seconds=60)
    backup_every: timedelta = timedelta(minutes=10)
    flags: tuple[str, ...] = LEAN_FLAGS
    # Refused by Chromium itself (browser.py); a benchmark's "before" runs without.
    blocked_urls: tuple[str, ...] = BLOCKED_URLS
    viewport: tuple[int, int] = (1024, 720)
    bridge: BridgeTimings = field(default_factory=BridgeTimings)


def driver_options(settings: Settings) -> DriverOptions:
    return DriverOptions(
        profiles_dir=settings.data_dir.resolve() / "profiles",
        chromium=find_chromium(settings.chromium_path),
        user_agent=settings.bot_user_agent,
        flags=browser_flags(single_process=settings.bot_single_process),
        max_memory_mb=watchdog_limit_mb(settings),
        memory_check_every=settings.memory_check_interval,
        backup_delay=settings.profile_backup_delay,
        backup_every=settings.profile_backup_interval,
        # A pairing code is replaced before the bot would stop waiting for it (QR_TIMEOUT
        # counts from the latest code), and at the latest when WhatsApp's lifetime ends.
        bridge=BridgeTimings(
            pair_refresh_ms=min(180_000, int(settings.qr_timeout.total_seconds() * 900)),
            max_download_bytes=settings.media_download_max_mb * 1024 * 1024,
        ),
    )


def watchdog_limit_mb(settings: Settings) -> int:
    """BOT_MAX_MEMORY_MB, else the room the memory budget leaves for bots: one bot growing
    past it is recycled before the container's OOM killer takes every bot and the server."""
    if settings.bot_max_memory_mb is not None:
        return settings.bot_max_memory_mb
    budget = MemoryBudget(read_limit(settings.memory_limit_mb))
    return budget.per_bot_limit_mb(budget.sample())


def create_engine(settings: Settings, db: Database | None = None) -> WhatsAppEngine:
    """The factory BOT_ENGINE=whatsapp resolves to. Nothing is launched until a bot starts."""
    simulator = None
    if settings.whatsapp_simulator:
        weight = Weight() if settings.simulator_weight == REAL_WEIGHT else None
        simulator = Simulator(
            qr_every=settings.simulator_qr_every,
            record_dir=settings.whatsapp_simulator_dir or settings.data_dir,
            behaviour=Behaviour(weight=weight),
        )
    key = settings.session_encryption_key
    vault = ProfileVault(db, key.get_secret_value() if key else None) if db else None
    if vault is not None and not vault.encrypts:
        # Once, at start: the WhatsApp link each backup holds is a login to the phone's account.
        log.warning(
            "🔓 Profile backups (each bot's WhatsApp link) will be stored NOT encrypted in the "
            "database: set SESSION_ENCRYPTION_KEY to encrypt them"
        )
    return WhatsAppEngine(driver_options(settings), vault=vault, simulator=simulator)


class WhatsAppEngine:
    def __init__(
        self,
        options: DriverOptions,
        *,
        vault: ProfileVault | None = None,
        simulator: Simulator | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.options = options
        self.vault = vault
        self.simulator = simulator
        self.clock = clock or SystemClock()
        self.name = "whatsapp-simulator" if simulator else "whatsapp"
        self.sessions: dict[str, WhatsAppSession] = {}
        self._playwright: Playwright | None = None
        self._playwright_lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self._identity: BrowserIdentity | None = None

    async def identity(self, playwright: Playwright) -> BrowserIdentity:
        """The user agent and client hints, from the real browser's version (read once)."""
        if self._identity is None:
            path = self.options.chromium.path or Path(playwright.chromium.executable_path)
            version = await asyncio.to_thread(browser_version, path)
            self._identity = build_identity(
                version, self.options.user_agent, default=DEFAULT_USER_AGENT
            )
        return self._identity

    def describe(self) -> str:
        chromium = self.options.chromium
        where = str(chromium.path) if chromium.path else "bundled"
        return f"Chromium {where} ({chromium.source})"

    def profile_dir(self, session_id: str) -> Path:
        return self.options.profiles_dir / session_id

    async def _get_playwright(self) -> Playwright:
        async with self._playwright_lock:
            if self._playwright is None:
                driver_environment(os.environ)
                self._playwright = await async_playwright().start()
            return self._playwright

    async def start(self, session_id: str, on_event: EventSink) -> WhatsAppSession:
        profile = self.profile_dir(session_id)
        await self._restore_if_missing(session_id, profile)
        profile.mkdir(parents=True, exist_ok=True)
        orphan = await asyncio.to_thread(find_browser_process, profile)
        if orphan is not None:
            # Left by a process that was killed (its browsers outlive it outside a container):
            # two browsers on one profile corrupt it.
            log.bind(session=session_id).warning("Killing an orphaned browser (pid {})", orphan.pid)
            await asyncio.to_thread(kill_tree, orphan)
        removed = remove_stale_locks(profile)
        if removed:
            log.bind(session=session_id).info("Removed stale profile locks: {}", ", ".join(removed))
        # A worker installed by an earlier run would start unheld, maybe before its identity.
        await asyncio.to_thread(forget_installed_workers, profile)
        playwright = await self._get_playwright()
        identity = await self.identity(playwright)
        width, height = self.options.viewport
        try:
            context = await playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=self.options.chromium.path,
                headless=True,
                # The user agent as the browser's own default (pages before our override,
                # service workers); not Playwright's `user_agent`, whose override has no
                # client hints and would leave workers with none (see _present_identity).
                args=[*self.options.flags, f"--user-agent={identity.user_agent}"],
                viewport={"width": width, "height": height},
            )
        except Error as exc:
            raise EngineError(f"Chromium did not start: {_first_line(exc)}") from None
        session = WhatsAppSession(self, session_id, profile, context, on_event, identity)
        try:
            await session.open()
        except BaseException as exc:
            await session.stop(backup=False)
            if isinstance(exc, Error):
                raise EngineError(f"WhatsApp Web did not load: {_first_line(exc)}") from None
            raise
        self.sessions[session_id] = session
        self._ensure_watchdog()
        return session

    async def _restore_if_missing(self, session_id: str, profile: Path) -> None:
        if self.vault is None or has_profile(profile):
            return
        bound = log.bind(session=session_id)
        try:
            files = await self.vault.restore(session_id, profile)
        except BackupUnreadableError as exc:
            bound.warning("Profile backup not restored: {}; a new QR scan is needed", exc)
            return
        if files:
            bound.info("Profile restored from the database backup ({} files)", files)

    async def forget(self, session_id: str) -> None:
        """Unlinked or deleted: the profile and its backup go; a new link needs a new QR."""
        session = self.sessions.get(session_id)
        if session is not None:
            await session.stop(backup=False)
        await asyncio.to_thread(shutil.rmtree, self.profile_dir(session_id), True)
        if self.vault is not None:
            await self.vault.delete(session_id)
        log.bind(session=session_id).info("Profile deleted (and its backup)")

    def _ensure_watchdog(self) -> None:
        # It always measures (the API shows each bot's memory); it recycles only with a limit.
        if self._watchdog is not None:
            return
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_memory())

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(self.options.memory_check_every.total_seconds())
            await self.memory_check_once()

    async def memory_check_once(self) -> list[str]:
        """Measure every browser; recycle those over BOT_MAX_MEMORY_MB. Returns their ids."""
        limit = self.options.max_memory_mb
        recycled = []
        for session in list(self.sessions.values()):
            used = await asyncio.to_thread(session.measure_memory)
            if limit > 0 and used > limit * 1024 * 1024:
                megabytes = used / 1024 / 1024
                reason = (
                    f"memory watchdog: the browser used {megabytes:.0f} MB, "
                    f"over BOT_MAX_MEMORY_MB={limit}"
                )
                log.bind(session=session.session_id).warning("Recycling the browser: {}", reason)
                session.report_crash(reason)
                recycled.append(session.session_id)
        return recycled

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for session in list(self.sessions.values()):
            await session.stop(backup=False)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None


class WhatsAppSession:
    """One bot's browser: the page, the events from its bridge, its backups."""

    def __init__(
        self,
        engine: WhatsAppEngine,
        session_id: str,
        profile: Path,
        context: BrowserContext,
        on_event: EventSink,
        identity: BrowserIdentity,
    ) -> None:
        self.engine = engine
        self.identity = identity
        self.session_id = session_id
        self.profile = profile
        self.context = context
        self.page: Page | None = None
        self.browser: psutil.Process | None = None
        self.memory_bytes = 0
        self._on_event = on_event
        self._events: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._deliver_events())
        self._backups: asyncio.Task[None] | None = None
        self._backup_lock = asyncio.Lock()
        self._page_tasks: set[asyncio.Task[None]] = set()
        self._cdp_sessions: list[CDPSession] = []
        self._service_workers = ServiceWorkerIdentity(identity.override())
        self._ready = False
        self._closing = False
        self._crashed = False
        self._stopping: asyncio.Future[None] | None = None
        self._log = log.bind(session=session_id)

    async def open(self) -> None:
        context = self.context
        await context.expose_binding(BINDING, self._from_page)
        await context.add_init_script(script=self.engine.options.bridge.script())
        await context.add_init_script(path=BRIDGE)
        if self.engine.simulator is not None:
            await self.engine.simulator.attach(self.session_id, context)
        # In one process (BOT_SINGLE_PROCESS) a page that crashes takes the browser with it,
        # and only the browser's end is seen.
        closed = (
            "the browser ended (closed, or its page crashed)"
            if SINGLE_PROCESS in self.engine.options.flags
            else "the browser closed"
        )
        context.on("close", lambda _: self.report_crash(closed))
        context.on("page", self._on_new_page)
        page = context.pages[0] if context.pages else await context.new_page()
        page.on("crash", lambda _: self.report_crash("the page crashed"))
        await self._present_identity(page)
        self.page = page
        self.browser = await asyncio.to_thread(find_browser_process, self.profile)
        await asyncio.to_thread(self.measure_memory)
        await page.goto(WHATSAPP_URL, wait_until="domcontentloaded", timeout=60_000)

    async def _present_identity(self, page: Page) -> None:
        """The user agent with its client hints (brands without HeadlessChrome), set through
        CDP before the page loads anything. The CDP session is kept open: an override ends
        with the session that set it.

        Workers: a dedicated worker inherits its page's override, brands included, as long
        as nothing overrides it again (Playwright's `user_agent` option does, per worker,
        without client hints: workers then had no brands at all). A service worker is a
        target of its own that Playwright attaches and resumes itself; the page's sessions
        hold each new one until its override is queued (see `worker_identity.py`, which
        also says what an installed worker starting in a new browser gets)."""
        cdp = await self.context.new_cdp_session(page)
        await cdp.send("Emulation.setUserAgentOverride", self.identity.override())
        await block_unneeded_requests(cdp, self.engine.options.blocked_urls)
        self._cdp_sessions.append(cdp)
        self._cdp_sessions.append(await self._service_workers.watch(self.context, page, cdp))

    def _on_new_page(self, page: Page) -> None:
        # A popup or a page WhatsApp opens must not present itself differently.
        async def present() -> None:
            with contextlib.suppress(Error):
                await self._present_identity(page)

        task = asyncio.ensure_future(present())
        self._page_tasks.add(task)
        task.add_done_callback(self._page_tasks.discard)

    # Events from the page ------------------------------------------------------------

    def _from_page(self, _source: Any, kind: Any, data: Any = None) -> None:
        if self._closing or kind not in PAGE_EVENTS:
            return
        payload = dict(data) if isinstance(data, dict) else {}
        if kind == "bridge_outdated":
            self._log.error(
                "WhatsApp Web changed; the bridge needs an update: missing {} ({} stage, "
                "WhatsApp Web {})",
                payload.get("missing"),
                payload.get("stage"),
                payload.get("version") or "version unknown",
            )
        if kind == "authenticated":
            # Linked (the phone scanned): the keys are in the profile, even before the first
            # sync ends. A close from here on backs them up, so a node that takes the bot over
            # mid-sync (a deploy) restores the link instead of showing a new QR.
            self._ready = True
        if kind == "ready":
            self._ready = True
            self._schedule_backups()
        self._events.put_nowait(EngineEvent(EventKind(kind), payload))

    def report_crash(self, reason: str) -> None:
        if self._closing or self._crashed:
            return
        self._crashed = True
        self._events.put_nowait(EngineEvent(EventKind.CRASH, {"reason": reason}))

    async def _deliver_events(self) -> None:
        # One at a time and in order: a QR must not overtake the state change before it.
        while True:
            event = await self._events.get()
            if event is None:
                return
            try:
                await self._on_event(event)
            except Exception as exc:
                self._log.opt(exception=exc).error("Handling {} failed", event.kind.value)

    # Calls into the page -------------------------------------------------------------

    async def _call(self, script: str, arg: Any = None, *, bound: float = CALL_TIMEOUT) -> Any:
        page = self.page
        if page is None or page.is_closed():
            raise EngineError("the page is closed")
        try:
            async with asyncio.timeout(bound):
                return await page.evaluate(script, arg)
        except Error as exc:
            raise EngineError(_page_error(exc)) from None
        except TimeoutError:
            raise EngineError("the page did not answer") from None

    async def heartbeat(self) -> Heartbeat:
        script = "window.__wakefulBridge ? window.__wakefulBridge.state() : 'NO_BRIDGE'"
        state = str(await self._call(script))
        return Heartbeat(ok=state == "CONNECTED", state=state)

    async def send_text(self, to: str, text: str) -> str:
        message_id = await self._call(
            "([to, text]) => window.__wakefulBridge.sendText(to, text)", [to, text]
        )
        return str(message_id)

    async def send_content(self, to: str, content: dict[str, Any]) -> str:
        message_id = await self._call(
            "([to, content]) => window.__wakefulBridge.sendContent(to, content)", [to, content]
        )
        return str(message_id)

    async def presence(self, to: str, state: str) -> None:
        await self._call("([to, state]) => window.__wakefulBridge.presence(to, state)", [to, state])

    async def request_pair_code(self, phone: str) -> str:
        code = await self._call("phone => window.__wakefulBridge.requestPairCode(phone)", phone)
        return str(code)

    async def logout(self) -> None:
        await self._call("window.__wakefulBridge.logout()")

    # Contacts and groups ---------------------------------------------------------------

    async def query_exists(self, phone: str) -> dict[str, Any]:
        """Ask WhatsApp's servers whether `phone` (digits) has an account: {"exists": bool,
        "id": the account's id, "lid": its LID or None}. One question per call: the
        caller paces them (bulk checks get an account unlinked)."""
        found = await self._call("p => window.__wakefulBridge.queryExists(p)", phone)
        return dict(found) if isinstance(found, dict) else {"exists": False}

    async def groups(self) -> list[dict[str, Any]]:
        """The account's groups: {"id", "name", "size"}."""
        found = await self._call("window.__wakefulBridge.groups()")
        return [dict(g) for g in found] if isinstance(found, list) else []

    async def group(self, group_id: str) -> dict[str, Any] | None:
        """One group with its members (phone numbers where WhatsApp knows them), or None."""
        found = await self._call("g => window.__wakefulBridge.group(g)", group_id)
        return dict(found) if isinstance(found, dict) else None

    async def download_media(self, message_id: str) -> MediaFile:
        answer = await self._call(
            "id => window.__wakefulBridge.downloadMedia(id)", message_id, bound=DOWNLOAD_TIMEOUT
        )
        if not isinstance(answer, dict):
            raise EngineError("the page gave no answer about the file")
        if answer.get("missing"):
            raise MediaNotFoundError(str(answer["missing"]))
        try:
            data = await asyncio.to_thread(
                base64.b64decode, str(answer.get("data", "")), validate=True
            )
        except binascii.Error:
            raise EngineError("the page gave a file that is not base64") from None
        filename = answer.get("filename")
        return MediaFile(
            data=data,
            mimetype=str(answer.get("mimetype") or "application/octet-stream"),
            filename=str(filename) if filename else None,
        )

    # Backups -------------------------------------------------------------------------

    def _schedule_backups(self) -> None:
        if self.engine.vault is None or self._backups is not None:
            return
        self._backups = asyncio.get_running_loop().create_task(self._backup_loop())

    async def _backup_loop(self) -> None:
        options = self.engine.options
        await asyncio.sleep(options.backup_delay.total_seconds())
        while not self._closing:
            await self.backup_once()
            await asyncio.sleep(options.backup_every.total_seconds())

    async def backup_once(self) -> int | None:
        vault = self.engine.vault
        if vault is None:
            return None
        async with self._backup_lock:
            try:
                size = await vault.backup(self.session_id, self.profile, self.engine.clock.now())
            except Exception as exc:
                self._log.warning("Profile backup failed: {}", _first_line(exc))
                return None
        if size is not None:
            how = "encrypted" if vault.encrypts else "not encrypted"
            self._log.info("Profile backed up to the database ({:.0f} KB, {})", size / 1024, how)
        return size

    # Memory and closing --------------------------------------------------------------

    def measure_memory(self) -> int:
        if self.browser is None:
            return 0
        self.memory_bytes = tree_memory_bytes(self.browser)
        return self.memory_bytes

    async def stop(self, *, backup: bool = True) -> None:
        """Close the browser, once. The closing runs in its own task: a caller that gives up
        waiting (a timeout, shutdown) cannot leave a half-closed browser nobody owns, and a
        second caller (forget after logout) waits for the same closing to finish."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._close(backup))
        await asyncio.shield(self._stopping)

    async def _close(self, backup: bool) -> None:
        self._closing = True
        if self.engine.simulator is not None:
            self.engine.simulator.detach(self.session_id)
        forced = False
        try:
            async with self._backup_lock:  # a backup under way finishes first
                if self._backups is not None:
                    self._backups.cancel()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.context.close()
            except (Error, TimeoutError) as exc:
                forced = True
                self._log.warning("The browser did not close ({}); killing it", _first_line(exc))
        finally:
            if self.browser is not None:
                await asyncio.to_thread(kill_tree, self.browser)  # no orphan holds the profile
            self._events.put_nowait(None)
        try:
            # Closed browsers write their last state to disk: the best moment for a backup
            # (not after a forced kill: a half-written profile must not replace a good one).
            if backup and self._ready and not self._crashed and not forced:
                await self.backup_once()
        finally:
            # Listed until closed and backed up, so `forget` finds it and waits for it.
            if self.engine.sessions.get(self.session_id) is self:
                del self.engine.sessions[self.session_id]


def _page_error(exc: BaseException) -> str:
    """The page's own words (WhatsApp's reason), without Playwright's prefixes."""
    text = _first_line(exc)
    for prefix in ("Page.evaluate: ", "Error: "):
        text = text.removeprefix(prefix)
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
