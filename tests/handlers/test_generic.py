"""Standard Webhooks: the published test vector, rotation, replay tolerance and `{type, data}` payloads."""

from __future__ import annotations

import json

import pytest

from caselink.errors import AuthenticationError
from caselink.events import EntityRef
from handlers import generic
from tests.conftest import fixture_bytes
from tests.handlers.conftest import NOW
from tests.handlers.conftest import ODD_PAYLOADS
from tests.handlers.conftest import events
from tests.handlers.conftest import policy
from tests.handlers.conftest import standard_headers
from tests.handlers.conftest import standard_signature
from tests.handlers.conftest import webhook
from tests.handlers.conftest import without_payload

# The published vector: standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py (test_sign_function and the invalid-signature test).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="

SECRET = "whsec_c2VjcmV0LWZvci1jYXNlbGluay10ZXN0cw=="
NEXT_SECRET = "whsec_bmV4dC1zZWNyZXQtZm9yLWNhc2VsaW5r"
BODY = fixture_bytes("generic", "standard-webhook.json")


def vector_request(signature: str = VECTOR_SIGNATURE, **headers: str):
    sent = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": signature}
    sent.update(headers)
    return webhook("generic", VECTOR_BODY, sent, received_at=VECTOR_TIMESTAMP)


def vector_policy(*secrets: str, **changes):
    return policy("generic", *(secrets or (VECTOR_SECRET,)), now=VECTOR_TIMESTAMP, **changes)


def signed(body=BODY, *secrets, msg_id="msg_2Kx", timestamp=NOW):
    return webhook("generic", body, standard_headers(msg_id, timestamp, body, *(secrets or (SECRET,))))


def refusal(request, checked=None):
    with pytest.raises(AuthenticationError) as refused:
        generic.authenticate(request, checked or policy("generic", SECRET))
    answer = json.dumps(refused.value.to_dict())
    assert SECRET not in answer
    assert SECRET.removeprefix("whsec_") not in answer
    return refused.value.detail["reason"]


# -- the published test vector -------------------------------------------------------


def test_the_test_helper_signs_exactly_as_the_published_vector():
    assert standard_signature(VECTOR_ID, str(VECTOR_TIMESTAMP), VECTOR_BODY, VECTOR_SECRET) == VECTOR_SIGNATURE


def test_the_published_vector_is_accepted():
    generic.authenticate(vector_request(), vector_policy())


def test_the_published_vector_is_accepted_with_a_secret_written_without_its_prefix():
    generic.authenticate(vector_request(), vector_policy(VECTOR_SECRET.removeprefix("whsec_")))


def test_the_published_wrong_signature_is_refused():
    with pytest.raises(AuthenticationError) as refused:
        generic.authenticate(vector_request(VECTOR_WRONG), vector_policy())

    assert refused.value.detail["reason"] == "bad_signature"


def test_the_published_multi_signature_header_is_accepted():
    header = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            VECTOR_SIGNATURE,
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ]
    )

    generic.authenticate(vector_request(header), vector_policy())


def test_asymmetric_and_unreadable_entries_are_skipped_not_fatal():
    header = f"v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw= v1,%%%not-base64 {VECTOR_SIGNATURE}"

    generic.authenticate(vector_request(header), vector_policy())


# -- timestamps -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_a_timestamp_within_the_tolerance_is_accepted(offset):
    generic.authenticate(signed(timestamp=NOW + offset), policy("generic", SECRET))


@pytest.mark.parametrize("offset", [-301, 301, -7 * 86_400])
def test_a_replayed_or_future_timestamp_is_refused(offset):
    assert refusal(signed(timestamp=NOW + offset)) == "stale_timestamp"


def test_the_tolerance_comes_from_the_policy():
    assert refusal(signed(timestamp=NOW - 61), policy("generic", SECRET, tolerance=60)) == "stale_timestamp"


