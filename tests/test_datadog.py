"""The Datadog HTTP client against `responses` mocks: headers, bodies, lookups and error mapping."""

import http.client
import json
import ssl
import time

import pytest
import requests
import responses
from responses import matchers
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import MaxRetryError
from urllib3.exceptions import NameResolutionError
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError
from urllib3.exceptions import SSLError as Urllib3SSLError

from caselink.config import Secret
from caselink.config import Settings
from caselink.datadog import USER_AGENT
from caselink.datadog import DatadogClient
from caselink.datadog import ResolvedLink
from caselink.errors import ConfigError
from caselink.errors import DatadogAuthError
from caselink.errors import DatadogRateLimitedError
from caselink.errors import DatadogRejectedError
from caselink.errors import DatadogUnavailableError
from caselink.ratelimit import RateLimiter

BASE = "https://api.test"
API_KEY = "dd-api-key-4f1c9a0e7b2d"
APP_KEY = "dd-app-key-8e3b6c1d5a9f"
CASE_ID = "9daaa414-8843-46e2-8360-c36d3713285f"
OTHER_CASE_ID = "4417921d-0866-4a38-822c-6f2a0f65f77d"
INCIDENT_ID = "01c03111-172a-50c7-8df3-d61e64b0e74b"
LINKS_URL = f"{BASE}/api/v2/cases/link"

INCIDENT_CAUSES_CASE = ResolvedLink("INCIDENT", INCIDENT_ID, "CAUSES", "CASE", CASE_ID)


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client():
    return DatadogClient(BASE, Secret(API_KEY), Secret(APP_KEY), timeout=5.0, limiter=RateLimiter(clock=lambda: 0.0))


def link_item(ident, parent_type, parent_id, relationship, child_type, child_id):
    return {
        "id": ident,
        "type": "link",
        "attributes": {
            "parent_entity_type": parent_type,
            "parent_entity_id": parent_id,
            "relationship": relationship,
            "child_entity_type": child_type,
            "child_entity_id": child_id,
        },
    }


def created(link, ident="link-1"):
    return {"data": {"id": ident, "type": "link", "attributes": link.attributes()}}


def case_body(case_id=CASE_ID, key="OPS-42"):
    return {"data": {"id": case_id, "type": "case", "attributes": {"key": key, "title": "DB down"}}}


# -- what every request carries ---------------------------------------------------


CALLS = {
    "case_id": (
        responses.GET,
        f"{BASE}/api/v2/cases/OPS-42",
        case_body(),
        lambda client: client.case_id("OPS-42"),
    ),
    "check_credentials": (
        responses.GET,
        f"{BASE}/api/v2/cases",
        {"data": [], "meta": {}},
        lambda client: client.check_credentials(),
    ),
    "list_links": (
        responses.GET,
        LINKS_URL,
        {"data": []},
        lambda client: client.list_links("CASE", CASE_ID),
    ),
    "find_link": (
        responses.GET,
        LINKS_URL,
        {"data": []},
        lambda client: client.find_link(INCIDENT_CAUSES_CASE),
    ),
    "create_link": (
        responses.POST,
        LINKS_URL,
        created(INCIDENT_CAUSES_CASE),
        lambda client: client.create_link(INCIDENT_CAUSES_CASE),
    ),
}


@pytest.mark.parametrize("name", CALLS)
def test_every_call_sends_both_keys_a_user_agent_and_a_timeout(api, client, name):
    method, url, body, call = CALLS[name]
    api.add(method, url, json=body, status=201 if method == responses.POST else 200)

    call(client)

    request = api.calls[0].request
    assert request.headers["DD-API-KEY"] == API_KEY
    assert request.headers["DD-APPLICATION-KEY"] == APP_KEY
    assert request.headers["User-Agent"] == USER_AGENT
    assert request.headers["Accept"] == "application/json"
    assert request.req_kwargs["timeout"] == (3.05, 5.0)


def test_a_short_timeout_applies_to_connecting_too(api):
    client = DatadogClient(BASE, Secret(API_KEY), Secret(APP_KEY), timeout=0.5)
    api.get(f"{BASE}/api/v2/cases", json={"data": []})
    client.check_credentials()
    assert api.calls[0].request.req_kwargs["timeout"] == (0.5, 0.5)


