"""The Datadog API client: case links and case keys, on one requests.Session.

Every call has a timeout, is counted against Datadog's rate limits, and turns
any failure into a DatadogError subclass whose type says whether to retry.
Keys travel only in headers and never appear in a message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.util.retry import Retry

from caselink.config import Secret
from caselink.config import Settings
from caselink.errors import DatadogAuthError
from caselink.errors import DatadogError
from caselink.errors import DatadogRateLimitedError
from caselink.errors import DatadogRejectedError
from caselink.errors import DatadogUnavailableError
from caselink.events import is_uuid
from caselink.ratelimit import RateLimiter

USER_AGENT = "caselink/1.0 (+https://github.com/caselink)"
CASE = "GET /api/v2/cases/{case_id}"
CASES = "GET /api/v2/cases"
LIST_LINKS = "GET /api/v2/cases/link"
CREATE_LINK = "POST /api/v2/cases/link"


@dataclass(frozen=True)
class ResolvedLink:
    """A link with both sides as UUIDs, ready for POST /api/v2/cases/link."""

    parent_type: str
    parent_id: str
    relationship: str
    child_type: str
    child_id: str

    def attributes(self) -> dict[str, str]:
        return {
            "parent_entity_type": self.parent_type,
            "parent_entity_id": self.parent_id,
            "relationship": self.relationship,
            "child_entity_type": self.child_type,
            "child_entity_id": self.child_id,
        }


class DatadogClient:
    """Calls to the Datadog API that caselink makes."""

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        app_key: Secret,
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        limiter: RateLimiter | None = None,
        case_cache_ttl: float = 3600.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(3.05, timeout), timeout)
        self.limiter = limiter or RateLimiter()
        self.session = session or requests.Session()
        # Retry only failures to connect: nothing reached Datadog, so even a POST is safe.
        adapter = HTTPAdapter(
            max_retries=Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0, backoff_factor=0.2)
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {
                "DD-API-KEY": api_key.reveal(),
                "DD-APPLICATION-KEY": app_key.reveal(),
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
        )
        self._case_ttl = case_cache_ttl
        self._cases: dict[str, tuple[str, float]] = {}
        self._cases_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DatadogClient:
        assert settings.dd_api_key is not None
        assert settings.dd_app_key is not None
        return cls(
            settings.dd_api_url,
            settings.dd_api_key,
            settings.dd_app_key,
            timeout=settings.dd_timeout,
        )

    @property
    def display_url(self) -> str:
        """The base URL without any user:password a proxy URL may carry."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    # -- cases --------------------------------------------------------------

    def case_id(self, key_or_id: str) -> str:
        """The UUID of a case given its key (OPS-42) or UUID; cached."""
        if is_uuid(key_or_id):
            return key_or_id.lower()
        now = time.monotonic()
        with self._cases_lock:
            cached = self._cases.get(key_or_id)
        if cached and cached[1] > now:
            return cached[0]
        try:
            body = self._call(CASE, "GET", f"/api/v2/cases/{quote(key_or_id, safe='')}")
        except DatadogRejectedError as exc:
            if exc.http_status == 404:
                raise DatadogRejectedError(
                    f"case {key_or_id} does not exist (GET /api/v2/cases/{key_or_id} answered 404)",
                    http_status=404,
                ) from None
            raise
        case_id = _dig(body, "data", "id")
        if not isinstance(case_id, str) or not is_uuid(case_id):
            raise DatadogUnavailableError(
                f"GET /api/v2/cases/{key_or_id} answered without a case UUID", ambiguous=False
            )
        with self._cases_lock:
            self._cases[key_or_id] = (case_id.lower(), now + self._case_ttl)
        return case_id.lower()

    def check_credentials(self) -> None:
        """A cheap authenticated read: raises DatadogAuthError while the keys are rejected."""
        self._call(CASES, "GET", "/api/v2/cases", params={"page[size]": 1})

    # -- links --------------------------------------------------------------

    def list_links(self, entity_type: str, entity_id: str, relationship: str | None = None) -> list[dict[str, Any]]:
        params = {"entity_type": entity_type, "entity_id": entity_id}
        if relationship:
            params["relationship"] = relationship
        body = self._call(LIST_LINKS, "GET", "/api/v2/cases/link", params=params)
        data = body.get("data") if isinstance(body, Mapping) else None
        return [item for item in data if isinstance(item, Mapping)] if isinstance(data, list) else []

    def find_link(self, link: ResolvedLink) -> str | None:
        """The id of this link if it already exists in Datadog."""
        if link.parent_type == "CASE":
            entity_type, entity_id = link.parent_type, link.parent_id
        else:
            entity_type, entity_id = link.child_type, link.child_id
        wanted = _normal(link.attributes())
        for item in self.list_links(entity_type, entity_id, link.relationship):
            attributes = item.get("attributes")
            if not isinstance(attributes, Mapping):
                continue
            found = _normal(attributes)
            if found == wanted or (link.relationship == "RELATES_TO" and _reversed(found) == wanted):
                ident = item.get("id")
                if isinstance(ident, str) and ident:
                    return ident
        return None

    def create_link(self, link: ResolvedLink) -> str:
        body = {"data": {"type": "link", "attributes": link.attributes()}}
        answer = self._call(CREATE_LINK, "POST", "/api/v2/cases/link", json=body)
        ident = _dig(answer, "data", "id")
        if not isinstance(ident, str) or not ident:
            # The link was probably made; the next attempt will find it.
            raise DatadogUnavailableError("POST /api/v2/cases/link answered without a link id", ambiguous=True)
        return ident

    # -- transport ----------------------------------------------------------

    def _call(self, endpoint: str, method: str, path: str, **kwargs: Any) -> Any:
        wait, ticket = self.limiter.reserve(endpoint)
        if wait > 0:
            raise DatadogRateLimitedError(
                f"{endpoint}: rate limit spent, next request in {wait:.1f}s",
                retry_after=wait,
                sent=False,
            )
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            self.limiter.settle(endpoint, ticket, None, None)
            raise _transport_error(endpoint, exc) from None
        self.limiter.settle(endpoint, ticket, response.headers, response.status_code)
        if response.status_code >= 400:
            raise _status_error(endpoint, response)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise DatadogUnavailableError(
                f"{endpoint} answered {response.status_code} with a body that is not JSON",
                ambiguous=True,
                http_status=response.status_code,
            ) from None


