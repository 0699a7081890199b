"""events.digest and events.dedup_conflict; an event is unique by key and content

A delivery is a repeat only when its dedup key and its content are both the
same: `digest` is the hex SHA-256 of what the event was built from, and the
unique constraint becomes (source, dedup_key, digest). `dedup_conflict` marks
an event whose key an earlier event had with other content.

Events stored before this revision have an empty digest (what they were built
from was not hashed, and a JSONB payload cannot be hashed back to it), so a
retry arriving across the upgrade is stored once more as a new event: a row,
never a second link.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("digest", sa.String(length=64), nullable=False, server_default=""))
        batch.add_column(sa.Column("dedup_conflict", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.drop_constraint("uq_events_delivery", type_="unique")
        batch.create_unique_constraint("uq_events_delivery", ["source", "dedup_key", "digest"])
    # The defaults only filled the rows already there; caselink always writes both.
    with op.batch_alter_table("events") as batch:
        batch.alter_column("digest", server_default=None, existing_type=sa.String(length=64), existing_nullable=False)
        batch.alter_column(
            "dedup_conflict", server_default=None, existing_type=sa.Boolean(), existing_nullable=False
        )


def downgrade() -> None:
    # Several events may share a key now: all but the oldest of each take their digest
    # into the key, so that the old constraint holds and no event is lost.
    events = sa.table(
        "events",
        sa.column("id", sa.Integer),
        sa.column("source", sa.String),
        sa.column("dedup_key", sa.String),
        sa.column("digest", sa.String),
    )
    earlier = sa.alias(events, "earlier")
    op.execute(
        events.update()
        .where(
            sa.exists().where(
                earlier.c.source == events.c.source,
                earlier.c.dedup_key == events.c.dedup_key,
                earlier.c.id < events.c.id,
            )
        )
        .values(dedup_key=sa.func.substr(events.c.dedup_key, 1, 190) + "#" + events.c.digest)
    )
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_delivery", type_="unique")
        batch.create_unique_constraint("uq_events_delivery", ["source", "dedup_key"])
        batch.drop_column("dedup_conflict")
        batch.drop_column("digest")
