"""Bot session states and the transition table: every legal move, and nothing else."""

from __future__ import annotations

from enum import StrEnum


class SessionState(StrEnum):
    IDLE = "IDLE"  # created, not started
    CONNECTING = "CONNECTING"  # browser starting, page loading, restoring
    SCAN_QR = "SCAN_QR"  # waiting for the phone: a QR or pairing code is available
    SYNCING = "SYNCING"  # linked: WhatsApp Web is loading the account's chats
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"  # waiting for the next reconnect attempt
    SUSPENDED = "SUSPENDED"  # circuit open or attempts exhausted: needs time or a person
    LOGGED_OUT = "LOGGED_OUT"  # unlinked from the phone: never retried automatically
    STOPPED = "STOPPED"  # stopped by its owner or by shutdown
    EXPIRED = "EXPIRED"  # closed by cleanup; the link is kept, a restart needs no QR


S = SessionState

# Where a browser is running or being brought back: what cleanup and shutdown close.
RUNNING_STATES = frozenset({S.CONNECTING, S.SCAN_QR, S.SYNCING, S.CONNECTED, S.DISCONNECTED})
# Where a person (or the owner) may start the session again.
STARTABLE_STATES = frozenset(
    {S.IDLE, S.STOPPED, S.EXPIRED, S.SUSPENDED, S.LOGGED_OUT, S.DISCONNECTED}
)

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.IDLE: frozenset({S.CONNECTING}),
    S.CONNECTING: frozenset(
        {
            S.SCAN_QR,
            S.SYNCING,
            S.CONNECTED,
            S.DISCONNECTED,
            S.SUSPENDED,
            S.LOGGED_OUT,
            S.STOPPED,
            S.EXPIRED,
        }
    ),
    S.SCAN_QR: frozenset(
        {
            S.CONNECTING,
            S.SYNCING,
            S.CONNECTED,
            S.DISCONNECTED,
            S.SUSPENDED,
            S.LOGGED_OUT,
            S.STOPPED,
            S.EXPIRED,
        }
    ),
    S.SYNCING: frozenset(
        {S.CONNECTED, S.DISCONNECTED, S.SUSPENDED, S.LOGGED_OUT, S.STOPPED, S.EXPIRED}
    ),
    S.CONNECTED: frozenset({S.DISCONNECTED, S.SUSPENDED, S.LOGGED_OUT, S.STOPPED, S.EXPIRED}),
    S.DISCONNECTED: frozenset({S.CONNECTING, S.SUSPENDED, S.LOGGED_OUT, S.STOPPED, S.EXPIRED}),
    S.SUSPENDED: frozenset({S.CONNECTING, S.LOGGED_OUT, S.STOPPED}),
    S.LOGGED_OUT: frozenset({S.CONNECTING}),
    S.STOPPED: frozenset({S.CONNECTING, S.LOGGED_OUT}),
    S.EXPIRED: frozenset({S.CONNECTING, S.LOGGED_OUT, S.STOPPED}),
}


class IllegalTransitionError(Exception):
    def __init__(self, current: SessionState, target: SessionState) -> None:
        super().__init__(f"a session cannot go from {current} to {target}")
        self.current = current
        self.target = target


def check_transition(current: SessionState, target: SessionState) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransitionError(current, target)
