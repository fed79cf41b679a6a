"""Request bodies bounded before they are read: a pure ASGI middleware in front of every route.

A declared Content-Length over the bound is refused at once, without reading a byte of the
body; a body sent without one (chunked) is counted as it streams in and refused the moment it
passes the bound. Nothing is buffered here, and uvicorn stops reading the socket while the app
is not asking for more, so an anonymous 200 MiB upload costs a few kilobytes, not 200 MiB.
The 413 closes the connection: the rest of that body is never read.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import Problem, problem_response


class BodyTooLargeError(Problem):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"The body is larger than {max_bytes} bytes.",
            headers={"Connection": "close"},
        )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            refusal = BodyTooLargeError(self.max_bytes)
            response = problem_response(
                Request(scope), 413, refusal.detail, headers=refusal.headers
            )
            await response(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route: the app's Problem handler answers 413.
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, bounded_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            # Not a number: h11 refuses such a request before it gets here; count the stream.
            return int(text) if text.isdigit() else None
    return None
