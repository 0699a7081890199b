"""events.deferred: events stored before their evaluation, which housekeeping evaluates

A webhook whose events cost more to evaluate than a request may spend (an Alertmanager
group of thousands of alerts against thousands of rules) is stored whole; the events past
that cost are marked deferred and evaluated beside delivery. Only those are indexed.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("deferred", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Written as the store asks (deferred = true, = 1 on SQLite): SQLite uses a partial index
    # only for a query whose condition is the index's own.
    deferred = sa.column("deferred", sa.Boolean()) == sa.true()
    op.create_index("ix_events_deferred", "events", ["id"], postgresql_where=deferred, sqlite_where=deferred)


def downgrade() -> None:
    op.drop_index("ix_events_deferred", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("deferred")
