"""Pure decisions of the bot manager: functions of (stored facts, now), nothing else.

Each is tested against literal datetimes; the session and the manager only act on what
these return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bot.states import RUNNING_STATES, SessionState


class MaxAgeAction(StrEnum):
    RECYCLE = "recycle"  # close the browser and start it again at once (no QR)
    EXPIRE = "expire"  # close it: EXPIRED until something wakes it


@dataclass(frozen=True, slots=True)
class Policy:
    backoff_base: timedelta = timedelta(seconds=1)
    backoff_cap: timedelta = timedelta(seconds=30)
    backoff_jitter: float = 0.2  # ± this fraction of the delay
    max_reconnect_attempts: int = 10
    breaker_threshold: int = 5
    breaker_window: timedelta = timedelta(minutes=5)
    breaker_open_for: timedelta = timedelta(seconds=60)
    qr_debounce: timedelta = timedelta(seconds=2)
    qr_timeout: timedelta = timedelta(minutes=2)
    heartbeat_every: timedelta = timedelta(seconds=30)
    heartbeat_stale_after: timedelta = timedelta(minutes=5)
    offline_alert_after: timedelta = timedelta(hours=6)
    inactive_timeout: timedelta = timedelta(hours=24)  # 0: never
    max_age: timedelta = timedelta(days=7)
    max_age_action: MaxAgeAction = MaxAgeAction.RECYCLE
    link_refresh_every: timedelta = timedelta(days=7)  # 0: never
    link_refresh_for: timedelta = timedelta(minutes=5)
    # A refresh that did not connect is tried again no sooner than this.
    link_refresh_retry: timedelta = timedelta(hours=1)
    link_alert_after: timedelta = timedelta(days=25)


def backoff_delay(policy: Policy, attempt: int, random_unit: float) -> timedelta:
    """Delay before reconnect attempt `attempt` (1-based): 1, 2, 4, 8, 16, 30, 30… s.

    `random_unit` in [0, 1) spreads the delay by ± `backoff_jitter`, so bots dropped by the
    same network blip do not all come back in the same second.
    """
    exponent = max(attempt - 1, 0)
    raw = policy.backoff_base * (2 ** min(exponent, 30))
    capped = min(raw, policy.backoff_cap)
    spread = 1 + policy.backoff_jitter * (2 * random_unit - 1)
    jittered: timedelta = capped * spread
    return min(jittered, policy.backoff_cap)


class Breaker(StrEnum):
    CLOSED = "closed"  # errors below the threshold: retry normally
    OPEN = "open"  # too many errors: wait until `open_until`
    TRIAL = "trial"  # the wait is over: one trial start is allowed
    LOCKED = "locked"  # the trial failed: only a person can restart it


@dataclass(frozen=True, slots=True)
class BreakerVerdict:
    state: Breaker
    open_until: datetime | None = None


def breaker_verdict(
    policy: Policy,
    error_times: Sequence[datetime],
    opened_at: datetime | None,
    trial_failed: bool,
    now: datetime,
) -> BreakerVerdict:
    """The circuit breaker, from the stored error times and when it was opened."""
    if opened_at is not None:
        if trial_failed:
            return BreakerVerdict(Breaker.LOCKED)
        until = opened_at + policy.breaker_open_for
        if now < until:
            return BreakerVerdict(Breaker.OPEN, until)
        return BreakerVerdict(Breaker.TRIAL)
    window_start = now - policy.breaker_window
    recent = sum(1 for at in error_times if window_start < at <= now)
    if recent >= policy.breaker_threshold:
        return BreakerVerdict(Breaker.OPEN, now + policy.breaker_open_for)
    return BreakerVerdict(Breaker.CLOSED)


def qr_should_emit(policy: Policy, last_emitted_at: datetime | None, now: datetime) -> bool:
    """At most one QR every `qr_debounce`: WhatsApp fires bursts of them."""
    return last_emitted_at is None or now - last_emitted_at >= policy.qr_debounce


def qr_expired(policy: Policy, first_qr_at: datetime | None, now: datetime) -> bool:
    """No scan within `qr_timeout` of the first QR of this attempt."""
    return first_qr_at is not None and now - first_qr_at >= policy.qr_timeout


def heartbeat_stale(
    policy: Policy, last_good_at: datetime | None, since: datetime, now: datetime
) -> bool:
    """No good heartbeat for `heartbeat_stale_after` (counted from `since` if none yet)."""
    reference = last_good_at or since
    return now - reference >= policy.heartbeat_stale_after


class HealthLevel(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"
    INACTIVE = "inactive"  # stopped or expired on purpose: nothing to worry about


def health_level(
    policy: Policy,
    state: SessionState,
    last_heartbeat_at: datetime | None,
    offline_since: datetime | None,
    now: datetime,
    *,
    in_breaker_trial: bool = False,
    unlinked_by_owner: bool = False,
) -> HealthLevel:
    """healthy: connected with a fresh heartbeat; warning: offline under 6 h or
    reconnecting; critical: offline 6 h or more, suspended, or unlinked from the phone.

    A circuit-breaker trial is no recovery yet (critical until it connects), and a bot its
    owner unlinked on purpose is nobody's incident (inactive)."""
    if in_breaker_trial:
        return HealthLevel.CRITICAL
    if state is SessionState.LOGGED_OUT and unlinked_by_owner:
        return HealthLevel.INACTIVE
    if state in (SessionState.SUSPENDED, SessionState.LOGGED_OUT):
        return HealthLevel.CRITICAL
    if state in (SessionState.IDLE, SessionState.STOPPED, SessionState.EXPIRED):
        return HealthLevel.INACTIVE
    if state is SessionState.CONNECTED:
        fresh = last_heartbeat_at is not None and (
            now - last_heartbeat_at < policy.heartbeat_stale_after
        )
        if fresh:
            return HealthLevel.HEALTHY
    if offline_since is not None and now - offline_since >= policy.offline_alert_after:
        return HealthLevel.CRITICAL
    return HealthLevel.WARNING


