"""The Datadog API client: case links and case keys, on one requests.Session.

Every call has a timeout, is counted against Datadog's rate limits, and turns
any failure into a DatadogError subclass whose type says whether to retry and,
for a request that got no answer, whether it may have reached Datadog.
Keys travel only in headers and never appear in a message.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.util.retry import Retry

from caselink.config import Secret
from caselink.config import Settings
from caselink.config import display_url
from caselink.errors import ConfigError
from caselink.errors import DatadogAuthError
from caselink.errors import DatadogError
from caselink.errors import DatadogRateLimitedError
from caselink.errors import DatadogRejectedError
from caselink.errors import DatadogUnavailableError
from caselink.events import is_uuid
from caselink.ratelimit import RateLimiter
from caselink.ratelimit import parse_seconds

USER_AGENT = "caselink/1.0 (+https://github.com/caselink)"
CASE = "GET /api/v2/cases/{case_id}"
CASES = "GET /api/v2/cases"
LIST_LINKS = "GET /api/v2/cases/link"
CREATE_LINK = "POST /api/v2/cases/link"

# Raised before a request is sent at all: a bad URL or header never leaves the process.
_NEVER_SENT = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
)


@dataclass(frozen=True)
class ResolvedLink:
    """A link with both sides as UUIDs, ready for POST /api/v2/cases/link."""

    parent_type: str
    parent_id: str
    relationship: str
    child_type: str
    child_id: str

    def attributes(self) -> dict[str, str]:
        """The five attributes of a CaseLinkCreate."""
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
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.session = session if session is not None else requests.Session()
        # Retry only failures to connect: nothing reached Datadog, so even a POST is safe.
        # A read error is never retried here; the worker checks for the link first.
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
        self._secrets = (api_key, app_key)
        self._case_ttl = case_cache_ttl
        self._cases: dict[str, tuple[str, float]] = {}
        self._cases_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, limiter: RateLimiter | None = None) -> DatadogClient:
        """A client for live mode; ConfigError if the keys are missing."""
        if settings.dd_api_key is None or settings.dd_app_key is None:
            raise ConfigError("DD_API_KEY and DD_APP_KEY must both be set to call Datadog")
        return cls(
            settings.dd_api_url,
            settings.dd_api_key,
            settings.dd_app_key,
            timeout=settings.dd_timeout,
            limiter=limiter,
        )

    @property
    def display_url(self) -> str:
        """The base URL without any user:password a proxy URL may carry."""
        return display_url(self.base_url)

    def __repr__(self) -> str:
        return f"DatadogClient({self.display_url!r})"

    # -- cases --------------------------------------------------------------

    def case_id(self, key_or_id: str) -> str:
        """The UUID of a case given its key (OPS-42) or UUID; cached."""
        key_or_id = key_or_id.strip()
        if is_uuid(key_or_id):
            return key_or_id.lower()
        now = time.monotonic()
        with self._cases_lock:
            cached = self._cases.get(key_or_id)
        if cached and cached[1] > now:
            return cached[0]
        path = f"/api/v2/cases/{quote(key_or_id, safe='')}"
        try:
            body = self._call(CASE, "GET", path)
        except DatadogRejectedError as exc:
            if exc.http_status == 404:
                raise DatadogRejectedError(
                    f"case {key_or_id} does not exist (GET {path} answered 404)", http_status=404
                ) from None
            raise
        case_id = _dig(body, "data", "id")
        if not isinstance(case_id, str) or not is_uuid(case_id):
            raise DatadogUnavailableError(f"GET {path} answered without a case UUID", ambiguous=False)
        with self._cases_lock:
            self._cases[key_or_id] = (case_id.lower(), now + self._case_ttl)
        return case_id.lower()

    def check_credentials(self) -> None:
        """A cheap authenticated read: raises DatadogAuthError while the keys are rejected."""
        self._call(CASES, "GET", "/api/v2/cases", params={"page[size]": 1})

    # -- links --------------------------------------------------------------

    def list_links(self, entity_type: str, entity_id: str, relationship: str | None = None) -> list[dict[str, Any]]:
        """The links Datadog holds for one entity, optionally of one relationship."""
        params = {"entity_type": entity_type, "entity_id": entity_id}
        if relationship:
            params["relationship"] = relationship
        body = self._call(LIST_LINKS, "GET", "/api/v2/cases/link", params=params)
        data = _dig(body, "data")
        if not isinstance(data, list):
            # Reading a malformed answer as "no links" would let the worker create a duplicate.
            raise DatadogUnavailableError(f"{LIST_LINKS} answered without a list of links", ambiguous=False)
        return [item for item in data if isinstance(item, dict)]

    def find_link(self, link: ResolvedLink) -> str | None:
        """The id of this link if it already exists in Datadog."""
        if link.parent_type == "CASE":
            entity_type, entity_id = link.parent_type, link.parent_id
        elif link.child_type == "CASE":
            entity_type, entity_id = link.child_type, link.child_id
        else:
            raise DatadogRejectedError(
                f"link {link.parent_type} {link.relationship} {link.child_type} has no CASE side; "
                "Datadog requires at least one side of a link to be a CASE"
            )
        wanted = _normal(link.attributes())
        for item in self.list_links(entity_type, entity_id, link.relationship):
            attributes = item.get("attributes")
            if not isinstance(attributes, Mapping):
                continue
            found = _normal(attributes)
            if found == wanted or (wanted[2] == "RELATES_TO" and _reversed(found) == wanted):
                ident = item.get("id")
                if isinstance(ident, str) and ident:
                    return ident
        return None

    def create_link(self, link: ResolvedLink) -> str:
        """POST the link; returns its id."""
        body = {"data": {"type": "link", "attributes": link.attributes()}}
        answer = self._call(CREATE_LINK, "POST", "/api/v2/cases/link", json=body)
        ident = _dig(answer, "data", "id")
        if not isinstance(ident, str) or not ident:
            # The link was probably made; the next attempt will find it.
            raise DatadogUnavailableError(f"{CREATE_LINK} answered without a link id", ambiguous=True)
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
        settled = False
        try:
            try:
                # Never follow a redirect: requests would carry the DD-* key headers to wherever it points.
                response = self.session.request(
                    method, self.base_url + path, timeout=self.timeout, allow_redirects=False, **kwargs
                )
            except requests.RequestException as exc:
                error = _transport_error(endpoint, exc)
                self.limiter.settle(endpoint, ticket, None, None, reached=error.ambiguous)
                settled = True
                raise error from None
            self.limiter.settle(endpoint, ticket, response.headers, response.status_code)
            settled = True
        finally:
            if not settled:
                self.limiter.settle(endpoint, ticket, None, None)
        if not 200 <= response.status_code < 300:
            raise _status_error(endpoint, response, self._secrets)
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


def _transport_error(endpoint: str, exc: requests.RequestException) -> DatadogUnavailableError:
    """Map a failure without an answer; ambiguous unless it certainly happened before sending."""
    causes = list(_causes(exc))
    if isinstance(exc, _NEVER_SENT):
        return DatadogUnavailableError(
            f"{endpoint}: the request could not be built ({type(exc).__name__})", ambiguous=False
        )
    if isinstance(exc, requests.ConnectTimeout) or any(isinstance(c, ConnectTimeoutError) for c in causes):
        # ConnectTimeoutError covers NewConnectionError and NameResolutionError too: no connection, nothing sent.
        return DatadogUnavailableError(f"{endpoint}: cannot connect to Datadog", ambiguous=False)
    if isinstance(exc, requests.exceptions.ProxyError) or any(isinstance(c, Urllib3ProxyError) for c in causes):
        return DatadogUnavailableError(f"{endpoint}: cannot connect through the proxy", ambiguous=False)
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return DatadogUnavailableError(f"{endpoint}: Datadog's TLS certificate was not accepted", ambiguous=False)
    if isinstance(exc, requests.Timeout):
        return DatadogUnavailableError(f"{endpoint}: no answer from Datadog in time", ambiguous=True)
    if isinstance(exc, requests.ConnectionError):
        return DatadogUnavailableError(f"{endpoint}: the connection to Datadog broke", ambiguous=True)
    return DatadogUnavailableError(f"{endpoint}: the answer was lost ({type(exc).__name__})", ambiguous=True)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (args, urllib3's .reason, __cause__).

    Not __context__: an error handled on the way (a connect retry that then
    worked) must not make a later failure look like one before sending.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [arg for arg in current.args if isinstance(arg, BaseException)]
        for attribute in ("reason", "original_error", "__cause__"):
            value = getattr(current, attribute, None)
            if isinstance(value, BaseException):
                nested.append(value)
        stack.extend(nested)


def _status_error(endpoint: str, response: requests.Response, secrets: tuple[Secret, ...]) -> DatadogError:
    status = response.status_code
    detail = _redact(_error_detail(response), secrets)
    message = f"{endpoint} answered {status}" + (f": {detail}" if detail else "")
    if status == 429:
        retry_after = parse_seconds(response.headers.get("X-RateLimit-Reset"))
        if retry_after is None:
            retry_after = _retry_after(response.headers.get("Retry-After"))
        return DatadogRateLimitedError(message, retry_after=retry_after, http_status=status, sent=True)
    if status in (401, 403):
        return DatadogAuthError(message, http_status=status)
    if status >= 500 or status == 408:
        return DatadogUnavailableError(message, ambiguous=True, http_status=status)
    if 300 <= status < 400:
        return DatadogRejectedError(
            f"{endpoint} answered {status} (a redirect, not followed); check DD_SITE or DD_API_URL",
            http_status=status,
        )
    return DatadogRejectedError(message, http_status=status)


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, str):
        errors = [errors]
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors[:3]:
        if isinstance(error, Mapping):
            parts.append(" ".join(str(error[key]) for key in ("title", "detail") if error.get(key)))
        else:
            parts.append(str(error))
    return "; ".join(part for part in parts if part)[:300]


def _redact(text: str, secrets: tuple[Secret, ...]) -> str:
    """Datadog's words with any key it echoed blanked out."""
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, "********")
    return text


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds, whether given as a number or an HTTP date."""
    seconds = parse_seconds(value)
    if seconds is not None or value is None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


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
