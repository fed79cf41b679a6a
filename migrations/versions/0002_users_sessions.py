"""users, bot sessions, their transitions, the audit log, stored secrets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "bot_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True
        ),
        sa.Column("owner_key", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("webhook_url", sa.String(2000), nullable=True),
        sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.String(500), nullable=True),
        sa.Column("state_changed_at", TS, nullable=False),
        sa.Column("want_running", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("last_activity_at", TS, nullable=True),
        sa.Column("last_connected_at", TS, nullable=True),
        sa.Column("last_disconnected_at", TS, nullable=True),
        sa.Column("last_heartbeat_at", TS, nullable=True),
        sa.Column("next_retry_at", TS, nullable=True),
        sa.Column("reconnect_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("health", sa.String(20), nullable=False, server_default="inactive"),
        sa.Column("linked_as", sa.String(100), nullable=True),
        sa.UniqueConstraint("owner_key", "name", name="uq_bot_sessions_owner_name"),
    )
    op.create_table(
        "session_transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "session_id",
            sa.String(32),
            sa.ForeignKey("bot_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", TS, nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
    )
    op.create_index("ix_session_transitions_session", "session_transitions", ["session_id", "id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_table(
        "app_secrets",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("app_secrets")
    op.drop_table("audit_log")
    op.drop_index("ix_session_transitions_session", table_name="session_transitions")
    op.drop_table("session_transitions")
    op.drop_table("bot_sessions")
    op.drop_table("users")
