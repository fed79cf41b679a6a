"""messages that are more than text: a kind and its fields on each outbox message, and the
media bytes of a message in a table of their own (stored at accept, so a restart loses nothing)

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="text"))
        batch.add_column(sa.Column("payload", sa.Text, nullable=True))
    op.create_table(
        "outbox_media",
        sa.Column(
            "message_id",
            sa.String(32),
            sa.ForeignKey("outbox_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("mimetype", sa.String(100), nullable=False),
        sa.Column("filename", sa.String(255), nullable=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("outbox_media")
    with op.batch_alter_table("outbox_messages") as batch:
        batch.drop_column("payload")
        batch.drop_column("kind")
