"""Errors as `application/problem+json` (RFC 9457), with a message a person can act on."""

from __future__ import annotations

import json
from typing import Any

from loguru import logger
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from services.dbhealth import RETRY_AFTER_SECONDS, is_database_unavailable

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):  # noqa: N818 - raised to become a response, not an error class
    """Raise anywhere under a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body = {
        "type": "about:blank",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        request, exc.status, exc.detail, title=exc.title, headers=exc.headers, **exc.extensions
    )


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"There is nothing at {request.url.path}; see /openapi.json for the routes."
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405 and headers is not None:
        # Starlette joins a set: the order changed from one run to the next.
        allowed = ", ".join(sorted(m.strip() for m in headers.get("Allow", "").split(",") if m))
        headers["Allow"] = allowed
        detail = f"{request.method} is not allowed on {request.url.path}; use {allowed}."
    return problem_response(request, exc.status_code, str(detail), headers=headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logger.bind(component="http").opt(exception=exc).error(
        "Unhandled error on {} {}", request.method, request.url.path
    )
    return problem_response(request, 500, "The server hit an unexpected error; it has been logged.")


async def on_database_error(request: Request, exc: Exception) -> Response:
    """The database being away is a 503 the client can retry, not a bug (no traceback)."""
    if not is_database_unavailable(exc):
        raise exc  # a real bug: on to the 500 handler, which logs it
    monitor = getattr(request.app.state, "database_monitor", None)
    if monitor is not None:
        monitor.saw_failure(exc)
    return problem_response(
        request,
        503,
        "The database is unreachable right now, so this request could not be completed; "
        "try again in a few seconds (see /health).",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


EXCEPTION_HANDLERS = {
    Problem: on_problem,
    HTTPException: on_http_exception,
    # Registered by class (not via `Exception`) so they are answered without a re-raise.
    DBAPIError: on_database_error,
    PoolTimeoutError: on_database_error,
    OSError: on_database_error,
    TimeoutError: on_database_error,
    Exception: on_unexpected,
}
