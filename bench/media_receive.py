"""Received files: how long a file takes from the phone to the bot's event, and from a
download request to the bytes in the server, through real Chromium, the real driver and
bridge, and the simulator (WhatsApp's media host on loopback inside the browser context:
the file is encrypted as WhatsApp encrypts it, fetched and decrypted in the page, passed to
the server as base64).

Prints figures; it is not a pass/fail test. For each size (default 1, 8 and 15 MB, under
MEDIA_DOWNLOAD_MAX_MB's 16): the time from the simulated phone sending the file to the
`message` event, the time of `download_media` (the page fetching, checking, decrypting and
handing it over), its rate, the server process's resident memory before and at the peak of
the download (sampled every 20 ms), and the time of a second request answered by the media
cache.

    .venv/bin/python bench/media_receive.py [--sizes 1,8,30] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from _common import machine_info, run_async, write_json

from bot.engines.base import EngineEvent, EventKind
from bot.engines.simulator import Simulator
from bot.engines.whatsapp.browser import find_chromium
from bot.engines.whatsapp.driver import DriverOptions, WhatsAppEngine
from bot.mediacache import MediaCache
from config import DEFAULT_USER_AGENT
from services.clock import SystemClock

BOT = "bot_0000bench0001"
MB = 1024 * 1024


class Events:
    def __init__(self) -> None:
        self.seen: list[EngineEvent] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: EngineEvent) -> None:
        self.seen.append(event)
        self.changed.set()

    async def wait(self, kind: EventKind, count: int) -> EngineEvent:
        async with asyncio.timeout(120):
            while len([e for e in self.seen if e.kind is kind]) < count:
                self.changed.clear()
                await self.changed.wait()
        return [e for e in self.seen if e.kind is kind][count - 1]


async def peak_rss(stop: asyncio.Event, into: list[int]) -> None:
    me = psutil.Process()
    while not stop.is_set():
        into.append(me.memory_info().rss)
        await asyncio.sleep(0.02)


async def measure(sizes_mb: list[float]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wakeful-bench-media-") as tmp:
        root = Path(tmp)
        simulator = Simulator(qr_every=timedelta(seconds=20), record_dir=root)
        options = DriverOptions(
            profiles_dir=root / "profiles",
            chromium=find_chromium(None),
            user_agent=DEFAULT_USER_AGENT,
        )
        engine = WhatsAppEngine(options, simulator=simulator)
        cache = MediaCache(max_bytes=64 * MB, ttl=timedelta(minutes=10), clock=SystemClock())
        events = Events()
        rows = []
        try:
            session = await engine.start(BOT, events)
            await events.wait(EventKind.QR, 1)
            await simulator.scan(BOT)
            await events.wait(EventKind.READY, 1)
            for n, size_mb in enumerate(sizes_mb, start=1):
                data = os.urandom(int(size_mb * MB))
                sent = time.perf_counter()
                message_id, _ = await simulator.incoming_media(
                    BOT,
                    "+15550002222",
                    data,
                    kind="document",
                    mimetype="application/pdf",
                    filename=f"file-{n}.pdf",
                )
                await events.wait(EventKind.MESSAGE, n)
                to_event = time.perf_counter() - sent
                samples: list[int] = []
                stop = asyncio.Event()
                sampler = asyncio.create_task(peak_rss(stop, samples))
                await asyncio.sleep(0.05)
                before = samples[0]
                started = time.perf_counter()
                got = await cache.fetch(
                    (BOT, message_id), partial(session.download_media, message_id)
                )
                download = time.perf_counter() - started
                stop.set()
                await sampler
                assert hashlib.sha256(got.data).digest() == hashlib.sha256(data).digest()
                started = time.perf_counter()
                await cache.fetch((BOT, message_id), partial(session.download_media, message_id))
                cached = time.perf_counter() - started
                row = {
                    "size_mb": size_mb,
                    "to_event_s": round(to_event, 3),
                    "download_s": round(download, 3),
                    "download_mb_per_s": round(size_mb / download, 1),
                    "server_rss_before_mb": round(before / MB, 1),
                    "server_rss_peak_mb": round(max(samples) / MB, 1),
                    "cached_ms": round(cached * 1000, 2),
                }
                rows.append(row)
                print(
                    f"{size_mb:>5g} MB: event after {row['to_event_s']:.2f} s, download "
                    f"{row['download_s']:.2f} s ({row['download_mb_per_s']} MB/s), server RSS "
                    f"{row['server_rss_before_mb']} → peak {row['server_rss_peak_mb']} MB, "
                    f"cached {row['cached_ms']} ms",
                    flush=True,
                )
        finally:
            await engine.close()
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,8,15", help="file sizes in MB, comma-separated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    result = run_async(lambda: measure(sizes))
    if args.json is not None:
        largest = result["rows"][-1] if result["rows"] else None
        headlines = []
        if largest is not None:
            headlines.append(
                {
                    "figure": f"received file of {largest['size_mb']:g} MB: download through "
                    "WhatsApp Web (fetch, decrypt, to the server)",
                    "value": f"{largest['download_s']:.2f} s, server peak RSS "
                    f"{largest['server_rss_peak_mb']} MB",
                    "goal": None,
                    "met": None,
                }
            )
        write_json(
            args.json,
            {"machine": machine_info(["playwright"]), **result, "headlines": headlines},
        )


if __name__ == "__main__":
    main()
