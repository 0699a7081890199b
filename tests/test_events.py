"""The canonical form of a kind: one spelling per kind, whatever the sender wrote and however a rule names it."""

from __future__ import annotations

import fnmatch
import re
import unicodedata

import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from caselink.events import Event
from caselink.events import canonical_kind
from caselink.events import canonical_kind_pattern
from caselink.rules import parse_rules
from tests.docs import SENDERS
from tests.docs import section as doc_section

CANONICAL = re.compile(r"[^\W_A-Z]+(?:_[^\W_A-Z]+)*(?:\.[^\W_A-Z]+(?:_[^\W_A-Z]+)*)*")


def without_marks(kind: str) -> str:
    """A kind without its combining marks, which ride on the letter before them."""
    return "".join(c for c in kind if not unicodedata.category(c).startswith("M"))


SEPARATORS = st.sampled_from([" ", "_", "-", "  ", " - ", "/", ":", "\t"])
# Words as senders write them: No, DATA, re, triggered, AddNote, 5xx, Ünïcode. "Either case" is what
# Unicode case folding equates, which is not every upper/lower pair (Turkish ı upper-cases to I).
WORDS = st.text(st.characters(categories=("Lu", "Ll", "Nd")), min_size=1, max_size=8).filter(
    lambda word: word.upper().casefold() == word.lower().casefold() == word.title().casefold() == word.casefold()
)
SEGMENTS = st.lists(WORDS, min_size=1, max_size=3)
KINDS = st.lists(SEGMENTS, min_size=1, max_size=3)


def written(kind: list[list[str]], draw_separator: st.DataObject, *, case: str) -> str:
    """A kind as one sender might write it: any case, any word separator, padding around segments."""
    segments = []
    for words in kind:
        text = words[0]
        for word in words[1:]:
            text += draw_separator.draw(SEPARATORS) + word
        segments.append({"upper": text.upper(), "lower": text.lower(), "title": text.title(), "as is": text}[case])
    return ".".join(f" {segment} " if case == "title" else segment for segment in segments)


def kind_matches(kind: str, pattern: str) -> bool:
    """What `on.kind` selects: the canonical kind against the canonical pattern, by fnmatch."""
    return fnmatch.fnmatchcase(canonical_kind(kind), canonical_kind_pattern(pattern))


def rule_on(kind: object) -> str:
    return f"""
version: 1
rules:
  - name: r
    on: {{source: datadog, kind: {kind}}}
    link: {{relationship: RELATES_TO, parent: {{type: CASE, id: OPS-1}}, child: {{type: CASE, id: OPS-2}}}}
"""


def matches(rule_kind: str, event_kind: str) -> bool:
    ruleset = parse_rules(rule_on(f"'{rule_kind}'"), "rules.yaml")
    [outcome] = ruleset.evaluate(Event("datadog", event_kind, "k")).outcomes
    return outcome.outcome == "matched"


@pytest.mark.parametrize(
    ("written_kind", "canonical"),
    [
        ("alert.No Data", "alert.no_data"),
        ("alert.Triggered", "alert.triggered"),
        ("alert.Re-Triggered", "alert.re_triggered"),
        ("alert.Recovered", "alert.recovered"),
        ("alert.no_data", "alert.no_data"),
        ("alert.AddNote", "alert.addnote"),
        ("alert.Escalate To Next", "alert.escalate_to_next"),
        ("Incident.Triggered", "incident.triggered"),
        ("incident.responder.added", "incident.responder.added"),
        (" alert . no  data ", "alert.no_data"),
        ("alert..no__data.", "alert.no_data"),
        ("ALERT.FIRING", "alert.firing"),
        # A combining mark stays with its letter: folding İ gives i and a combining dot.
        ("alert.İnfo", "alert.i\u0307nfo"),
        ("alert.Cafe\u0301 Open", "alert.caf\u00e9_open"),
        ("alert.ＮＯ ＤＡＴＡ", "alert.no_data"),
    ],
)
def test_a_kind_has_one_canonical_spelling(written_kind, canonical):
    assert canonical_kind(written_kind) == canonical


