"""The rules lint: rules that load but cannot do what their author meant (`rules check`).

It reads only the compiled model (`RuleSet`, `Rule`) and the kinds each sender
produces (`SenderKinds`, a handler's `KINDS`), and finds:

- a rule that can never fire, because an earlier enabled rule with `stop: true`
  matches every event it selects (shadowed);
- two enabled rules that plan the same relationship between the same refs for
  the same events (duplicate work);
- an `on.kind` that no selected source produces, an `on.kind` glob that can match
  no canonical kind, and an `on.source` that selects no source;
- a `when` condition that compares the `kind` field with a value not in canonical
  form (`equals`, `in` and their negations), which events never carry;
- a rule without `examples` (a note).

It errs towards silence: `covers` and `implies` answer yes only when that holds
for every event, and no where they cannot tell, so a rule reported as shadowed
never fires (a rule not reported may still be shadowed); a kind is reported only
when no selected sender can send it, by its `SenderKinds`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caselink.events import SenderKinds
from caselink.events import canonical_kind
from caselink.events import glob_prefix
from caselink.rules.evaluation import RuleSet
from caselink.rules.model import Condition
from caselink.rules.model import Group
from caselink.rules.model import RefSpec
from caselink.rules.model import Rule

WARNING = "warning"
NOTE = "note"
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Finding:
    """One thing the lint found about one rule (and, for pairs, the other rule)."""

    level: str  # warning | note
    check: str  # shadowed | duplicate | kind | source | examples
    path: str
    line: int
    rule: str
    message: str
    other: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: rule {self.rule!r}: {self.level}: {self.message}"


def lint(ruleset: RuleSet, kinds: Mapping[str, SenderKinds] | None = None) -> list[Finding]:
    """Every finding about `ruleset`, in file order; a rule is said to be shadowed, or a duplicate, once at most.

    `kinds` maps each source (handler name) to the kinds it produces; without
    it, nothing is said about kinds and sources, and sources compare by name.
    Each rule is compared only with the earlier rules that an index of their
    conditions offers, so a file of thousands of rules is checked in about linear time.
    """
    found: list[Finding] = []
    path = ruleset.path
    stops = _Index()
    by_link: dict[tuple[Any, ...], _Index] = {}
    for rule in ruleset.rules:
        if rule.enabled:
            found.extend(_shadowed(path, rule, stops, kinds))
            same_link = by_link.setdefault(_link_key(rule), _Index())
            found.extend(_duplicate(path, rule, same_link, kinds))
            # Once a stop rule matched, later rules are skipped: the two never both fire.
            (stops if rule.stop else same_link).add(rule)
        if kinds is not None:
            found.extend(_selection(path, rule, kinds))
        found.extend(_kind_conditions(path, rule))
        if not rule.examples:
            message = "has no examples; `rules test` cannot check it"
            found.append(Finding(NOTE, "examples", path, rule.line, rule.name, message))
    return sorted(found, key=lambda finding: finding.line)


# ---------------------------------------------------------------------------
# Shadowed and duplicate rules


def _shadowed(path: str, rule: Rule, stops: _Index, kinds: Mapping[str, SenderKinds] | None) -> list[Finding]:
    for other in stops.implied_by(rule):
        if covers(other, rule, kinds):
            message = (
                f"can never fire: the earlier rule {other.name!r} (line {other.line}) has stop: true"
                " and matches every event this rule selects"
            )
            return [Finding(WARNING, "shadowed", path, rule.line, rule.name, message, other.name)]
    return []


def _duplicate(path: str, rule: Rule, same_link: _Index, kinds: Mapping[str, SenderKinds] | None) -> list[Finding]:
    for other in same_link.related(rule):
        if overlaps(other, rule, kinds) and (implies(rule.when, other.when) or implies(other.when, rule.when)):
            message = (
                f"plans the same {rule.link.relationship} link between the same refs as rule {other.name!r}"
                f" (line {other.line}) for the same events; one of them is probably a copy"
            )
            return [Finding(WARNING, "duplicate", path, rule.line, rule.name, message, other.name)]
    return []


class _Index:
    """Earlier enabled rules, found by the conditions that could imply, or be implied by, a later rule's.

    What it offers is a superset of the rules for which `implies` can hold, in
    file order: every condition that implies another shares an anchor with it
    (`_anchors`, `_needed`). The caller checks each.
    """

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.unconditional: list[int] = []
        self.having: dict[tuple[Any, ...], list[int]] = {}  # the anchors of every condition of a rule
        self.needing: dict[tuple[Any, ...], list[int]] = {}  # the anchors one condition of a rule needs

    def add(self, rule: Rule) -> None:
        number = len(self.rules)
        self.rules.append(rule)
        conjuncts = _conjuncts(rule.when)
        if not conjuncts:
            self.unconditional.append(number)
            return
        for item in conjuncts:
            for anchor in _anchors(item):
                self.having.setdefault(anchor, []).append(number)
        # All of its conditions must be implied, so one, the most particular, is enough to find it by.
        for anchor in _needed(min(conjuncts, key=lambda item: len(_needed(item)))):
            self.needing.setdefault(anchor, []).append(number)

    def implied_by(self, rule: Rule) -> list[Rule]:
        """Earlier rules whose conditions `rule`'s may imply: `implies(rule.when, earlier.when)`."""
        return [self.rules[number] for number in sorted(self._implied_by(rule))]

    def related(self, rule: Rule) -> list[Rule]:
        """Earlier rules whose conditions may imply `rule`'s, or be implied by them."""
        return [self.rules[number] for number in sorted(self._implied_by(rule) | self._implying(rule))]

    def _implied_by(self, rule: Rule) -> set[int]:
        numbers = set(self.unconditional)
        for item in _conjuncts(rule.when):
            for anchor in _anchors(item):
                numbers.update(self.needing.get(anchor, ()))
        return numbers

    def _implying(self, rule: Rule) -> set[int]:
        conjuncts = _conjuncts(rule.when)
        if not conjuncts:
            return set(range(len(self.rules)))
        # Every one of `rule`'s conditions must be implied: the one fewest rules offer to is enough.
        fewest = min(conjuncts, key=lambda item: sum(len(self.having.get(anchor, ())) for anchor in _needed(item)))
        return {number for anchor in _needed(fewest) for number in self.having.get(anchor, ())}


