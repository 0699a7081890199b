"""The rules as caselink holds them once loaded: conditions, groups, refs, links, examples, rules.

Each knows how it matches an event and why it did not (`Condition.failure`, `Rule.evaluate`);
nothing here reads YAML or checks a file (`caselink.rules.validation` builds these).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from typing import TypeGuard

import jinja2

from caselink.events import FIELD_NAMES
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import text
from caselink.regex import Regex
from caselink.regex import SearchBudgetSpent
from caselink.templates import render

STRING_OPERATORS = (
    "equals",
    "not_equals",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "matches",
    "not_matches",
)
ORDER_OPERATORS = ("gt", "gte", "lt", "lte")
OPERATORS = (*STRING_OPERATORS, "exists", *ORDER_OPERATORS)
# A negated operator is exactly NOT of its positive form: on a list field it
# holds when no element satisfies the positive one, and on a missing field it holds.
NEGATIONS = {
    "not_equals": "equals",
    "not_in": "in",
    "not_contains": "contains",
    "not_matches": "matches",
}
MODES = ("live", "dry-run")
GROUP_KEYS = ("all", "any", "none")

# What one event's evaluation may produce, so that its trace (stored with it) stays small.
MAX_REFS = 100  # distinct refs one side of a link finds
MAX_REF_CHARACTERS = 255  # a UUID is 36, a case key a few more; links.parent_ref/child_ref hold 255
MAX_LINKS_PER_RULE = 100
# All rules together: 10,000 rules that each plan a link would be 10,000 Datadog calls a webhook.
MAX_LINKS_PER_EVENT = 100
# Conditions in one rule's `when`, groups' included. Evaluation looks at the clock between rules
# (caselink.rules.evaluation), so one rule's cost must be bounded: 20,000 `not_contains` on a
# 3 MB message held a request for 36 s. A list of values is one `in` / `not_in` condition.
MAX_CONDITIONS_PER_RULE = 200
# Groups in groups: each level is a few Python frames at evaluation, in a request thread's stack.
MAX_GROUP_DEPTH = 16
MAX_PROBLEMS = 20  # per rule and event
MAX_TRACE_TEXT = 1000  # characters of one reason or problem
_PATH_NAME = re.compile(r"[A-Za-z0-9_$@-]+")
_PATH_INDEX = re.compile(r"""\[(?:"([^"]*)"|'([^']*)'|(\d+))\]""")
# Text that reads as a number, so `gt: 1000` works on the strings webhooks send ("1482").
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")


@dataclass(frozen=True)
class PlannedLink:
    """A link a rule asks for; refs may still be case keys the worker resolves."""

    parent: EntityRef
    relationship: str
    child: EntityRef

    def __str__(self) -> str:
        return f"{self.parent} {self.relationship} {self.child}"

    def as_dict(self) -> dict[str, str]:
        return {
            "parent": str(self.parent),
            "relationship": self.relationship,
            "child": str(self.child),
        }


@dataclass(frozen=True)
class FieldPath:
    """A dotted path into an event's fields: `title`, `tags.service`, `payload.a["b.c"]`, `payload.list[0]`."""

    text: str
    parts: tuple[str | int, ...]

    @classmethod
    def parse(cls, path: str) -> FieldPath:
        parts: list[str | int] = []
        position = 0
        while position < len(path):
            # A name is followed by nothing, `.name` or `[…]`; a dot never starts or ends the path.
            dotted = bool(parts) and path.startswith(".", position)
            name = _PATH_NAME.match(path, position + 1 if dotted else position)
            index = None if dotted else _PATH_INDEX.match(path, position)
            if name is not None and (dotted or not parts):
                parts.append(name.group())
                position = name.end()
            elif index is not None:
                double, single, number = index.groups()
                parts.append(int(number) if number is not None else (double if double is not None else single))
                position = index.end()
            else:
                raise ValueError(f"cannot read field path {path!r} at character {position + 1}")
        if not parts:
            raise ValueError("field path is empty")
        if parts[0] not in FIELD_NAMES:
            suggestion = did_you_mean(str(parts[0]), FIELD_NAMES)
            raise ValueError(
                f"field {path!r} does not start with an event field ({', '.join(FIELD_NAMES)}){suggestion}"
            )
        return cls(path, tuple(parts))

    def values(self, fields: Mapping[str, Any]) -> list[Any]:
        """Every value at this path; lists are crossed element by element and flattened.

        A null is no value: a field that is null, like one that is absent, is missing.
        Event fields and payloads are plain dicts and lists (JSON), checked as such
        because this runs for every condition of every event.
        """
        parts = self.parts
        if len(parts) == 1 and isinstance(fields, dict):
            # The usual path, one event field (`title`, `severity`), without the general walk.
            value = fields.get(parts[0] if isinstance(parts[0], str) else str(parts[0]))
            if value is None:
                return []
            return [item for item in value if item is not None] if isinstance(value, list) else [value]
        current: list[Any] = [fields]
        for part in parts:
            following: list[Any] = []
            for value in current:
                if isinstance(value, dict):
                    key = part if isinstance(part, str) else str(part)
                    if key in value:
                        following.append(value[key])
                elif isinstance(value, list):
                    position = _list_index(part)
                    if position is not None:
                        if position < len(value):
                            following.append(value[position])
                    else:
                        following.extend(item[part] for item in value if isinstance(item, dict) and part in item)
            current = following
        found: list[Any] = []
        for value in current:
            if isinstance(value, list):
                found.extend(item for item in value if item is not None)
            elif value is not None:
                found.append(value)
        return found


