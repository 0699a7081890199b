"""The database schema: what caselink stores, and the uniqueness that makes it exactly-once.

An event is unique per (source, dedup key, digest): a delivery repeated with
the same content is stored once, and a key repeated with other content is a
new event. A link is unique per (parent, relationship, child), both as planned
and as resolved to UUIDs. Alembic's migrations build
exactly these tables (tests/test_migrations.py checks that they agree).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

LINK_STATES = ("dry_run", "pending", "claimed", "delivered", "dead", "merged")
MAX_KEY = 255

metadata = sa.MetaData()
_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_time = sa.Float(precision=53)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", _id, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("dedup_key", sa.String(MAX_KEY), nullable=False),
    # Hex SHA-256 of what the event was built from (the store always sets it); empty for
    # events stored before migration 0003.
    sa.Column("digest", sa.String(64), nullable=False, default=""),
    # True when an earlier event had this dedup key with other content.
    sa.Column("dedup_conflict", sa.Boolean, nullable=False, default=False),
    sa.Column("kind", sa.String(255), nullable=False),
    sa.Column("entity_type", sa.String(32)),
    sa.Column("entity_id", sa.String(255)),
    sa.Column("title", sa.Text, nullable=False, default=""),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("severity", sa.String(255), nullable=False, default=""),
    sa.Column("priority", sa.String(255), nullable=False, default=""),
    sa.Column("status", sa.String(255), nullable=False, default=""),
    sa.Column("url", sa.Text, nullable=False, default=""),
    sa.Column("tags", _json, nullable=False),
    sa.Column("occurred_at", sa.String(64)),
    sa.Column("payload", _json),
    sa.Column("problem", sa.Text),
    sa.Column("received_at", _time, nullable=False),
    sa.Column("ruleset", sa.String(64), nullable=False),
    sa.Column("trace", _json, nullable=False),
    sa.Column("links_planned", sa.Integer, nullable=False, default=0),
    # True while the event waits for its evaluation: its webhook's events had used the request's
    # evaluation time (caselink.rules.EVALUATION_SECONDS_PER_WEBHOOK), so housekeeping evaluates it.
    sa.Column("deferred", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.UniqueConstraint("source", "dedup_key", "digest", name="uq_events_delivery"),
)
# No secondary index on events beyond the dedup key: each one is pages more to
# write on every webhook, and the admin API and replay read events rarely. The deferred
# ones are indexed apart, and only they: the index is empty while no webhook is too costly.
sa.Index(
    "ix_events_deferred",
    events.c.id,
    postgresql_where=events.c.deferred == sa.true(),
    sqlite_where=events.c.deferred == sa.true(),
)

links = sa.Table(
    "links",
    metadata,
    sa.Column("id", _id, primary_key=True, autoincrement=True),
    sa.Column("parent_type", sa.String(32), nullable=False),
    sa.Column("parent_ref", sa.String(255), nullable=False),
    sa.Column("relationship", sa.String(32), nullable=False),
    sa.Column("child_type", sa.String(32), nullable=False),
    sa.Column("child_ref", sa.String(255), nullable=False),
    # UUIDs once the worker has resolved case keys; unique among resolved links.
    sa.Column("parent_id", sa.String(64)),
    sa.Column("child_id", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", _time, nullable=False),
    sa.Column("lease_until", _time),
    sa.Column("claim_token", sa.String(32)),
    # The worker (host:pid) that holds or last held the link, for operators.
    sa.Column("claimed_by", sa.String(128)),
    sa.Column("last_error", sa.Text),
    sa.Column("last_status", sa.Integer),
    sa.Column("datadog_link_id", sa.String(64)),
    sa.Column("outcome", sa.String(16)),
    sa.Column("merged_into", _id),
    sa.Column("created_at", _time, nullable=False),
    sa.Column("updated_at", _time, nullable=False),
    sa.Column("delivered_at", _time),
    sa.UniqueConstraint(
        "parent_type",
        "parent_ref",
        "relationship",
        "child_type",
        "child_ref",
        name="uq_links_planned",
    ),
    sa.UniqueConstraint(
        "parent_type",
        "parent_id",
        "relationship",
        "child_type",
        "child_id",
        name="uq_links_resolved",
    ),
)
sa.Index("ix_links_due", links.c.state, links.c.next_attempt_at)

service_state = sa.Table(
    "service_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text),
    sa.Column("updated_at", _time, nullable=False),
)

# How many requests caselink's processes sent in each period of each Datadog
# rate limit: periods are calendar aligned, so every process numbers them alike.
rate_periods = sa.Table(
    "rate_periods",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("period_number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("used", sa.Integer, nullable=False),
)

# Per-rule statistics, counted by the housekeeping step from events' traces
# (off the webhook path) and kept when the events are pruned: one row per rule
# per hour, so a window such as `--since 24h` is exact to the hour.
rule_stats = sa.Table(
    "rule_stats",
    metadata,
    sa.Column("rule", sa.String(255), primary_key=True),
    sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("matched", sa.BigInteger, nullable=False),
    sa.Column("links_planned", sa.BigInteger, nullable=False),
    sa.Column("last_matched_at", _time, nullable=False),
)

# Which rules planned which links, so a rule's delivered links are counted
# from the links themselves (links are never deleted).
rule_links = sa.Table(
    "rule_links",
    metadata,
    sa.Column("rule", sa.String(255), primary_key=True),
    sa.Column("link_id", _id, primary_key=True, autoincrement=False),
)

# Each rule set that evaluated an event, once: an event's trace names its digest and lists
# only the rules that matched, and the others are explained from this text when read, so
# an old event's record still reads right after the rules changed (caselink/traces.py).
rule_sets = sa.Table(
    "rule_sets",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    # When an event was first stored with this rule set: it was in force from then on.
    sa.Column("first_seen_at", _time, nullable=False),
)