def _anchors(item: Condition | Group) -> set[tuple[Any, ...]]:
    """What a condition offers: a condition it implies needs one of these (`_needed`)."""
    anchors: set[tuple[Any, ...]] = {("key", _key(item))}
    if isinstance(item, Condition):
        where = (item.path.parts, item.ignore_case)
        if item.operator in ("equals", "in"):
            anchors.update(("value", *where, value) for value in _values(item))
        elif item.operator == "not_in":
            anchors.add(("negated", *where))
    return anchors


def _needed(item: Condition | Group) -> set[tuple[Any, ...]]:
    """The anchors of which every condition that implies `item` (`_item_implies`) offers one."""
    needed: set[tuple[Any, ...]] = {("key", _key(item))}
    if isinstance(item, Condition):
        where = (item.path.parts, item.ignore_case)
        if item.operator == "in":
            needed.update(("value", *where, value) for value in _values(item))
        elif item.operator in ("not_equals", "not_in"):
            needed.add(("negated", *where))
    return needed


def covers(wide: Rule, narrow: Rule, kinds: Mapping[str, SenderKinds] | None = None) -> bool:
    """True only if `wide` matches every event `narrow` matches (its `on` and `when`, not `enabled`).

    With `kinds`, sources are the known ones and compare as sets; kinds compare
    by their patterns, and conditions by `implies`.
    """
    if kinds is not None:
        sources_covered = _selected_sources(narrow, kinds) <= _selected_sources(wide, kinds)
    else:
        sources_covered = _patterns_cover(wide.sources, narrow.sources)
    return sources_covered and _patterns_cover(wide.kinds, narrow.kinds) and implies(narrow.when, wide.when)


def implies(have: Group | None, need: Group | None) -> bool:
    """True only if every event for which `have` holds makes `need` hold (None holds always)."""
    if need is None:
        return True
    given = _conjuncts(have)
    return all(any(_item_implies(item, wanted) for item in given) for wanted in _conjuncts(need))


