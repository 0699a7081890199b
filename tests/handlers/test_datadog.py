"""Datadog webhooks: the kind of every template shape, in canonical form, whichever field names it."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers import datadog
from tests.conftest import fixture_bytes
from tests.handlers.conftest import events
from tests.handlers.conftest import webhook

ALERT = {"id": "98765432", "title": "[No Data] Error rate", "message": "No data for 10m.", "priority": "P2"}


def body(**payload: object) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        # The monitor template of docs/senders.md: `"event": "alert.$ALERT_TRANSITION"`, as Datadog fills it.
        ({"event": "alert.No Data", "alert": {**ALERT, "transition": "No Data"}}, "alert.no_data"),
        ({"event": "alert.Triggered", "alert": {**ALERT, "transition": "Triggered"}}, "alert.triggered"),
        ({"event": "alert.Re-Triggered", "alert": {**ALERT, "transition": "Re-Triggered"}}, "alert.re_triggered"),
        ({"event": "alert.Recovered", "alert": {**ALERT, "transition": "Recovered"}}, "alert.recovered"),
        ({"event": "alert.Warn", "alert": ALERT}, "alert.warn"),
        ({"event": "alert.Renotify", "alert": ALERT}, "alert.renotify"),
        # `"event": "alert.$ALERT_TYPE"` and `"event": "$EVENT_TYPE"`.
        ({"event": "alert.Error", "alert": ALERT}, "alert.error"),
        ({"event": "Metric Alert Monitor"}, "metric_alert_monitor"),
        # Without `event`, the transition names the kind.
        ({"alert": {**ALERT, "transition": "No Data"}}, "alert.no_data"),
        ({"alert": {**ALERT, "transition": "Re-Triggered"}}, "alert.re_triggered"),
        ({"alert": ALERT}, "alert.notification"),
        # Datadog's default payload names it in event_type.
        ({"event_type": "Query Alert Monitor", "title": "x"}, "query_alert_monitor"),
        ({"event_type": "---", "title": "x"}, "notification"),
        # An `event` with no letter or digit is no kind: the payload's shape names it instead.
        ({"event": " - ", "incident": {"id": "x"}}, "incident.notification"),
        ({"event": "Incident.Created", "incident": {"id": "x"}}, "incident.created"),
        ({"event": "case.Status Changed", "case": {"key": "OPS-1"}}, "case.status_changed"),
        ({"event": "page.Escalated", "page": {"id": "x"}}, "page.escalated"),
    ],
)
def test_every_field_that_names_the_kind_gives_it_in_canonical_form(payload, kind):
    [event] = events(datadog, webhook("datadog", body(id="1", **payload)))

    assert event.kind == kind


@pytest.mark.parametrize("name", ["dd-monitor-nodata.json", "dd-monitor-noevent.json"])
def test_a_no_data_alert_is_alert_no_data_with_or_without_event(name):
    [event] = events(datadog, webhook("datadog", fixture_bytes("intake", name)))

    assert event.kind == "alert.no_data"


def test_a_form_encoded_alert_gives_the_canonical_kind():
    form = urlencode({"event": "alert.No Data", "id": "1", "alert": json.dumps({**ALERT, "transition": "No Data"})})
    request = webhook("datadog", form, content_type="application/x-www-form-urlencoded")

    [event] = events(datadog, request)

    assert event.kind == "alert.no_data"


# A field that names no kind: separators only, an unfilled template variable, or an
# empty `$ALERT_TRANSITION` in `alert.$ALERT_TRANSITION` (a last segment with no letter).
NAMES_NO_KIND = ["-", " - ", "", "$ALERT_TRANSITION", "$EVENT_TYPE"]


@pytest.mark.parametrize("transition", NAMES_NO_KIND)
def test_a_transition_that_names_no_kind_falls_back_as_if_it_were_missing(transition):
    payload = body(id="t1", alert={"id": "1", "title": "x", "transition": transition})

    [event] = events(datadog, webhook("datadog", payload))

    assert event.kind == "alert.notification"


@pytest.mark.parametrize(
    "value", ["alert.", "alert. - ", "alert.$ALERT_TRANSITION", "$EVENT_TYPE", "alert.$ALERT_TYPE", "alert.-"]
)
@pytest.mark.parametrize(
    ("shape", "fallback"),
    [
        ({"alert": {"id": "1", "transition": "No Data"}}, "alert.no_data"),
        ({"alert": {"id": "1", "transition": "$ALERT_TRANSITION"}}, "alert.notification"),
        ({"incident": {"id": "x"}}, "incident.notification"),
        ({"event_type": "$EVENT_TYPE"}, "notification"),
        ({"event_type": "Query Alert Monitor"}, "query_alert_monitor"),
    ],
)
def test_an_event_that_names_no_kind_falls_back_as_if_it_were_missing(value, shape, fallback):
    [event] = events(datadog, webhook("datadog", body(id="t1", event=value, **shape)))

    assert event.kind == fallback


# NUL is left out: a body holding it is refused whole (400), before any kind is read.
@given(
    filler=st.text(
        alphabet=st.characters(exclude_categories=("L", "N", "M", "Cs"), exclude_characters="\x00"), max_size=6
    )
)
def test_an_event_whose_last_segment_has_no_letter_or_digit_is_the_kind_without_event(filler):
    [event] = events(datadog, webhook("datadog", body(id="t1", event="alert." + filler, alert={"id": "1"})))

    assert event.kind == "alert.notification"


@given(kind=st.sampled_from(["incident.created", "alert.no_data", "alert.re_triggered"]), data=st.data())
def test_the_dedup_key_is_the_canonical_kind_and_id_however_event_is_spelt(kind, data):
    spelt = data.draw(st.sampled_from([kind, kind.upper(), kind.replace("_", " ").title(), kind.replace("_", "-")]))
    [written] = events(datadog, webhook("datadog", body(id="7388", event=spelt)))
    [canonical] = events(datadog, webhook("datadog", body(id="7388", event=kind)))

    assert written.dedup_key == canonical.dedup_key == f"{kind}:7388"
