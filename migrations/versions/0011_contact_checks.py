"""contact checks: which numbers are on WhatsApp, as a bot last asked (answers reused for a
while, so the same number is not asked twice)

Revision ID: 0011
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contact_checks",
        sa.Column(
            "session_id",
            sa.String(32),
            sa.ForeignKey("bot_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("phone", sa.String(20), primary_key=True),
        sa.Column("on_whatsapp", sa.Boolean, nullable=False),
        sa.Column("wa_id", sa.String(100), nullable=True),
        sa.Column("lid", sa.String(100), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("contact_checks")