def test_from_settings_uses_the_url_keys_and_timeout(api):
    settings = Settings(dd_api_key=Secret(API_KEY), dd_app_key=Secret(APP_KEY), dd_api_url=BASE, dd_timeout=2.0)
    client = DatadogClient.from_settings(settings)
    api.get(f"{BASE}/api/v2/cases", json={"data": []})

    client.check_credentials()

    request = api.calls[0].request
    assert request.headers["DD-API-KEY"] == API_KEY
    assert request.req_kwargs["timeout"] == (2.0, 2.0)


def test_from_settings_without_keys_is_a_config_error():
    with pytest.raises(ConfigError, match="DD_API_KEY and DD_APP_KEY"):
        DatadogClient.from_settings(Settings(dd_api_key=Secret(API_KEY)))


def test_only_connect_failures_are_retried_by_the_transport(client):
    retry = client.session.get_adapter(BASE).max_retries
    assert retry.connect == 2
    assert retry.read == 0
    assert retry.status == 0
    assert retry.other == 0


# -- create_link ------------------------------------------------------------------------


def test_create_link_posts_exactly_the_json_api_body(api, client):
    api.post(LINKS_URL, json=created(INCIDENT_CAUSES_CASE, "link-7"), status=201)

    assert client.create_link(INCIDENT_CAUSES_CASE) == "link-7"

    request = api.calls[0].request
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "data": {
            "type": "link",
            "attributes": {
                "parent_entity_type": "INCIDENT",
                "parent_entity_id": INCIDENT_ID,
                "relationship": "CAUSES",
                "child_entity_type": "CASE",
                "child_entity_id": CASE_ID,
            },
        }
    }