def _list_index(part: str | int) -> int | None:
    """The list position a path part names: `[0]`, or a digits-only name as in `alerts.0`."""
    if isinstance(part, int):
        return part
    return int(part) if part.isdigit() else None


@dataclass(frozen=True)
class Condition:
    """One test of one field with one operator."""

    path: FieldPath
    operator: str
    value: Any
    ignore_case: bool
    where: str
    regex: Regex | None = None

    def describe(self) -> str:
        shown = self.value if self.operator != "exists" else str(self.value).lower()
        suffix = " (ignore_case)" if self.ignore_case else ""
        return f"{self.path.text} {self.operator} {show(shown)}{suffix}"

    def holds(self, fields: Mapping[str, Any]) -> bool:
        values = self.path.values(fields)
        if self.operator == "exists":
            return bool(values) == bool(self.value)
        positive = NEGATIONS.get(self.operator)
        if positive is not None:
            return not any(self._test(positive, value) for value in values)
        return any(self._test(self.operator, value) for value in values)

    def observed(self, fields: Mapping[str, Any]) -> str:
        """What the field holds, for an explanation: `title is "DB down"`."""
        values = self.path.values(fields)
        if not values:
            return f"{self.path.text} is missing"
        return f"{self.path.text} is {show(values[0] if len(values) == 1 else values)}"

    def failure(self, fields: Mapping[str, Any]) -> str:
        return f"{self.where}: {self.describe()}: {self.observed(fields)}"

    @cached_property
    def _text_choices(self) -> frozenset[str] | None:
        """`in` with only text choices: text values are then a set lookup (numbers still compare by value)."""
        if self.operator not in ("in", "not_in") or not all(isinstance(choice, str) for choice in self.value):
            return None
        return frozenset(choice.casefold() if self.ignore_case else choice for choice in self.value)

    def _test(self, operator: str, value: Any) -> bool:
        if isinstance(value, (dict, list)):
            return False
        if operator in ORDER_OPERATORS:
            return _compare(operator, value, self.value)
        if operator == "equals":
            return _same(value, self.value, self.ignore_case)
        if operator == "in":
            if self._text_choices is not None and isinstance(value, str):
                return (value.casefold() if self.ignore_case else value) in self._text_choices
            return any(_same(value, choice, self.ignore_case) for choice in self.value)
        if operator == "matches":
            assert self.regex is not None
            return self.regex.search(text(value))
        subject, wanted = text(value), text(self.value)
        if self.ignore_case:
            subject, wanted = subject.casefold(), wanted.casefold()
        if operator == "contains":
            return wanted in subject
        if operator == "starts_with":
            return subject.startswith(wanted)
        if operator == "ends_with":
            return subject.endswith(wanted)
        raise AssertionError(operator)


