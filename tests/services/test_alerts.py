"""The alerter against a real notification receiver on loopback (apprise json://)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from services.alerts import AlertConfigError, Alerter, humanize
from tests.support import FakeClock, Receiver


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


async def test_an_unreachable_channel_is_counted_not_raised(clock: FakeClock):
    with Receiver() as receiver:
        port = receiver.port
    alerter = Alerter([f"json://127.0.0.1:{port}/gone"], clock)
    alerter.alert("k", "boom", title="t")
    await alerter.drain(grace=20)
    assert alerter.notifications_failed == 1


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
