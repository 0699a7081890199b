"""The Datadog API client: case links and case keys, on one requests.Session.

Every call has a timeout, is counted against Datadog's rate limits, and turns
any failure into a DatadogError subclass whose type says whether to retry and,
for a request that got no answer, whether it may have reached Datadog.
Whatever Datadog answers, no more than `failed_calls_per_second` calls that
fail start in any one second (`_FailureBudget`), so no answer can make a
worker hammer Datadog. Keys travel only in headers and never appear in a message.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from typing import TypeVar
from typing import overload
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import NameResolutionError
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import ReadTimeoutError
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
T = TypeVar("T")

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
        failed_calls_per_second: int = 10,
        list_window: float = 3.0,
        list_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
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
        self._clock = clock
        self.failures = _FailureBudget(failed_calls_per_second, clock)
        self._list_window = list_window
        self._list_interval = list_interval
        # (entity type, entity id, relationship) -> (links, when they were asked for: monotonic, time.time())
        self._listings: dict[tuple[str, str, str], tuple[list[Mapping[str, Any]], float, float]] = {}
        self._wall_clock = wall_clock
        self._listings_lock = threading.Lock()
        self._single = _SingleFlight()

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
            failed_calls_per_second=settings.dd_failed_calls_per_second,
            list_window=settings.dd_link_list_window,
            list_interval=settings.dd_link_list_interval,
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
        cached = self._cached_case(key_or_id)
        if cached is not None:
            return cached
        # Deliveries to one case arrive together: one of them asks, the others wait for its answer.
        with self._single.lock(("case", key_or_id)):
            cached = self._cached_case(key_or_id)
            if cached is not None:
                return cached
            path = f"/api/v2/cases/{quote(key_or_id, safe='')}"

            def parse(body: Any) -> str:
                case_id = _dig(body, "data", "id")
                if not isinstance(case_id, str) or not is_uuid(case_id):
                    raise DatadogUnavailableError(f"GET {path} answered without a case UUID", ambiguous=False)
                return case_id.lower()

            try:
                case_id = self._call(CASE, "GET", path, parse=parse)
            except DatadogRejectedError as exc:
                if exc.http_status == 404:
                    raise DatadogRejectedError(
                        f"case {key_or_id} does not exist (GET {path} answered 404)", http_status=404
                    ) from None
                raise
            with self._cases_lock:
                self._cases[key_or_id] = (case_id, self._clock() + self._case_ttl)
            return case_id

    def _cached_case(self, key: str) -> str | None:
        with self._cases_lock:
            cached = self._cases.get(key)
        return cached[0] if cached and cached[1] > self._clock() else None

    def check_credentials(self) -> None:
        """A cheap authenticated read: raises DatadogAuthError while the keys are rejected."""
        self._call(CASES, "GET", "/api/v2/cases", params={"page[size]": 1})

    # -- links --------------------------------------------------------------

    def list_links(self, entity_type: str, entity_id: str, relationship: str | None = None) -> list[Mapping[str, Any]]:
        """The links Datadog holds for one entity, optionally of one relationship."""
        params = {"entity_type": entity_type, "entity_id": entity_id}
        if relationship:
            params["relationship"] = relationship

        def parse(body: Any) -> list[Mapping[str, Any]]:
            data = _dig(body, "data")
            if not isinstance(data, list):
                # Reading a malformed answer as "no links" would let the worker create a duplicate.
                raise DatadogUnavailableError(f"{LIST_LINKS} answered without a list of links", ambiguous=False)
            return [item for item in data if isinstance(item, Mapping)]

        return self._call(LIST_LINKS, "GET", "/api/v2/cases/link", params=params, parse=parse)

    def find_link(self, link: ResolvedLink, *, listed_since: float | None = None) -> str | None:
        """The id of this link if it already exists in Datadog.

        `listed_since` (a time.time()) accepts a listing of the link's case made
        at or after it and up to `list_window` seconds ago (one listing serves
        every delivery to that case meanwhile); pass when the link was planned,
        and only for a link no earlier attempt may have created. A listing from
        before the link was planned may not show a link someone made by hand
        before the webhook came. Otherwise (None) Datadog is asked now.
        """
        key = _listing_key(link)
        wanted = _normal(link.attributes())
        for item in self._listing(key, since=listed_since):
            attributes = item.get("attributes")
            if not isinstance(attributes, Mapping):
                continue
            found = _normal(attributes)
            if found == wanted or (wanted[2] == "RELATES_TO" and _reversed(found) == wanted):
                ident = item.get("id")
                if isinstance(ident, str) and ident:
                    return ident
        return None

    def next_listing_at(self, link: ResolvedLink, *, planned_at: float) -> float | None:
        """When to list the link's case for a first attempt of a link planned at `planned_at`
        (a time.time()), so that one listing serves every link to that case planned meanwhile.

        None: now (no listing of the case was made within `list_interval` seconds, or the last
        one was made after the link was planned and serves it). Otherwise the time.time()
        `list_interval` seconds after the last listing, which was made before the link was
        planned: while a case's links keep coming, it is listed at most once an interval,
        instead of once for each link that comes after the last listing (issue 17).
        """
        if self._list_interval <= 0:
            return None
        with self._listings_lock:
            found = self._listings.get(_listing_key(link))
        if found is None or found[2] >= planned_at or self._clock() - found[1] >= self._list_interval:
            return None
        return found[2] + self._list_interval

    def _listing(self, key: tuple[str, str, str], *, since: float | None) -> list[Mapping[str, Any]]:
        """The links of one case and relationship: a listing made after `since` and at most
        `list_window` old if `since` is given, else a new one. Concurrent deliveries to one
        case share one request."""
        if since is not None:
            found = self._recent_listing(key, since)
            if found is not None:
                return found
        with self._single.lock(("links", *key)):
            if since is not None:
                found = self._recent_listing(key, since)
                if found is not None:
                    return found
            asked_at, asked_at_wall = self._clock(), self._wall_clock()
            items = self.list_links(*key)
            with self._listings_lock:
                if len(self._listings) > 10_000:
                    self._listings.clear()
                self._listings[key] = (items, asked_at, asked_at_wall)
            return items

    def _recent_listing(self, key: tuple[str, str, str], since: float) -> list[Mapping[str, Any]] | None:
        with self._listings_lock:
            found = self._listings.get(key)
        if found is None or self._clock() - found[1] > self._list_window or found[2] < since:
            return None
        return found[0]

    def create_link(self, link: ResolvedLink) -> str:
        """POST the link; returns its id."""
        body = {"data": {"type": "link", "attributes": link.attributes()}}

        def parse(answer: Any) -> str:
            ident = _dig(answer, "data", "id")
            if not isinstance(ident, str) or not ident:
                # The link was probably made; the next attempt will find it.
                raise DatadogUnavailableError(f"{CREATE_LINK} answered without a link id", ambiguous=True)
            return ident

        ident = self._call(CREATE_LINK, "POST", "/api/v2/cases/link", json=body, parse=parse)
        key = _listing_key(link)
        with self._listings_lock:
            found = self._listings.get(key)
            if found is not None:
                # The listing stays true: what this process made is in it.
                self._listings[key] = ([*found[0], {"id": ident, "attributes": link.attributes()}], *found[1:])
        return ident

    # -- transport ----------------------------------------------------------

    def failure_wait(self) -> float:
        """Seconds until a call may start under the failure budget (0: now)."""
        return self.failures.wait_time()

    @overload
    def _call(self, endpoint: str, method: str, path: str, *, parse: Callable[[Any], T], **kwargs: Any) -> T: ...

    @overload
    def _call(self, endpoint: str, method: str, path: str, *, parse: None = None, **kwargs: Any) -> Any: ...

    def _call(
        self, endpoint: str, method: str, path: str, *, parse: Callable[[Any], T] | None = None, **kwargs: Any
    ) -> Any:
        """One request; `parse` turns the JSON body into the result or raises a DatadogError.

        The call holds a place in the failure budget from before it is sent
        until its answer has parsed, and keeps it for a second if it failed.
        """
        wait, ticket = self.limiter.reserve(endpoint)
        if wait > 0:
            raise DatadogRateLimitedError(
                f"{endpoint}: rate limit spent, next request in {wait:.1f}s",
                retry_after=wait,
                sent=False,
            )
        # Taken last, just before sending, so that a place is held from the moment a call leaves.
        held, place = self.failures.take()
        if held > 0:
            self.limiter.settle(endpoint, ticket, None, None, reached=False)
            raise DatadogRateLimitedError(
                f"{endpoint}: {self.failures.per_second} calls failed within a second; next request in {held:.2f}s",
                retry_after=held,
                sent=False,
            )
        try:
            result = self._send(endpoint, ticket, method, path, **kwargs)
            if parse is not None:
                result = parse(result)
        except DatadogRateLimitedError as exc:
            if not exc.sent:
                self.failures.give_back(place)
            raise
        self.failures.give_back(place)
        return result

    def _send(self, endpoint: str, ticket: str | None, method: str, path: str, **kwargs: Any) -> Any:
        settled = False
        try:
            try:
                # Never follow a redirect: requests would carry the DD-* key headers to wherever it points.
                response = self.session.request(
                    method, self.base_url + path, timeout=self.timeout, allow_redirects=False, **kwargs
                )
            except requests.RequestException as exc:
                error = _transport_error(endpoint, exc, self.timeout)
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


class _FailureBudget:
    """At most `per_second` calls that fail start in any one second.

    A call takes a place before it is sent and gives it back once its answer
    has parsed; a failed call keeps its place until a second after it started.
    So whatever comes back (401s, 5xx, garbage, dropped connections), the
    calls started in any one second that failed never number more than
    `per_second`, while answered calls cost nothing here.
    """

    # A failed call keeps its place a little over a second: Datadog counts calls as they
    # arrive, and two calls that start a second apart may arrive a few milliseconds closer.
    hold = 1.02

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = max(1, per_second)
        self._clock = clock
        self._lock = threading.Lock()
        # Start times of the calls under way or failed within the last second, oldest first.
        self._places: deque[list[float]] = deque()

    def take(self) -> tuple[float, list[float] | None]:
        """(0, place) when a call may start now, else (seconds to wait, None)."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            if len(self._places) >= self.per_second:
                return max(self._places[0][0] + self.hold - now, 0.001), None
            place = [now]
            self._places.append(place)
            return 0.0, place

    def give_back(self, place: list[float] | None) -> None:
        if place is None:
            return
        with self._lock:
            for index, held in enumerate(self._places):
                if held is place:
                    del self._places[index]
                    return

    def wait_time(self) -> float:
        with self._lock:
            now = self._clock()
            self._forget(now)
            if len(self._places) < self.per_second:
                return 0.0
            return max(self._places[0][0] + self.hold - now, 0.001)

    def _forget(self, now: float) -> None:
        while self._places and self._places[0][0] <= now - self.hold:
            self._places.popleft()


