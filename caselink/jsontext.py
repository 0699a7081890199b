"""JSON on the webhook path: orjson, with the standard library for what orjson refuses.

Every webhook is decoded once and encoded several times (payload, trace,
tags, the answer, the log line); orjson does both several times faster than
`json`. Where the two differ, `json` decides: orjson refuses integers beyond
64 bits, NaN, lone surrogates and text that is not UTF-8, which `json` reads,
and `json`'s errors name the line and column of a mistake.
"""

from __future__ import annotations

import json
import re
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


# A run of 19 or more digits outside a string may be an integer beyond 64 bits.
_LONG_NUMBER = re.compile(rb'(?<![\w."])-?\d{19}')


def loads(data: bytes) -> Any:
    """Decode JSON exactly as `json.loads` does, through orjson whenever it agrees."""
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)