def test_a_created_answer_without_a_link_id_may_have_made_the_link(api, client):
    api.post(LINKS_URL, json={"data": {}}, status=201)
    with pytest.raises(DatadogUnavailableError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert caught.value.ambiguous is True


def test_a_created_answer_that_is_not_json_may_have_made_the_link(api, client):
    api.post(LINKS_URL, body="<html>ok</html>", status=201)
    with pytest.raises(DatadogUnavailableError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert caught.value.ambiguous is True
    assert caught.value.http_status == 201


# -- case_id ------------------------------------------------------------------------------


def test_a_case_key_is_resolved_once_and_then_cached(api, client):
    api.get(f"{BASE}/api/v2/cases/OPS-42", json=case_body(CASE_ID.upper()))

    assert client.case_id("OPS-42") == CASE_ID
    assert client.case_id("OPS-42") == CASE_ID

    assert len(api.calls) == 1


def test_the_case_cache_expires(api):
    client = DatadogClient(BASE, Secret(API_KEY), Secret(APP_KEY), case_cache_ttl=0)
    api.get(f"{BASE}/api/v2/cases/OPS-42", json=case_body())
    client.case_id("OPS-42")
    client.case_id("OPS-42")
    assert len(api.calls) == 2


@pytest.mark.parametrize("given", [CASE_ID, CASE_ID.upper()])
def test_a_case_uuid_passes_through_without_a_request(api, client, given):
    assert client.case_id(given) == CASE_ID
    assert len(api.calls) == 0


def test_a_case_key_that_does_not_exist_is_rejected(api, client):
    api.get(
        f"{BASE}/api/v2/cases/OPS-404",
        json={"errors": [{"code": "resource_not_found", "title": "case not found"}]},
        status=404,
        content_type="application/vnd.api+json",
    )

    with pytest.raises(DatadogRejectedError, match="case OPS-404 does not exist") as caught:
        client.case_id("OPS-404")

    assert caught.value.http_status == 404


def test_a_missing_case_is_not_cached(api, client):
    api.get(f"{BASE}/api/v2/cases/OPS-404", json={"errors": ["not found"]}, status=404)
    for _ in range(2):
        with pytest.raises(DatadogRejectedError):
            client.case_id("OPS-404")
    assert len(api.calls) == 2


def test_a_case_key_is_quoted_into_the_path(api, client):
    api.get(f"{BASE}/api/v2/cases/OPS%2F42", json=case_body())
    assert client.case_id("OPS/42") == CASE_ID


def test_a_case_answer_without_a_uuid_is_an_error(api, client):
    api.get(f"{BASE}/api/v2/cases/OPS-42", json={"data": {"id": "OPS-42"}})
    with pytest.raises(DatadogUnavailableError, match="without a case UUID"):
        client.case_id("OPS-42")


# -- find_link ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "case_side"),
    [
        (ResolvedLink("INCIDENT", INCIDENT_ID, "CAUSES", "CASE", CASE_ID), CASE_ID),
        (ResolvedLink("CASE", CASE_ID, "ESCALATES_TO", "PAGE", INCIDENT_ID), CASE_ID),
        (ResolvedLink("CASE", CASE_ID, "BLOCKS", "CASE", OTHER_CASE_ID), CASE_ID),
    ],
)
def test_find_link_lists_the_links_of_the_case_side(api, client, link, case_side):
    api.get(
        LINKS_URL,
        match=[
            matchers.query_param_matcher(
                {"entity_type": "CASE", "entity_id": case_side, "relationship": link.relationship}, strict_match=True
            )
        ],
        json={"data": []},
    )
    assert client.find_link(link) is None


def test_find_link_returns_the_id_of_the_matching_link(api, client):
    api.get(
        LINKS_URL,
        json={
            "data": [
                link_item("other-incident", "INCIDENT", OTHER_CASE_ID, "CAUSES", "CASE", CASE_ID),
                link_item("reversed", "CASE", CASE_ID, "CAUSES", "INCIDENT", INCIDENT_ID),
                link_item("no-attributes", "CASE", CASE_ID, "CAUSES", "CASE", CASE_ID) | {"attributes": None},
                link_item("wanted", "INCIDENT", INCIDENT_ID.upper(), "causes", "CASE", CASE_ID),
            ]
        },
    )
    assert client.find_link(INCIDENT_CAUSES_CASE) == "wanted"


def test_a_directional_link_stored_the_other_way_round_is_not_this_one(api, client):
    api.get(LINKS_URL, json={"data": [link_item("reversed", "CASE", CASE_ID, "CAUSES", "INCIDENT", INCIDENT_ID)]})
    assert client.find_link(INCIDENT_CAUSES_CASE) is None


def test_relates_to_matches_either_way_round(api, client):
    api.get(LINKS_URL, json={"data": [link_item("both-ways", "CASE", CASE_ID, "RELATES_TO", "INCIDENT", INCIDENT_ID)]})
    assert client.find_link(ResolvedLink("INCIDENT", INCIDENT_ID, "RELATES_TO", "CASE", CASE_ID)) == "both-ways"


def test_a_link_list_that_is_not_a_list_is_not_read_as_no_links(api, client):
    api.get(LINKS_URL, json={"data": {"id": "x"}})
    with pytest.raises(DatadogUnavailableError):
        client.find_link(INCIDENT_CAUSES_CASE)


def test_a_link_without_a_case_side_is_rejected_before_any_request(api, client):
    with pytest.raises(DatadogRejectedError, match="no CASE side"):
        client.find_link(ResolvedLink("INCIDENT", INCIDENT_ID, "CAUSES", "PAGE", CASE_ID))
    assert len(api.calls) == 0


# -- answers that are not 2xx ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "ambiguous"),
    [
        (401, DatadogAuthError, None),
        (403, DatadogAuthError, None),
        (408, DatadogUnavailableError, True),
        (500, DatadogUnavailableError, True),
        (502, DatadogUnavailableError, True),
        (503, DatadogUnavailableError, True),
        (504, DatadogUnavailableError, True),
        (400, DatadogRejectedError, None),
        (404, DatadogRejectedError, None),
        (409, DatadogRejectedError, None),
        (422, DatadogRejectedError, None),
    ],
)
def test_each_status_maps_to_its_error(api, client, status, error, ambiguous):
    api.post(LINKS_URL, json={"errors": ["Something about this"]}, status=status)

    with pytest.raises(error) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)

    assert type(caught.value) is error
    assert caught.value.http_status == status
    assert "Something about this" in caught.value.message
    if ambiguous is not None:
        assert caught.value.ambiguous is ambiguous


