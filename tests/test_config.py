"""Settings: durations, URL detection, and the one-line errors for bad values."""

from __future__ import annotations

from datetime import timedelta

import pytest

from config import ConfigError, Platform, format_duration, load_settings, parse_duration


def settings(**values: object):
    return load_settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("600000", timedelta(minutes=10)),
        (600000, timedelta(minutes=10)),
        ("10m", timedelta(minutes=10)),
        ("1s", timedelta(seconds=1)),
        ("500ms", timedelta(milliseconds=500)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1.5h", timedelta(minutes=90)),
        (" 30 S ", timedelta(seconds=30)),
        ("0", timedelta(0)),
    ],
)
def test_durations_in_milliseconds_or_with_a_unit(text: object, expected: timedelta):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["abc", "10 minutes", "-5s", "", "1w", "true"])
def test_bad_durations_are_refused(text: str):
    with pytest.raises(ValueError, match="expected milliseconds"):
        parse_duration(text)


def test_format_duration_like_the_seed():
    assert format_duration(timedelta(minutes=10)) == "600s (10min)"
    assert format_duration(timedelta(hours=1)) == "3600s (1h)"
    assert format_duration(timedelta(seconds=5)) == "5s"


def test_defaults_match_the_seed():
    s = settings()
    assert s.keep_alive_interval == timedelta(minutes=10)
    assert s.keep_alive_timeout == timedelta(seconds=10)
    assert s.keep_alive_start_delay == timedelta(seconds=5)
    assert s.keep_alive_alert_after == 3
    assert s.keep_alive_enabled is True


def test_environment_durations_in_seed_milliseconds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KEEP_ALIVE_INTERVAL", "300000")
    assert settings().keep_alive_interval == timedelta(minutes=5)


