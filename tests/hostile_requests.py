"""Hypothesis strategies for hostile requests: every webhook source and the admin API.

A `Case` is one HTTP request (method, path, headers, body). Most webhook cases
authenticate correctly, so that the body reaches the parser and the store; the
bodies are the sample payloads with a hostile value planted somewhere, broken
bytes, form bodies, or anything at all. tests/test_web_fuzz.py sends them to
the WSGI app in process, bench/fuzz_requests.py to gunicorn.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import quote
from urllib.parse import urlencode

from hypothesis import strategies as st

from tests.handlers.conftest import basic_auth
from tests.handlers.conftest import grafana_signature
from tests.handlers.conftest import pagerduty_signature
from tests.handlers.conftest import standard_headers
from tests.servers import ADMIN_TOKEN
from tests.servers import WEBHOOK_SECRET

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SECRETS = {
    "datadog": WEBHOOK_SECRET,
    "pagerduty": "pd-fuzz-secret",
    "opsgenie": "og-fuzz-token",
    "alertmanager": "am-fuzz-token",
    "grafana": "gf-fuzz-secret",
    "generic": "whsec_ZTJlLXN0YW5kYXJkLXdlYmhvb2tzLXNlY3JldA==",
}
SOURCES = tuple(SECRETS)
ENV = {f"{source.upper()}_WEBHOOK_SECRET": secret for source, secret in SECRETS.items()}
SAMPLES = {source: [path.read_bytes() for path in sorted((FIXTURES / source).glob("*.json"))] for source in SOURCES}

# JSON text (or bytes) that is valid or nearly so, and that each broke something once.
HOSTILE_VALUES: list[bytes] = [
    b"[" * 979 + b"]" * 979,
    b'{"a":' * 200 + b"1" + b"}" * 200,
    b"[" * 65 + b"]" * 65,
    b"1" * 4301,
    b"-" + b"9" * 5000,
    b"1" * 4300,
    b"1e400",
    b"-1e400",
    b"1" * 400 + b".5",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"a\\udbff"',
    b'"\\ud83d\\ude00"',
    b'"\xed\xa0\x80"',
    b'"\xff\xfe"',
    b'"\\u0000"',
    b'"a\x00b"',
    b'"raw\nnewline\ttab\x01"',
    b'"' + b"x" * 70_000 + b'"',
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1.7976931348623157e308",
    b"5e-324",
    b"-0",
    b"true",
    b"null",
    b"{}",
    b"[]",
    b'{"\\u0000": 1}',
    b'{"\\ud800": 1}',
]
PLACEHOLDER = "\u2603hostile\u2603"
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/vnd.pagerduty+json",
    "application/xml",
    "",
    "multipart/form-data; boundary=x",
]
ADMIN_NUMBERS = [
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "9" * 30,
    "9" * 5000,
    "0",
    "-1",
    "1",
    "1.5",
    "1e3",
    "0x10",
    "\u0661",
    "%00",
    "",
    "1_000",
]


@dataclass
class Case:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        return f"Case({self.method} {self.path!r} headers={self.headers!r} body={self.body[:300]!r}…{len(self.body)}B)"


def authenticate(source: str, body: bytes, delivery: str) -> dict[str, str]:
    """Headers that authenticate `body` as `source` does (see tests/test_senders_e2e.py)."""
    secret = SECRETS[source]
    if source == "pagerduty":
        return {"X-PagerDuty-Signature": pagerduty_signature(body, secret), "X-Webhook-Id": delivery}
    if source == "alertmanager":
        return {"Authorization": basic_auth(secret, user="alertmanager")}
    if source == "grafana":
        stamp = str(int(time.time()))
        return {
            "X-Grafana-Alerting-Signature": grafana_signature(body, secret, stamp),
            "X-Grafana-Alerting-Timestamp": stamp,
        }
    if source == "generic":
        return standard_headers(f"msg_{delivery}", time.time(), body, secret)
    return {"Authorization": f"Bearer {secret}"}


def _planted(sample: bytes, draw: st.DrawFn) -> bytes:
    """The sample with one value, or one key's value deep inside, replaced by a hostile one."""
    payload = json.loads(sample)
    node = payload
    for _ in range(draw(st.integers(0, 4))):
        children = [key for key, value in node.items() if isinstance(value, dict)] if isinstance(node, dict) else []
        if not children:
            break
        node = node[draw(st.sampled_from(sorted(children)))]
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)) | st.just("planted"))
        node[key] = PLACEHOLDER
    else:
        payload = {"planted": PLACEHOLDER}
    return json.dumps(payload).encode().replace(json.dumps(PLACEHOLDER).encode(), draw(st.sampled_from(HOSTILE_VALUES)))