def _transport_error(endpoint: str, exc: requests.RequestException) -> DatadogError:
    if isinstance(exc, requests.ConnectTimeout):
        return DatadogUnavailableError(f"{endpoint}: timed out connecting to Datadog", ambiguous=False)
    if isinstance(exc, requests.Timeout):
        return DatadogUnavailableError(f"{endpoint}: no answer from Datadog in time", ambiguous=True)
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, NewConnectionError):
            return DatadogUnavailableError(f"{endpoint}: cannot connect to Datadog", ambiguous=False)
        return DatadogUnavailableError(f"{endpoint}: the connection to Datadog broke", ambiguous=True)
    return DatadogUnavailableError(f"{endpoint}: {type(exc).__name__}", ambiguous=True)


def _status_error(endpoint: str, response: requests.Response) -> DatadogError:
    status = response.status_code
    detail = _error_detail(response)
    message = f"{endpoint} answered {status}" + (f": {detail}" if detail else "")
    if status == 429:
        reset = response.headers.get("X-RateLimit-Reset") or response.headers.get("Retry-After")
        try:
            retry_after = float(reset) if reset is not None else None
        except ValueError:
            retry_after = None
        return DatadogRateLimitedError(message, retry_after=retry_after, http_status=status, sent=True)
    if status in (401, 403):
        return DatadogAuthError(message, http_status=status)
    if status >= 500 or status == 408:
        return DatadogUnavailableError(message, ambiguous=True, http_status=status)
    return DatadogRejectedError(message, http_status=status)


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors[:3]:
        if isinstance(error, Mapping):
            parts.append(" ".join(str(error[key]) for key in ("title", "detail") if error.get(key)))
        else:
            parts.append(str(error))
    return "; ".join(part for part in parts if part)[:300]


def _dig(body: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(body, Mapping):
            return None
        body = body.get(key)
    return body


def _normal(attributes: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(
        str(attributes.get(key, "")).upper()
        if key.endswith("type") or key == "relationship"
        else str(attributes.get(key, "")).lower()
        for key in ("parent_entity_type", "parent_entity_id", "relationship", "child_entity_type", "child_entity_id")
    )


def _reversed(normal: tuple[str, ...]) -> tuple[str, ...]:
    parent_type, parent_id, relationship, child_type, child_id = normal
    return (child_type, child_id, relationship, parent_type, parent_id)
