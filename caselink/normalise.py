"""Pieces every handler uses to normalise a payload: unrecognised events, tags from labels, times."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from typing import Any

import orjson

from caselink.events import Event
from caselink.events import WebhookRequest
from caselink.events import text

# Epoch numbers above these are milli-, micro- and nanoseconds (Opsgenie sends
# createdAt in ms and updatedAt in ns); 1e11 seconds is in the year 5138.
_EPOCH_DIVISORS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))


def body_digest(body: bytes) -> str:
    """A dedup key for a delivery that carries no id: identical bodies are the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def content_digest(value: Any) -> str:
    """Hex SHA-256 of a JSON value in canonical form (keys sorted), for `Event.digest`."""
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # Integers beyond 64 bits, which JSON allows and orjson refuses.
        encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def unrecognised(source: str, payload: Any, request: WebhookRequest, problem: str, *, part: str = "") -> Event:
    """An authenticated payload the handler cannot read: kept with the reason, never refused."""
    return Event(
        source=source,
        kind="unrecognised",
        dedup_key=body_digest(request.body) + (f"#{part}" if part else ""),
        payload=payload,
        problem=problem,
    )


def rejected(request: WebhookRequest, problem: str, limit: int) -> Event:
    """An authenticated body caselink refused (400, 415), kept as its raw text with the reason.

    The text is the body decoded as UTF-8 with undecodable bytes written as
    `\\xNN`, and NUL as `\\x00` (no store keeps it), cut at `limit` characters.
    """
    raw = request.body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    if len(raw) > limit:
        raw = raw[:limit]
        problem += f" (the body is kept cut to its first {limit} characters)"
    return Event(
        source=request.source,
        kind="rejected",
        dedup_key="rejected:" + body_digest(request.body),
        payload=raw,
        problem=problem,
    )


def mapping(value: Any) -> Mapping[str, Any]:
    """The value if it is an object, else an empty one, so lookups never fail on odd payloads."""
    return value if isinstance(value, Mapping) else {}


def first_text(*values: Any) -> str:
    """The first value that is non-empty text once stripped; empty if none is."""
    for value in values:
        if value is None or isinstance(value, (Mapping, list)):
            continue
        candidate = text(value).strip()
        if candidate:
            return candidate
    return ""


def label_tags(labels: Any) -> dict[str, list[str]]:
    """Labels or details (`{name: value}`) as tags: each value becomes a one-element list."""
    return {str(name): [text(value)] for name, value in mapping(labels).items() if value is not None}


def merge_tags(*sources: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Tags from several places, values kept in order of first appearance, without repeats."""
    merged: dict[str, list[str]] = {}
    for tags in sources:
        for name, values in tags.items():
            bucket = merged.setdefault(name, [])
            bucket.extend(value for value in values if value not in bucket)
    return merged


def iso_from_epoch(value: Any) -> str | None:
    """An epoch number in s, ms, µs or ns as ISO 8601 UTC; None when it is not a usable number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    for threshold, divisor in _EPOCH_DIVISORS:
        if abs(number) >= threshold:
            number /= divisor
            break
    try:
        moment = datetime.fromtimestamp(number, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
