"""Chromium for one bot: which binary, which flags, the profile's stale locks, and how much
memory its process tree holds."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

import psutil
from playwright.async_api import CDPSession

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
# Debian's `chromium-headless-shell` package: the same engine without the desktop browser
# around it, less than half the memory per bot (see the README's Performance section).
DEBIAN_HEADLESS_SHELL = Path("/usr/lib/chromium/chromium-headless-shell")

# The page runs in the browser's own process: one process a bot instead of two (the headless
# shell) or four (full Chromium), 0.77 and 0.74 of the PSS on the simulator's page. A crashed
# page then ends the browser, which restarts the bot as any crash does. Chromium calls the
# mode unsupported; BOT_SINGLE_PROCESS=false leaves it out.
SINGLE_PROCESS = "--single-process"

# The page's V8 young generation in 1 MB semi-spaces (its default grows to 16 MB each, kept
# resident), as for the driver below. On the simulator's page with WhatsApp Web's weight
# (3 linked bots, their chat lists up): 124 -> 106 MB a bot; a few more scavenges on a page
# that is idle most of the time. `--enable-low-end-device-mode` saved the same and
# `--optimize-for-size` a MB less; neither added anything on top of this.
SMALL_YOUNG_GENERATION = "--js-flags=--max-semi-space-size=1"

# Flags for a small container. Each one either removes a process or a background job a bot
# never needs; `bench/browser_sessions.py` measures what they save against the defaults.
LEAN_FLAGS = (
    "--no-sandbox",  # containers run as a user namespaces cannot sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",  # /dev/shm is 64 MB in most containers
    "--in-process-gpu",  # no separate GPU process for a browser nobody looks at
    "--no-zygote",
    SINGLE_PROCESS,
    SMALL_YOUNG_GENERATION,
    "--renderer-process-limit=1",
    "--disable-site-isolation-trials",
    "--disable-features=site-per-process,Translate,MediaRouter,OptimizationHints,"
    "AudioServiceOutOfProcess,BackForwardCache,HardwareMediaKeyHandling",
    "--enable-features=NetworkServiceInProcess2",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--disable-quic",
    "--disable-blink-features=AutomationControlled",
)


def browser_flags(*, single_process: bool) -> tuple[str, ...]:
    return LEAN_FLAGS if single_process else tuple(f for f in LEAN_FLAGS if f != SINGLE_PROCESS)


# V8 settings for Playwright's Node driver, through NODE_OPTIONS. The young generation's
# semi-spaces default to 16 MB each and are kept resident; the driver's objects are small and
# short-lived, so 1 MB semi-spaces cost a few more scavenges and save ~24 MB of PSS (measured
# idle with three pages: 157 → 133 MB). The old space is left uncapped: a cap small enough to
# save anything would crash the driver, and every bot with it, when many bots run.
DRIVER_NODE_OPTIONS = "--max-semi-space-size=1"


def driver_environment(environ: MutableMapping[str, str]) -> None:
    """Set the driver's Node options before Playwright starts it (it inherits our
    environment). NODE_OPTIONS set by the operator is theirs and wins."""
    if not environ.get("NODE_OPTIONS"):
        environ["NODE_OPTIONS"] = DRIVER_NODE_OPTIONS


# Requests a bot never needs, refused by Chromium itself (CDP Network.setBlockedURLs) before
# they leave the page: profile pictures (pps.whatsapp.net), WhatsApp Web's own images
# (emoji sprites, stickers of the chat list, illustrations) and fonts. Media (mmg.whatsapp.net)
# is not blocked: a bot that downloads a received file needs it. Playwright's request routing
# is not used for this: it keeps every routed request's objects until the page closes.
BLOCKED_URLS = (
    "*://pps.whatsapp.net/*",
    "*://static.whatsapp.net/*.png*",
    "*://static.whatsapp.net/*.jpg*",
    "*://static.whatsapp.net/*.gif*",
    "*://static.whatsapp.net/*.webp*",
    "*://web.whatsapp.com/*.png*",
    "*://web.whatsapp.com/*.jpg*",
    "*://web.whatsapp.com/*.webp*",
    "*.woff2*",
    "*.woff*",
    "*.ttf*",
    "*.otf*",
)


async def block_unneeded_requests(cdp: CDPSession, urls: tuple[str, ...] = BLOCKED_URLS) -> None:
    """Have Chromium refuse `urls` for this page (the blocking needs the Network domain on
    in this session; no response bodies are kept for it)."""
    if not urls:
        return
    await cdp.send(
        "Network.enable",
        {"maxTotalBufferSize": 0, "maxResourceBufferSize": 0, "maxPostDataSize": 0},
    )
    await cdp.send("Network.setBlockedURLs", {"urls": list(urls)})


# What Chromium leaves behind when it is killed; a new launch refuses the profile while they
# point at a process that no longer exists.
LOCK_FILES = ("SingletonLock", "SingletonSocket", "SingletonCookie")


@dataclass(frozen=True, slots=True)
class ChromiumChoice:
    path: Path | None  # None: Playwright's own browser
    source: str


def find_chromium(configured: Path | None) -> ChromiumChoice:
    """CHROMIUM_PATH; else Debian's headless shell, then Debian's chromium, then `chromium`
    on PATH; else Playwright's own download."""
    if configured is not None:
        return ChromiumChoice(configured, "CHROMIUM_PATH")
    if DEBIAN_HEADLESS_SHELL.exists():
        return ChromiumChoice(DEBIAN_HEADLESS_SHELL, "Debian's chromium-headless-shell")
    if DEBIAN_CHROMIUM.exists():
        return ChromiumChoice(DEBIAN_CHROMIUM, "Debian's chromium")
    on_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if on_path:
        return ChromiumChoice(Path(on_path), "PATH")
    return ChromiumChoice(None, "Playwright's own browser")


def remove_stale_locks(profile: Path) -> list[str]:
    removed = []
    for name in LOCK_FILES:
        lock = profile / name
        # They are symlinks to a dead host-pid; `exists()` follows them and says False.
        if lock.is_symlink() or lock.exists():
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
                removed.append(name)
    return removed


def find_browser_process(profile: Path) -> psutil.Process | None:
    """The browser process using this profile (its children are the renderers)."""
    marker = f"--user-data-dir={profile}"
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if marker in cmdline and not any(arg.startswith("--type=") for arg in cmdline):
            return proc
    return None


def tree_memory_bytes(root: psutil.Process) -> int:
    """Proportional set size of the whole tree: shared pages count once across the tree, so
    the figure is what this bot costs the machine (RSS would count shared libraries per
    process). Falls back to RSS where PSS cannot be read."""
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in processes:
        try:
            total += proc.memory_full_info().pss
        except (psutil.AccessDenied, AttributeError):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def kill_tree(root: psutil.Process) -> None:
    """Last resort when a browser will not close: no orphan renderer may keep the profile."""
    with contextlib.suppress(psutil.Error):
        processes = [*root.children(recursive=True), root]
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        # A killed orphan is re-parented to pid 1, which may reap it late: a zombie is dead.
        deadline = time.monotonic() + 3
        while any(_alive(proc) for proc in processes) and time.monotonic() < deadline:
            time.sleep(0.05)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
