"""A failed HTTP request, described for a person: timeout, connection refused, DNS, TLS…"""

from __future__ import annotations

import socket
import ssl
from datetime import timedelta

import httpx


def describe_failure(exc: BaseException, timeout: timedelta) -> str:
    """A reason a person understands: timeout, connection refused, DNS failure, TLS…"""
    # anyio's connect raises a group from its task group (a port out of range does): the
    # reason is inside.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"timeout of {timeout.total_seconds() * 1000:.0f}ms exceeded"
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed ({cause.strerror or cause})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error ({cause.reason or cause})"
    text = " ".join(str(exc).split())
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return f"DNS lookup failed ({text})"
    if "temporary failure in name resolution" in lowered:
        return f"DNS lookup failed ({text})"
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
