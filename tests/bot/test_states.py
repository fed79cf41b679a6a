"""The session transition table, tested exhaustively against a literal expected policy."""

from __future__ import annotations

import itertools

import pytest

from bot.states import (
    RUNNING_STATES,
    STARTABLE_STATES,
    TRANSITIONS,
    IllegalTransitionError,
    SessionState,
    check_transition,
)

S = SessionState

# Written out by hand on purpose: a change to TRANSITIONS must be caught here.
EXPECTED: dict[SessionState, set[SessionState]] = {
    S.IDLE: {S.CONNECTING},
    S.CONNECTING: {
        S.SCAN_QR,
        S.SYNCING,
        S.CONNECTED,
        S.DISCONNECTED,
        S.SUSPENDED,
        S.LOGGED_OUT,
        S.STOPPED,
        S.EXPIRED,
    },
    S.SCAN_QR: {
        S.CONNECTING,
        S.SYNCING,
        S.CONNECTED,
        S.DISCONNECTED,
        S.SUSPENDED,
        S.LOGGED_OUT,
        S.STOPPED,
        S.EXPIRED,
    },
    S.SYNCING: {S.CONNECTED, S.DISCONNECTED, S.SUSPENDED, S.LOGGED_OUT, S.STOPPED, S.EXPIRED},
    S.CONNECTED: {S.DISCONNECTED, S.SUSPENDED, S.LOGGED_OUT, S.STOPPED, S.EXPIRED},
    S.DISCONNECTED: {S.CONNECTING, S.SUSPENDED, S.LOGGED_OUT, S.STOPPED, S.EXPIRED},
    S.SUSPENDED: {S.CONNECTING, S.LOGGED_OUT, S.STOPPED},
    S.LOGGED_OUT: {S.CONNECTING},
    S.STOPPED: {S.CONNECTING, S.LOGGED_OUT},
    S.EXPIRED: {S.CONNECTING, S.LOGGED_OUT, S.STOPPED},
}

ALL_PAIRS = list(itertools.product(list(SessionState), repeat=2))


def test_there_are_ten_states():
    assert len(SessionState) == 10
    assert set(EXPECTED) == set(SessionState)


def test_table_covers_every_state():
    assert set(TRANSITIONS) == set(SessionState)


@pytest.mark.parametrize("state", list(SessionState))
def test_table_matches_literal_policy(state):
    assert set(TRANSITIONS[state]) == EXPECTED[state]


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_every_pair(current, target):
    if target in EXPECTED[current]:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransitionError) as info:
            check_transition(current, target)
        message = str(info.value)
        assert str(current) in message
        assert str(target) in message
        assert info.value.current is current
        assert info.value.target is target


def test_error_message_names_both_states():
    with pytest.raises(IllegalTransitionError, match=r"LOGGED_OUT.*CONNECTED"):
        check_transition(S.LOGGED_OUT, S.CONNECTED)


def test_logged_out_is_left_only_by_connecting():
    assert TRANSITIONS[S.LOGGED_OUT] == frozenset({S.CONNECTING})


def test_no_state_moves_to_idle():
    for state in SessionState:
        assert S.IDLE not in TRANSITIONS[state], state


@pytest.mark.parametrize("state", list(SessionState))
def test_no_self_transitions(state):
    assert state not in TRANSITIONS[state]
    with pytest.raises(IllegalTransitionError):
        check_transition(state, state)


@pytest.mark.parametrize("state", sorted(STARTABLE_STATES))
def test_every_startable_state_can_connect(state):
    check_transition(state, S.CONNECTING)


def test_running_states_are_exactly_the_browser_states():
    browser_states = {S.CONNECTING, S.SCAN_QR, S.SYNCING, S.CONNECTED, S.DISCONNECTED}
    assert frozenset(browser_states) == RUNNING_STATES
