"""The media phase of bench/outbox.py: 1 MB images accepted through the API and drained through
the simulator by real Chromium.

The real app runs as `python server.py` in demo mode (WHATSAPP_SIMULATOR, the browser
`find_chromium` picks or CHROMIUM_PATH), SEND_RATE=0 (unpaced), on SQLite. One bot is created
stopped, so the images wait in the queue while they are accepted:

1. Accept. N images of 1 MiB of random bytes each (no two alike), as base64 in the JSON body,
   POSTed from C connections; images/s = N / the time until the last 202. The server's
   resident memory (its own process; no browser runs yet) is sampled every 50 ms: before,
   the peak while accepting, and once all N are queued.
2. Drain. The bot is started and linked by the simulated phone; images/s = N / (the last
   `sentAt` - the moment it connected). Each image goes as WhatsApp Web sends one: read from
   the database, handed to the page as base64, prepared, hashed and "uploaded" to the
   simulator, which checks its hash. The server's peak memory while draining is printed too,
   and the simulator's record must hold N images with the bytes that were sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import _common as common
import httpx
import psutil

MIB = 1024 * 1024
SAMPLE_S = 0.05


@dataclass
class MediaResult:
    images: int
    image_bytes: int
    concurrency: int
    accept_s: float
    accept_per_s: float
    rss_before_mb: float
    rss_peak_accepting_mb: float
    rss_queued_mb: float
    drain_s: float
    drain_per_s: float
    drain_mb_per_s: float
    rss_peak_draining_mb: float
    arrived_intact: int


class Sampler:
    """The peak resident memory of one process, sampled in the background."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    async def _run(self) -> None:
        while True:
            self.now()
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        self.peak = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> int:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.peak


async def _ok(response: httpx.Response, *expected: int) -> dict[str, Any]:
    if response.status_code not in expected:
        raise RuntimeError(
            f"{response.request.url.path}: {response.status_code} {response.text[:300]}"
        )
    found: dict[str, Any] = response.json()
    return found


async def _wait(check: Any, bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run_media(
    root: Path, admin_token: str, images: int, concurrency: int, image_bytes: int = MIB
) -> MediaResult:
    data_dir = root / "media" / "data"
    data_dir.mkdir(parents=True)
    (port,) = common.free_ports(1)
    settings = {
        "ADMIN_TOKEN": admin_token,
        "BOT_ENGINE": "whatsapp",
        "WHATSAPP_SIMULATOR": "true",
        "SEND_RATE": "0",
        "MAX_QUEUED_MESSAGES_PER_USER": "0",
        "MESSAGE_ACCEPT_RATE": "0",
    }
    if os.environ.get("CHROMIUM_PATH"):
        settings["CHROMIUM_PATH"] = os.environ["CHROMIUM_PATH"]
    server = common.start_wakeful(
        "media", port, data_dir, root / "media" / "server.log", **settings
    )
    try:
        common.wait_ready(server, "/health", 120)
        return await _measure(server, data_dir, admin_token, images, concurrency, image_bytes)
    except Exception:
        print(server.log_text(3000))
        raise
    finally:
        common.stop_server(server, 30)


async def _measure(
    server: common.Server,
    data_dir: Path,
    admin_token: str,
    images: int,
    concurrency: int,
    image_bytes: int,
) -> MediaResult:
    files = [os.urandom(image_bytes) for _ in range(images)]
    bodies = [
        {
            "to": "+15550001111",
            "media": {
                "type": "image",
                "mimetype": "image/jpeg",
                "data": base64.b64encode(f).decode(),
            },
        }
        for f in files
    ]
    client = httpx.AsyncClient(
        base_url=f"http://{common.LOOPBACK}:{server.port}",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=120,
    )
    sampler = Sampler(server.proc.pid)
    async with client:
        bot = (
            await _ok(
                await client.post("/api/sessions", json={"name": "media", "start": False}), 201
            )
        )["id"]
        rss_before = sampler.now()
        pending = iter(bodies)

        async def post_some() -> None:
            for body in pending:
                await _ok(await client.post(f"/api/sessions/{bot}/messages", json=body), 202)

        sampler.start()
        started = time.perf_counter()
        await asyncio.gather(*(post_some() for _ in range(concurrency)))
        accept_s = time.perf_counter() - started
        peak_accepting = await sampler.stop()
        await asyncio.sleep(1.0)
        rss_queued = sampler.now()

        async def state() -> str:
            found: str = (await _ok(await client.get(f"/api/sessions/{bot}"), 200))["state"]
            return found

        await _ok(await client.post(f"/api/sessions/{bot}/start"), 200)

        async def showing_qr() -> bool:
            return await state() == "SCAN_QR"

        await _wait(showing_qr, 120, "the QR")
        sampler.start()
        await _ok(await client.post(f"/api/sessions/{bot}/simulator", json={"action": "scan"}), 200)

        async def connected() -> bool:
            return await state() == "CONNECTED"

        await _wait(connected, 120, "the bot to connect")
        connected_at = time.time()

        async def drained() -> bool:
            listed = await _ok(
                await client.get(f"/api/sessions/{bot}/messages", params={"limit": 1}), 200
            )
            return bool(listed["counts"]["sent"] + listed["counts"]["dead"] >= images)

        await _wait(drained, 1200, f"{images} images sent")
        peak_draining = await sampler.stop()
        listed = await _ok(
            await client.get(f"/api/sessions/{bot}/messages", params={"limit": 500}), 200
        )
        last = max(
            datetime.fromisoformat(m["sentAt"]).timestamp()
            for m in listed["messages"]
            if m["sentAt"]
        )
    drain_s = max(last - connected_at, 0.001)
    wanted = {hashlib.sha256(f).hexdigest() for f in files}
    media_dir = data_dir / "simulator-media"
    intact = sum(
        1
        for digest in wanted
        if (media_dir / digest).exists()
        and hashlib.sha256((media_dir / digest).read_bytes()).hexdigest() == digest
    )
    return MediaResult(
        images=images,
        image_bytes=image_bytes,
        concurrency=concurrency,
        accept_s=accept_s,
        accept_per_s=images / accept_s,
        rss_before_mb=rss_before / MIB,
        rss_peak_accepting_mb=peak_accepting / MIB,
        rss_queued_mb=rss_queued / MIB,
        drain_s=drain_s,
        drain_per_s=images / drain_s,
        drain_mb_per_s=images * image_bytes / MIB / drain_s,
        rss_peak_draining_mb=peak_draining / MIB,
        arrived_intact=intact,
    )


def print_media(r: MediaResult) -> None:
    print(
        f"media: {r.images} images of {r.image_bytes / MIB:g} MiB (base64 in JSON), "
        f"{r.concurrency} connections, SQLite, demo mode (real Chromium + simulator)"
    )
    print(f"  accepted: {r.accept_per_s:.1f} images/s ({r.accept_s:.1f}s for {r.images})")
    print(
        f"  server memory (RSS): {r.rss_before_mb:.0f} MB before, "
        f"peak {r.rss_peak_accepting_mb:.0f} MB while accepting, "
        f"{r.rss_queued_mb:.0f} MB with all {r.images} queued"
    )
    print(
        f"  drained through the simulator: {r.drain_per_s:.2f} images/s, "
        f"{r.drain_mb_per_s:.1f} MB/s ({r.drain_s:.0f}s); "
        f"server peak RSS while draining {r.rss_peak_draining_mb:.0f} MB"
    )
    print(f"  arrived with the bytes that were sent: {r.arrived_intact} of {r.images}")
