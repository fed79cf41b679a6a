"""Live smoke test: the real driver against the real web.whatsapp.com, with your phone.

NOT part of CI (CI has no internet and no phone). Run it by hand after changing the bridge
or when WhatsApp Web changes:

    make live-smoke                      # link by QR (scan it from this terminal)
    make live-smoke ARGS="--pair +15551234567"   # or link with a pairing code
    make live-smoke ARGS="--send-to +15551234567"  # and send yourself one message
    make live-smoke ARGS="--simulator --send-to +15551234567"  # a dry run, no phone

It uses a throw-away profile unless you pass --profile, so it does not touch your bots.
Checks, in order, and a summary of each at the end:
  1. WhatsApp Web boots for our browser (not its unsupported-browser page), which presents
     itself as a desktop Chromium (no HeadlessChrome in the user agent or client hints);
  2. the bridge attaches without `window.Debug`, through WhatsApp's module loader (a module
     it cannot find is reported by name: "WhatsApp Web changed; the bridge needs an update");
  3. a QR carrying all five parts (or a pairing code) arrives;
  4. the phone links it: `authenticated` at once, the first sync's progress, then `ready`
     with your number (and LID) and WhatsApp Web's version;
  5. the heartbeat says CONNECTED;
  6. optionally, a message is sent and its real WhatsApp id is shown;
  7. messages you send to the linked number are reported with the sender's phone number
     (and LID); status updates and notifications are not.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot.engines.base import EngineEvent, EventKind  # noqa: E402
from bot.engines.simulator import Simulator  # noqa: E402
from bot.engines.whatsapp.browser import find_chromium  # noqa: E402
from bot.engines.whatsapp.driver import DriverOptions, WhatsAppEngine  # noqa: E402
from bot.qrcodes import qr_text  # noqa: E402
from config import DEFAULT_USER_AGENT  # noqa: E402


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Checks:
    """What was checked, in order, for the summary at the end."""

    def __init__(self) -> None:
        self.results: dict[str, tuple[bool | None, str]] = {}

    def record(self, name: str, ok: bool | None, detail: str) -> None:
        self.results[name] = (ok, detail)
        mark = {True: "✅", False: "❌", None: "–"}[ok]
        say(f"{mark} {name}: {detail}")

    def summary(self) -> bool:
        print("\nWhat the live smoke test checked:", flush=True)
        for name, (ok, detail) in self.results.items():
            mark = {True: "✅", False: "❌", None: "– (skipped)"}[ok]
            print(f"  {mark} {name}: {detail}", flush=True)
        return all(ok is not False for ok, _ in self.results.values())


async def browser_identity(session: Any) -> tuple[bool, str]:
    page = session.page
    if page is None:
        return False, "no page"
    user_agent = await page.evaluate("navigator.userAgent")
    brands = await page.evaluate(
        "navigator.userAgentData ? navigator.userAgentData.brands.map(b => b.brand) : []"
    )
    unsupported = await page.evaluate(
        "document.body ? /works with Google Chrome/.test(document.body.innerText) : false"
    )
    headless = "Headless" in user_agent or any("Headless" in b for b in brands)
    ok = not headless and not unsupported
    return ok, f"{user_agent}; brands {brands}" + (
        "; UNSUPPORTED-BROWSER PAGE" if unsupported else ""
    )


async def reachable() -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("web.whatsapp.com", 443), timeout=10
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def play_the_phone(
    simulator: Simulator, first_qr: asyncio.Event, ready: asyncio.Event
) -> None:
    """--simulator: scan the first QR, then write to the bot from a LID contact."""
    await first_qr.wait()
    await simulator.scan("live_smoke")
    await ready.wait()
    await simulator.incoming("live_smoke", "+15550002222", "hello from the phone")


async def run(args: argparse.Namespace) -> int:
    if not args.simulator and not await reachable():
        say("web.whatsapp.com cannot be reached from here: this check needs the internet.")
        return 2
    profiles = Path(args.profile) if args.profile else Path(tempfile.mkdtemp(prefix="wakeful-"))
    chromium = find_chromium(Path(args.chromium) if args.chromium else None)
    say(f"Chromium: {chromium.path or 'bundled'} ({chromium.source}); profiles in {profiles}")
    simulator = Simulator(qr_every=timedelta(seconds=20)) if args.simulator else None
    engine = WhatsAppEngine(
        DriverOptions(profiles_dir=profiles, chromium=chromium, user_agent=DEFAULT_USER_AGENT),
        simulator=simulator,
    )
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()
    first_qr, ready = asyncio.Event(), asyncio.Event()
    phone = None
    if simulator is not None:
        phone = asyncio.ensure_future(play_the_phone(simulator, first_qr, ready))

    async def on_event(event: EngineEvent) -> None:
        if event.kind is EventKind.QR:
            first_qr.set()
        elif event.kind is EventKind.READY:
            ready.set()
        await events.put(event)

    session = await engine.start("live_smoke", on_event)
    checks = Checks()
    code_asked = False
    try:
        await asyncio.sleep(5)  # the page's first scripts
        ok, detail = await browser_identity(session)
        checks.record("browser identity", ok, detail)
        async with asyncio.timeout(args.link_timeout):
            while True:
                event = await events.get()
                if event.kind is EventKind.QR and "bridge attached" not in checks.results:
                    checks.record("bridge attached", True, "login modules found, no Debug wait")
                if event.kind is EventKind.QR and not args.pair:
                    parts = str(event.data["qr"]).split(",")
                    checks.record("QR payload", len(parts) == 5, f"{len(parts)} parts")
                    say("Scan this with WhatsApp → Settings → Linked devices → Link a device:")
                    print(qr_text(str(event.data["qr"])), flush=True)
                elif event.kind is EventKind.QR and not code_asked:
                    code_asked = True
                    code = await session.request_pair_code(args.pair.lstrip("+"))
                    say(f"On the phone, Link with phone number, and type: {code[:4]}-{code[4:]}")
                elif event.kind is EventKind.PAIR_CODE:
                    checks.record("pairing code", True, str(event.data.get("code")))
                elif event.kind is EventKind.AUTHENTICATED:
                    checks.record("authenticated", True, "the phone linked; syncing")
                elif event.kind is EventKind.SYNC:
                    say(f"syncing: {event.data.get('percent')}%")
                elif event.kind is EventKind.STATE:
                    say(f"socket state: {event.data.get('state')}")
                elif event.kind is EventKind.BRIDGE_OUTDATED:
                    checks.record(
                        "bridge attached",
                        False,
                        "WhatsApp Web changed; the bridge needs an update: missing "
                        f"{event.data.get('missing')} ({event.data.get('stage')} stage, "
                        f"WhatsApp Web {event.data.get('version')})",
                    )
                    checks.summary()
                    return 1
                elif event.kind is EventKind.READY:
                    data = event.data
                    checks.record(
                        "ready",
                        bool(data.get("me")),
                        f"linked as {data.get('me')} (LID {data.get('lid')}), "
                        f"WhatsApp Web {data.get('version')}",
                    )
                    break
                elif event.kind in (EventKind.CRASH, EventKind.LOGOUT):
                    checks.record("linked", False, f"{event.kind.value}: {event.data}")
                    checks.summary()
                    return 1
        beat = await session.heartbeat()
        checks.record("heartbeat", beat.ok, beat.state)
        if args.send_to:
            try:
                message_id = await session.send_text(args.send_to, "wakeful live smoke test ✅")
            except Exception as exc:
                checks.record("send", False, str(exc))
            else:
                real = "_" in message_id and message_id not in ("None", "undefined")
                checks.record("send", real, f"to {args.send_to}, WhatsApp id {message_id}")
        else:
            checks.record("send", None, "pass --send-to to send one")
        say(f"Send a message to the linked number within {args.listen:.0f}s to see it arrive...")
        deadline = time.monotonic() + args.listen
        received = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(events.get(), timeout=left)
            except TimeoutError:
                break
            if event.kind is EventKind.MESSAGE:
                received += 1
                data = event.data
                where = f" in group {data.get('chat')}" if data.get("isGroup") else ""
                say(
                    f"📨 {data.get('type')} from {data.get('from')} (phone {data.get('phone')}, "
                    f"LID {data.get('lid')}){where}: {data.get('body')!r}"
                )
        checks.record(
            "receive",
            True if received else None,
            f"{received} message(s) reported" if received else "none sent to it",
        )
        return 0 if checks.summary() else 1
    except TimeoutError:
        checks.record("linked", False, f"not linked within {args.link_timeout:.0f}s")
        checks.summary()
        return 1
    finally:
        if phone is not None:
            phone.cancel()
        await engine.close()
        if not args.profile:
            shutil.rmtree(profiles, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", help="link with a pairing code for this phone number")
    parser.add_argument("--send-to", help="send one test message to this number once linked")
    parser.add_argument("--profile", help="keep the profile in this folder (default: temporary)")
    parser.add_argument("--chromium", help="the Chromium binary (default: found as wakeful does)")
    parser.add_argument(
        "--simulator",
        action="store_true",
        help="a dry run against the simulator (it plays the phone), to check the script itself",
    )
    parser.add_argument("--link-timeout", type=float, default=180.0)
    parser.add_argument("--listen", type=float, default=60.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
