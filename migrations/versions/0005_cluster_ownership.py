"""several processes, one truth: the node registry and each bot's owner, lease and epoch

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cluster_nodes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("seen_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("capacity", sa.Integer, nullable=True),
        sa.Column("bots", sa.Integer, nullable=False, server_default="0"),
    )
    with op.batch_alter_table("bot_sessions") as batch:
        batch.add_column(sa.Column("owner_node", sa.String(40), nullable=True))
        batch.add_column(sa.Column("lease_until", TS, nullable=True))
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_bot_sessions_owner_node", "bot_sessions", ["owner_node"])


def downgrade() -> None:
    op.drop_index("ix_bot_sessions_owner_node", "bot_sessions")
    with op.batch_alter_table("bot_sessions") as batch:
        batch.drop_column("epoch")
        batch.drop_column("lease_until")
        batch.drop_column("owner_node")
    op.drop_table("cluster_nodes")
