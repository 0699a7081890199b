"""links.claimed_by (which worker holds a link) and an index for events by source

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


def upgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
    op.create_index("ix_events_source", "events", ["source", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_source", table_name="events")
    with op.batch_alter_table("links") as batch:
        batch.drop_column("claimed_by")
