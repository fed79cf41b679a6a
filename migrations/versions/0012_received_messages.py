"""received messages: the last few each bot received, for its owner to see (the files are
described, never stored)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "received_messages",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "session_id",
            sa.String(32),
            sa.ForeignKey("bot_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("chat", sa.String(100), nullable=False),
        sa.Column("sender", sa.String(100), nullable=False),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("type", sa.String(30), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("media", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("session_id", "message_id", name="uq_received_messages_message"),
    )
    op.create_index("ix_received_messages_session_seq", "received_messages", ["session_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_received_messages_session_seq", table_name="received_messages")
    op.drop_table("received_messages")
