"""Settings: environment variables and `.env`, durations, platform URL detection, validation.

Every other module receives a `Settings` object; nothing else reads the environment. A bad
value becomes a `ConfigError` whose message is the single line the process prints before it
exits with status 2.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.redaction import redact_url

VERSION = "0.1.0"

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
DURATION_EXPECTED = "milliseconds (600000) or a number with a unit (500ms, 30s, 10m, 24h, 7d)"


class ConfigError(Exception):
    """A configuration problem; `str(error)` is one line naming the variable."""


def parse_duration(value: object) -> timedelta:
    """Parse a duration the way the seeds wrote them (bare milliseconds) or with a unit."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_EXPECTED}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must not be negative; expected {DURATION_EXPECTED}")
        return timedelta(milliseconds=value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            number, unit = float(match.group(1)), (match.group(2) or "ms").lower()
            return timedelta(seconds=number * _UNIT_SECONDS[unit])
    raise ValueError(f"expected {DURATION_EXPECTED}")


def format_duration(delta: timedelta) -> str:
    """`600s (10min)` as the seed logs intervals; sub-second values in ms."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    text = f"{seconds:g}s"
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{text} ({seconds / 86400:g}d)"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{text} ({seconds / 3600:g}h)"
    if seconds >= 60:
        return f"{text} ({seconds / 60:g}min)"
    return text


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Platform(StrEnum):
    RAILWAY = "railway"
    RENDER = "render"
    KOYEB = "koyeb"
    FLY = "fly"
    UNKNOWN = "unknown"


# How long each platform lets a free service go quiet before putting it to sleep. Railway
# sleeps a service that *sends* nothing for 10 minutes, Render one that *receives* nothing
# for 15. Others have no threshold we can state with confidence.
SLEEP_THRESHOLDS: dict[Platform, timedelta] = {
    Platform.RAILWAY: timedelta(minutes=10),
    Platform.RENDER: timedelta(minutes=15),
}

# WhatsApp Web refuses browsers that call themselves "HeadlessChrome": present a desktop Chrome.
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/138.0.0.0 Safari/537.36"
)

# Settings whose values are never echoed, not even in a configuration error.
SECRET_FIELDS = frozenset(
    {
        "admin_token",
        "alert_urls",
        "heartbeat_url",
        "database_url",
        "session_encryption_key",
        "webhook_secret",
        "webhook_url",
        "secret_key",
    }
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    # Server
    host: str = "0.0.0.0"  # noqa: S104 - a PaaS routes to the container's public interface
    port: int = Field(default=8000, ge=1, le=65535)
    data_dir: Path = Path("./data")
    database_url: SecretStr | None = None
    shutdown_timeout: Duration = timedelta(seconds=10)
    # How often the database is probed (/health's `database` check; quicker to see it back).
    database_check_interval: Duration = timedelta(seconds=5)
    access_log: bool = False

    # Logging
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # Keep-alive
    keep_alive_enabled: bool = True
    keep_alive_interval: Duration = timedelta(minutes=10)
    keep_alive_timeout: Duration = timedelta(seconds=10)
    keep_alive_start_delay: Duration = timedelta(seconds=5)
    keep_alive_alert_after: int = Field(default=3, ge=1)
    keep_alive_stats_every: int = Field(default=10, ge=1)
    keep_alive_history_limit: int = Field(default=10_000, ge=100)
    keepalive_url: str | None = None
    public_url: str | None = None
    heartbeat_url: SecretStr | None = None
    # Which protocol HEARTBEAT_URL speaks; by default recognised from the URL.
    heartbeat_kind: Literal["healthchecks", "uptime-kuma"] | None = None
    alert_urls: SecretStr | None = None
    # The name in every alert's title ("[my-bot] keep-alive failing"); by default the
    # platform's name for the service.
    service_name: str | None = Field(default=None, max_length=100)

    # Access
    admin_token: SecretStr | None = None
    secret_key: SecretStr | None = None
    max_body_bytes: int = Field(default=65_536, ge=1024)
    max_header_bytes: int = Field(default=16_384, ge=4096)
    auth_max_failures: int = Field(default=30, ge=1)
    auth_failure_window: Duration = timedelta(minutes=1)
    # Who may set X-Forwarded-For/-Proto: unset means the platform's edge on Railway, Render,
    # Koyeb and Fly (their proxies are the only way in and have no fixed address), else
    # 127.0.0.1 only. uvicorn reads the same variable.
    forwarded_allow_ips: str | None = None
    header_read_timeout: Duration = timedelta(seconds=10)

    # Bot manager
    bot_engine: str = "whatsapp"
    max_sessions_per_user: int = Field(default=5, ge=1)
    bot_start_concurrency: int = Field(default=2, ge=1)
    bot_start_stagger: Duration = timedelta(seconds=5)
    bot_start_timeout: Duration = timedelta(seconds=90)
    reconnect_base_delay: Duration = timedelta(seconds=1)
    reconnect_max_delay: Duration = timedelta(seconds=30)
    reconnect_max_attempts: int = Field(default=10, ge=1)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_window: Duration = timedelta(minutes=5)
    breaker_open_for: Duration = timedelta(seconds=60)
    qr_debounce: Duration = timedelta(seconds=2)
    qr_timeout: Duration = timedelta(minutes=2)
    heartbeat_interval: Duration = timedelta(seconds=30)
    heartbeat_stale_after: Duration = timedelta(minutes=5)
    offline_alert_after: Duration = timedelta(hours=6)
    # 0 = never: a bot is not closed for inactivity.
    session_inactive_timeout: Duration = timedelta(hours=24)
    session_max_age: Duration = timedelta(days=7)
    # At SESSION_MAX_AGE: `recycle` (close and start again at once, no QR) or `expire` (the
    # seed's behaviour: closed, EXPIRED, until someone or something wakes it).
    session_max_age_action: Literal["recycle", "expire"] = "recycle"
    session_cleanup_interval: Duration = timedelta(hours=1)
    # An EXPIRED bot wakes this often, for LINK_REFRESH_FOR, so WhatsApp (which unlinks a
    # device it has not seen for 30 days) keeps the link; 0 turns the refresh off.
    link_refresh_every: Duration = timedelta(days=7)
    link_refresh_for: Duration = timedelta(minutes=5)
    # A linked bot not connected for this long raises an alert (WhatsApp unlinks at 30 days).
    link_alert_after: Duration = timedelta(days=25)
    health_check_interval: Duration = timedelta(minutes=15)
    # Several processes, one truth (bot.ownership): how long a node's hold on a bot lasts
    # without renewal, and how often it renews (a few renewals fit in one lease).
    node_lease: Duration = timedelta(seconds=15)
    node_renew_interval: Duration = timedelta(seconds=3)
    bots_per_node: int | None = Field(default=None, ge=1)

    # Outbox and webhooks
    send_rate: int = Field(default=20, ge=0)
    max_retry_attempts: int = Field(default=5, ge=1)
    retry_base_delay: Duration = timedelta(seconds=5)
    retry_max_delay: Duration = timedelta(minutes=10)
    outbox_lease: Duration = timedelta(seconds=60)
    # Media messages: the largest file a message may carry (16 MiB, WhatsApp's own bound for
    # most media), and how long fetching one from a URL may take.
    max_media_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    media_fetch_timeout: Duration = timedelta(seconds=30)
    # Each user's share of the database for files not yet sent (waiting or dead); 0: none.
    max_stored_media_bytes_per_user: int = Field(default=256 * 1024 * 1024, ge=0)
    # "typing…" / "recording…" before a send, and the chat marked read when the bot answers.
    send_presence: bool = True
    # Each user's share of the outbox (0 turns a bound off).
    max_queued_messages_per_user: int = Field(default=500, ge=0)
    message_accept_rate: int = Field(default=60, ge=0)  # messages a minute, per user
    # How long finished rows are kept before the `retention` job prunes them.
    message_retention: Duration = timedelta(days=30)
    delivery_retention: Duration = timedelta(days=14)
    audit_retention: Duration = timedelta(days=90)
    history_retention: Duration = timedelta(days=30)
    retention_interval: Duration = timedelta(hours=1)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False
    # Private networks webhooks may reach anyway (a trusted service on the platform's
    # private network), as CIDRs separated by commas: 10.250.0.0/16,fd12::/64.
    webhook_allowed_networks: str = ""
    webhook_timeout: Duration = timedelta(seconds=10)

    # Number checks (POST /api/sessions/{id}/contacts/check): WhatsApp logs out accounts that
    # check numbers in bulk. A bot asks at most one number per gap (plus up to half of it at
    # random); an answer is reused for the TTL instead of being asked again.
    contact_check_gap: Duration = timedelta(seconds=3)
    contact_check_ttl: Duration = timedelta(days=7)

    # WhatsApp engine
    chromium_path: Path | None = None
    # Launch the driver and the browser once at boot; /health is not `pass` before it worked.
    boot_preflight: bool = True
    boot_preflight_timeout: Duration = timedelta(seconds=90)
    bot_user_agent: str = Field(default=DEFAULT_USER_AGENT, min_length=20)
    # One process a bot's browser (Chromium's --single-process): about 0.75 of the memory.
    bot_single_process: bool = True
    # Unset: a share of the memory budget (services/memory.py); 0 turns the watchdog off.
    bot_max_memory_mb: int | None = Field(default=None, ge=0)
    # The container's memory, when its cgroup limit cannot be read (or is not the truth).
    memory_limit_mb: int | None = Field(default=None, ge=64)
    memory_check_interval: Duration = timedelta(seconds=30)
    bot_commands: bool = True
    session_encryption_key: SecretStr | None = None
    profile_backup_delay: Duration = timedelta(seconds=60)
    profile_backup_interval: Duration = timedelta(minutes=10)
    whatsapp_simulator: bool = False
    simulator_qr_every: Duration = timedelta(seconds=20)
    # Demo mode: "real" gives the simulated page WhatsApp Web's code, files and heap (a bot
    # then costs about what it costs on the real page); "light", a few KB.
    simulator_weight: Literal["light", "real"] = "light"
    # Demo mode: the simulator's phone side (what arrived, uploads, which browser holds each
    # linked device) lives here; nodes of one cluster share it to see each other's browsers.
    # Unset: DATA_DIR.
    whatsapp_simulator_dir: Path | None = None
    # Received files, downloaded through WhatsApp Web on demand: kept in memory this long and
    # up to this size in all (0: not kept; each download asks WhatsApp again).
    media_cache_mb: int = Field(default=64, ge=0)
    # A received file larger than this is not fetched (it crosses from the page to the server
    # in memory, base64: a 2 GB video would take the container down).
    media_download_max_mb: int = Field(default=16, ge=1)
    media_cache_ttl: Duration = timedelta(minutes=10)

    # Platform variables, read only to find the public URL and the sleep threshold.
    render_external_url: str | None = None
    railway_public_domain: str | None = None
    railway_environment_name: str | None = None
    koyeb_public_domain: str | None = None
    fly_app_name: str | None = None
    render_service_name: str | None = None
    railway_service_name: str | None = None
    koyeb_service_name: str | None = None

    @field_validator("admin_token", "session_encryption_key", "webhook_secret", "secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (use a long random string)")
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in (v for v in re.split(r"[\s,]+", value) if v):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"'{item}' is not a network; expected CIDRs like 10.0.0.0/8, separated "
                    "by commas"
                ) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", "session_max_age_action", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "keep_alive_interval",
        "keep_alive_timeout",
        "boot_preflight_timeout",
        "bot_start_timeout",
        "reconnect_base_delay",
        "reconnect_max_delay",
        "breaker_window",
        "breaker_open_for",
        "qr_timeout",
        "heartbeat_interval",
        "heartbeat_stale_after",
        "offline_alert_after",
        "session_max_age",
        "session_cleanup_interval",
        "link_refresh_for",
        "link_alert_after",
        "contact_check_gap",
        "contact_check_ttl",
        "health_check_interval",
        "memory_check_interval",
        "profile_backup_delay",
        "profile_backup_interval",
        "simulator_qr_every",
        "media_cache_ttl",
        "retry_base_delay",
        "retry_max_delay",
        "outbox_lease",
        "webhook_timeout",
        "media_fetch_timeout",
        "database_check_interval",
        "header_read_timeout",
        "auth_failure_window",
        "node_lease",
        "node_renew_interval",
        "message_retention",
        "delivery_retention",
        "audit_retention",
        "history_retention",
        "retention_interval",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"must be greater than zero; expected {DURATION_EXPECTED}")
        return value

    @field_validator("heartbeat_kind", mode="before")
    @classmethod
    def _kind_alias(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        lowered = value.strip().lower().replace("_", "-").replace(" ", "-")
        return {"kuma": "uptime-kuma", "hc": "healthchecks", "healthchecks.io": "healthchecks"}.get(
            lowered, lowered
        )

    @field_validator("keepalive_url", "public_url", "render_external_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_http_url(value)
        return value

    @field_validator("railway_public_domain", "koyeb_public_domain", "fly_app_name")
    @classmethod
    def _no_whitespace(cls, value: str | None) -> str | None:
        if value is not None and _has_whitespace(value):
            raise ValueError(WHITESPACE_REFUSED)
        return value

    @field_validator("heartbeat_url")
    @classmethod
    def _secret_http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        _check_http_url(value.get_secret_value())
        return value

    # Derived values -------------------------------------------------------------------

    @property
    def platform(self) -> Platform:
        if self.render_external_url:
            return Platform.RENDER
        if self.railway_public_domain or self.railway_environment_name:
            return Platform.RAILWAY
        if self.koyeb_public_domain:
            return Platform.KOYEB
        if self.fly_app_name:
            return Platform.FLY
        return Platform.UNKNOWN

    @property
    def sleep_threshold(self) -> timedelta | None:
        return SLEEP_THRESHOLDS.get(self.platform)

    @property
    def keepalive_target(self) -> tuple[str | None, str]:
        """The URL to ping and the variable it came from (or, with none, what to set)."""
        if self.keepalive_url:
            return self.keepalive_url, "KEEPALIVE_URL"
        candidates = (
            (self.public_url, "PUBLIC_URL"),
            (self.render_external_url, "RENDER_EXTERNAL_URL"),
            (_https(self.railway_public_domain), "RAILWAY_PUBLIC_DOMAIN"),
            (_https(self.koyeb_public_domain), "KOYEB_PUBLIC_DOMAIN"),
            (_https(f"{self.fly_app_name}.fly.dev" if self.fly_app_name else None), "FLY_APP_NAME"),
        )
        for base, source in candidates:
            if base:
                return base.rstrip("/") + "/health", source
        return None, "set KEEPALIVE_URL or PUBLIC_URL to this service's public address"

    @property
    def instance_name(self) -> str:
        """What alerts call this instance: SERVICE_NAME, else the platform's service name."""
        for name in (
            self.service_name,
            self.render_service_name,
            self.railway_service_name,
            self.koyeb_service_name,
            self.fly_app_name,
        ):
            if name and name.strip():
                return " ".join(name.split())
        return "wakeful"

    @property
    def webhook_allowed_network_list(
        self,
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        items = (v for v in re.split(r"[\s,]+", self.webhook_allowed_networks) if v)
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)

    @property
    def trusted_proxies(self) -> str:
        if self.forwarded_allow_ips:
            return self.forwarded_allow_ips.strip()
        return "127.0.0.1" if self.platform is Platform.UNKNOWN else "*"

    @property
    def alert_url_list(self) -> list[str]:
        if self.alert_urls is None:
            return []
        return [u for u in re.split(r"[\s,]+", self.alert_urls.get_secret_value()) if u]

    @property
    def sqlalchemy_url(self) -> str:
        """An async SQLAlchemy URL: the platform's `postgres://` becomes asyncpg."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'wakeful.db').resolve()}"
        url = self.database_url.get_secret_value().strip()
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
        return url


WHITESPACE_REFUSED = (
    "contains whitespace (a line break or space pasted with it?); expected the value alone"
)


def _has_whitespace(value: str) -> bool:
    return any(ch.isspace() for ch in value)


def _check_http_url(value: str) -> None:
    """An http(s) URL with a host and nothing around it. Whitespace is refused, not trimmed:
    a value pasted with a line break would otherwise pass here and fail at every request
    (httpx refuses it), and which of the two copies is right is for the person to say."""
    if _has_whitespace(value):
        raise ValueError(WHITESPACE_REFUSED)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError("expected an http:// or https:// URL with a host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")


def _https(domain: str | None) -> str | None:
    if not domain:
        return None
    domain = domain.strip()
    return domain if domain.startswith(("http://", "https://")) else f"https://{domain}"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and `.env`); raise `ConfigError` with one line on a bad value."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    if settings.keep_alive_timeout >= settings.keep_alive_interval:
        if "keep_alive_timeout" not in settings.model_fields_set:
            # Only the default is in the way (a short interval for a trial): fit it in.
            settings.keep_alive_timeout = settings.keep_alive_interval / 2
            return _check_lease(_check_webhook(_check_database_scheme(settings)))
        raise ConfigError(
            "Invalid configuration: KEEP_ALIVE_TIMEOUT="
            f"{format_duration(settings.keep_alive_timeout)} must be shorter than "
            f"KEEP_ALIVE_INTERVAL={format_duration(settings.keep_alive_interval)}"
        )
    return _check_lease(_check_webhook(_check_database_scheme(settings)))


def _check_lease(settings: Settings) -> Settings:
    _check_link_refresh(settings)
    if settings.node_renew_interval * 2 > settings.node_lease:
        raise ConfigError(
            "Invalid configuration: NODE_RENEW_INTERVAL="
            f"{format_duration(settings.node_renew_interval)} must be at most half of "
            f"NODE_LEASE={format_duration(settings.node_lease)} (a lease must survive a "
            "missed renewal)"
        )
    return settings


# WhatsApp unlinks a linked device it has not seen for 30 days (its help centre, "About
# linked devices"): a refresh rarer than that cannot keep the link.
WHATSAPP_UNLINKS_AFTER = timedelta(days=30)


def _check_link_refresh(settings: Settings) -> None:
    every = settings.link_refresh_every
    if every >= WHATSAPP_UNLINKS_AFTER:
        raise ConfigError(
            f"Invalid configuration: LINK_REFRESH_EVERY={format_duration(every)} must be "
            "shorter than 30d (WhatsApp unlinks a device it has not seen for 30 days); "
            "0 turns the refresh off"
        )
    if every and settings.link_refresh_for >= every:
        raise ConfigError(
            f"Invalid configuration: LINK_REFRESH_FOR={format_duration(settings.link_refresh_for)}"
            f" must be shorter than LINK_REFRESH_EVERY={format_duration(every)}"
        )


def _check_webhook(settings: Settings) -> Settings:
    if settings.webhook_url and settings.webhook_secret is None:
        raise ConfigError(
            "Invalid configuration: WEBHOOK_SECRET is required with WEBHOOK_URL (a long random "
            "string; every delivery to WEBHOOK_URL is signed with it)"
        )
    return settings


def _check_database_scheme(settings: Settings) -> Settings:
    url = settings.sqlalchemy_url
    if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "Invalid configuration: DATABASE_URL has an unsupported scheme "
            f"'{url.split(':', 1)[0]}'; expected postgres://, postgresql:// or sqlite:///"
        )
    return settings


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "?"
    name = field.upper()
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if field in SECRET_FIELDS:
        shown = "(hidden)"
    elif isinstance(given, str) and "://" in given:
        shown = repr(redact_url(given))  # a URL's password and query may be credentials
    else:
        shown = repr(given)
    if error["type"] == "literal_error":
        message = message.replace("Input should be", "expected")
    elif error["type"] in ("bool_parsing", "bool_type"):
        message = "expected true or false"
    elif error["type"] in ("int_parsing", "int_type"):
        message = "expected a whole number"
    elif error["type"].startswith(("greater_than", "less_than")):
        message = "expected a number " + message.removeprefix("Input should be ")
    return f"Invalid configuration: {name}={shown}: {message}"