class CleanupReason(StrEnum):
    INACTIVE = "inactive"
    MAX_AGE = "max_age"


@dataclass(frozen=True, slots=True)
class CleanupVerdict:
    reason: CleanupReason
    # RECYCLE: started again at once; EXPIRE: closed, EXPIRED.
    action: MaxAgeAction


def cleanup_verdict(
    policy: Policy,
    state: SessionState,
    last_activity_at: datetime | None,
    started_at: datetime | None,
    now: datetime,
) -> CleanupVerdict | None:
    """Recycle (or close) a running session past `max_age`; close one idle for
    `inactive_timeout` (never, when that is 0)."""
    if state not in RUNNING_STATES or started_at is None:
        return None
    if now - started_at > policy.max_age:
        return CleanupVerdict(CleanupReason.MAX_AGE, policy.max_age_action)
    idle_for = now - (last_activity_at or started_at)
    if policy.inactive_timeout and idle_for > policy.inactive_timeout:
        return CleanupVerdict(CleanupReason.INACTIVE, MaxAgeAction.EXPIRE)
    return None


def link_last_seen(
    state: SessionState,
    last_connected_at: datetime | None,
    last_heartbeat_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """When WhatsApp last saw this linked device: now while connected, else its last
    connection or good heartbeat (None: it never connected)."""
    if state is SessionState.CONNECTED:
        return now
    seen = [at for at in (last_connected_at, last_heartbeat_at) if at is not None]
    return max(seen) if seen else None


def link_refresh_due(
    policy: Policy,
    state: SessionState,
    last_seen: datetime | None,
    last_started_at: datetime | None,
    now: datetime,
) -> bool:
    """An EXPIRED (linked) bot not seen by WhatsApp for `link_refresh_every` wakes for a
    while, so WhatsApp does not unlink it; a refresh that failed is retried after
    `link_refresh_retry`, not at every sweep."""
    if state is not SessionState.EXPIRED or not policy.link_refresh_every or last_seen is None:
        return False
    if now - last_seen < policy.link_refresh_every:
        return False
    return last_started_at is None or now - last_started_at >= policy.link_refresh_retry


def link_at_risk(
    policy: Policy, state: SessionState, last_seen: datetime | None, now: datetime
) -> bool:
    """A linked bot WhatsApp has not seen for `link_alert_after` (it unlinks at 30 days)."""
    if state in (SessionState.IDLE, SessionState.LOGGED_OUT) or last_seen is None:
        return False
    return now - last_seen >= policy.link_alert_after
