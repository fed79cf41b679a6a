"""Pure ASGI middleware counting answered requests by status class (cheap: /health goes
through it on every platform health check)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import Metrics


class RequestCounter:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.count_request(message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