def test_a_timestamp_cannot_be_refreshed_without_the_secret():
    old = signed(timestamp=NOW - 3600)
    replayed = webhook("generic", BODY, {**dict(old.headers), "webhook-timestamp": str(int(NOW))})

    assert refusal(replayed) == "bad_signature"


def test_a_timestamp_that_is_not_unix_seconds_is_refused():
    request = webhook("generic", BODY, {**dict(signed().headers), "webhook-timestamp": "hello"})

    assert refusal(request) == "bad_timestamp"


# -- signatures ---------------------------------------------------------------------------


def test_a_tampered_body_is_refused():
    request = signed()

    assert refusal(webhook("generic", BODY.replace(b"OPS-42", b"OPS-7"), dict(request.headers))) == "bad_signature"


def test_the_message_id_is_part_of_what_is_signed():
    request = signed()

    assert refusal(webhook("generic", BODY, {**dict(request.headers), "webhook-id": "msg_other"})) == "bad_signature"


def test_a_signature_made_with_another_secret_is_refused():
    assert refusal(signed(BODY, NEXT_SECRET)) == "bad_signature"


def test_either_configured_secret_may_have_signed_while_rotating():
    rotating = policy("generic", SECRET, NEXT_SECRET)

    generic.authenticate(signed(BODY, SECRET), rotating)
    generic.authenticate(signed(BODY, NEXT_SECRET), rotating)


def test_the_sender_may_sign_with_old_and_new_secret_at_once():
    generic.authenticate(signed(BODY, "whsec_b2xkLXNlY3JldC1iZWluZy1yZXRpcmVk", SECRET), policy("generic", SECRET))


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_named(header):
    headers = dict(signed().headers)
    del headers[header]

    with pytest.raises(AuthenticationError, match=header) as refused:
        generic.authenticate(webhook("generic", BODY, headers), policy("generic", SECRET))

    assert refused.value.detail["reason"] == "missing_signature"


def test_a_signature_header_with_no_v1_entry_is_refused():
    request = webhook("generic", BODY, {**dict(signed().headers), "webhook-signature": "v1a,abcd"})

    assert refusal(request) == "missing_signature"


def test_svix_headers_are_read_too():
    headers = {name.replace("webhook-", "svix-"): value for name, value in dict(signed().headers).items()}

    generic.authenticate(webhook("generic", BODY, headers), policy("generic", SECRET))


def test_an_unreadable_secret_beside_a_good_one_does_not_stop_it():
    generic.authenticate(signed(), policy("generic", "whsec_***not base64***", SECRET))


def test_a_configuration_with_only_unreadable_secrets_is_refused_and_says_what_to_fix():
    with pytest.raises(AuthenticationError, match="whsec_ followed by base64") as refused:
        generic.authenticate(signed(), policy("generic", "plain-password!"))

    assert refused.value.detail["reason"] == "bad_secret_format"
    assert "plain-password" not in refused.value.message


def test_without_a_secret_every_request_is_refused_in_live_mode():
    assert refusal(signed(), policy("generic")) == "no_secret_configured"


def test_without_a_secret_requests_are_let_in_only_in_dry_run():
    generic.authenticate(webhook("generic", BODY), policy("generic", open_without_secret=True))


# -- normalise ------------------------------------------------------------------------


def test_the_fixture_becomes_one_event_about_its_incident():
    [event] = events(generic, signed(msg_id="msg_fixture"))

    assert without_payload(event) == {
        "source": "generic",
        "kind": "incident.created",
        "entity": {"type": "INCIDENT", "id": "3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44"},
        "title": "Search cluster degraded, tracked in OPS-42",
        "message": "Shard relocation stuck.",
        "severity": "SEV-3",
        "priority": "",
        "status": "",
        "url": "",
        "tags": {"service": ["search"]},
        "occurred_at": "2026-11-26T09:15:00Z",
    }
    assert event.dedup_key == "msg_fixture"
    assert event.problem is None


