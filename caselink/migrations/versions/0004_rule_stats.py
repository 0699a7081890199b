"""rule_stats and rule_links: per-rule statistics that outlive pruned events

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rule_stats",
        sa.Column("rule", sa.String(length=255), nullable=False),
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("matched", sa.BigInteger(), nullable=False),
        sa.Column("links_planned", sa.BigInteger(), nullable=False),
        sa.Column("last_matched_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("rule", "hour"),
    )
    op.create_table(
        "rule_links",
        sa.Column("rule", sa.String(length=255), nullable=False),
        sa.Column("link_id", _id, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("rule", "link_id"),
    )


def downgrade() -> None:
    op.drop_table("rule_links")
    op.drop_table("rule_stats")
