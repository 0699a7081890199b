"""A stand-in for the Datadog API on loopback, for end-to-end tests and benchmarks.

It checks what caselink sends (keys, JSON:API body, entity types, UUIDs),
records every request and every link it creates, and can be scripted to fail
the way the real API does: 429 with rate-limit headers, 5xx, slow answers,
connections dropped after the link was recorded, and rejected keys.

In a test: `FakeDatadog().start()`; from a shell or a benchmark:
`python tests/fake_datadog.py --port 9000`, configured over `/_fake/*`.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import threading
import time
import uuid
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

ENTITY_TYPES = {"CASE", "INCIDENT", "PAGE", "AGENT_CONVERSATION"}
RELATIONSHIPS = {"RELATES_TO", "CAUSES", "BLOCKS", "DUPLICATES", "PARENT_OF", "SUCCESSOR_OF", "ESCALATES_TO"}
LINK_ATTRIBUTES = {"parent_entity_id", "parent_entity_type", "child_entity_id", "child_entity_type", "relationship"}
API_KEY = "fake-api-key"
APP_KEY = "fake-application-key"
CREATE_PATH = "/api/v2/cases/link"
FAULTS = ("500", "503_after_record", "timeout_after_record", "drop_after_record", "drop_before_record")
# Ways to answer every call badly (Script.answer_all): a status with Datadog's error body
# (429 without any X-RateLimit-* or Retry-After header; 429_reset: with a minute to wait),
# 200 with a body that is not JSON, 200 with JSON that is not what was asked for, a
# connection closed without an answer (drop) or reset (RST), or no answer until the
# client gives up (hold: `timeout_seconds`, then dropped).
BAD_ANSWERS = ("401", "403", "404", "429", "429_reset", "500", "garbage", "wrong_json", "drop", "reset", "hold")


def case_uuid(key: str) -> str:
    """The UUID the fake gives case `key`: stable, so tests can predict it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"caselink-fake-case:{key}"))


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int | None
    body: Any = None
    at: float = 0.0
    fault: str | None = None


@dataclass
class Limit:
    limit: int
    period: float
    name: str
    window: int = -1
    used: int = 0


@dataclass
class Script:
    """How the fake misbehaves; every field can be changed while it runs."""

    fail_ratio: float = 0.0
    faults: tuple[str, ...] = FAULTS
    # which calls may fail: "create" (POST link), "read" (every GET)
    fault_on: tuple[str, ...] = ("create", "read")
    slow_seconds: float = 0.0
    timeout_seconds: float = 3.0
    reject_keys: bool = False
    seed: int | None = None
    # endpoint -> Limit; endpoints: "create", "list", "case"
    limits: dict[str, Limit] = field(default_factory=dict)
    # a queue of forced statuses for the next create calls, e.g. [500, 401]
    next_create: list[int] = field(default_factory=list)
    # answer every API call badly, one of BAD_ANSWERS (None: answer properly)
    answer_all: str | None = None