@st.composite
def bodies(draw: st.DrawFn, source: str) -> tuple[bytes, str]:
    """A body and its content type."""
    sample = draw(st.sampled_from(SAMPLES[source]))
    kind = draw(st.sampled_from(["planted", "planted", "planted", "mangled", "form", "value", "bytes"]))
    content_type = "application/json"
    if kind == "planted":
        body = _planted(sample, draw)
    elif kind == "mangled":
        at = draw(st.integers(0, len(sample)))
        body = sample[:at] + draw(st.binary(max_size=8)) + sample[at + draw(st.integers(0, 8)) :]
    elif kind == "form":
        fields = {key: json.dumps(value) for key, value in json.loads(sample).items()}
        hostile = draw(st.sampled_from(HOSTILE_VALUES)).decode("utf-8", "surrogateescape")
        fields[draw(st.sampled_from(sorted(fields)) | HEADER_TEXT)] = hostile
        body = urlencode(fields, errors="surrogateescape").encode()
        content_type = "application/x-www-form-urlencoded"
    elif kind == "value":
        body = draw(st.sampled_from(HOSTILE_VALUES))
    else:
        body = draw(st.binary(max_size=200))
    if draw(st.sampled_from([False] * 9 + [True])):
        content_type = draw(st.sampled_from(CONTENT_TYPES) | HEADER_TEXT)
    return body, content_type


@st.composite
def webhook_cases(draw: st.DrawFn) -> Case:
    source = draw(st.sampled_from(SOURCES))
    if draw(st.sampled_from([False] * 19 + [True])):
        source = draw(st.sampled_from(["", "nagios", "datadog/x", "%00", "\u00e9"]))
    body, content_type = draw(bodies(source if source in SECRETS else "datadog"))
    headers = {"Content-Type": content_type}
    # Hypothesis draws small integers and first elements more often: authenticate is first.
    if source in SECRETS and draw(st.sampled_from([True] * 9 + [False])):
        headers.update(authenticate(source, body, draw(st.text("abcdef0123456789", min_size=1, max_size=12))))
    for _ in range(draw(st.sampled_from([0] * 6 + [1, 2]))):
        name = draw(
            st.sampled_from(
                [
                    "Authorization",
                    "X-Webhook-Token",
                    "X-PagerDuty-Signature",
                    "X-Webhook-Id",
                    "webhook-id",
                    "webhook-timestamp",
                    "webhook-signature",
                    "X-Grafana-Alerting-Signature",
                    "X-Grafana-Alerting-Timestamp",
                ]
            )
        )
        headers[name] = draw(HEADER_TEXT | st.sampled_from(["Bearer " + "é" * 3, "Basic %%%", "9" * 5000, ""]))
    method = draw(st.sampled_from(["POST"] * 30 + ["GET", "PUT", "HEAD"]))
    return Case(method, "/webhooks/" + quote(source, safe="/"), headers, body)


@st.composite
def admin_cases(draw: st.DrawFn) -> Case:
    number = quote(draw(st.sampled_from(ADMIN_NUMBERS) | st.integers(-(2**70), 2**70).map(str) | HEADER_TEXT), safe="%")
    path = draw(
        st.sampled_from(
            [
                "/api/events/{n}",
                "/api/events?before={n}",
                "/api/events?limit={n}",
                "/api/events?source={n}",
                "/api/events?source=datadog&before={n}&limit={n}",
                "/api/links?before={n}",
                "/api/links?limit={n}",
                "/api/links?state={n}",
                "/api/links/{n}/retry",
            ]
        )
    ).format(n=number)
    method = "POST" if path.endswith("/retry") else "GET"
    token = draw(st.sampled_from([ADMIN_TOKEN] * 8 + ["wrong", "é"]))
    return Case(method, path, {"Authorization": f"Bearer {token}"})


def cases() -> st.SearchStrategy[Case]:
    return st.one_of(webhook_cases(), webhook_cases(), webhook_cases(), admin_cases())