def _conjuncts(group: Group | None) -> list[Condition | Group]:
    """The conditions and groups that must all hold: `all` groups flattened."""
    if group is None:
        return []
    if group.mode != "all":
        return [group]
    items: list[Condition | Group] = []
    for item in group.items:
        items.extend(_conjuncts(item) if isinstance(item, Group) else [item])
    return items


def _item_implies(have: Condition | Group, need: Condition | Group) -> bool:
    if _key(have) == _key(need):
        return True
    if not isinstance(have, Condition) or not isinstance(need, Condition):
        return False
    if have.path.parts != need.path.parts or have.ignore_case != need.ignore_case:
        return False
    # Values compare exactly (type and value): the engine's looser equality only widens both sides alike.
    if need.operator == "in" and have.operator in ("equals", "in"):
        return _values(have) <= _values(need)
    if have.operator == "not_in" and need.operator in ("not_equals", "not_in"):
        return _values(need) <= _values(have)
    return False


def _values(condition: Condition) -> set[tuple[type, Any]]:
    values = condition.value if condition.operator in ("in", "not_in") else [condition.value]
    return {(type(value), value) for value in values}


def _key(item: Condition | Group) -> tuple[Any, ...]:
    if isinstance(item, Condition):
        return ("condition", item.path.parts, item.operator, _frozen(item.value), item.ignore_case)
    return ("group", item.mode, tuple(_key(child) for child in item.items))


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return ("list", tuple(_frozen(item) for item in value))
    return (type(value), value)


def _link_key(rule: Rule) -> tuple[Any, ...]:
    return (rule.link.relationship, _ref_key(rule.link.parent), _ref_key(rule.link.child))


def _ref_key(ref: RefSpec) -> tuple[Any, ...]:
    if ref.is_event:
        return ("event",)
    # The pattern's text: whatever engine compiled it, the same text finds the same tokens.
    pattern = getattr(ref.pattern, "pattern", None)
    return (ref.type, ref.template_text, tuple(sorted(path.text for path in ref.fields)), pattern)


def _patterns_cover(wide: tuple[str, ...] | None, narrow: tuple[str, ...] | None) -> bool:
    """True only if every name `narrow` selects, `wide` selects (None selects every name)."""
    if wide is None:
        return True
    if narrow is None:
        return "*" in wide
    return all(any(_pattern_covers(outer, inner) for outer in wide) for inner in narrow)


def _pattern_covers(outer: str, inner: str) -> bool:
    if outer == inner or outer == "*":
        return True
    if not _is_glob(inner):
        return fnmatch.fnmatchcase(inner, outer)
    # A glob is inside `prefix*` when it begins with that prefix before its own first wildcard.
    prefix = outer[:-1]
    return outer.endswith("*") and not _is_glob(prefix) and glob_prefix(inner).startswith(prefix)


def overlaps(first: Rule, second: Rule, kinds: Mapping[str, SenderKinds] | None = None) -> bool:
    """True only if some event is selected by both rules' `on` (sources and kinds)."""
    if kinds is not None:
        sources = bool(_selected_sources(first, kinds) & _selected_sources(second, kinds))
    else:
        sources = _patterns_meet(first.sources, second.sources)
    return sources and _patterns_meet(first.kinds, second.kinds)


def _patterns_meet(first: tuple[str, ...] | None, second: tuple[str, ...] | None) -> bool:
    """True only if some name is selected by both (None selects every name)."""
    if first is None or second is None:
        return True
    return any(_pattern_covers(a, b) or _pattern_covers(b, a) for a in first for b in second)


def _is_glob(pattern: str) -> bool:
    return not _GLOB_CHARACTERS.isdisjoint(pattern)


# ---------------------------------------------------------------------------
# Sources and kinds


def _selected_sources(rule: Rule, kinds: Mapping[str, SenderKinds]) -> frozenset[str]:
    if rule.sources is None:
        return frozenset(kinds)
    return frozenset(source for source in kinds if any(fnmatch.fnmatchcase(source, p) for p in rule.sources))


