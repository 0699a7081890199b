"""links.claimed_by; fewer writes per webhook

links.claimed_by says which worker holds or last held a link. The plans table
(event → link) is dropped: the links an event planned are in its trace, and
the explain record finds their rows by the link's natural key. The index on
events.received_at goes too: every index is more pages to write per webhook.
rate_periods lets every delivery process count against one Datadog rate limit.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
    op.drop_index("ix_events_received_at", table_name="events")
    op.drop_index("ix_plans_link", table_name="plans")
    op.drop_table("plans")
    op.create_table(
        "rate_periods",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("period_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", "period_number"),
    )


def downgrade() -> None:
    op.drop_table("rate_periods")
    op.create_table(
        "plans",
        sa.Column("id", _id, autoincrement=True, nullable=False),
        sa.Column("event_id", _id, nullable=False),
        sa.Column("link_id", _id, nullable=False),
        sa.Column("rule", sa.String(length=255), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["link_id"], ["links.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "link_id", "rule", name="uq_plans"),
    )
    op.create_index("ix_plans_link", "plans", ["link_id"])
    op.create_index("ix_events_received_at", "events", ["received_at"])
    with op.batch_alter_table("links") as batch:
        batch.drop_column("claimed_by")