def test_url_precedence():
    both = settings(keepalive_url="https://a.test/ping", public_url="https://b.test")
    assert both.keepalive_target == ("https://a.test/ping", "KEEPALIVE_URL")
    public = settings(public_url="https://b.test/", render_external_url="https://c.onrender.com")
    assert public.keepalive_target == ("https://b.test/health", "PUBLIC_URL")
    render = settings(render_external_url="https://c.onrender.com")
    assert render.keepalive_target == ("https://c.onrender.com/health", "RENDER_EXTERNAL_URL")
    assert render.platform is Platform.RENDER
    railway = settings(railway_public_domain="x.up.railway.app")
    assert railway.keepalive_target[0] == "https://x.up.railway.app/health"
    assert railway.platform is Platform.RAILWAY
    assert railway.sleep_threshold == timedelta(minutes=10)
    koyeb = settings(koyeb_public_domain="app-org.koyeb.app")
    assert koyeb.keepalive_target[0] == "https://app-org.koyeb.app/health"
    fly = settings(fly_app_name="mybot")
    assert fly.keepalive_target[0] == "https://mybot.fly.dev/health"
    none = settings()
    assert none.keepalive_target[0] is None
    assert "KEEPALIVE_URL" in none.keepalive_target[1]


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"keep_alive_interval": "soon"}, "KEEP_ALIVE_INTERVAL='soon': expected milliseconds"),
        ({"port": "eighty"}, "PORT='eighty': expected a whole number"),
        ({"port": 70000}, "PORT=70000: expected a number less than or equal to 65535"),
        ({"log_format": "xml"}, "LOG_FORMAT='xml': expected 'text' or 'json'"),
        ({"keep_alive_enabled": "perhaps"}, "KEEP_ALIVE_ENABLED='perhaps': expected true or"),
        ({"keepalive_url": "ftp://x"}, "KEEPALIVE_URL='ftp://x': expected an http:// or https://"),
        (
            {"keepalive_url": "ftp://u:pw@x/health?token=tk-0a1b"},
            "KEEPALIVE_URL='ftp://u:***@x/health?token=***': expected an http:// or https://",
        ),
        ({"keep_alive_interval": "0"}, "KEEP_ALIVE_INTERVAL='0': must be greater than zero"),
        ({"heartbeat_url": "not-a-url"}, "HEARTBEAT_URL=(hidden): expected an http"),
        ({"database_url": "mysql://u:pw@h/db"}, "DATABASE_URL has an unsupported scheme 'mysql'"),
        (
            {"keep_alive_interval": "1s", "keep_alive_timeout": "2s"},
            "KEEP_ALIVE_TIMEOUT=2s must be shorter than KEEP_ALIVE_INTERVAL=1s",
        ),
        (
            {"node_lease": "5s", "node_renew_interval": "3s"},
            "NODE_RENEW_INTERVAL=3s must be at most half of NODE_LEASE=5s",
        ),
        ({"bots_per_node": "0"}, "BOTS_PER_NODE='0': expected a number greater than or equal to 1"),
        (
            {"session_max_age_action": "restart"},
            "SESSION_MAX_AGE_ACTION='restart': expected 'recycle' or 'expire'",
        ),
        ({"session_inactive_timeout": "-1h"}, "SESSION_INACTIVE_TIMEOUT='-1h': expected"),
        ({"link_refresh_every": "30d"}, "LINK_REFRESH_EVERY=2.592e+06s (30d) must be shorter"),
        ({"link_refresh_for": "0"}, "LINK_REFRESH_FOR='0': must be greater than zero"),
        (
            {"link_refresh_every": "1h", "link_refresh_for": "1h"},
            "LINK_REFRESH_FOR=3600s (1h) must be shorter than LINK_REFRESH_EVERY=3600s (1h)",
        ),
        ({"link_alert_after": "soon"}, "LINK_ALERT_AFTER='soon': expected milliseconds"),
        ({"bot_single_process": "maybe"}, "BOT_SINGLE_PROCESS='maybe': expected"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(values: dict[str, object], line: str):
    with pytest.raises(ConfigError) as caught:
        settings(**values)
    message = str(caught.value)
    assert line in message
    assert "\n" not in message
    assert "pw@" not in message


def test_lifecycle_switches():
    s = settings(session_inactive_timeout="0", session_max_age_action="EXPIRE")
    assert s.session_inactive_timeout == timedelta(0)  # never
    assert s.session_max_age_action == "expire"
    assert settings(link_refresh_every="0").link_refresh_every == timedelta(0)  # off
    defaults = settings()
    assert defaults.session_max_age_action == "recycle"
    assert defaults.link_refresh_every == timedelta(days=7)
    assert defaults.link_alert_after == timedelta(days=25)


def test_a_short_interval_with_the_default_timeout_fits_the_timeout_in():
    s = settings(keep_alive_interval="1s")
    assert s.keep_alive_timeout == timedelta(milliseconds=500)


def test_platform_postgres_urls_become_asyncpg():
    s = settings(database_url="postgres://u:p@db.internal:5432/app")
    assert s.sqlalchemy_url == "postgresql+asyncpg://u:p@db.internal:5432/app"


def test_alert_urls_split_on_commas_and_spaces():
    s = settings(alert_urls="json://a.test/x, tgram://bot/chat  discord://id/token")
    assert s.alert_url_list == ["json://a.test/x", "tgram://bot/chat", "discord://id/token"]


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "wakeful"),
        ({"RENDER_SERVICE_NAME": "bot-eu"}, "bot-eu"),
        ({"RAILWAY_SERVICE_NAME": "bot-us"}, "bot-us"),
        ({"FLY_APP_NAME": "bot-fly"}, "bot-fly"),
        ({"SERVICE_NAME": "prod bot", "RENDER_SERVICE_NAME": "bot-eu"}, "prod bot"),
    ],
)
def test_alerts_name_the_instance(
    env: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert load_settings(_env_file=None).instance_name == name


def test_bot_single_process_chooses_the_browser_flags():
    from bot.engines.whatsapp.browser import SINGLE_PROCESS
    from bot.engines.whatsapp.driver import driver_options

    assert SINGLE_PROCESS in driver_options(settings()).flags  # the default
    lean_left = driver_options(settings(bot_single_process="false")).flags
    assert SINGLE_PROCESS not in lean_left and "--no-zygote" in lean_left