@dataclass(frozen=True)
class Group:
    """`all`, `any` or `none` of a list of conditions and groups."""

    mode: str
    items: tuple[Condition | Group, ...]
    where: str

    @property
    def size(self) -> int:
        """Its conditions, those of the groups in it included."""
        return sum(item.size if isinstance(item, Group) else 1 for item in self.items)

    def describe(self) -> str:
        """The group as one line of text: `severity equals "high" and priority in [...]`."""
        parts = [item.describe() if isinstance(item, Condition) else f"({item.describe()})" for item in self.items]
        if self.mode == "none":
            return "none of: " + "; ".join(parts)
        return (" and " if self.mode == "all" else " or ").join(parts)

    def first_failure(self, fields: Mapping[str, Any]) -> str | None:
        """None when the group holds, else the reason it does not."""
        if self.mode == "all":
            for item in self.items:
                reason = _failure(item, fields)
                if reason is not None:
                    return reason
            return None
        if self.mode == "any":
            reasons = []
            for item in self.items:
                reason = _failure(item, fields)
                if reason is None:
                    return None
                reasons.append(reason)
            return f"{self.where}: none held (first: {reasons[0]})" if reasons else None
        for item in self.items:
            if _failure(item, fields) is None:
                if isinstance(item, Condition):
                    return f"{item.where}: {item.describe()} holds ({item.observed(fields)}) but must not"
                return f"{item.where}: the group holds but must not"
        return None


def _failure(item: Condition | Group, fields: Mapping[str, Any]) -> str | None:
    if isinstance(item, Condition):
        return None if item.holds(fields) else item.failure(fields)
    return item.first_failure(fields)


@dataclass(frozen=True)
class RefSpec:
    """One side of a rule's link: the event's entity, a constant id (`template_text` alone), a
    template, or what a regex finds."""

    where: str
    type: str | None = None
    template: jinja2.Template | None = None
    template_text: str | None = None
    fields: tuple[FieldPath, ...] = ()
    pattern: Regex | None = None

    @property
    def is_event(self) -> bool:
        return self.type is None

    def shared_refs(
        self, event: Event, names: Mapping[str, Any], problems: list[str], shared: dict[Any, Any] | None
    ) -> list[EntityRef]:
        """`refs`, found once per event for every side written the same way (many rules share one `find`)."""
        if shared is None:
            return self.refs(event, names, problems)
        key = (self.where, self.type, self.template_text, self.fields, self.pattern.pattern if self.pattern else None)
        found = shared.get(key)
        if found is None:
            own: list[str] = []
            found = shared[key] = (self.refs(event, names, own), own)
        problems.extend(found[1])
        return list(found[0])

    def refs(self, event: Event, names: Mapping[str, Any], problems: list[str]) -> list[EntityRef]:
        if self.type is None:
            if event.entity is None:
                problems.append(f"{self.where}: the event is about no entity")
                return []
            return [event.entity]
        if self.template is not None:
            try:
                rendered = render(self.template, names)
            # Whatever an operator's template raises is a problem of this event, never a failed webhook.
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{self.where}.id: template failed: {type(exc).__name__}: {cut(str(exc))}")
                return []
            return _checked_refs(self.type, [rendered], self.where, problems)
        if self.pattern is None:
            assert self.template_text is not None
            return _checked_refs(self.type, [self.template_text], self.where, problems)  # a constant id
        tokens: dict[str, None] = {}
        try:
            self._find(self.pattern, names, tokens, problems)
        except SearchBudgetSpent as exc:
            problems.append(f"{self.where}: {exc}; the refs found before are used")
        return _checked_refs(self.type, tokens, self.where, problems)

    def _find(self, pattern: Regex, names: Mapping[str, Any], tokens: dict[str, None], problems: list[str]) -> None:
        """Add to `tokens` the pattern's tokens in the fields, up to MAX_REFS."""
        for path in self.fields:
            for value in path.values(names):
                if isinstance(value, (dict, list)):
                    continue
                for token in pattern.tokens(text(value)):
                    if isinstance(token, int):
                        problems.append(
                            f"{self.where}: a match of {token:,} characters is longer than any id; "
                            "make the pattern stop at the ref"
                        )
                        continue
                    if token and token not in tokens:
                        if len(tokens) == MAX_REFS:
                            problems.append(
                                f"{self.where}: more than {MAX_REFS} refs found; the first {MAX_REFS} are used"
                            )
                            return
                        tokens[token] = None


def _checked_refs(type_: str, tokens: Iterable[str], where: str, problems: list[str]) -> list[EntityRef]:
    refs: list[EntityRef] = []
    for token in tokens:
        if len(token) > MAX_REF_CHARACTERS:
            problems.append(
                f"{where}: {show(token)} ({len(token):,} characters) is longer than any id"
                f" ({MAX_REF_CHARACTERS} at most)"
            )
            continue
        try:
            ref = EntityRef.checked(type_, token)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if ref not in refs:
            refs.append(ref)
    return refs


@dataclass(frozen=True)
class LinkSpec:
    relationship: str
    parent: RefSpec
    child: RefSpec


