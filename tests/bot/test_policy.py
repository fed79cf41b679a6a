"""Policy decisions against literal datetimes, at their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.policy import (
    Breaker,
    BreakerVerdict,
    CleanupReason,
    CleanupVerdict,
    HealthLevel,
    MaxAgeAction,
    Policy,
    backoff_delay,
    breaker_verdict,
    cleanup_verdict,
    health_level,
    heartbeat_stale,
    link_at_risk,
    link_last_seen,
    link_refresh_due,
    qr_expired,
    qr_should_emit,
)
from bot.states import SessionState

S = SessionState
P = Policy()
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


# --- backoff -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (7, 30), (8, 30)],
)
def test_backoff_without_jitter(attempt, seconds):
    assert backoff_delay(P, attempt, 0.5) == timedelta(seconds=seconds)


NOMINAL = [1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize("random_unit", [0.0, 0.999999])
@pytest.mark.parametrize("attempt", range(1, 9))
def test_backoff_jitter_stays_within_twenty_percent_and_cap(attempt, random_unit):
    nominal = NOMINAL[attempt - 1]
    delay = backoff_delay(P, attempt, random_unit).total_seconds()
    assert nominal * 0.8 - 1e-6 <= delay <= nominal * 1.2 + 1e-6
    assert delay <= 30


def test_backoff_jitter_low_end_is_eighty_percent():
    assert backoff_delay(P, 1, 0.0) == timedelta(milliseconds=800)
    assert backoff_delay(P, 8, 0.0) == timedelta(seconds=24)


def test_backoff_jitter_high_end_is_capped():
    assert backoff_delay(P, 8, 0.999999) == timedelta(seconds=30)
    assert backoff_delay(P, 5, 0.999999) > timedelta(seconds=16)


@pytest.mark.parametrize("attempt", [0, -1, -100])
@pytest.mark.parametrize("random_unit", [0.0, 0.5, 0.999999])
def test_backoff_non_positive_attempt_is_first_attempt(attempt, random_unit):
    assert backoff_delay(P, attempt, random_unit) == backoff_delay(P, 1, random_unit)


# --- breaker -------------------------------------------------------------------------


def _errors(*seconds_ago: float) -> list[datetime]:
    return [T0 - timedelta(seconds=s) for s in seconds_ago]


def test_breaker_no_errors_is_closed():
    assert breaker_verdict(P, [], None, False, T0) == BreakerVerdict(Breaker.CLOSED)


def test_breaker_four_errors_is_closed():
    errors = _errors(0, 10, 20, 30)
    assert breaker_verdict(P, errors, None, False, T0) == BreakerVerdict(Breaker.CLOSED)


def test_breaker_fifth_error_in_window_opens():
    errors = _errors(0, 10, 20, 30, 299)
    verdict = breaker_verdict(P, errors, None, False, T0)
    assert verdict == BreakerVerdict(Breaker.OPEN, T0 + timedelta(seconds=60))


def test_breaker_fifth_error_just_inside_window_opens():
    errors = [*_errors(0, 10, 20, 30), T0 - timedelta(minutes=5) + US]
    verdict = breaker_verdict(P, errors, None, False, T0)
    assert verdict.state is Breaker.OPEN
    assert verdict.open_until == T0 + timedelta(seconds=60)


def test_breaker_error_exactly_at_window_start_is_outside():
    errors = [*_errors(0, 10, 20, 30), T0 - timedelta(minutes=5)]
    assert breaker_verdict(P, errors, None, False, T0) == BreakerVerdict(Breaker.CLOSED)


def test_breaker_error_well_outside_window_is_ignored():
    errors = _errors(0, 10, 20, 30, 301)
    assert breaker_verdict(P, errors, None, False, T0) == BreakerVerdict(Breaker.CLOSED)


def test_breaker_opened_before_wait_is_over_stays_open():
    opened = T0 - timedelta(seconds=59)
    verdict = breaker_verdict(P, [], opened, False, T0)
    assert verdict == BreakerVerdict(Breaker.OPEN, opened + timedelta(seconds=60))


def test_breaker_opened_just_before_wait_is_over_stays_open():
    opened = T0 - timedelta(seconds=60) + US
    verdict = breaker_verdict(P, [], opened, False, T0)
    assert verdict == BreakerVerdict(Breaker.OPEN, opened + timedelta(seconds=60))


def test_breaker_opened_exactly_wait_ago_allows_trial():
    opened = T0 - timedelta(seconds=60)
    assert breaker_verdict(P, [], opened, False, T0) == BreakerVerdict(Breaker.TRIAL)


def test_breaker_opened_ignores_error_count():
    opened = T0 - timedelta(seconds=60)
    errors = _errors(0, 1, 2, 3, 4, 5)
    assert breaker_verdict(P, errors, opened, False, T0) == BreakerVerdict(Breaker.TRIAL)


@pytest.mark.parametrize("seconds_since_open", [0, 30, 60, 3600])
def test_breaker_failed_trial_is_locked(seconds_since_open):
    opened = T0 - timedelta(seconds=seconds_since_open)
    assert breaker_verdict(P, [], opened, True, T0) == BreakerVerdict(Breaker.LOCKED)


# --- QR ------------------------------------------------------------------------------


def test_qr_first_is_emitted():
    assert qr_should_emit(P, None, T0) is True


@pytest.mark.parametrize(
    ("elapsed", "emit"),
    [
        (timedelta(0), False),
        (timedelta(seconds=1, milliseconds=999), False),
        (timedelta(seconds=2) - US, False),
        (timedelta(seconds=2), True),
        (timedelta(seconds=10), True),
    ],
)
def test_qr_debounce(elapsed, emit):
    assert qr_should_emit(P, T0, T0 + elapsed) is emit


def test_qr_not_expired_without_a_qr():
    assert qr_expired(P, None, T0) is False


@pytest.mark.parametrize(
    ("elapsed", "expired"),
    [
        (timedelta(0), False),
        (timedelta(minutes=1, seconds=59, milliseconds=999), False),
        (timedelta(minutes=2) - US, False),
        (timedelta(minutes=2), True),
        (timedelta(minutes=3), True),
    ],
)
def test_qr_timeout(elapsed, expired):
    assert qr_expired(P, T0, T0 + elapsed) is expired


# --- heartbeat -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "stale"),
    [
        (timedelta(0), False),
        (timedelta(minutes=5) - US, False),
        (timedelta(minutes=5), True),
        (timedelta(hours=1), True),
    ],
)
def test_heartbeat_stale_from_last_good(elapsed, stale):
    long_ago = T0 - timedelta(days=1)
    assert heartbeat_stale(P, T0, long_ago, T0 + elapsed) is stale


@pytest.mark.parametrize(
    ("elapsed", "stale"),
    [
        (timedelta(minutes=5) - US, False),
        (timedelta(minutes=5), True),
    ],
)
def test_heartbeat_stale_falls_back_to_since(elapsed, stale):
    assert heartbeat_stale(P, None, T0, T0 + elapsed) is stale


# --- health --------------------------------------------------------------------------


def test_health_connected_fresh_heartbeat_is_healthy():
    last = T0 - timedelta(minutes=4, seconds=59)
    assert health_level(P, S.CONNECTED, last, None, T0) is HealthLevel.HEALTHY


def test_health_connected_heartbeat_just_under_stale_is_healthy():
    last = T0 - timedelta(minutes=5) + US
    assert health_level(P, S.CONNECTED, last, None, T0) is HealthLevel.HEALTHY


def test_health_connected_stale_heartbeat_is_warning():
    last = T0 - timedelta(minutes=5)
    assert health_level(P, S.CONNECTED, last, None, T0) is HealthLevel.WARNING


def test_health_connected_without_heartbeat_is_warning():
    assert health_level(P, S.CONNECTED, None, None, T0) is HealthLevel.WARNING


def test_health_connected_stale_and_long_offline_is_critical():
    last = T0 - timedelta(hours=7)
    offline = T0 - timedelta(hours=6)
    assert health_level(P, S.CONNECTED, last, offline, T0) is HealthLevel.CRITICAL


@pytest.mark.parametrize(
    ("offline_for", "level"),
    [
        (timedelta(0), HealthLevel.WARNING),
        (timedelta(hours=5, minutes=59, seconds=59), HealthLevel.WARNING),
        (timedelta(hours=6) - US, HealthLevel.WARNING),
        (timedelta(hours=6), HealthLevel.CRITICAL),
        (timedelta(days=2), HealthLevel.CRITICAL),
    ],
)
def test_health_disconnected_by_offline_time(offline_for, level):
    assert health_level(P, S.DISCONNECTED, None, T0 - offline_for, T0) is level


def test_health_disconnected_without_offline_since_is_warning():
    assert health_level(P, S.DISCONNECTED, None, None, T0) is HealthLevel.WARNING


@pytest.mark.parametrize("state", [S.SUSPENDED, S.LOGGED_OUT])
def test_health_suspended_or_logged_out_is_critical(state):
    assert health_level(P, state, None, None, T0) is HealthLevel.CRITICAL
    assert health_level(P, state, T0, T0, T0) is HealthLevel.CRITICAL


@pytest.mark.parametrize("state", [S.IDLE, S.STOPPED, S.EXPIRED])
def test_health_stopped_on_purpose_is_inactive(state):
    assert health_level(P, state, None, None, T0) is HealthLevel.INACTIVE
    long_ago = T0 - timedelta(days=30)
    assert health_level(P, state, long_ago, long_ago, T0) is HealthLevel.INACTIVE


@pytest.mark.parametrize("state", [S.CONNECTING, S.SCAN_QR])
def test_health_reconnecting_recently_is_warning(state):
    recent = T0 - timedelta(seconds=10)
    assert health_level(P, state, recent, recent, T0) is HealthLevel.WARNING
    assert health_level(P, state, None, None, T0) is HealthLevel.WARNING


@pytest.mark.parametrize("state", [S.CONNECTING, S.SCAN_QR])
def test_health_reconnecting_for_six_hours_is_critical(state):
    assert health_level(P, state, None, T0 - timedelta(hours=6), T0) is HealthLevel.CRITICAL


# --- cleanup -------------------------------------------------------------------------

RUNNING = [S.CONNECTING, S.SCAN_QR, S.CONNECTED, S.DISCONNECTED]
NOT_RUNNING = [S.IDLE, S.STOPPED, S.EXPIRED, S.SUSPENDED, S.LOGGED_OUT]
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


def cleanup_reason(*args: Any) -> CleanupReason | None:
    verdict = cleanup_verdict(*args)
    return None if verdict is None else verdict.reason


@pytest.mark.parametrize("state", RUNNING)
@pytest.mark.parametrize(
    ("idle_for", "verdict"),
    [
        (timedelta(0), None),
        (DAY - US, None),
        (DAY, None),
        (DAY + US, CleanupReason.INACTIVE),
        (timedelta(days=3), CleanupReason.INACTIVE),
    ],
)
def test_cleanup_inactive(state, idle_for, verdict):
    started = T0 - timedelta(days=5)
    assert cleanup_reason(P, state, T0 - idle_for, started, T0) is verdict


@pytest.mark.parametrize("state", RUNNING)
@pytest.mark.parametrize(
    ("age", "verdict"),
    [
        (WEEK - US, None),
        (WEEK, None),
        (WEEK + US, CleanupReason.MAX_AGE),
        (timedelta(days=30), CleanupReason.MAX_AGE),
    ],
)
def test_cleanup_max_age(state, age, verdict):
    assert cleanup_reason(P, state, T0, T0 - age, T0) is verdict


@pytest.mark.parametrize("state", RUNNING)
def test_cleanup_max_age_wins_over_inactive(state):
    started = T0 - WEEK - US
    last = T0 - DAY - US
    assert cleanup_reason(P, state, last, started, T0) is CleanupReason.MAX_AGE
    assert cleanup_reason(P, state, None, started, T0) is CleanupReason.MAX_AGE


@pytest.mark.parametrize("state", RUNNING)
@pytest.mark.parametrize(
    ("started_ago", "verdict"),
    [(DAY, None), (DAY + US, CleanupReason.INACTIVE)],
)
def test_cleanup_missing_activity_falls_back_to_started_at(state, started_ago, verdict):
    assert cleanup_reason(P, state, None, T0 - started_ago, T0) is verdict


@pytest.mark.parametrize("state", RUNNING)
def test_cleanup_never_started_is_left_alone(state):
    assert cleanup_reason(P, state, T0 - timedelta(days=30), None, T0) is None
    assert cleanup_reason(P, state, None, None, T0) is None


@pytest.mark.parametrize("state", NOT_RUNNING)
@pytest.mark.parametrize(
    ("last_ago", "started_ago"),
    [
        (timedelta(0), timedelta(0)),
        (DAY + US, timedelta(days=2)),
        (timedelta(days=30), timedelta(days=30)),
        (None, timedelta(days=30)),
    ],
)
def test_cleanup_ignores_non_running_states(state, last_ago, started_ago):
    last = None if last_ago is None else T0 - last_ago
    assert cleanup_reason(P, state, last, T0 - started_ago, T0) is None


def test_health_facts_beyond_the_state() -> None:
    # A breaker trial (CONNECTING) is no recovery yet; an owner's unlink is no incident.
    assert (
        health_level(P, S.CONNECTING, None, T0, T0, in_breaker_trial=True) is HealthLevel.CRITICAL
    )
    assert (
        health_level(P, S.LOGGED_OUT, None, None, T0, unlinked_by_owner=True)
        is HealthLevel.INACTIVE
    )
    assert health_level(P, S.LOGGED_OUT, None, None, T0) is HealthLevel.CRITICAL


# --- a link that never lapses ------------------------------------------------------------

RECYCLE, EXPIRE = MaxAgeAction.RECYCLE, MaxAgeAction.EXPIRE


@pytest.mark.parametrize(
    ("policy", "last", "started", "verdict"),
    [
        # Max age recycles by default; SESSION_MAX_AGE_ACTION=expire closes instead.
        (P, T0, T0 - WEEK - US, CleanupVerdict(CleanupReason.MAX_AGE, RECYCLE)),
        (
            Policy(max_age_action=EXPIRE),
            T0,
            T0 - WEEK - US,
            CleanupVerdict(CleanupReason.MAX_AGE, EXPIRE),
        ),
        # Inactivity always closes (EXPIRED), whatever the max-age action.
        (P, T0 - DAY - US, T0 - 2 * DAY, CleanupVerdict(CleanupReason.INACTIVE, EXPIRE)),
        # SESSION_INACTIVE_TIMEOUT=0: never closed for inactivity, still recycled at max age.
        (Policy(inactive_timeout=timedelta(0)), T0 - 6 * DAY, T0 - 6 * DAY, None),
        (Policy(inactive_timeout=timedelta(0)), None, T0 - 6 * DAY, None),
        (
            Policy(inactive_timeout=timedelta(0)),
            None,
            T0 - WEEK - US,
            CleanupVerdict(CleanupReason.MAX_AGE, RECYCLE),
        ),
    ],
)
def test_cleanup_verdict_says_what_to_do(policy, last, started, verdict):
    assert cleanup_verdict(policy, S.CONNECTED, last, started, T0) == verdict


def test_link_last_seen_is_now_while_connected_else_the_latest_sign_of_life():
    connected = T0 - timedelta(days=9)
    beat = T0 - timedelta(days=8)
    assert link_last_seen(S.CONNECTED, connected, beat, T0) == T0
    assert link_last_seen(S.EXPIRED, connected, beat, T0) == beat
    assert link_last_seen(S.EXPIRED, connected, None, T0) == connected
    assert link_last_seen(S.STOPPED, None, None, T0) is None


@pytest.mark.parametrize(
    ("state", "seen_ago", "started_ago", "due"),
    [
        (S.EXPIRED, WEEK - US, WEEK, False),
        (S.EXPIRED, WEEK, WEEK, True),
        (S.EXPIRED, timedelta(days=20), None, True),
        # A refresh started half an hour ago that did not connect: not again yet.
        (S.EXPIRED, WEEK, timedelta(minutes=30), False),
        (S.EXPIRED, WEEK, timedelta(hours=1), True),
        # Never linked: nothing to refresh.
        (S.EXPIRED, None, WEEK, False),
        # Only expired bots sleep; the others are running, or stopped on purpose.
        (S.STOPPED, timedelta(days=20), timedelta(days=20), False),
        (S.CONNECTED, timedelta(days=20), timedelta(days=20), False),
        (S.LOGGED_OUT, timedelta(days=20), timedelta(days=20), False),
    ],
)
def test_link_refresh_due(state, seen_ago, started_ago, due):
    seen = None if seen_ago is None else T0 - seen_ago
    started = None if started_ago is None else T0 - started_ago
    assert link_refresh_due(P, state, seen, started, T0) is due


def test_link_refresh_off():
    off = Policy(link_refresh_every=timedelta(0))
    assert link_refresh_due(off, S.EXPIRED, T0 - timedelta(days=29), None, T0) is False


@pytest.mark.parametrize(
    ("state", "seen_ago", "risk"),
    [
        (S.EXPIRED, timedelta(days=25) - US, False),
        (S.EXPIRED, timedelta(days=25), True),
        (S.STOPPED, timedelta(days=26), True),
        (S.SUSPENDED, timedelta(days=26), True),
        (S.DISCONNECTED, timedelta(days=26), True),
        (S.IDLE, timedelta(days=26), False),
        (S.LOGGED_OUT, timedelta(days=26), False),
        (S.EXPIRED, None, False),
    ],
)
def test_link_at_risk_after_25_days_unseen(state, seen_ago, risk):
    seen = None if seen_ago is None else T0 - seen_ago
    assert link_at_risk(P, state, seen, T0) is risk
