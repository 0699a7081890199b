"""The store: events, their evaluation traces, planned links and their delivery state.

SQLAlchemy Core over SQLite (WAL) by default or PostgreSQL. The uniqueness
that makes caselink exactly-once lives in the schema, not in process memory:
an event is unique per (source, dedup key, digest of its content), so only a
repeat with the same content is a duplicate, and a link per (parent,
relationship, child) both as planned and as resolved to UUIDs.

One module per concern, each a part of `Store` built on `engine.Database`:

- `engine`: the engine, transactions, the schema check, what a database error means
- `sqlite`: SQLite's file, write lock file and worker wake-ups
- `ingest`: the webhook path's group commit, compiled statements and deduplication
- `queue`: claims, leases, fence tokens, backoff and dead letters of the delivery queue
- `ratelimit`: the Datadog rate-limit budget every process shares
- `reads`: the admin API's, command line's and status page's reads, pages and cursors
- `housekeeping`: per-rule statistics and retention
"""

from __future__ import annotations

from caselink.store.engine import HEARTBEAT_STATE
from caselink.store.engine import LARGEST_ID
from caselink.store.engine import database_error
from caselink.store.engine import describe_url
from caselink.store.engine import storable_id
from caselink.store.housekeeping import Housekeeping
from caselink.store.housekeeping import PruneBatch
from caselink.store.housekeeping import RuleStats
from caselink.store.ingest import Ingest
from caselink.store.ingest import RecordedEvent
from caselink.store.queue import NOTIFY_CHANNEL
from caselink.store.queue import Job
from caselink.store.queue import Queue
from caselink.store.ratelimit import RateBudget
from caselink.store.reads import EVENT_OUTCOMES
from caselink.store.reads import EVENT_SEARCH_WINDOW
from caselink.store.reads import EventPage
from caselink.store.reads import LinkPage
from caselink.store.reads import Reads
from caselink.store.sqlite import MIN_FREE_BYTES

__all__ = [
    "EVENT_OUTCOMES",
    "EVENT_SEARCH_WINDOW",
    "HEARTBEAT_STATE",
    "LARGEST_ID",
    "MIN_FREE_BYTES",
    "NOTIFY_CHANNEL",
    "EventPage",
    "Job",
    "LinkPage",
    "PruneBatch",
    "RecordedEvent",
    "RuleStats",
    "Store",
    "database_error",
    "describe_url",
    "storable_id",
]


class Store(Ingest, Queue, RateBudget, Reads, Housekeeping):
    """All reads and writes of caselink's state: `Store(DATABASE_URL)`."""