class _SingleFlight:
    """One lock per key, so that concurrent identical requests become one."""

    def __init__(self) -> None:
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, key: Any) -> threading.Lock:
        with self._guard:
            found = self._locks.get(key)
            if found is None:
                if len(self._locks) > 10_000:
                    # Locks nobody holds can go; a held one is still referenced by its holder.
                    self._locks = {k: v for k, v in self._locks.items() if v.locked()}
                found = self._locks[key] = threading.Lock()
            return found


def _listing_key(link: ResolvedLink) -> tuple[str, str, str]:
    """Which listing says whether `link` exists: its CASE side's links of its relationship."""
    if link.parent_type == "CASE":
        return link.parent_type, link.parent_id, link.relationship
    if link.child_type == "CASE":
        return link.child_type, link.child_id, link.relationship
    raise DatadogRejectedError(
        f"link {link.parent_type} {link.relationship} {link.child_type} has no CASE side; "
        "Datadog requires at least one side of a link to be a CASE"
    )


def _transport_error(
    endpoint: str, exc: requests.RequestException, timeout: tuple[float, float]
) -> DatadogUnavailableError:
    """Map a failure without an answer to its kind; ambiguous unless it certainly happened before sending.

    Each kind has its own words, because each asks for a different remedy: a
    timeout (raise DD_TIMEOUT, or Datadog is slow), a refused connection
    (wrong DD_API_URL or port, nothing listening), a reset (something on the
    way cut the connection).
    """
    causes = list(_causes(exc))

    def unavailable(kind: str, words: str, *, ambiguous: bool) -> DatadogUnavailableError:
        return DatadogUnavailableError(f"{endpoint}: {words}", ambiguous=ambiguous, failure=kind)

    connect, read = timeout
    if isinstance(exc, _NEVER_SENT):
        return unavailable("not_sent", f"the request could not be built ({type(exc).__name__})", ambiguous=False)
    # NameResolutionError and NewConnectionError are ConnectTimeoutErrors to urllib3: told apart first.
    if any(isinstance(c, NameResolutionError) for c in causes):
        return unavailable("dns", "cannot resolve Datadog's host name", ambiguous=False)
    if isinstance(exc, requests.exceptions.ProxyError) or any(isinstance(c, Urllib3ProxyError) for c in causes):
        return unavailable("proxy", "cannot connect through the proxy", ambiguous=False)
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or any(
        isinstance(c, NewConnectionError) and "refused" in str(c).lower() for c in causes
    ):
        return unavailable("refused", "Datadog refused the connection (connection refused)", ambiguous=False)
    if any(isinstance(c, NewConnectionError) for c in causes):
        return unavailable("connect", "cannot connect to Datadog", ambiguous=False)
    if isinstance(exc, requests.ConnectTimeout) or any(isinstance(c, ConnectTimeoutError) for c in causes):
        return unavailable("connect_timeout", f"timed out connecting to Datadog (after {connect:g}s)", ambiguous=False)
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return unavailable("tls", "Datadog's TLS certificate was not accepted", ambiguous=False)
    # A GET that times out reaches here as a ConnectionError around urllib3's ReadTimeoutError
    # (the transport's retry wraps it); a POST as requests' own ReadTimeout.
    if isinstance(exc, requests.Timeout) or any(isinstance(c, (ReadTimeoutError, TimeoutError)) for c in causes):
        return unavailable("timeout", f"timed out: no answer from Datadog within {read:g}s", ambiguous=True)
    if any(isinstance(c, (http.client.RemoteDisconnected, ConnectionAbortedError)) for c in causes):
        # Before resets: http.client's RemoteDisconnected is a ConnectionResetError too.
        return unavailable("closed", "Datadog closed the connection without answering", ambiguous=True)
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return unavailable("reset", "Datadog reset the connection (connection reset)", ambiguous=True)
    if isinstance(exc, requests.ConnectionError):
        return unavailable("broken", "the connection to Datadog broke", ambiguous=True)
    return unavailable("lost", f"the answer was lost ({type(exc).__name__})", ambiguous=True)


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
