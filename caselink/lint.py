"""The rules lint: rules that load but cannot do what their author meant (`rules check`).

It reads only the compiled model (`RuleSet`, `Rule`) and the kinds each sender
produces (`SenderKinds`, a handler's `KINDS`), and finds:

- a rule that can never fire, because an earlier enabled rule with `stop: true`
  matches every event it selects (shadowed);
- two enabled rules that plan the same relationship between the same refs for
  the same events (duplicate work);
- an `on.kind` that no selected source produces, and an `on.source` that selects
  no source;
- a rule without `examples` (a note).

Every finding it reports is certain, never a guess: "covers" and "implies" below
answer yes only when that holds for every event, and no where they cannot tell.
So a rule reported as shadowed never fires; a rule not reported may still be.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caselink.events import SenderKinds
from caselink.events import glob_prefix
from caselink.rules import Condition
from caselink.rules import Group
from caselink.rules import RefSpec
from caselink.rules import Rule
from caselink.rules import RuleSet

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
    """Every finding about `ruleset`, in file order.

    `kinds` maps each source (handler name) to the kinds it produces; without
    it, nothing is said about kinds and sources, and sources compare by name.
    """
    found: list[Finding] = []
    rules = ruleset.rules
    for index, rule in enumerate(rules):
        earlier = rules[:index]
        found.extend(_shadowed(ruleset.path, rule, earlier, kinds))
        found.extend(_duplicates(ruleset.path, rule, earlier, kinds))
        if kinds is not None:
            found.extend(_selection(ruleset.path, rule, kinds))
        if not rule.examples:
            message = "has no examples; `rules test` cannot check it"
            found.append(Finding(NOTE, "examples", ruleset.path, rule.line, rule.name, message))
    return sorted(found, key=lambda finding: finding.line)


# ---------------------------------------------------------------------------
# Shadowed and duplicate rules


def _shadowed(path: str, rule: Rule, earlier: Sequence[Rule], kinds: Mapping[str, SenderKinds] | None) -> list[Finding]:
    if not rule.enabled:
        return []
    for other in earlier:
        if other.enabled and other.stop and covers(other, rule, kinds):
            message = (
                f"can never fire: the earlier rule {other.name!r} (line {other.line}) has stop: true"
                " and matches every event this rule selects"
            )
            return [Finding(WARNING, "shadowed", path, rule.line, rule.name, message, other.name)]
    return []


def _duplicates(
    path: str, rule: Rule, earlier: Sequence[Rule], kinds: Mapping[str, SenderKinds] | None
) -> list[Finding]:
    if not rule.enabled:
        return []
    found = []
    for other in earlier:
        # An earlier stop rule that matches ends evaluation first, so the two never both fire.
        if not other.enabled or other.stop or _link_key(other) != _link_key(rule):
            continue
        if not _may_overlap(other, rule, kinds):
            continue
        if implies(rule.when, other.when) or implies(other.when, rule.when):
            message = (
                f"plans the same {rule.link.relationship} link between the same refs as rule {other.name!r}"
                f" (line {other.line}) for the same events; one of them is probably a copy"
            )
            found.append(Finding(WARNING, "duplicate", path, rule.line, rule.name, message, other.name))
    return found


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
    pattern = (ref.pattern.pattern, ref.pattern.flags) if ref.pattern is not None else None
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


def _may_overlap(first: Rule, second: Rule, kinds: Mapping[str, SenderKinds] | None) -> bool:
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
        if not producers:
            suggestion = _suggestion(pattern, [kinds[source] for source in selected])
            message = f"on.kind {pattern!r}: no handler produces this kind for {named}{suggestion}"
            found.append(Finding(WARNING, "kind", path, rule.line, rule.name, message))
        elif all(kinds[source].documented and not kinds[source].documents(pattern) for source in producers):
            message = (
                f"on.kind {pattern!r} is not among the kinds {named} documents (README, Event kinds);"
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