def test_without_a_message_id_identical_bodies_share_a_dedup_key():
    [first] = events(generic, webhook("generic", BODY))
    [second] = events(generic, webhook("generic", BODY))

    assert first.dedup_key == second.dedup_key
    assert first.dedup_key.startswith("sha256:")


def payload_with(**data):
    return json.dumps({"type": "thing.happened", "timestamp": "2026-11-26T10:00:00Z", "data": data}).encode()


def test_data_fields_and_list_tags_are_read():
    body = payload_with(
        status="open", priority="P3", url="https://example.com/x", tags=["env:prod", "team:search", "team:infra"]
    )

    [event] = events(generic, webhook("generic", body))

    assert (event.status, event.priority, event.url) == ("open", "P3", "https://example.com/x")
    assert event.tags == {"env": ["prod"], "team": ["search", "infra"]}


@pytest.mark.parametrize(
    ("entity", "expected"),
    [
        ({"type": "case", "id": "ops-42"}, EntityRef("CASE", "OPS-42")),
        ("PAGE:15E74B8B-F865-48D0-BCC5-453323ED2C8F", EntityRef("PAGE", "15e74b8b-f865-48d0-bcc5-453323ed2c8f")),
        ({"type": "AGENT_CONVERSATION", "id": "0c9a4b1e-2f3d-4e5f-8a9b-1c2d3e4f5a6b"}, None),
    ],
)
def test_the_entity_may_be_an_object_or_type_colon_id(entity, expected):
    [event] = events(generic, webhook("generic", payload_with(entity=entity)))

    assert event.entity == (expected or EntityRef(entity["type"], entity["id"]))
    assert event.problem is None


@pytest.mark.parametrize(
    ("entity", "problem"),
    [
        ({"type": "TICKET", "id": "3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44"}, "'TICKET' is not one of CASE"),
        ({"type": "INCIDENT", "id": "1482"}, "is not a UUID"),
        ({"id": "3b1f0c2e-9a7d-4e55-8c21-6f0e2d9a1b44"}, "'(none)' is not one of"),
        ("just text", "is not TYPE:ID"),
        (7, "'(none)' is not one of"),
    ],
)
def test_an_unusable_entity_is_reported_on_an_otherwise_normal_event(entity, problem):
    [event] = events(generic, webhook("generic", payload_with(title="Still useful", entity=entity)))

    assert (event.kind, event.title, event.entity) == ("thing.happened", "Still useful", None)
    assert problem in event.problem


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"data": {"title": "no type"}}', "type is missing"),
        (b"[1, 2, 3]", "not an object"),
    ],
)
def test_a_payload_it_cannot_read_is_kept_as_unrecognised(body, problem):
    [event] = events(generic, webhook("generic", body))

    assert event.kind == "unrecognised"
    assert problem in event.problem


@pytest.mark.parametrize("body", ODD_PAYLOADS)
def test_odd_json_never_raises(body):
    for event in events(generic, webhook("generic", body)):
        assert event.source == "generic"
        assert event.dedup_key


@pytest.mark.parametrize(
    ("type_", "kind"),
    [
        ("incident.created", "incident.created"),
        ("Incident.Created", "incident.created"),
        ("deploy.rolled-back", "deploy.rolled_back"),
        ("invoice.payment failed", "invoice.payment_failed"),
        ("Incident Created", "incident_created"),
    ],
)
def test_the_type_in_canonical_form_is_the_kind(type_, kind):
    [event] = events(generic, webhook("generic", json.dumps({"type": type_, "data": {}})))

    assert event.kind == kind


@pytest.mark.parametrize("type_", ["...", " - "])
def test_a_type_with_no_letter_or_digit_is_kept_as_unrecognised(type_):
    [event] = events(generic, webhook("generic", json.dumps({"type": type_, "data": {}})))

    assert event.kind == "unrecognised"
    assert "names no kind" in event.problem