def test_a_429_waits_for_x_ratelimit_reset(api, client):
    api.post(
        LINKS_URL,
        json={"errors": ["Too many requests"]},
        status=429,
        headers={"X-RateLimit-Reset": "7", "Retry-After": "30"},
    )
    with pytest.raises(DatadogRateLimitedError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert caught.value.retry_after == 7.0
    assert caught.value.sent is True
    assert caught.value.http_status == 429


@pytest.mark.parametrize("reset", [None, "not-a-number"])
def test_a_429_falls_back_to_retry_after(api, client, reset):
    headers = {"Retry-After": "12"}
    if reset is not None:
        headers["X-RateLimit-Reset"] = reset
    api.post(LINKS_URL, json={"errors": ["Too many requests"]}, status=429, headers=headers)
    with pytest.raises(DatadogRateLimitedError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert caught.value.retry_after == 12.0


def test_a_429_without_any_hint_leaves_the_wait_to_the_caller(api, client):
    api.post(LINKS_URL, status=429)
    with pytest.raises(DatadogRateLimitedError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert caught.value.retry_after is None


def test_a_redirect_is_not_followed_and_is_an_error(api, client):
    api.post(LINKS_URL, status=307, headers={"Location": "https://elsewhere.example/api/v2/cases/link"})
    with pytest.raises(DatadogRejectedError, match="redirect") as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert caught.value.http_status == 307
    assert len(api.calls) == 1


def test_json_api_error_objects_are_quoted(api, client):
    api.post(
        LINKS_URL,
        json={"errors": [{"title": "Bad Request", "detail": "relationship must be one of RELATES_TO, CAUSES"}]},
        status=400,
    )
    with pytest.raises(DatadogRejectedError, match="Bad Request relationship must be one of RELATES_TO"):
        client.create_link(INCIDENT_CAUSES_CASE)


def test_an_error_body_that_is_not_json_still_gives_the_status(api, client):
    api.post(LINKS_URL, body="<html>Bad Gateway</html>", status=502)
    with pytest.raises(DatadogUnavailableError, match="answered 502"):
        client.create_link(INCIDENT_CAUSES_CASE)


# -- failures without an answer -----------------------------------------------------------


def connect_refused():
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.ConnectionError(MaxRetryError(None, "/api/v2/cases/link", reason))


def name_not_resolved():
    reason = NameResolutionError("api.test", None, OSError("Name or service not known"))
    return requests.ConnectionError(MaxRetryError(None, "/api/v2/cases/link", reason))


def certificate_rejected():
    reason = Urllib3SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    return requests.exceptions.SSLError(MaxRetryError(None, "/api/v2/cases/link", reason))


def connection_aborted():
    return requests.ConnectionError(ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed")))


def connection_reset():
    return requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))


def read_timeout_while_reading_body():
    return requests.ConnectionError(ReadTimeoutError(None, "/api/v2/cases/link", "Read timed out."))


@pytest.mark.parametrize(
    ("failure", "ambiguous"),
    [
        (lambda: requests.ConnectTimeout("connect timed out"), False),
        (connect_refused, False),
        (name_not_resolved, False),
        (certificate_rejected, False),
        (lambda: requests.exceptions.ProxyError("Unable to connect to proxy"), False),
        (lambda: requests.exceptions.InvalidHeader("bad header"), False),
        (lambda: requests.ReadTimeout("read timed out"), True),
        (connection_aborted, True),
        (connection_reset, True),
        (read_timeout_while_reading_body, True),
        (lambda: requests.exceptions.ChunkedEncodingError("broken"), True),
    ],
)
def test_a_failure_without_an_answer_says_whether_the_post_may_have_arrived(api, client, failure, ambiguous):
    api.post(LINKS_URL, body=failure())

    with pytest.raises(DatadogUnavailableError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)

    assert caught.value.ambiguous is ambiguous
    assert caught.value.http_status is None
    # The original exception, whose text can hold the URL, is not chained into tracebacks.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def refused_as_urllib3_raises_it():
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111]")
    reason.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return requests.ConnectionError(MaxRetryError(None, "/api/v2/cases/link", reason))


def get_read_timeout():
    # A GET is retried by the transport, so its read timeout arrives wrapped as a ConnectionError.
    reason = ReadTimeoutError(None, "/api/v2/cases/link", "Read timed out. (read timeout=5.0)")
    return requests.ConnectionError(MaxRetryError(None, "/api/v2/cases/link", reason))


def connect_timed_out():
    reason = ConnectTimeoutError(None, "Connection to api.test timed out. (connect timeout=3.05)")
    return requests.ConnectTimeout(MaxRetryError(None, "/api/v2/cases/link", reason))


def get_reset():
    reason = ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    return requests.ConnectionError(MaxRetryError(None, "/api/v2/cases/link", reason))


@pytest.mark.parametrize(
    ("failure", "kind", "words"),
    [
        (lambda: requests.ReadTimeout("Read timed out."), "timeout", "timed out: no answer from Datadog within 5s"),
        (get_read_timeout, "timeout", "timed out: no answer from Datadog within 5s"),
        (read_timeout_while_reading_body, "timeout", "timed out: no answer from Datadog within 5s"),
        (connect_timed_out, "connect_timeout", "timed out connecting to Datadog (after 3.05s)"),
        (lambda: requests.ConnectTimeout("connect timed out"), "connect_timeout", "timed out connecting to Datadog"),
        (connect_refused, "refused", "Datadog refused the connection (connection refused)"),
        (refused_as_urllib3_raises_it, "refused", "Datadog refused the connection (connection refused)"),
        (connection_reset, "reset", "Datadog reset the connection (connection reset)"),
        (get_reset, "reset", "Datadog reset the connection (connection reset)"),
        (connection_aborted, "closed", "Datadog closed the connection without answering"),
        (name_not_resolved, "dns", "cannot resolve Datadog's host name"),
        (lambda: requests.exceptions.ChunkedEncodingError("broken"), "lost", "the answer was lost"),
    ],
)
def test_each_failure_without_an_answer_says_what_happened_in_its_own_words(api, client, failure, kind, words):
    api.get(LINKS_URL, body=failure())

    with pytest.raises(DatadogUnavailableError) as caught:
        client.list_links("CASE", CASE_ID)

    assert caught.value.failure == kind
    assert caught.value.message.startswith(f"GET /api/v2/cases/link: {words}")
    assert ("timed out" in caught.value.message) is kind.endswith("timeout")


def test_a_failure_before_sending_gives_the_budget_back(api):
    clock = lambda: 0.0  # noqa: E731 - a fixed clock is all this test needs
    limiter = RateLimiter(clock=clock)
    client = DatadogClient(BASE, Secret(API_KEY), Secret(APP_KEY), limiter=limiter)
    api.post(LINKS_URL, json=created(INCIDENT_CAUSES_CASE), status=201, headers=remaining_headers(5))
    api.post(LINKS_URL, body=connect_refused())
    api.post(LINKS_URL, body=requests.ReadTimeout("read timed out"))
    client.create_link(INCIDENT_CAUSES_CASE)

    with pytest.raises(DatadogUnavailableError):
        client.create_link(INCIDENT_CAUSES_CASE)
    state = limiter.snapshot()["cases"]
    assert (state.remaining, state.in_flight) == (5, 0)

    with pytest.raises(DatadogUnavailableError):
        client.create_link(INCIDENT_CAUSES_CASE)
    state = limiter.snapshot()["cases"]
    assert (state.remaining, state.in_flight) == (4, 0)


def remaining_headers(remaining):
    return {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Period": "60",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": "30",
        "X-RateLimit-Name": "cases",
    }


# -- keys and passwords stay out of errors ----------------------------------------------------


def leaks(exc, *secrets):
    shown = " ".join([str(exc), repr(exc), exc.message, json.dumps(exc.to_dict())])
    return [secret for secret in secrets if secret in shown]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 429, 500, 503])
