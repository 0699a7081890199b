"""Each handler's `KINDS` (what the rules lint knows) agrees with docs/senders.md' kinds table and real payloads."""

from __future__ import annotations

import re

import pytest

from caselink.events import canonical_kind
from handlers import REGISTRY
from tests.conftest import FIXTURES
from tests.docs import SENDERS as SENDERS_DOC
from tests.docs import section as doc_section
from tests.handlers.conftest import events
from tests.handlers.conftest import webhook

# The docs' name of each sender in the kinds table.
SENDERS = {
    "Datadog": "datadog",
    "PagerDuty": "pagerduty",
    "Opsgenie / JSM": "opsgenie",
    "Alertmanager": "alertmanager",
    "Grafana": "grafana",
    "Standard Webhooks": "generic",
}
# Fixtures named for their sender in tests/fixtures/intake.
INTAKE = {"dd": "datadog", "pd": "pagerduty", "og": "opsgenie", "grafana": "grafana"}


def documented_kinds() -> dict[str, list[str]]:
    """The kinds the docs' table lists for each source (a sender's own names as examples included)."""
    section = doc_section(SENDERS_DOC, "Event kinds")
    listed: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if line.startswith("| ") and cells[0] in SENDERS:
            # Leave out asides in parentheses (`pagey.ping` is not stored) and names as sent (`Page On-Call`).
            cell = re.sub(r"\([^)]*\)", "", cells[-1])
            names = [name for name in re.findall(r"`([^`]+)`", cell) if "$" not in name and " " not in name]
            kinds = [canonical_kind(name) for name in names]
            listed.setdefault(SENDERS[cells[0]], []).extend(kinds)
    return listed


@pytest.mark.parametrize("source", sorted(REGISTRY))
def test_every_kind_the_docs_list_for_a_sender_is_one_its_handler_may_produce(source):
    kinds = REGISTRY[source].KINDS

    assert [kind for kind in documented_kinds()[source] if not kinds.may_produce(kind)] == []


@pytest.mark.parametrize("source", sorted(REGISTRY))
def test_every_kind_a_handler_documents_is_in_the_docs_table(source):
    assert set(REGISTRY[source].KINDS.documented) - set(documented_kinds()[source]) == set()


def test_the_documented_kinds_are_canonical_and_the_possible_ones_are_globs():
    for handler in REGISTRY.values():
        assert [kind for kind in handler.KINDS.documented if canonical_kind(kind) != kind] == []
        assert all("*" in glob for glob in handler.KINDS.possible)


# Intake cases that must be refused (400, kept as a rejected delivery): they become no events.
REFUSED = ("dd-unescaped-quote.json",)


def fixtures() -> list[tuple[str, str]]:
    found = [(source, path.name) for source in REGISTRY for path in sorted((FIXTURES / source).glob("*.json"))]
    for path in sorted((FIXTURES / "intake").glob("*.json")):
        if path.name in REFUSED:
            continue
        if path.name.split("-")[0] in INTAKE:
            found.append((INTAKE[path.name.split("-")[0]], f"../intake/{path.name}"))
    return found


@pytest.mark.parametrize(("source", "name"), fixtures())
def test_a_real_payload_becomes_events_of_kinds_its_handler_knows(source, name):
    handler = REGISTRY[source]
    produced = events(handler, webhook(source, (FIXTURES / source / name).read_bytes()))

    assert produced
    # A sender that documents no kinds (Standard Webhooks) sends its own.
    known = handler.KINDS.documents if handler.KINDS.documented else handler.KINDS.may_produce
    assert [event.kind for event in produced if not known(event.kind)] == []
