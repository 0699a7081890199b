"""JSON out on the webhook path: orjson, with the standard library for what orjson refuses.

Every webhook is encoded several times (payload, trace, tags, the answer,
the log line), and orjson encodes several times faster than `json`. It
refuses integers beyond 64 bits, which JSON allows; those go through `json`.
Decoding stays with `json`: orjson turns such integers into floats silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """Encode compactly as text."""
    return dumps_bytes(value, default=default).decode()


def dumps_bytes(value: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """Encode compactly as UTF-8 bytes, ready for a response body or a file."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        return json.dumps(value, default=default, separators=(",", ":")).encode()