@given(st.text())
@example("İstanbul.No Data")
@example("a.ß ẞ")
def test_canonicalising_is_idempotent_and_gives_the_canonical_shape(text):
    canonical = canonical_kind(text)

    assert canonical_kind(canonical) == canonical
    assert canonical == "" or CANONICAL.fullmatch(without_marks(canonical))


@given(st.text())
@example("alert.No *")
@example("a.[!x]-Y.*-")
def test_canonicalising_a_pattern_is_idempotent(text):
    canonical = canonical_kind_pattern(text)

    assert canonical_kind_pattern(canonical) == canonical


@given(st.text(alphabet=st.characters(exclude_characters="*?[")))
def test_a_name_without_wildcards_is_canonicalised_as_a_kind(text):
    assert canonical_kind_pattern(text) == canonical_kind(text)


@given(KINDS, st.data(), st.sampled_from(["upper", "lower", "title", "as is"]), st.sampled_from(["lower", "as is"]))
def test_a_rule_written_either_way_matches_an_event_written_either_way(kind, data, rule_case, event_case):
    rule_kind = written(kind, data, case=rule_case)
    event_kind = written(kind, data, case=event_case)

    assert canonical_kind(rule_kind) == canonical_kind(event_kind)
    assert kind_matches(event_kind, rule_kind)
    assert matches(rule_kind, event_kind)


@given(KINDS, st.data(), st.sampled_from(["upper", "title", "as is"]))
def test_a_glob_written_in_any_form_still_selects_the_kinds_under_it(kind, data, case):
    prefix = written(kind[:-1] or kind, data, case=case)
    event_kind = written([*kind, ["Tail"]], data, case="as is")

    assert matches(prefix + ".*", event_kind)
    assert matches(prefix + ".?*", event_kind)


@given(KINDS, KINDS, st.sampled_from(["*", "?", "[a-z]", "[!a]", "*.*"]))
def test_a_canonical_glob_selects_exactly_what_fnmatch_selects(kind, pattern_kind, wildcard):
    event_kind = canonical_kind(".".join("_".join(words) for words in kind))
    pattern = canonical_kind(".".join("_".join(words) for words in pattern_kind)) + wildcard

    assert canonical_kind_pattern(pattern) == pattern
    assert kind_matches(event_kind, pattern) == fnmatch.fnmatchcase(event_kind, pattern)


@pytest.mark.parametrize(
    ("pattern", "kind", "selected"),
    [
        ("alert.No *", "alert.No Data", True),
        ("alert.No*", "alert.no_data", True),
        ("alert.* Data", "alert.No Data", True),
        ("alert.[NR]*", "alert.Recovered", True),
        ("alert.[!n]*", "alert.No Data", False),
        ("incident.*", "incident.responder.added", True),
        ("Incident.Responder.*", "incident.responder.added", True),
        ("alert.no_*", "alert.Triggered", False),
    ],
)
def test_globs_work_on_canonical_kinds(pattern, kind, selected):
    assert kind_matches(kind, pattern) is selected
    assert matches(pattern, kind) is selected


def test_an_event_keeps_its_kind_canonical_whoever_builds_it():
    assert Event("datadog", "alert.No Data", "k").kind == "alert.no_data"


def test_the_docs_kinds_table_lists_canonical_kinds():
    section = doc_section(SENDERS, "Event kinds")
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    listed = [kind for row in rows[1:] for kind in re.findall(r"`([^`$]+)`", row[-1])]

    assert len(listed) > 40
    assert [kind for kind in listed if canonical_kind(kind) != kind and " " not in kind and "-" not in kind] == []
    assert canonical_kind("alert.Page Payments On-Call") in listed
    assert canonical_kind("Deploy.Rolled-Back") in listed


@given(
    word=st.text(alphabet=st.characters(categories=("Lu", "Ll", "Lt")), min_size=1, max_size=4),
    mark=st.characters(categories=("Mn", "Mc", "Me")),
    rest=st.text(alphabet=st.characters(categories=("Ll",)), max_size=4),
)
def test_a_combining_mark_after_a_letter_never_breaks_the_word(word, mark, rest):
    assert "_" not in canonical_kind(f"alert.{word}{mark}{rest}")
