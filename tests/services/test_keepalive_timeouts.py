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
TIMED_OUT_PINGS = 1000  # each a chance to lose one of the pool's 4 places, were timeouts to leak
MAX_PINGS = 20_000
DEADLINES_US = tuple(range(100, 1000, 25))


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
    # Deadlines from 100 us to 1 ms in 25 us steps, in turn, so that they fall in every phase
    # of a ping (while it connects, between its connect and its request, in the answer) on a
    # quiet machine as on a loaded one: a fixed 2 ms caught 5 of 20,000 pings on a quiet one.
    hurried = [keepalive(target, client, timedelta(microseconds=us)) for us in DEADLINES_US]
    patient = keepalive(target, client, timedelta(seconds=5))
    try:
        for n in range(MAX_PINGS):
            await hurried[n % len(hurried)].ping_once()
            if sum(h.failed_pings for h in hurried) >= TIMED_OUT_PINGS:
                break
        failed = sum(h.failed_pings for h in hurried)
        assert failed >= TIMED_OUT_PINGS, failed

        record = await patient.ping_once()
        assert record.ok, record.error
    finally:
        for each in hurried:
            await each.close()
        await client.aclose()
