"""The alerter against a real notification receiver on loopback (apprise json://)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from loguru import logger

from services.alerts import AlertConfigError, Alerter, humanize
from tests.support import FakeClock, Receiver, free_port


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    handler_id = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(handler_id)


async def wait_for(receiver: Receiver, count: int) -> None:
    async with asyncio.timeout(10):
        while len(receiver.requests) < count:
            await asyncio.sleep(0.02)


async def test_one_notification_per_incident_and_one_resolved(clock: FakeClock):
    with Receiver() as receiver:
        alerter = Alerter([receiver.url("json")], clock)
        assert alerter.alert("keepalive", "3 consecutive failures", title="keep-alive failing")
        assert not alerter.alert("keepalive", "4 consecutive failures", title="again")
        clock.advance(timedelta(minutes=7, seconds=3))
        assert alerter.resolve("keepalive", "pings succeed again", title="recovered")
        assert alerter.resolve("keepalive", "pings succeed again", title="recovered") is None
        await alerter.drain(grace=10)
        await wait_for(receiver, 2)
        await asyncio.sleep(0.2)
        assert len(receiver.requests) == 2
        failure, success = (r["json"] for r in receiver.requests)
        assert failure["type"] == "failure"
        assert "3 consecutive failures" in failure["message"]
        assert failure["title"] == "[wakeful] keep-alive failing"
        assert success["type"] == "success"
        assert "(down 7m 3s)" in success["message"]
        assert alerter.notifications_sent == 2


async def test_an_unreachable_channel_is_retried_for_a_bounded_time_then_given_up(
    clock: FakeClock, logs: list[str]
):
    with Receiver() as receiver:
        port = receiver.port
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the retries' waits, on the test's clock
        waits.append(seconds)
        clock.advance(seconds)

    alerter = Alerter(
        [f"json://127.0.0.1:{port}/gone-secret-path"],
        clock,
        retry_base=timedelta(seconds=5),
        retry_cap=timedelta(seconds=60),
        retry_for=timedelta(minutes=3),
        sleep=sleep,
    )
    alerter.alert("k", "boom", title="t")
    await alerter.drain(grace=60)
    # 5, 10, 20, 40, 60, 60 s: the next wait would end after 3 minutes.
    assert waits == [5, 10, 20, 40, 60]
    assert alerter.notifications_failed == 6
    assert alerter.notifications_abandoned == 1
    assert alerter.notifications_sent == 0
    gave_up = [line for line in logs if "giving up after 6 attempts" in line]
    assert len(gave_up) == 1
    assert f"channel #1 (json://127.0.0.1:{port}/***)" in gave_up[0]
    assert "gone-secret-path" not in "\n".join(logs)


async def test_a_failing_channel_is_named_with_apprises_reason_and_retried_in_order(
    clock: FakeClock, logs: list[str]
):
    with Receiver() as failing, Receiver() as healthy:
        failing.statuses = [500, 503]
        alerter = Alerter(
            [failing.url("json", "/hook-tok3n"), healthy.url("json")],
            clock,
            source="my-bot",
            retry_base=timedelta(milliseconds=50),
        )
        alerter.alert("keepalive", "3 consecutive failures", title="keep-alive failing")
        alerter.resolve("keepalive", "pings succeed again", title="recovered")
        await alerter.drain(grace=20)
        # The healthy channel did not wait for the failing one's retries.
        assert [r["json"]["type"] for r in healthy.requests] == ["failure", "success"]
        # The failing channel: the alert tried three times, and only then the resolution.
        sent = [(r["json"]["type"], r["json"]["title"]) for r in failing.requests]
        assert sent == [("failure", "[my-bot] keep-alive failing")] * 3 + [
            ("success", "[my-bot] recovered")
        ]
    assert alerter.notifications_sent == 4
    assert alerter.notifications_failed == 2
    warnings = [line for line in logs if "could not be delivered" in line]
    assert len(warnings) == 2
    assert f"to channel #1 (json://127.0.0.1:{failing.port}/***)" in warnings[0]
    assert "error=500" in warnings[0]
    assert "error=503" in warnings[1]
    assert "retrying in 0.05s" in warnings[0]
    assert any("delivered to channel #1" in line and "at attempt 3" in line for line in logs)
    assert "hook-tok3n" not in "\n".join(logs)


def test_a_refused_mailto_entry_gives_apprises_reason(clock: FakeClock):
    with pytest.raises(AlertConfigError) as caught:
        Alerter(["mailto://ops:pa55word@127.0.0.1:2525"], clock)
    message = str(caught.value)
    assert message.startswith(
        "Invalid configuration: ALERT_URLS entry #1 (mailto://…) was refused by apprise: "
        "Invalid ~From~ email specified: Apprise <ops@127.0.0.1>; expected e.g."
    )
    assert "pa55word" not in message
    assert "\n" not in message


async def test_plain_smtp_delivers_the_alert_and_the_resolution(clock: FakeClock):
    """apprise's mailto:// to a real SMTP server on loopback (no TLS, as a relay inside a
    private network offers it)."""
    messages: list[Message] = []

    class Keep:
        async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:  # noqa: N802
            assert isinstance(envelope.content, bytes)
            messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    smtp = Controller(Keep(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        alerter = Alerter(
            [f"mailto://127.0.0.1:{port}?mode=insecure&from=bot@example.test&to=ops@example.test"],
            clock,
            source="render-bot",
        )
        alerter.alert("keepalive", "3 consecutive failures", title="keep-alive failing")
        clock.advance(timedelta(minutes=30))
        alerter.resolve("keepalive", "pings succeed again", title="keep-alive recovered")
        await alerter.drain(grace=30)
    finally:
        smtp.stop()
    assert alerter.notifications_sent == 2
    assert [m["Subject"] for m in messages] == [
        "[render-bot] keep-alive failing",
        "[render-bot] keep-alive recovered",
    ]
    assert all(m["To"] == "ops@example.test" for m in messages)
    texts = [
        bytes(part.get_payload(decode=True)).decode()
        for part in messages[1].walk()
        if part.get_content_type() == "text/plain"
    ]
    assert any("pings succeed again (down 30m 0s)" in text for text in texts), texts


def test_an_unknown_alert_url_is_a_configuration_error_that_hides_the_url(clock: FakeClock):
    with pytest.raises(AlertConfigError) as caught:
        Alerter(["json://ok.test/x", "nonsense-token-123"], clock)
    assert "ALERT_URLS entry #2" in str(caught.value)
    assert "nonsense-token-123" not in str(caught.value)


@pytest.mark.parametrize(
    "entry", ["typo-nonsense-token-123", "slack://SECRETaaaa12345/SECRETbbbb12345"]
)
def test_apprise_does_not_log_the_entry_it_refuses(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, entry: str
):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AlertConfigError):
        Alerter([entry], clock)
    assert "nonsense-token" not in caplog.text
    assert "SECRET" not in caplog.text


def test_humanize():
    assert humanize(timedelta(seconds=42)) == "42s"
    assert humanize(timedelta(minutes=3, seconds=5)) == "3m 5s"
    assert humanize(timedelta(hours=5, minutes=1)) == "5h 1m"
    assert humanize(timedelta(days=3, hours=2)) == "3d 2h"
