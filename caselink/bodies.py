"""Reading webhook bodies as senders send them: JSON, or form fields that may hold JSON."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from caselink.errors import BadRequestError
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
    length = int(declared) if declared.isdigit() else None
    if length is not None and (limit is None or length <= limit):
        # The common case, a declared length within the limit, read as declared.
        whole: bytes = environ["wsgi.input"].read(length)
        if len(whole) < length:
            raise BadRequestError(f"the body ended after {len(whole)} of its {length} bytes")
        return whole
    if limit is None:
        return get_input_stream(environ).read()
    try:
        body = get_input_stream(environ, max_content_length=limit + 1).read()
    except RequestEntityTooLarge:
        body = None
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
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise BadRequestError("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def form_body(request: WebhookRequest) -> dict[str, Any]:
    """A form-encoded body; fields holding JSON objects or lists are decoded."""
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the form body is not UTF-8 text") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise BadRequestError("the body is not valid application/x-www-form-urlencoded") from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                fields[name] = json.loads(stripped)
                continue
            except json.JSONDecodeError:
                pass
        fields[name] = value
    return fields
