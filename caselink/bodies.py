"""Reading webhook bodies as senders send them: JSON, or form fields that may hold JSON.

Every way a body can be unreadable ends here as a 400 (413, 415) with the
reason: broken chunked framing, text that is not UTF-8, JSON that is not
JSON, and JSON that is valid but that caselink cannot hold: nested deeper
than MAX_JSON_DEPTH, an integer over Python's 4,300 digits, NaN or a number
beyond a double, a lone surrogate or a NUL in any string (neither SQLite's
encoder nor PostgreSQL's text and jsonb can store them).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from caselink.errors import BadRequestError
from caselink.errors import BrokenBodyError
from caselink.errors import PayloadTooLargeError
from caselink.errors import UnsupportedMediaTypeError
from caselink.events import WebhookRequest

JSON_TYPES = ("application/json", "text/json", "text/plain", "")


def read_body(environ: dict[str, Any], limit: int | None) -> bytes:
    """The raw body; 413 when it is over `limit` bytes, whether or not it declares its length.

    Werkzeug refuses a Content-Length over the limit up front, but cuts a
    chunked body off at the limit without a word, which would surface as a
    bad signature or bad JSON. Reading at most one byte more tells a body that
    fits from one that does not, and never holds more than that in memory.
    """
    declared = environ.get("CONTENT_LENGTH", "")
    # 18 digits fit in 64 bits; a longer length is over any limit, and int() of thousands of digits raises.
    length = int(declared) if declared.isascii() and declared.isdigit() and len(declared) <= 18 else None
    if length is None and declared.isdigit() and limit is not None:
        raise PayloadTooLargeError(f"the body is larger than MAX_BODY_BYTES ({limit} bytes)")
    try:
        if length is not None and (limit is None or length <= limit):
            # The common case, a declared length within the limit, read as declared.
            whole: bytes = environ["wsgi.input"].read(length)
            if len(whole) < length:
                raise BrokenBodyError(f"the body ended after {len(whole)} of its {length} bytes")
            return whole
        if limit is None:
            unbounded: bytes = get_input_stream(environ).read()
            return unbounded
        body: bytes | None
        try:
            body = get_input_stream(environ, max_content_length=limit + 1).read()
        except RequestEntityTooLarge:
            body = None
    except BrokenBodyError:
        raise
    except Exception as exc:  # noqa: BLE001 - each server raises its own kinds (gunicorn: ParseException, OSError)
        # A chunk size that is not hex, a chunked body cut short, a connection
        # dropped mid-body: the framing is broken, not caselink.
        raise BrokenBodyError(f"the body could not be read: {_framing_reason(exc)}") from None
    if body is None or len(body) > limit:
        raise PayloadTooLargeError(f"the body is larger than MAX_BODY_BYTES ({limit} bytes)")
    return body


def is_json(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or mimetype.endswith("+json")


def json_body(request: WebhookRequest) -> Any:
    """The body as JSON; 415 for another content type, 400 when it is not JSON."""
    if not is_json(request.mimetype):
        raise UnsupportedMediaTypeError(f"{request.source} webhooks must be application/json, not {request.mimetype}")
    return decode_json(request.body)


def decode_json(body: bytes) -> Any:
    """The body as JSON; 400 with the reason when it is not, or holds what caselink cannot keep.

    Control characters inside strings are read as they are: Datadog fills its
    templates by text substitution, so a message with a newline arrives with a
    raw newline in a JSON string.
    """
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the body is not UTF-8 text (byte {exc.start})", reason="not_utf8") from None
    try:
        return loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", reason="invalid_json"
        ) from None


# JSON nested deeper is refused: no sender's payload comes near it, and encoders and
# rules walk nested values recursively (orjson stops at 255).
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str) -> Any:
    """Decode JSON text; json.JSONDecodeError when it is not JSON, BadRequestError when it
    is JSON that caselink cannot hold (see the module docstring)."""
    try:
        value = json.loads(text, strict=False, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        # int() refuses more than sys.get_int_max_str_digits() digits; _finite_float and
        # _refuse_constant raise their own ValueError.
        message = str(exc).split(";")[0]
        raise BadRequestError(f"the body holds a number caselink cannot read: {message}", reason="bad_number") from None
    # Only walk the value when the text shows it may need it: most bodies are shallow and plain.
    if "\\u" in text or "\x00" in text or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        check_value(value)
    return value


def check_value(value: Any) -> None:
    """400 if a decoded value is nested over MAX_JSON_DEPTH or holds an unstorable string."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item)
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                for key, child in item.items():
                    check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def check_text(text: str) -> None:
    """400 if `text` holds NUL or a lone surrogate, which no store can keep."""
    if "\x00" in text:
        raise BadRequestError("the body holds a NUL character (\\u0000), which caselink cannot store", reason="nul")
    if _SURROGATE.search(text):
        raise BadRequestError(
            "the body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text", reason="lone_surrogate"
        )


def _too_deep() -> BadRequestError:
    return BadRequestError(f"the body is JSON nested deeper than {MAX_JSON_DEPTH} levels", reason="too_deep")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):
        shown = literal if len(literal) <= 20 else literal[:20] + "…"
        raise ValueError(f"{shown} is beyond a double")
    return number


def _framing_reason(exc: Exception) -> str:
    name = type(exc).__name__
    detail = str(exc).splitlines()[0][:100] if str(exc) else ""
    return f"{name}: {detail}" if detail else name


def form_body(request: WebhookRequest) -> dict[str, Any]:
    """A form-encoded body; fields holding JSON objects or lists are decoded, with the same limits."""
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the form body is not UTF-8 text", reason="not_utf8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise BadRequestError(
            "the body is not valid application/x-www-form-urlencoded", reason="invalid_form"
        ) from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        check_text(name)
        check_text(value)
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                fields[name] = loads(stripped)
                continue
            except json.JSONDecodeError:
                pass
        fields[name] = value
    return fields
