"""Request bodies bounded before they are read: a pure ASGI middleware in front of every route.

A declared Content-Length over the bound is refused at once, without reading a byte of the
body; a body sent without one (chunked) is counted as it streams in and refused the moment it
passes the bound. Nothing is buffered here, and uvicorn stops reading the socket while the app
is not asking for more, so an anonymous 200 MiB upload costs a few kilobytes, not 200 MiB.
The 413 closes the connection: the rest of that body is never read.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import Problem, problem_response


class BodyTooLargeError(Problem):
    def __init__(self, max_bytes: int, media_bytes: int | None = None) -> None:
        why = f"The body is larger than {max_bytes} bytes."
        if media_bytes is not None:
            why = (
                f"The body is larger than {max_bytes} bytes: a message carries at most "
                f"MAX_MEDIA_BYTES ({media_bytes} bytes) of media."
            )
        super().__init__(
            413,
            why,
            headers={"Connection": "close"},
        )


# The send route takes files as base64: its bound has room for MAX_MEDIA_BYTES of them.
MEDIA_ROUTE = re.compile(r"/api/sessions/[^/]+/messages")


def media_body_bytes(max_body_bytes: int, max_media_bytes: int) -> int:
    """MAX_BODY_BYTES for the rest of the message, plus the file as base64 (4 characters
    for every 3 bytes)."""
    return max_body_bytes + (max_media_bytes + 2) // 3 * 4


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_media_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_media_bytes = max_media_bytes

    def refusal(self, scope: Scope) -> tuple[int, BodyTooLargeError]:
        """This request's bound, and what passing it is told."""
        media = self.max_media_bytes
        if (
            media is not None
            and scope.get("method") == "POST"
            and MEDIA_ROUTE.fullmatch(scope.get("path", ""))
        ):
            bound = media_body_bytes(self.max_bytes, media)
            return bound, BodyTooLargeError(bound, media)
        return self.max_bytes, BodyTooLargeError(self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, refusal = self.refusal(scope)
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
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
                if received > max_bytes:
                    # Raised inside the route: the app's Problem handler answers 413.
                    raise refusal
            return message

        await self.app(scope, bounded_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            # Not a number: h11 refuses such a request before it gets here; count the stream.
            return int(text) if text.isdigit() else None
    return None
