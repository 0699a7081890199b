"""HTTP: the webhook endpoint, health checks, metrics and the admin API.

Views only translate between HTTP and `Service`; every error answer is JSON
`{"error": {"code", "message"}}`, including werkzeug's own 404/405/413.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from typing import overload

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from flask import jsonify
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_input_stream

from caselink import jsontext
from caselink import logs
from caselink import metrics
from caselink.bodies import read_body
from caselink.errors import AuthenticationError
from caselink.errors import BadRequestError
from caselink.errors import CaselinkError
from caselink.events import Headers
from caselink.events import WebhookRequest
from caselink.schema import LINK_STATES
from caselink.service import Service
from caselink.store import LARGEST_ID

bp = Blueprint("caselink", __name__)
api = Blueprint("api", __name__, url_prefix="/api")
log = logs.get("web")


def service() -> Service:
    found: Service = current_app.extensions["caselink"]
    return found


class WebhookEndpoint:
    """`/webhooks/<source>`, answered straight from WSGI; every other request goes on to Flask.

    Acknowledging webhooks is the path every sender waits on, so it skips
    Flask's request context, URL map and response objects (a third of what an
    acknowledgement cost, bench/ack_throughput.py) and reads the WSGI environ
    once. Its answers are the JSON that Flask's error handlers give elsewhere.
    """

    prefix = "/webhooks/"

    def __init__(self, app: Flask) -> None:
        self.flask_wsgi_app = app.wsgi_app
        self.service: Service = app.extensions["caselink"]
        self.config = app.config

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path: str = environ.get("PATH_INFO", "")
        source = path[len(self.prefix) :]
        if not path.startswith(self.prefix) or not source or "/" in source:
            answer = self.flask_wsgi_app(environ, start_response)
            if environ.get("wsgi.input_terminated"):
                # Where reading past the body's end is safe (gunicorn): caselink's pages read no bodies.
                discard_body(environ, self.config["MAX_CONTENT_LENGTH"])
            return answer
        if environ.get("REQUEST_METHOD") == "POST":
            status, body, headers = self.receive(source, environ)
        else:
            status, body, headers = 405, _METHOD_NOT_ALLOWED, [("Allow", "POST")]
        if "caselink.body_read" not in environ:
            discard_body(environ, self.config["MAX_CONTENT_LENGTH"])
        data = jsontext.dumps_bytes(body)
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(_STATUS_LINES[status], headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [data]

    def receive(self, source: str, environ: dict[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        started = time.monotonic()
        svc = self.service
        fields: dict[str, Any] = {"source": source, "remote": environ.get("REMOTE_ADDR")}
        headers: list[tuple[str, str]] = []
        try:
            svc.handler(source)
            # Read, or tried: a body cut short or over the limit is not read again.
            environ["caselink.body_read"] = True
            webhook = WebhookRequest(
                source=source,
                body=read_body(environ, self.config["MAX_CONTENT_LENGTH"]),
                headers=Headers.from_environ(environ),
                content_type=environ.get("CONTENT_TYPE", ""),
                received_at=time.time(),
            )
            fields["bytes"] = len(webhook.body)
            result = svc.ingest(webhook)
            status, body = result.status, result.body()
            fields["events"] = len(result.events)
            fields["new"] = sum(1 for event in result.events if not event["duplicate"])
            conflicts = [event["id"] for event in result.events if event.get("dedup_conflict")]
            if conflicts:
                # New events whose dedup key came before with other content (see their explain record).
                fields["dedup_conflict"] = conflicts
            fields["links_planned"] = result.links_planned
        except CaselinkError as exc:
            status, body, headers = exc.status_code, exc.to_dict(), error_headers(exc)
            fields.update(error=exc.code, reason=exc.detail.get("reason", exc.message))
        except Exception:
            log.exception("unhandled error", extra={"fields": {"path": environ.get("PATH_INFO")}})
            status, body = 500, _INTERNAL_ERROR
            fields["error"] = "internal_error"
        duration = time.monotonic() - started
        fields.update(status=status, duration_ms=round(duration * 1000, 2))
        metrics.TALLY.count(metrics.WEBHOOKS, source if source in svc.handlers else "unknown", str(status))
        metrics.TALLY.observe(metrics.WEBHOOK_SECONDS, duration)
        logs.emit(log, logging.INFO if status < 400 else logging.WARNING, "webhook", fields)
        return status, body, headers


def discard_body(environ: dict[str, Any], limit: int | None) -> None:
    """Read and drop a body the answer did not need (404, 405), up to `limit` bytes.

    Otherwise the server must skip it to reach the next request on the
    connection, and gunicorn gives up past 64 KiB and drops the connection
    after answering keep-alive: the client's next request on it would fail.
    """
    if environ.get("CONTENT_LENGTH", "") in ("", "0") and not environ.get("HTTP_TRANSFER_ENCODING"):
        return
    try:
        stream = get_input_stream(environ, max_content_length=limit)
        left = (limit or 1 << 62) + 1
        while left > 0:
            chunk = stream.read(min(65536, left))
            if not chunk:
                return
            left -= len(chunk)
    except Exception:  # noqa: BLE001, S110 - a body too large or broken: the server closes the connection
        pass


_STATUS_LINES = {code: f"{code} {name.upper()}" for code, name in HTTP_STATUS_CODES.items()}
_METHOD_NOT_ALLOWED = {"error": {"code": "method_not_allowed", "message": "webhooks are sent with POST"}}
_INTERNAL_ERROR = {
    "error": {"code": "internal_error", "message": "caselink failed to handle this request; see its logs"}
}


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    ready, checks = service().readiness()
    return {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503


@bp.get("/metrics")
def metrics_view() -> Response:
    svc = service()
    body = metrics.render(
        svc.store.count_links, svc.settings.prometheus_multiproc_dir, svc.rule_totals, svc.store.count_deferred
    )
    return Response(body, mimetype="text/plain; version=0.0.4")


# -- admin API ------------------------------------------------------------------


@api.before_request
def _admin_only() -> None:
    token = service().settings.admin_token
    if token is None:
        raise AuthenticationError("the API is closed: set ADMIN_TOKEN to open it", reason="api_closed")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.matches(presented.strip()):
        raise AuthenticationError("send Authorization: Bearer <ADMIN_TOKEN>", reason="bad_admin_token")


@api.get("/events")
def list_events() -> dict[str, Any]:
    limit = _int_arg("limit", 50, maximum=500)
    before = _int_arg("before", None, maximum=MAX_ID)
    source = request.args.get("source")
    if source is not None and "\x00" in source:
        raise BadRequestError("source must not hold a NUL character")
    events = service().store.list_events(limit=limit, before=before, source=source)
    return {"events": events}


# Ids are 64-bit; a larger one names nothing (and would overflow the database's integer).
# The store's own bound, which the status page and the CLI meet through the store's reads.
MAX_ID = LARGEST_ID


@api.get(f"/events/<int(max={MAX_ID}):event_id>")
def get_event(event_id: int) -> dict[str, Any]:
    return service().store.get_event(event_id)


@api.get("/links")
def list_links() -> dict[str, Any]:
    state = request.args.get("state")
    if state is not None and state not in LINK_STATES:
        raise BadRequestError(f"state must be one of {', '.join(LINK_STATES)}")
    limit = _int_arg("limit", 100, maximum=1000)
    before = _int_arg("before", None, maximum=MAX_ID)
    return {"links": service().store.list_links(state=state, limit=limit, before=before)}


@api.post(f"/links/<int(max={MAX_ID}):link_id>/retry")
def retry_link(link_id: int) -> dict[str, Any]:
    # The store wakes the delivery worker, wherever it runs.
    return service().retry_link(link_id)


@overload
def _int_arg(name: str, default: int, *, maximum: int | None = None) -> int: ...
@overload
def _int_arg(name: str, default: None, *, maximum: int | None = None) -> int | None: ...
def _int_arg(name: str, default: int | None, *, maximum: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"{name} must be a whole number") from None
    if value < 1 or (maximum is not None and value > maximum):
        raise BadRequestError(f"{name} must be between 1 and {maximum}" if maximum else f"{name} must be 1 or more")
    return value


# -- errors ---------------------------------------------------------------------


def error_headers(exc: CaselinkError) -> list[tuple[str, str]]:
    """What a sender needs besides the JSON: how to authenticate, when to come back."""
    headers = []
    if exc.status_code == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="caselink"'))
    if exc.retryable and exc.status_code == 503:
        headers.append(("Retry-After", "5"))
    return headers


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CaselinkError)
    def _caselink_error(exc: CaselinkError) -> tuple[Response, int]:
        response = jsonify(exc.to_dict())
        response.headers.extend(error_headers(exc))
        return response, exc.status_code

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if code == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            message = f"the body is larger than MAX_BODY_BYTES ({limit} bytes)"
            name = "payload_too_large"
        response = jsonify({"error": {"code": name, "message": message}})
        for header in ("Allow",):
            if exc.get_headers() and dict(exc.get_headers()).get(header):
                response.headers[header] = dict(exc.get_headers())[header]
        return response, code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error", extra={"fields": {"path": request.path}})
        return jsonify(_INTERNAL_ERROR), 500