def _selection(path: str, rule: Rule, kinds: Mapping[str, SenderKinds]) -> list[Finding]:
    found = []
    for pattern in rule.sources or ():
        if not any(fnmatch.fnmatchcase(source, pattern) for source in kinds):
            message = f"on.source {pattern!r} selects no source (sources: {', '.join(kinds)})"
            found.append(Finding(WARNING, "source", path, rule.line, rule.name, message))
    selected = sorted(_selected_sources(rule, kinds))
    if not selected:
        return found
    named = "source " + selected[0] if len(selected) == 1 else "sources " + ", ".join(selected)
    for pattern in rule.kinds or ():
        producers = [source for source in selected if kinds[source].may_produce(pattern)]
        impossible = _impossible_set(pattern)
        if impossible:
            message = (
                f"on.kind {pattern!r} can match no canonical kind: its set {impossible} holds only characters"
                " that canonical kinds never have (they are letters, digits, `_` and `.`); write `_` for a word break"
            )
            found.append(Finding(WARNING, "kind", path, rule.line, rule.name, message))
        elif not producers:
            suggestion = _suggestion(pattern, [kinds[source] for source in selected])
            message = f"on.kind {pattern!r}: no handler produces this kind for {named}{suggestion}"
            found.append(Finding(WARNING, "kind", path, rule.line, rule.name, message))
        elif all(kinds[source].documented and not kinds[source].documents(pattern) for source in producers):
            message = (
                f"on.kind {pattern!r} is not among the kinds {named} documents (docs/senders.md, Event kinds);"
                " it may still come from a name of your own or a type the sender added later"
            )
            found.append(Finding(NOTE, "kind", path, rule.line, rule.name, message))
    return found


def _suggestion(pattern: str, senders: list[SenderKinds]) -> str:
    documented = sorted({kind for sender in senders for kind in sender.documented})
    close = difflib.get_close_matches(pattern, documented, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    possible = sorted({glob for sender in senders for glob in sender.possible})
    shown = possible or documented[:8] + (["…"] if len(documented) > 8 else [])
    return f" (it produces {', '.join(shown)})" if shown else ""


# fnmatch's `[…]` sets, as canonical_kind_pattern keeps them (a `]` right after `[` or `[!` is a member).
_GLOB_SET = re.compile(r"\[(!?)(\]?[^\]]*)\]")
# A range wider than this is taken to hold some letter rather than walked.
_WIDEST_RANGE = 4096


def _impossible_set(pattern: str) -> str:
    """The first `[…]` set of `pattern` that no character of a canonical kind is in; empty if none is."""
    for match in _GLOB_SET.finditer(pattern):
        negated, members = match.groups()
        if not negated and not any(_in_kinds(character) for character in _set_members(members)):
            return match.group()
    return ""


def _set_members(members: str) -> list[str]:
    characters: list[str] = []
    index = 0
    while index < len(members):
        if index + 2 < len(members) and members[index + 1] == "-":
            low, high = ord(members[index]), ord(members[index + 2])
            if high - low > _WIDEST_RANGE:
                return ["a"]
            characters.extend(chr(code) for code in range(low, high + 1))
            index += 3
        else:
            characters.append(members[index])
            index += 1
    return characters


def _in_kinds(character: str) -> bool:
    """Whether a canonical kind may hold `character`: letters, digits, combining marks, `_` and `.`."""
    return character.isalnum() or character in "_." or unicodedata.category(character).startswith("M")


# ---------------------------------------------------------------------------
# Conditions on the kind field

# The operators that compare a whole value: a kind not in canonical form never equals an event's kind.
_WHOLE_VALUE_OPERATORS = ("equals", "not_equals", "in", "not_in")


def _kind_conditions(path: str, rule: Rule) -> list[Finding]:
    found = []
    for condition in _conditions(rule.when):
        if condition.path.text != "kind" or condition.operator not in _WHOLE_VALUE_OPERATORS:
            continue
        values = condition.value if condition.operator in ("in", "not_in") else [condition.value]
        for value in values:
            if not isinstance(value, str):
                continue
            canonical = canonical_kind(value)
            if canonical == (value.casefold() if condition.ignore_case else value):
                continue
            message = (
                f"{condition.where}: kind {condition.operator} {value!r} compares with events' kinds, which are in"
                f" canonical form, so {value!r} never matches; write {canonical!r}"
            )
            found.append(Finding(WARNING, "kind", path, rule.line, rule.name, message))
    return found


def _conditions(item: Condition | Group | None) -> list[Condition]:
    if item is None:
        return []
    if isinstance(item, Condition):
        return [item]
    return [condition for child in item.items for condition in _conditions(child)]
