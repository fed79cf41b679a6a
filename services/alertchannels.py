"""Alert channels: the ALERT_URLS entries as apprise loads them, one per channel, with what
may be shown of each (its URL as apprise shows it privately, its secrets masked) and apprise's
own reasons for refusing an entry or failing a notification, read from its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from services.redaction import MASK, redact_secret_params

if TYPE_CHECKING:
    import apprise


@dataclass(frozen=True, slots=True)
class Note:
    title: str
    body: str
    kind: str
    queued_at: float  # the clock's monotonic time: retries stop RETRY_FOR after it


class AlertConfigError(ValueError):
    """An ALERT_URLS entry apprise does not accept (the URL itself is never echoed)."""


class _Captured(logging.Handler):
    """Collects what apprise says while it works (its reasons for refusing or failing)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.warnings: list[str] = []
        self.details: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # a malformed log call in a plugin must not break the alert
            return
        if record.levelno >= logging.WARNING:
            if not text.startswith(("Could not load", "Unsupported URL")):
                self.warnings.append(text)
        elif "exception" in text.lower() or "error" in text.lower():
            self.details.append(text)


@contextlib.contextmanager
def apprise_captured() -> Iterator[_Captured]:
    """Apprise's log lines go to us, not to the log: they can quote an entry in full
    ("Unsupported URL: …", "Could not load Slack URL: slack://…"), tokens and all. The
    reason is shown after masking the entry's secrets (see `_secret_fragments`)."""
    apprise_log = logging.getLogger("apprise")
    captured = _Captured()
    was_propagating, was_level = apprise_log.propagate, apprise_log.level
    apprise_log.addHandler(captured)
    apprise_log.propagate = False
    apprise_log.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        apprise_log.removeHandler(captured)
        apprise_log.propagate = was_propagating
        apprise_log.setLevel(was_level)


def _secret_fragments(url: str) -> list[str]:
    """The parts of an apprise URL that may be credentials: user, password, path segments
    (Discord's and Slack's tokens live there), query values. Longest first, for masking."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.username or "", parts.password or ""]
    found += [unquote(seg) for seg in parts.path.split("/")]
    found += [value for _, value in parse_qsl(parts.query)]
    return sorted({f for f in found if len(f) >= 4}, key=len, reverse=True)


def masked(text: str, fragments: list[str]) -> str:
    for fragment in fragments:
        text = text.replace(fragment, MASK)
    return redact_secret_params(text)


@dataclass
class Channel:
    position: int
    scheme: str
    apprise: apprise.Apprise
    shown: str
    secrets: list[str]
    queue: deque[Note] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"#{self.position} ({self.shown})"


# apprise's notification types by value: Alerter notes its alerts without importing apprise,
# which is loaded only when ALERT_URLS names a channel (~3-17 MB a process without alerts
# would carry for nothing).
FAILURE = "failure"
SUCCESS = "success"


def notify_type(kind: str) -> apprise.NotifyType:
    import apprise

    return apprise.NotifyType(kind)


def load_channel(position: int, url: str) -> Channel:
    import apprise

    secrets = _secret_fragments(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else "?"
    if not re.fullmatch(r"[a-z][a-z0-9+]{0,11}", scheme):
        scheme = "?"  # not a scheme apprise knows: it could be a pasted token
    channel = apprise.Apprise()
    with apprise_captured() as said:
        added = channel.add(url)
    if not added:
        reason = masked(said.warnings[-1], secrets).rstrip(": ") if said.warnings else None
        raise AlertConfigError(
            f"Invalid configuration: ALERT_URLS entry #{position} ({scheme}://…) was refused "
            + (f"by apprise: {reason}" if reason else "(not a URL apprise understands)")
            + "; expected e.g. slack://…, discord://…, tgram://…, "
            "mailto://user:pass@smtp.example.com:587?from=bot@example.com&to=me@example.com, "
            "json://host/path"
        )
    (plugin,) = list(channel)
    private_url = plugin.url(privacy=True)  # type: ignore[no-untyped-call]
    shown = masked(str(private_url).split("?", 1)[0], secrets)
    return Channel(position, scheme, channel, shown, secrets)
