"""Secrets out of what people see: URLs shown in logs and answers, and third-party log lines.

A URL can carry a credential in two places a reader would not think of as secret: its
password (`https://user:pass@host/`) and its query (`/health?token=…`). What is shown keeps
the rest, so a person still recognises which URL it is.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# Query parameters whose values are credentials more often than not.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&\s\"'#?]*(?:token|key|secret|pass|pwd|auth|sig|credential|session)"
    r"[^=&\s\"'#?]*=)(?P<value>[^&\s\"'#]+)",
    re.IGNORECASE,
)


def redact_userinfo(url: str) -> str:
    """`https://user:pass@host/` → `https://user:***@host/`: a password is never echoed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def redact_url(url: str) -> str:
    """A URL fit to show: its password and the value of every query parameter masked
    (`http://host/health?token=***`); scheme, host, port and path kept."""
    try:
        parts = urlsplit(redact_userinfo(url))
    except ValueError:
        return MASK
    if not parts.query:
        return urlunsplit(parts)
    query = "&".join(
        f"{name}={MASK}" if sep else name
        for name, sep, _ in (pair.partition("=") for pair in parts.query.split("&"))
    )
    return urlunsplit(parts._replace(query=query))


def redact_secret_params(text: str) -> str:
    """Mask the values of credential-looking query parameters (`?token=`, `&api_key=`,
    `?sig=`…) wherever a URL or a request line appears in free text."""
    if "=" not in text:
        return text
    return _SECRET_PARAM.sub(lambda m: m.group("name") + MASK, text)
