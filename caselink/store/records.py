"""How stored rows read out to the admin API, the command line and the status page."""

from __future__ import annotations

import time
from typing import Any

from caselink.events import canonical_kind
from caselink.schema import events

EVENT_SUMMARY_COLUMNS = (
    events.c.id, events.c.source, events.c.kind, events.c.entity_type, events.c.entity_id, events.c.title,
    events.c.received_at, events.c.links_planned, events.c.problem, events.c.deferred,
)  # fmt: skip


def event_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "source": row["source"],
        # Rows stored before kinds were canonical read as new ones are written.
        "kind": canonical_kind(row["kind"]),
        "entity": f"{row['entity_type']}:{row['entity_id']}" if row["entity_type"] else None,
        "title": row["title"],
        "received_at": iso(row["received_at"]),
        "links_planned": row["links_planned"],
        "problem": row["problem"],
        # Waiting for housekeeping to evaluate it (its webhook had used its evaluation time).
        "deferred": bool(row["deferred"]),
    }


def link_record(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "parent": f"{row['parent_type']}:{row['parent_ref']}",
        "relationship": row["relationship"],
        "child": f"{row['child_type']}:{row['child_ref']}",
        "parent_id": row["parent_id"],
        "child_id": row["child_id"],
        "state": row["state"],
        "attempts": row["attempts"],
        "claimed_by": row["claimed_by"],
        "next_attempt_at": iso(row["next_attempt_at"]) if row["state"] == "pending" else None,
        "last_error": row["last_error"],
        "last_status": row["last_status"],
        "datadog_link_id": row["datadog_link_id"],
        "outcome": row["outcome"],
        "merged_into": row["merged_into"],
        "created_at": iso(row["created_at"]),
        "delivered_at": iso(row["delivered_at"]),
    }


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"
