"""The HTTP interface through Flask's test client: answers, error shapes, health, the admin API."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from caselink import migrations
from caselink.config import Secret
from tests.conftest import fixture_bytes
from tests.servers import ADMIN_TOKEN
from tests.servers import WEBHOOK_SECRET

AUTH = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INCIDENT = fixture_bytes("datadog", "incident-created.json")


def post(client, body=INCIDENT, headers=AUTH, content_type="application/json", source="datadog"):
    return client.post(f"/webhooks/{source}", data=body, headers=headers, content_type=content_type)


def test_a_new_delivery_is_202_with_a_summary_and_a_repeat_is_200(client):
    first = post(client)
    again = post(client)

    assert first.status_code == 202
    assert first.json == {
        "events": [{"id": 1, "kind": "incident.created", "duplicate": False, "links_planned": 1}],
        "links_planned": 1,
    }
    assert again.status_code == 200
    assert again.json["events"][0]["duplicate"] is True
    assert again.json["links_planned"] == 0


@pytest.mark.parametrize(
    ("request_args", "status", "code"),
    [
        ({"body": b"{not json"}, 400, "bad_request"),
        ({"headers": {}}, 401, "unauthenticated"),
        ({"headers": {"Authorization": "Bearer wrong"}}, 401, "unauthenticated"),
        ({"source": "nagios"}, 404, "not_found"),
        ({"content_type": "application/xml"}, 415, "unsupported_media_type"),
    ],
)
def test_every_refusal_is_json_with_a_code_and_a_reason(client, store, request_args, status, code):
    answer = post(client, **request_args)

    assert answer.status_code == status
    assert answer.is_json
    assert answer.json["error"]["code"] == code
    assert answer.json["error"]["message"]
    # An authenticated body that cannot be read is kept as a rejected delivery; nothing else is stored.
    kept = [event["kind"] for event in store.list_events()]
    assert kept == (["rejected"] if status in (400, 415) else [])


def test_a_body_over_the_limit_is_413_json(app, client):
    app.config["MAX_CONTENT_LENGTH"] = 1024

    answer = post(client, body=b"{" + b" " * 4096 + b"}")

    assert answer.status_code == 413
    assert answer.json["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_a_wrong_method_is_405_json_that_allows_post(client, method):
    answer = client.open("/webhooks/datadog", method=method)

    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    if method != "HEAD":
        assert answer.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/webhooks/", "/webhooks/datadog/extra", "/webhooks"])
def test_paths_beside_a_webhook_source_are_404_json(client, path):
    answer = client.post(path, data=INCIDENT, headers=AUTH)

    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "not_found"


def test_a_refused_webhook_says_how_to_authenticate(client):
    answer = post(client, headers={})

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="caselink"'
    assert answer.headers["Content-Type"] == "application/json"
    assert int(answer.headers["Content-Length"]) == len(answer.data)


def test_a_failure_inside_caselink_is_a_500_json_without_details_and_is_logged(app, client, capsys, monkeypatch):
    service = app.extensions["caselink"]

    def broken(*_args, **_kwargs):
        raise RuntimeError("the details stay in the logs")

    monkeypatch.setattr(service.store, "record", broken)
    answer = post(client)

    assert answer.status_code == 500
    assert answer.json == {
        "error": {"code": "internal_error", "message": "caselink failed to handle this request; see its logs"}
    }
    assert "the details stay in the logs" in capsys.readouterr().out


def test_an_unknown_path_is_404_json(client):
    assert client.get("/nothing-here").json["error"]["code"] == "not_found"


def test_an_authenticated_json_body_that_is_not_an_object_is_kept_with_its_reason(client, store):
    answer = post(client, body=b"[1, 2, 3]")

    assert answer.status_code == 202
    [event] = store.list_events()
    assert event["kind"] == "unrecognised"
    assert "not an object" in event["problem"]


def test_a_secret_never_appears_in_answers_or_logs(client, capsys):
    post(client, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}x"})
    post(client)

    output = capsys.readouterr()
    assert WEBHOOK_SECRET not in output.out + output.err


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"]["store"] == "ok"
    assert ready.json["checks"]["rules"] == "3 rules loaded"
    assert ready.json["checks"]["datadog"].startswith("dry-run")


def test_readiness_fails_when_the_store_has_no_schema(settings, tmp_path):
    from app import create_app

    application = create_app(replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    answer = application.test_client().get("/readyz")

    assert answer.status_code == 503
    assert "no caselink schema" in answer.json["checks"]["store"]
    application.extensions["caselink"].store.dispose()


def test_without_valid_rules_webhooks_get_503_so_senders_retry(settings, tmp_path):
    from app import create_app

    broken = tmp_path / "rules.yaml"
    broken.write_text("version: 1\nrules:\n  - name: x\n    whn: []\n")
    application = create_app(replace(settings, rules_file=broken))
    migrations.upgrade(application.extensions["caselink"].store.engine)
    client = application.test_client()

    answer = post(client)

    assert answer.status_code == 503
    assert answer.json["error"]["code"] == "not_ready"
    assert "rules.yaml:4" in answer.json["error"]["message"]
    assert client.get("/readyz").status_code == 503
    assert application.extensions["caselink"].store.list_events() == []
    application.extensions["caselink"].store.dispose()


def test_live_mode_refuses_a_source_that_has_no_secret(settings):
    from app import create_app

    application = create_app(replace(settings, dd_api_key=Secret("k"), dd_app_key=Secret("a"), webhook_secrets={}))
    migrations.upgrade(application.extensions["caselink"].store.engine)

    answer = post(application.test_client(), headers={})

    assert answer.status_code == 401
    assert "DATADOG_WEBHOOK_SECRET" in answer.json["error"]["message"]
    application.extensions["caselink"].store.dispose()


def test_dry_run_lets_a_source_without_a_secret_run_open(settings):
    from app import create_app

    application = create_app(replace(settings, webhook_secrets={}))
    migrations.upgrade(application.extensions["caselink"].store.engine)

    assert post(application.test_client(), headers={}).status_code == 202
    application.extensions["caselink"].store.dispose()


def test_metrics_count_webhooks_and_show_the_queue(client):
    post(client)

    text = client.get("/metrics").get_data(as_text=True)

    assert 'caselink_webhooks_total{source="datadog",status="202"}' in text
    assert 'caselink_links{state="dry_run"} 1.0' in text


def test_the_admin_api_is_closed_without_a_token(settings):
    from app import create_app

    application = create_app(replace(settings, admin_token=None))
    answer = application.test_client().get("/api/events", headers=ADMIN)

    assert answer.status_code == 401
    assert "ADMIN_TOKEN" in answer.json["error"]["message"]
    application.extensions["caselink"].store.dispose()


def test_the_admin_api_needs_the_bearer_token(client):
    assert client.get("/api/events").status_code == 401
    assert client.get("/api/events", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/events", headers=ADMIN).status_code == 200


def test_the_explain_record_of_an_event(client):
    event_id = post(client).json["events"][0]["id"]

    record = client.get(f"/api/events/{event_id}", headers=ADMIN).json

    assert record["entity"] == "INCIDENT:01c03111-172a-50c7-8df3-d61e64b0e74b"
    outcomes = {rule["rule"]: rule["outcome"] for rule in record["rules"]}
    assert outcomes == {
        "incident-causes-mentioned-case": "matched",
        "page-escalates-to-mentioned-case": "not_applicable",
        "case-relates-to-mentioned-case": "not_applicable",
    }
    assert [(link["child"], link["state"]) for link in record["links"]] == [("CASE:OPS-42", "dry_run")]
    assert client.get("/api/events/999", headers=ADMIN).status_code == 404


def test_links_can_be_listed_by_state_and_a_dry_run_link_is_not_retried_while_in_dry_run(client):
    post(client)
    [link] = client.get("/api/links?state=dry_run", headers=ADMIN).json["links"]

    retried = client.post(f"/api/links/{link['id']}/retry", headers=ADMIN)

    assert retried.status_code == 409
    assert "cannot be sent until DD_API_KEY and DD_APP_KEY are set" in retried.json["error"]["message"]
    assert client.get("/api/links?state=dry_run", headers=ADMIN).json["links"] == [link]
    assert client.post("/api/links/999/retry", headers=ADMIN).status_code == 404
    assert client.get("/api/links?state=nonsense", headers=ADMIN).status_code == 400


def test_a_not_found_source_suggests_the_closest_name(client):
    answer = post(client, source="datdog")

    assert "did you mean 'datadog'?" in answer.json["error"]["message"]


def test_form_encoded_bodies_with_json_fields_are_decoded(client, store):
    payload = json.loads(INCIDENT)
    form = {key: json.dumps(value) if isinstance(value, dict) else value for key, value in payload.items()}

    answer = client.post("/webhooks/datadog", data=form, headers=AUTH)

    assert answer.status_code == 202
    assert answer.json["links_planned"] == 1


def test_an_authenticated_body_that_cannot_be_read_is_400_and_kept_with_its_raw_text(client, store):
    body = b'{"event": "alert.triggered", "title": "Disk "data" full", "bytes": "\xff\x00"}'

    answer = post(client, body=body)
    again = post(client, body=body)

    assert answer.status_code == again.status_code == 400
    error = answer.json["error"]
    [kept] = store.list_events()
    assert (kept["id"], kept["kind"], kept["problem"]) == (error["rejected_event"], "rejected", error["message"])
    # Undecodable bytes and NUL are written out, so that any store can keep the text.
    assert store.get_event(kept["id"])["payload"] == body.decode("latin-1").replace("\xff", "\\xff").replace(
        "\x00", "\\x00"
    )


def test_a_webhook_the_database_refuses_is_400_and_kept_as_rejected(client, store, monkeypatch):
    from handlers import datadog

    normalise = datadog.normalise

    def unstorable(payload, request):
        # Whatever a handler might let through one day: text no store can hold.
        return [replace(event, title=event.title + "\ud800") for event in normalise(payload, request)]

    monkeypatch.setattr(datadog, "normalise", unstorable)

    answer = post(client)

    assert answer.status_code == 400
    assert answer.json["error"]["reason"] == "unstorable"
    assert [event["kind"] for event in store.list_events()] == ["rejected"]


def test_metrics_show_how_many_events_wait_for_their_evaluation(client, service):
    from caselink.events import Event
    from caselink.rules import Evaluation

    before = client.get("/metrics").get_data(as_text=True)
    late = [Event("datadog", "alert.triggered", f"late{n}", payload={"n": n}) for n in range(3)]
    service.store.record([(event, Evaluation.deferral("later")) for event in late], ruleset="", dry_run=True)

    assert "\ncaselink_events_deferred 0.0\n" in before
    assert "\ncaselink_events_deferred 3.0\n" in client.get("/metrics").get_data(as_text=True)
    service.evaluate_deferred()
    assert "\ncaselink_events_deferred 0.0\n" in client.get("/metrics").get_data(as_text=True)