@dataclass(frozen=True)
class Example:
    """A payload and the links this rule must plan for it, checked by `rules test`."""

    source: str
    payload: Any
    links: tuple[PlannedLink, ...]
    line: int


@dataclass(frozen=True)
class Rule:
    name: str
    link: LinkSpec
    description: str = ""
    sources: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    when: Group | None = None
    stop: bool = False
    enabled: bool = True
    mode: str = "live"
    examples: tuple[Example, ...] = ()
    line: int = 0

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"

    def applies_to(self, event: Event) -> str | None:
        """None when `on` selects the event, else why not."""
        if self.sources is not None and not self._source_globs(event.source):
            return f"on.source: {event.source!r} is not {_one_of(self.sources)}"
        if self.kinds is not None and not self._kind_globs(event.kind):
            return f"on.kind: {event.kind!r} is not {_one_of(self.kinds)}"
        return None

    @cached_property
    def _source_globs(self) -> Callable[[str], object]:
        return _globs(self.sources or ())

    @cached_property
    def _kind_globs(self) -> Callable[[str], object]:
        return _globs(self.kinds or ())

    def plan(
        self, event: Event, names: Mapping[str, Any], shared: dict[Any, Any] | None = None
    ) -> tuple[list[PlannedLink], list[str]]:
        """The links the rule plans for the event; `shared` keeps one event's ref searches for rules repeating them."""
        problems: list[str] = []
        parents = self.link.parent.shared_refs(event, names, problems, shared)
        children = self.link.child.shared_refs(event, names, problems, shared)
        links: list[PlannedLink] = []
        for parent in parents:
            for child in children:
                if parent == child:
                    continue
                if "CASE" not in (parent.type, child.type):
                    problems.append(
                        f"link: {parent} {self.link.relationship} {child} has no CASE side; "
                        "Datadog requires at least one"
                    )
                    continue
                links.append(PlannedLink(parent, self.link.relationship, child))
                if len(links) == MAX_LINKS_PER_RULE:
                    problems.append(f"link: more than {MAX_LINKS_PER_RULE} links for one event; the first are planned")
                    return links, problems
        return links, problems


def _globs(patterns: Sequence[str]) -> Callable[[str], object]:
    """A test of a name against several globs, made once: `on` is checked for every event.

    Plain names, the usual case, are a set lookup; globs, one compiled regular expression.
    """
    if not any(special in pattern for pattern in patterns for special in "*?["):
        return frozenset(patterns).__contains__
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)).match


def did_you_mean(word: str, choices: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    choices = list(choices)
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    if aliases and word.lower() in aliases:
        return f" (did you mean {aliases[word.lower()]}?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(value: Any) -> int | float | None:
    """A number, or text that reads as one ("42", " 7.5 "); None for anything else, booleans included."""
    if _is_number(value):
        return value
    if isinstance(value, str):
        stripped = value.strip()
        if _INTEGER.fullmatch(stripped):
            return int(stripped)
        if _DECIMAL.fullmatch(stripped):
            return float(stripped)
    return None


def _same(value: Any, wanted: Any, ignore_case: bool) -> bool:
    # A number on either side compares by value, so 5, 5.0 and "5" are the same.
    if _is_number(value) or _is_number(wanted):
        left, right = _as_number(value), _as_number(wanted)
        if left is not None and right is not None:
            return left == right
    subject, expected = text(value), text(wanted)
    if ignore_case:
        return subject.casefold() == expected.casefold()
    return subject == expected


def _compare(operator: str, value: Any, wanted: Any) -> bool:
    """Numbers when both sides read as numbers; text (e.g. ISO dates) when the rule gives text."""
    # Both numbers or both text: the branch below replaces the numbers with text.
    left: Any
    right: Any
    left, right = _as_number(value), _as_number(wanted)
    if left is None or right is None:
        if _is_number(wanted) or isinstance(value, bool):
            return False
        left, right = text(value), text(wanted)
    if operator == "gt":
        return bool(left > right)
    if operator == "gte":
        return bool(left >= right)
    if operator == "lt":
        return bool(left < right)
    return bool(left <= right)


def show(value: Any, limit: int = 80) -> str:
    shown = repr(value) if not isinstance(value, str) else '"' + value.replace('"', '\\"') + '"'
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def cut(text: str, limit: int = MAX_TRACE_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_of(names: Sequence[str]) -> str:
    return repr(names[0]) if len(names) == 1 else "one of " + ", ".join(repr(name) for name in names)