class FakeDatadog:
    def __init__(self, *, api_key: str = API_KEY, app_key: str = APP_KEY, cases: list[str] | None = None) -> None:
        self.api_key = api_key
        self.app_key = app_key
        self.cases: dict[str, str] = {}
        for key in cases if cases is not None else ["OPS-42", "OPS-50", "SEC-7"]:
            self.add_case(key)
        self.links: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self.script = Script()
        self.too_many = 0
        self._random = random.Random()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------

    def add_case(self, key: str, case_id: str | None = None) -> str:
        self.cases[key] = case_id or case_uuid(key)
        return self.cases[key]

    def start(self, port: int = 0) -> FakeDatadog:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-datadog", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def configure(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                if name == "limits":
                    value = {endpoint: Limit(**spec) for endpoint, spec in value.items()}
                if name in ("faults", "fault_on"):
                    value = tuple(value)
                if name == "seed" and value is not None:
                    self._random.seed(value)
                setattr(self.script, name, value)

    def reset(self) -> None:
        with self._lock:
            self.links.clear()
            self.requests.clear()
            self.too_many = 0
            self.script = Script()

    def creations(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/api/v2/cases/link"]

    def link_counts(self) -> dict[tuple[str, str, str, str, str], int]:
        """How many times each distinct link was created (1 everywhere = exactly once)."""
        counts: dict[tuple[str, str, str, str, str], int] = {}
        with self._lock:
            for link in self.links:
                a = link["attributes"]
                key = (
                    a["parent_entity_type"],
                    a["parent_entity_id"],
                    a["relationship"],
                    a["child_entity_type"],
                    a["child_entity_id"],
                )
                counts[key] = counts.get(key, 0) + 1
        return counts

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "links": list(self.links),
                "requests": len(self.requests),
                "creations": sum(1 for r in self.requests if r.method == "POST" and r.path == "/api/v2/cases/link"),
                "too_many": self.too_many,
                "statuses": _count(r.status for r in self.requests),
                "script": {k: v for k, v in asdict(self.script).items() if k != "limits"},
            }

    # -- the API ----------------------------------------------------------------

    def handle(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        body = handler.read_body()
        if parts.path.startswith("/_fake/"):
            return self._control(handler, parts.path, body)
        record = Recorded(handler.command, parts.path, query, None, _maybe_json(body), time.time())
        with self._lock:
            self.requests.append(record)
        if self.script.slow_seconds:
            time.sleep(self.script.slow_seconds)
        if self.script.answer_all is not None:
            return self._answer_badly(handler, record, self.script.answer_all)
        if not self._authorised(handler):
            return self._answer(handler, record, 403, {"errors": ["Forbidden"]})
        if handler.command == "GET" and self._read_fault(handler, record):
            return None
        if handler.command == "POST" and parts.path == "/api/v2/cases/link":
            return self._create(handler, record)
        if handler.command == "GET" and parts.path == "/api/v2/cases/link":
            return self._list(handler, record, query)
        if handler.command == "GET" and parts.path == "/api/v2/cases":
            return self._answer(handler, record, 200, {"data": [], "meta": {"page": {"current": 1}}}, endpoint="case")
        if handler.command == "GET" and parts.path.startswith("/api/v2/cases/"):
            return self._case(handler, record, parts.path.rsplit("/", 1)[1])
        return self._answer(handler, record, 404, {"errors": ["Not found"]})

    def _answer_badly(self, handler: _Handler, record: Recorded, how: str) -> None:
        record.fault = how
        if how == "drop":
            return handler.drop()
        if how == "reset":
            return handler.reset()
        if how == "hold":
            time.sleep(self.script.timeout_seconds)
            return handler.drop()
        if how == "429_reset":
            record.status = 429
            headers = {
                "X-RateLimit-Limit": "10",
                "X-RateLimit-Period": "60",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "60",
                "X-RateLimit-Name": "fake_everything",
            }
            return handler.send(429, {"errors": ["Too many requests"]}, headers)
        if how == "garbage":
            record.status = 200
            return handler.send_raw(200, b"<html>Bad gateway, try later</html>", "text/html")
        if how == "wrong_json":
            return self._answer(handler, record, 200, {"data": "nothing here", "meta": None})
        status = int(how)
        self._answer(handler, record, status, {"errors": [f"answered {status} on purpose"]})

    def _authorised(self, handler: _Handler) -> bool:
        if self.script.reject_keys:
            return False
        return (
            handler.headers.get("DD-API-KEY") == self.api_key
            and handler.headers.get("DD-APPLICATION-KEY") == self.app_key
        )

    def _case(self, handler: _Handler, record: Recorded, key: str) -> None:
        case_id = self.cases.get(key) or (key if key in self.cases.values() else None)
        if case_id is None:
            return self._answer(
                handler,
                record,
                404,
                {"errors": [{"code": "resource_not_found", "title": "case not found"}]},
                endpoint="case",
            )
        reverse = {v: k for k, v in self.cases.items()}
        body = {
            "data": {"id": case_id, "type": "case", "attributes": {"key": reverse.get(case_id, key), "title": "A case"}}
        }
        self._answer(handler, record, 200, body, endpoint="case")

    def _list(self, handler: _Handler, record: Recorded, query: dict[str, list[str]]) -> None:
        entity_type = (query.get("entity_type") or [""])[0]
        entity_id = (query.get("entity_id") or [""])[0]
        relationship = (query.get("relationship") or [None])[0]
        if not entity_type or not entity_id:
            return self._answer(handler, record, 400, {"errors": ["entity_type and entity_id are required"]})
        if self._over_limit(handler, record, "list"):
            return None
        with self._lock:
            found = [
                link
                for link in self.links
                if (
                    (
                        link["attributes"]["parent_entity_type"] == entity_type
                        and link["attributes"]["parent_entity_id"] == entity_id
                    )
                    or (
                        link["attributes"]["child_entity_type"] == entity_type
                        and link["attributes"]["child_entity_id"] == entity_id
                    )
                )
                and (relationship is None or link["attributes"]["relationship"] == relationship)
            ]
        self._answer(handler, record, 200, {"data": found}, endpoint="list")

    def _create(self, handler: _Handler, record: Recorded) -> None:
        problem = _check_link_request(handler, record.body, set(self.cases.values()))
        if problem:
            status, message = problem
            return self._answer(handler, record, status, {"errors": [message]})
        if self._over_limit(handler, record, "create"):
            return None
        forced = None
        with self._lock:
            if self.script.next_create:
                forced = self.script.next_create.pop(0)
        if forced is not None:
            return self._answer(handler, record, forced, {"errors": [f"forced {forced}"]}, endpoint="create")
        fault = self._roll("create")
        record.fault = fault
        if fault == "500":
            return self._answer(handler, record, 500, {"errors": ["Internal Server Error"]}, endpoint="create")
        if fault == "drop_before_record":
            record.status = None
            return handler.drop()
        link = {"id": str(uuid.uuid4()), "type": "link", "attributes": dict(record.body["data"]["attributes"])}
        with self._lock:
            self.links.append(link)
        if fault == "503_after_record":
            return self._answer(handler, record, 503, {"errors": ["Service Unavailable"]}, endpoint="create")
        if fault == "drop_after_record":
            record.status = None
            return handler.drop()
        if fault == "timeout_after_record":
            time.sleep(self.script.timeout_seconds)
            record.status = None
            return handler.drop()
        self._answer(handler, record, 201, {"data": link}, endpoint="create")

    def _roll(self, call: str) -> str | None:
        with self._lock:
            if call not in self.script.fault_on:
                return None
            if self.script.fail_ratio and self._random.random() < self.script.fail_ratio:
                return self._random.choice(self.script.faults)
        return None

    def _read_fault(self, handler: _Handler, record: Recorded) -> bool:
        """A read fails like a write would, minus the recording: 5xx, a hang, or a dropped connection."""
        fault = self._roll("read")
        record.fault = fault
        if fault is None:
            return False
        if fault in ("500", "503_after_record"):
            self._answer(handler, record, 503, {"errors": ["Service Unavailable"]})
        elif fault == "timeout_after_record":
            time.sleep(self.script.timeout_seconds)
            handler.drop()
        else:
            handler.drop()
        return True

    def _over_limit(self, handler: _Handler, record: Recorded, endpoint: str) -> bool:
        limit = self.script.limits.get(endpoint)
        if limit is None:
            return False
        with self._lock:
            now = time.time()
            window = int(now // limit.period)
            if window != limit.window:
                limit.window, limit.used = window, 0
            if limit.used < limit.limit:
                limit.used += 1
                return False
            self.too_many += 1
        self._answer(handler, record, 429, {"errors": ["Too many requests"]}, endpoint=endpoint)
        return True

    def _rate_headers(self, endpoint: str | None) -> dict[str, str]:
        limit = self.script.limits.get(endpoint or "")
        if limit is None:
            return {}
        now = time.time()
        window = int(now // limit.period)
        used = limit.used if window == limit.window else 0
        return {
            "X-RateLimit-Limit": str(limit.limit),
            "X-RateLimit-Period": str(int(limit.period)) if limit.period == int(limit.period) else str(limit.period),
            "X-RateLimit-Remaining": str(max(limit.limit - used, 0)),
            "X-RateLimit-Reset": f"{limit.period - (now % limit.period):.3f}",
            "X-RateLimit-Name": limit.name,
        }

    def _answer(
        self, handler: _Handler, record: Recorded, status: int, body: Any, *, endpoint: str | None = None
    ) -> None:
        record.status = status
        handler.send(status, body, self._rate_headers(endpoint))

    def _control(self, handler: _Handler, path: str, body: bytes) -> None:
        if path == "/_fake/state":
            return handler.send(200, self.state())
        if path == "/_fake/configure":
            self.configure(**json.loads(body or b"{}"))
            return handler.send(200, {"ok": True})
        if path == "/_fake/reset":
            self.reset()
            return handler.send(200, {"ok": True})
        if path == "/_fake/requests":
            # Every recorded request from index `since` on, with the time it arrived.
            since = max(int((parse_qs(urlsplit(handler.path).query).get("since") or ["0"])[0]), 0)
            with self._lock:
                listed = [_request_row(since + offset, record) for offset, record in enumerate(self.requests[since:])]
            return handler.send(200, {"next": since + len(listed), "requests": listed})
        if path == "/_fake/summary":
            with self._lock:
                summary = {
                    "requests": len(self.requests),
                    "creations": sum(1 for r in self.requests if r.method == "POST" and r.path == CREATE_PATH),
                    "links": len(self.links),
                    "too_many": self.too_many,
                }
            return handler.send(200, summary)
        if path == "/_fake/cases":
            for key in json.loads(body or b"[]"):
                self.add_case(key)
            return handler.send(200, {"cases": self.cases})
        handler.send(404, {"errors": ["no such control endpoint"]})


def _request_row(index: int, record: Recorded) -> dict[str, Any]:
    row: dict[str, Any] = {
        "i": index,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "at": record.at,
        "fault": record.fault,
    }
    if record.method == "POST" and record.path == CREATE_PATH and isinstance(record.body, dict):
        data = record.body.get("data")
        attributes = data.get("attributes") if isinstance(data, dict) else None
        row["link"] = attributes if isinstance(attributes, dict) else None
    return row


def _check_link_request(handler: _Handler, body: Any, case_ids: set[str]) -> tuple[int, str] | None:
    if handler.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
        return 415, "Content-Type must be application/json"
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return 400, "body must be {data: {type, attributes}}"
    data = body["data"]
    if data.get("type") != "link":
        return 400, "data.type must be link"
    attributes = data.get("attributes")
    if not isinstance(attributes, dict) or set(attributes) != LINK_ATTRIBUTES:
        return 400, f"data.attributes must have exactly {sorted(LINK_ATTRIBUTES)}"
    for side in ("parent", "child"):
        if attributes[f"{side}_entity_type"] not in ENTITY_TYPES:
            return 400, f"{side}_entity_type is not a valid entity type"
        try:
            uuid.UUID(attributes[f"{side}_entity_id"])
        except (ValueError, TypeError, AttributeError):
            return 400, f"{side}_entity_id must be a UUID"
        if attributes[f"{side}_entity_type"] == "CASE" and attributes[f"{side}_entity_id"] not in case_ids:
            return 404, f"{side} case not found"
    if attributes["relationship"] not in RELATIONSHIPS:
        return 400, "relationship is not valid"
    if "CASE" not in (attributes["parent_entity_type"], attributes["child_entity_type"]):
        return 400, "at least one entity must be a case"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    fake: FakeDatadog


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each answer
    # would wait ~40 ms for the client's acknowledgement.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def send_raw(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def drop(self) -> None:
        """Close the connection without an answer, as a crashed proxy would."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def reset(self) -> None:
        """Close the connection with a TCP reset (RST), as a crashing load balancer might."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.fake.handle(self)

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake.handle(self)


def _maybe_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body.decode("utf-8", "replace")


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--cases", default="OPS-42,OPS-50,SEC-7", help="case keys the fake knows")
    args = parser.parse_args()
    fake = FakeDatadog(cases=[key for key in args.cases.split(",") if key]).start(args.port)
    print(f"fake Datadog on {fake.url} (keys: {fake.api_key} / {fake.app_key})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
