"""Live smoke test: the real driver against the real web.whatsapp.com, with your phone.

NOT part of CI (CI has no internet and no phone). Run it by hand after changing the bridge
or when WhatsApp Web changes:

    make live-smoke                      # link by QR (scan it from this terminal)
    make live-smoke ARGS="--pair +15551234567"   # or link with a pairing code
    make live-smoke ARGS="--send-to +15551234567"  # and send yourself one message

It uses a throw-away profile unless you pass --profile, so it does not touch your bots.
Checks, in order: WhatsApp Web loads and the bridge reads its modules, a QR (or pairing
code) arrives, the phone links it, `ready` names your number, the heartbeat says CONNECTED,
an optional message is sent, and messages you send to the linked number are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot.engines.base import EngineEvent, EventKind  # noqa: E402
from bot.engines.whatsapp.browser import find_chromium  # noqa: E402
from bot.engines.whatsapp.driver import DriverOptions, WhatsAppEngine  # noqa: E402
from bot.qrcodes import qr_text  # noqa: E402
from config import DEFAULT_USER_AGENT  # noqa: E402


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def reachable() -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("web.whatsapp.com", 443), timeout=10
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def run(args: argparse.Namespace) -> int:
    if not await reachable():
        say("web.whatsapp.com cannot be reached from here: this check needs the internet.")
        return 2
    profiles = Path(args.profile) if args.profile else Path(tempfile.mkdtemp(prefix="wakeful-"))
    chromium = find_chromium(Path(args.chromium) if args.chromium else None)
    say(f"Chromium: {chromium.path or 'bundled'} ({chromium.source}); profiles in {profiles}")
    engine = WhatsAppEngine(
        DriverOptions(profiles_dir=profiles, chromium=chromium, user_agent=DEFAULT_USER_AGENT)
    )
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    async def on_event(event: EngineEvent) -> None:
        await events.put(event)

    session = await engine.start("live_smoke", on_event)
    code_asked = False
    try:
        async with asyncio.timeout(args.link_timeout):
            while True:
                event = await events.get()
                if event.kind is EventKind.QR and not args.pair:
                    say("Scan this with WhatsApp → Settings → Linked devices → Link a device:")
                    print(qr_text(str(event.data["qr"])), flush=True)
                elif event.kind is EventKind.QR and not code_asked:
                    code_asked = True
                    code = await session.request_pair_code(args.pair.lstrip("+"))
                    say(f"On the phone, Link with phone number, and type: {code[:4]}-{code[4:]}")
                elif event.kind is EventKind.STATE:
                    say(f"socket state: {event.data.get('state')}")
                elif event.kind is EventKind.READY:
                    say(f"✅ ready: linked as {event.data.get('me')}")
                    break
                elif event.kind in (EventKind.CRASH, EventKind.LOGOUT):
                    say(f"❌ {event.kind.value}: {event.data}")
                    return 1
        beat = await session.heartbeat()
        say(f"heartbeat: {beat.state} ({'ok' if beat.ok else 'NOT ok'})")
        if args.send_to:
            message_id = await session.send_text(args.send_to, "wakeful live smoke test ✅")
            say(f"sent a message to {args.send_to}: {message_id}")
        say(f"Send a message to the linked number within {args.listen:.0f}s to see it arrive...")
        deadline = time.monotonic() + args.listen
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(events.get(), timeout=left)
            except TimeoutError:
                break
            if event.kind is EventKind.MESSAGE:
                say(f"📨 message from {event.data.get('from')}: {event.data.get('body')!r}")
        return 0 if beat.ok else 1
    except TimeoutError:
        say(f"❌ not linked within {args.link_timeout:.0f}s")
        return 1
    finally:
        await engine.close()
        if not args.profile:
            shutil.rmtree(profiles, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", help="link with a pairing code for this phone number")
    parser.add_argument("--send-to", help="send one test message to this number once linked")
    parser.add_argument("--profile", help="keep the profile in this folder (default: temporary)")
    parser.add_argument("--chromium", help="the Chromium binary (default: found as wakeful does)")
    parser.add_argument("--link-timeout", type=float, default=180.0)
    parser.add_argument("--listen", type=float, default=60.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
