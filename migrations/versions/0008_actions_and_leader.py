"""actions that reach a bot's owner node, and the cluster's leader lease

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bot_actions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(40), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("asked_by", sa.String(40), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("done_at", TS, nullable=True),
    )
    op.create_index("ix_bot_actions_node_status", "bot_actions", ["node", "status"])
    op.create_table(
        "cluster_leases",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("holder", sa.String(40), nullable=False),
        sa.Column("until", TS, nullable=False),
        sa.Column("term", sa.Integer, nullable=False, server_default="1"),
    )


def downgrade() -> None:
    op.drop_table("cluster_leases")
    op.drop_index("ix_bot_actions_node_status", "bot_actions")
    op.drop_table("bot_actions")
