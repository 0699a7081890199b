"""rule_sets, and compact traces that refer to them

An event's trace names the rule set that evaluated it and lists only the rules that
matched; `rule_sets` keeps each rule set's text, so the other rules' outcomes are
explained when the record is read, even after the rules changed (caselink/traces.py).

The traces already stored were made by rule sets whose text was not kept. When the
upgrade is given the rule set in force (`caselink db upgrade` gives it), that rule set is
stored and the traces it made are compacted, each only if its compact form reads exactly
as the stored one; every other trace stays in full and reads as before. The downgrade
writes every compact trace out in full again.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rule_sets",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    ruleset = context.config.attributes.get("rule_set")
    if ruleset is not None:
        from caselink.traces import compact_stored_traces

        compact_stored_traces(op.get_bind(), ruleset)


def downgrade() -> None:
    from caselink.traces import expand_stored_traces

    expand_stored_traces(op.get_bind())
    op.drop_table("rule_sets")