def test_no_error_shows_a_key_even_when_datadog_echoes_it(api, client, status):
    api.post(
        LINKS_URL,
        json={"errors": [f"Invalid API key {API_KEY}", {"title": "Forbidden", "detail": f"app key {APP_KEY}"}]},
        status=status,
    )
    with pytest.raises(
        (DatadogRejectedError, DatadogAuthError, DatadogUnavailableError, DatadogRateLimitedError)
    ) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)

    assert "Invalid API key" in caught.value.message
    assert leaks(caught.value, API_KEY, APP_KEY) == []


@pytest.mark.parametrize(
    "failure",
    [
        lambda: requests.ConnectTimeout(f"connect timed out sending {API_KEY}"),
        lambda: requests.ReadTimeout(f"read timed out sending {APP_KEY}"),
        lambda: requests.ConnectionError(f"https://user:pa55word@proxy.test {API_KEY}"),
        lambda: requests.exceptions.InvalidHeader(f"Invalid return character in header value: {API_KEY}"),
    ],
)
def test_no_transport_error_shows_a_key_or_a_password(api, client, failure):
    api.post(LINKS_URL, body=failure())
    with pytest.raises(DatadogUnavailableError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert leaks(caught.value, API_KEY, APP_KEY, "pa55word") == []


def test_a_missing_case_error_shows_no_key(api, client):
    api.get(f"{BASE}/api/v2/cases/OPS-1", json={"errors": [f"no case for {API_KEY}"]}, status=404)
    with pytest.raises(DatadogRejectedError) as caught:
        client.case_id("OPS-1")
    assert leaks(caught.value, API_KEY, APP_KEY) == []


def test_a_held_back_request_error_shows_no_key(api, client):
    api.post(LINKS_URL, json=created(INCIDENT_CAUSES_CASE), status=201, headers=remaining_headers(0))
    client.create_link(INCIDENT_CAUSES_CASE)
    with pytest.raises(DatadogRateLimitedError) as caught:
        client.create_link(INCIDENT_CAUSES_CASE)
    assert leaks(caught.value, API_KEY, APP_KEY) == []


@pytest.mark.parametrize(
    ("base_url", "shown"),
    [
        ("https://user:pa55word@proxy.test:8443/datadog/", "https://proxy.test:8443/datadog"),
        ("https://api.datadoghq.eu", "https://api.datadoghq.eu"),
        ("http://:pa55word@127.0.0.1:9000?token=pa55word", "http://127.0.0.1:9000"),
        ("http://user:pa55word@[::1]:9000/", "http://[::1]:9000"),
    ],
)
def test_the_display_url_drops_user_and_password(base_url, shown):
    client = DatadogClient(base_url, Secret(API_KEY), Secret(APP_KEY))
    assert client.display_url == shown
    assert "pa55word" not in repr(client)
    assert API_KEY not in repr(client)


def test_the_password_in_the_url_is_still_used_to_reach_the_proxy(api):
    client = DatadogClient("https://user:pa55word@proxy.test", Secret(API_KEY), Secret(APP_KEY))
    api.get("https://user:pa55word@proxy.test/api/v2/cases", json={"data": []})
    client.check_credentials()
    assert api.calls[0].request.headers["Authorization"].startswith("Basic ")


# -- when to list a case again ---------------------------------------------------------------


def test_a_case_listed_before_a_link_was_planned_is_listed_again_once_the_interval_since_that_listing_is_over(api):
    now = {"monotonic": 100.0, "wall": 5000.0}
    client = DatadogClient(
        BASE,
        Secret(API_KEY),
        Secret(APP_KEY),
        limiter=RateLimiter(clock=lambda: 0.0),
        list_window=60.0,
        list_interval=1.0,
        clock=lambda: now["monotonic"],
        wall_clock=lambda: now["wall"],
    )
    assert client.next_listing_at(INCIDENT_CAUSES_CASE, planned_at=4999.0) is None  # never listed: now
    api.get(LINKS_URL, json={"data": []})
    client.find_link(INCIDENT_CAUSES_CASE)  # listed at 5000

    assert client.next_listing_at(INCIDENT_CAUSES_CASE, planned_at=4999.5) is None  # the listing serves it
    assert client.next_listing_at(INCIDENT_CAUSES_CASE, planned_at=5000.0) is None
    now.update(monotonic=100.4, wall=5000.4)
    assert client.next_listing_at(INCIDENT_CAUSES_CASE, planned_at=5000.2) == 5001.0  # planned after it
    other = ResolvedLink("INCIDENT", INCIDENT_ID, "CAUSES", "CASE", OTHER_CASE_ID)
    assert client.next_listing_at(other, planned_at=5000.2) is None  # another case: never listed
    now.update(monotonic=101.0, wall=5001.0)
    assert client.next_listing_at(INCIDENT_CAUSES_CASE, planned_at=5000.2) is None  # the interval is over


def test_with_no_listing_interval_a_case_is_listed_whenever_a_listing_does_not_serve(api):
    client = DatadogClient(BASE, Secret(API_KEY), Secret(APP_KEY), limiter=RateLimiter(clock=lambda: 0.0))
    api.get(LINKS_URL, json={"data": []})
    client.find_link(INCIDENT_CAUSES_CASE)

    assert client.next_listing_at(INCIDENT_CAUSES_CASE, planned_at=time.time() + 1) is None
