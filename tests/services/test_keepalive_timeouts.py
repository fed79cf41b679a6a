"""Timed-out pings against a real server on a loopback port do not use up the HTTP client:
a request cancelled mid-way (while it connects, say) could leave its socket open and its
place in the pool taken, and once the pool was full every later ping failed, while the
target answered at once (a soak saw 100 sockets in CLOSE-WAIT and only failed pings)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.alerts import Alerter
from services.keepalive import KeepAlive, KeepAliveConfig
from tests.support import FakeClock, free_port

POOL = 4  # a small pool: a handful of leaked places is enough to fill it
TIMED_OUT_PINGS = 300  # each a chance to lose one of the pool's 4 places, were timeouts to leak
MAX_PINGS = 20_000


async def health(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "pass"})


@pytest.fixture
async def target() -> AsyncIterator[str]:
    port = free_port()
    app = Starlette(routes=[Route("/health", health)])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}/health"
    server.should_exit = True
    await serving


def keepalive(url: str, client: httpx.AsyncClient, timeout: timedelta) -> KeepAlive:
    clock = FakeClock(datetime(2026, 11, 30, 12, 0))
    config = KeepAliveConfig(
        url=url, interval=timedelta(seconds=10), timeout=timeout, start_delay=timedelta(0)
    )
    return KeepAlive(config, client=client, alerter=Alerter([], clock), clock=clock)


async def test_pings_that_time_out_leave_the_client_able_to_ping(target: str) -> None:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=POOL))
    hurried = keepalive(target, client, timedelta(milliseconds=2))
    patient = keepalive(target, client, timedelta(seconds=5))
    try:
        # Until enough were cut short mid-way: how many a 2 ms deadline catches depends on
        # the machine (a quiet one answers most loopback pings within it; CI saw 11 of 300).
        for _ in range(MAX_PINGS):
            await hurried.ping_once()
            if hurried.failed_pings >= TIMED_OUT_PINGS:
                break
        assert hurried.failed_pings >= TIMED_OUT_PINGS, hurried.failed_pings

        record = await patient.ping_once()
        assert record.ok, record.error
    finally:
        await hurried.close()
        await client.aclose()
