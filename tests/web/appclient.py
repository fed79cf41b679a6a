"""The app in-process with what a test injects (a clock, a resolver), and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from config import Settings
from server import create_app
from services.resolver import Resolver
from tests.support import FakeClock
from tests.web.test_sessions_api import Api


@asynccontextmanager
async def running_with(
    settings: Settings, *, clock: FakeClock | None = None, resolver: Resolver | None = None
) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock, resolver=resolver)
    async with app.router.lifespan_context(app):
        app.state.listening.set()  # as uvicorn does once bound: the jobs start now
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://wakeful.test") as c:
            yield Api(app, c)
