"""Evaluation that visits only the rules that can apply to an event, and the explanation of the others.

A rule set's index files each enabled rule under what selects it cheaply: its `on.source`
and `on.kind` names (globs are tried once per source and kind, then remembered) and one
`equals` / `in` condition on text that its top-level `all` requires. An event then visits
the rules under its own source, kind and field values, in file order; every other rule
could not have matched it, so it is left out of evaluation and only explained when the
record is read (`caselink.rules.evaluation.explain`), by asking it the same questions the plain loop asks.

The index is a filter in front of the plain evaluation, never a second implementation of
it: a rule it lets through is evaluated exactly as before, and `stop`, `enabled` and `mode`
are applied by the same loop, so the matches, links and explanation are the ones the plain
loop gives (tests/rules/test_index.py checks that for random rule sets and events).
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caselink.events import Event
from caselink.rules.model import Condition
from caselink.rules.model import FieldPath
from caselink.rules.model import Rule

# Distinct (source, kind) pairs whose rule lists are remembered: kinds come from senders, so
# a sender inventing kinds costs one pass over `on` per new kind, and this much memory at most.
SELECTIONS_KEPT = 1024


@dataclass(frozen=True)
class _Key:
    """One condition every event a rule matches must meet: a value of `path` in `choices`."""

    path: FieldPath
    ignore_case: bool
    choices: frozenset[str]


def index_key(condition: Condition) -> _Key | None:
    """The condition as an index key, when a set lookup decides it exactly; else None.

    Only text compared with text is a plain set lookup: a number on either side compares
    by value (5, 5.0 and "5" are equal), so rules with numbers are not indexed by them.
    """
    if condition.operator == "equals":
        choices = [condition.value]
    elif condition.operator == "in":
        choices = list(condition.value)
    else:
        return None
    if not choices or not all(isinstance(choice, str) for choice in choices):
        return None
    folded = frozenset(choice.casefold() if condition.ignore_case else choice for choice in choices)
    return _Key(condition.path, condition.ignore_case, folded)


def required_keys(rule: Rule) -> list[_Key]:
    """The keys of the conditions a rule's `when` requires (its top-level `all` list)."""
    if rule.when is None or rule.when.mode != "all":
        return []
    keys = []
    for item in rule.when.items:
        if isinstance(item, Condition):
            key = index_key(item)
            if key is not None:
                keys.append(key)
    return keys


class RuleIndex:
    """The enabled rules of a rule set, filed for `candidates`; built once per rule set."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._enabled = [position for position, rule in enumerate(self.rules) if rule.enabled]
        keys = {position: required_keys(self.rules[position]) for position in self._enabled}
        # The most telling key of each rule: the one on the path with the most distinct
        # choices across the rule set (`tags.service` over a `severity` every rule shares).
        spread: dict[tuple[str, bool], set[str]] = {}
        for found in keys.values():
            for key in found:
                spread.setdefault((key.path.text, key.ignore_case), set()).update(key.choices)
        self._key: dict[int, _Key | None] = {}
        for position, found in keys.items():
            self._key[position] = max(found, key=lambda key: len(spread[key.path.text, key.ignore_case]), default=None)
        self._selections: OrderedDict[tuple[str, str], _Selection] = OrderedDict()
        self._changing = threading.Lock()
        # The conditions of rules whose `when` is a plain list (or absent), each with a key that is
        # the same for the same test written in another rule, so an event answers it once.
        self._plain: dict[int, tuple[tuple[Condition, tuple[Any, ...]], ...] | None] = {
            position: _plain_conditions(self.rules[position]) for position in self._enabled
        }

    def holds(self, position: int, fields: Mapping[str, Any], shared: dict[Any, Any]) -> bool:
        """Whether the `when` of an enabled rule holds; `shared` keeps the answers of one event."""
        plain = self._plain[position]
        if plain is None:
            when = self.rules[position].when
            return when is None or when.first_failure(fields) is None
        for condition, key in plain:
            held = shared.get(key)
            if held is None:
                held = shared[key] = condition.holds(fields)
            if not held:
                return False
        return True

    def candidates(self, event: Event, fields: Mapping[str, Any]) -> list[int]:
        """Positions of the rules that may match `event`, in file order; every other enabled rule cannot."""
        selection = self._selection(event)
        found: list[list[int]] = [selection.unkeyed]
        for (path, ignore_case), by_value in selection.keyed.items():
            values = path.values(fields)
            if not all(isinstance(value, str) for value in values):
                # Not plain text (a number in a payload): the rules keyed on it are evaluated in full.
                found.extend(by_value.values())
                continue
            for value in {value.casefold() if ignore_case else value for value in values}:
                listed = by_value.get(value)
                if listed is not None:
                    found.append(listed)
        if len(found) == 1:
            return found[0]
        # Each list is in file order; a rule under several of the event's values is visited once.
        return list(dict.fromkeys(heapq.merge(*found)))

    def _selection(self, event: Event) -> _Selection:
        pair = (event.source, event.kind)
        selection = self._selections.get(pair)
        if selection is not None:
            return selection
        selection = _Selection()
        for position in self._enabled:
            rule = self.rules[position]
            if rule.applies_to(event) is not None:
                continue
            key = self._key[position]
            if key is None:
                selection.unkeyed.append(position)
                continue
            by_value = selection.keyed.setdefault((key.path, key.ignore_case), {})
            for choice in key.choices:
                by_value.setdefault(choice, []).append(position)
        # Request threads share the index: reads take no lock, changes one at a time. The
        # oldest pair goes first; a pair seen again after that is worked out again.
        with self._changing:
            self._selections[pair] = selection
            while len(self._selections) > SELECTIONS_KEPT:
                self._selections.popitem(last=False)
        return selection


def _plain_conditions(rule: Rule) -> tuple[tuple[Condition, tuple[Any, ...]], ...] | None:
    """A rule's conditions when its `when` is absent or all plain conditions (it holds when each does), else None."""
    if rule.when is None:
        return ()
    if rule.when.mode != "all" or not all(isinstance(item, Condition) for item in rule.when.items):
        return None
    return tuple(
        (item, ("condition", item.path.text, item.operator, repr(item.value), item.ignore_case))
        for item in rule.when.items
        if isinstance(item, Condition)
    )


@dataclass
class _Selection:
    """The enabled rules whose `on` selects one (source, kind): unkeyed, or by their key's value."""

    unkeyed: list[int]
    keyed: dict[tuple[FieldPath, bool], dict[str, list[int]]]

    def __init__(self) -> None:
        self.unkeyed = []
        self.keyed = {}
