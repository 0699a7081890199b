"""The rule engine: load and validate rules.yaml, evaluate events, plan links.

Evaluation is pure and cheap, so it runs inside the webhook request; it
produces an `Evaluation` (a trace of every rule plus the planned links) that
the store writes in the same transaction as the event.
"""

from __future__ import annotations

import ctypes
import difflib
import fnmatch
import functools
import gc
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeGuard
from typing import cast

import jinja2
import yaml
from jinja2 import meta
from yaml.reader import ReaderError

from caselink.errors import RulesError
from caselink.events import ENTITY_TYPES
from caselink.events import FIELD_NAMES
from caselink.events import RELATIONSHIPS
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import canonical_kind_pattern
from caselink.events import text
from caselink.regex import Regex
from caselink.regex import compile_rule_regex
from caselink.templates import TemplateEnvironment
from caselink.templates import TemplateLimitError
from caselink.templates import render
from caselink.templates import unbounded_constants

if TYPE_CHECKING:
    from caselink.rule_index import RuleIndex

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

# What one rules file may hold: more is refused with a message saying so, so that a
# runaway or hostile file cannot stall a reload or hold the memory of every worker.
MAX_FILE_BYTES = 8 << 20
MAX_RULES = 10_000
MAX_YAML_NODES = 1_000_000

# What one event's evaluation may produce, so that its trace (stored with it) stays small.
MAX_REFS = 100  # distinct refs one side of a link finds
MAX_REF_CHARACTERS = 256  # a UUID is 36, a case key a few more
MAX_LINKS_PER_RULE = 100
MAX_PROBLEMS = 20  # per rule and event
MAX_TRACE_TEXT = 1000  # characters of one reason or problem

_FILE_KEYS = ("version", "rules")
_RULE_KEYS = ("name", "description", "on", "when", "link", "stop", "enabled", "mode", "examples")
_ON_KEYS = ("source", "kind")
_LINK_KEYS = ("relationship", "parent", "child")
_REF_KEYS = ("type", "id", "find")
_FIND_KEYS = ("in", "pattern")
_EXAMPLE_KEYS = ("source", "payload", "links")
_EXAMPLE_LINK_KEYS = ("parent", "relationship", "child")
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PATH_NAME = re.compile(r"[A-Za-z0-9_$@-]+")
_PATH_INDEX = re.compile(r"""\[(?:"([^"]*)"|'([^']*)'|(\d+))\]""")
# Text that reads as a number, so `gt: 1000` works on the strings webhooks send ("1482").
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")
_GLOB_CHARACTERS = frozenset("*?[")
_TEMPLATE_MARKS = ("{{", "{%", "{#")
# What other rule engines call our operators, so the did-you-mean can point across.
_OPERATOR_ALIASES = {
    "eq": "equals",
    "ne": "not_equals",
    "neq": "not_equals",
    "nequals": "not_equals",
    "nin": "not_in",
    "inside": "in",
    "ncontains": "not_contains",
    "regex": "matches",
    "search": "matches",
    "iregex": "matches with ignore_case: true",
    "icontains": "contains with ignore_case: true",
    "iequals": "equals with ignore_case: true",
    "istartswith": "starts_with with ignore_case: true",
    "iendswith": "ends_with with ignore_case: true",
    "greater_than": "gt",
    "greaterthan": "gt",
    "less_than": "lt",
    "lessthan": "lt",
    "missing": "exists: false",
    "nexists": "exists: false",
}


_templates = TemplateEnvironment()
_TEMPLATE_NAMES = (*FIELD_NAMES, *sorted(_templates.globals))
_EMPTY_EVENT_NAMES = Event("", "", "").fields()


# Templates compiled, kept while among the most recently used: a reload compiles only what it
# has not seen. A compiled template is immutable (the sandbox renders it with fresh context).
COMPILED_TEMPLATES = 4096


@functools.lru_cache(maxsize=COMPILED_TEMPLATES)
def _compiled_template(source: str) -> tuple[jinja2.Template | None, str | None, tuple[str, ...], tuple[str, ...]]:
    """(the template, or None when it cannot be used; why it does not parse; why every event would
    refuse it; the undefined names it uses)."""
    try:
        parsed = _templates.parse(source)
        # Compiling finds what parsing does not, such as an unknown filter.
        template = _templates.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        return None, exc.message or "a syntax error", (), ()
    unbounded = unbounded_constants(parsed) or _over_bounds_when_empty(template)
    undefined = sorted(name for name in meta.find_undeclared_variables(parsed) if name not in _TEMPLATE_NAMES)
    usable = None if undefined or unbounded else template
    return usable, None, tuple(unbounded), tuple(undefined)


def _over_bounds_when_empty(template: jinja2.Template) -> list[str]:
    """The bound a template goes over with every field empty: what it builds from its own
    constants, as `('a' * 4000).replace('', 'x' * 4000)`, then fails on every event."""
    try:
        render(template, _EMPTY_EVENT_NAMES, clock=False)
    except TemplateLimitError as exc:
        return [str(exc)]
    except Exception:  # noqa: BLE001 - any other failure depends on the event's fields: not this check's
        return []
    return []


# ---------------------------------------------------------------------------
# The model


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
        return f"{self.path.text} {self.operator} {_show(shown)}{suffix}"

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
        return f"{self.path.text} is {_show(values[0] if len(values) == 1 else values)}"

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
    """One side of a rule's link: the event's entity, a template, or what a regex finds."""

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
                problems.append(f"{self.where}.id: template failed: {type(exc).__name__}: {_cut(str(exc))}")
                return []
            return _checked_refs(self.type, [rendered], self.where, problems)
        assert self.pattern is not None
        tokens: dict[str, None] = {}
        for path in self.fields:
            for value in path.values(names):
                if isinstance(value, (dict, list)):
                    continue
                for token in self.pattern.tokens(text(value)):
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
                            return _checked_refs(self.type, tokens, self.where, problems)
                        tokens[token] = None
        return _checked_refs(self.type, tokens, self.where, problems)


def _checked_refs(type_: str, tokens: Iterable[str], where: str, problems: list[str]) -> list[EntityRef]:
    refs: list[EntityRef] = []
    for token in tokens:
        if len(token) > MAX_REF_CHARACTERS:
            problems.append(
                f"{where}: {_show(token)} ({len(token):,} characters) is longer than any id"
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


@dataclass
class RuleOutcome:
    """What one rule did with one event; the explain record is a list of these."""

    rule: str
    outcome: str  # matched | not_matched | not_applicable | disabled | skipped
    reason: str | None = None
    links: list[PlannedLink] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False

    def __post_init__(self) -> None:
        # Stored with the event: each entry is bounded whatever the payload held.
        if self.reason is not None:
            self.reason = _cut(self.reason)
        if len(self.problems) > MAX_PROBLEMS:
            more = len(self.problems) - MAX_PROBLEMS
            self.problems = [*self.problems[:MAX_PROBLEMS], f"… and {more} more problem(s)"]
        self.problems = [_cut(problem) for problem in self.problems]

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"rule": self.rule, "outcome": self.outcome}
        if self.reason:
            record["reason"] = self.reason
        if self.outcome == "matched":
            record["links"] = [link.as_dict() for link in self.links]
            if self.dry_run:
                record["mode"] = "dry-run"
        if self.problems:
            record["problems"] = list(self.problems)
        return record


class Evaluation:
    """What a rule set did with one event: the rules that matched, and every rule's outcome.

    An indexed evaluation knows only the rules that matched; the others' outcomes (the
    explain record) are made when first asked for, from the rule set and the event.
    `ruleset` is the rule set evaluated, when the trace may refer to it rather than list it.
    """

    def __init__(
        self,
        outcomes: list[RuleOutcome] | None = None,
        *,
        matched: Mapping[int, RuleOutcome] | None = None,
        explain: Callable[[], list[RuleOutcome]] | None = None,
        ruleset: RuleSet | None = None,
    ) -> None:
        if outcomes is None and explain is None:
            raise ValueError("an evaluation needs its outcomes or a way to explain them")
        self._outcomes = outcomes
        self._explain = explain
        self.positions: dict[int, RuleOutcome] = dict(matched or {})
        self._matched = (
            list(self.positions.values())
            if matched is not None
            else [outcome for outcome in outcomes or () if outcome.outcome == "matched"]
        )
        self.ruleset = ruleset

    @property
    def outcomes(self) -> list[RuleOutcome]:
        if self._outcomes is None:
            assert self._explain is not None
            self._outcomes = self._explain()
        return self._outcomes

    @property
    def matched(self) -> list[RuleOutcome]:
        return self._matched

    @property
    def planned(self) -> list[tuple[RuleOutcome, PlannedLink]]:
        return [(outcome, link) for outcome in self.matched for link in outcome.links]

    @property
    def links(self) -> list[PlannedLink]:
        """The distinct links planned, in the order first planned: two rules planning one link plan one."""
        return list(dict.fromkeys(link for outcome in self.matched for link in outcome.links))

    def trace(self) -> list[dict[str, Any]]:
        return [outcome.as_dict() for outcome in self.outcomes]


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    path: str = "<rules>"
    digest: str = ""
    # What `rules check` points out but the rules work despite, with file:line like problems.
    warnings: tuple[str, ...] = ()
    # The file's text, stored once per rule set so that traces can refer to it (caselink.traces).
    text: str = ""

    @cached_property
    def index(self) -> RuleIndex:
        from caselink.rule_index import RuleIndex

        return RuleIndex(self.rules)

    def evaluate(self, event: Event) -> Evaluation:
        """The rules that can apply to the event, from the index, evaluated in file order."""
        names = event.fields()
        matched: dict[int, RuleOutcome] = {}
        # What one rule found out about this event that another rule asks again (conditions, ref searches).
        shared: dict[Any, Any] = {}
        for position in self.index.candidates(event, names):
            rule = self.rules[position]
            # A candidate is enabled and selected by `on`: only its conditions are left to ask.
            if not self.index.holds(position, names, shared):
                continue
            links, problems = rule.plan(event, names, shared)
            matched[position] = RuleOutcome(rule.name, "matched", None, links, problems, dry_run=rule.dry_run)
            if rule.stop:
                break
        rules = self.rules
        return Evaluation(matched=matched, explain=lambda: explain(rules, event, matched), ruleset=self)

    def evaluate_linear(self, event: Event) -> Evaluation:
        """Every rule asked in turn: what `evaluate` must agree with, and the reference for its tests."""
        names = event.fields()
        outcomes: list[RuleOutcome] = []
        stopped_by: str | None = None
        for rule in self.rules:
            if not rule.enabled:
                outcomes.append(RuleOutcome(rule.name, "disabled", "enabled: false"))
                continue
            if stopped_by is not None:
                outcomes.append(RuleOutcome(rule.name, "skipped", f"rule {stopped_by!r} has stop: true"))
                continue
            reason = rule.applies_to(event)
            if reason is not None:
                outcomes.append(RuleOutcome(rule.name, "not_applicable", reason))
                continue
            reason = rule.when.first_failure(names) if rule.when is not None else None
            if reason is not None:
                outcomes.append(RuleOutcome(rule.name, "not_matched", reason))
                continue
            links, problems = rule.plan(event, names)
            outcomes.append(RuleOutcome(rule.name, "matched", None, links, problems, dry_run=rule.dry_run))
            if rule.stop:
                stopped_by = rule.name
        return Evaluation(outcomes)

    def rule(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)


def explain(rules: Sequence[Rule], event: Event, matched: Mapping[int, RuleOutcome]) -> list[RuleOutcome]:
    """Every rule's outcome, in file order, given the outcomes of the rules that matched.

    The others are asked what the plain loop would have asked them: a disabled rule and
    a rule after a `stop` are said so, and any other did not apply or did not match.
    """
    fields: dict[str, Any] | None = None
    outcomes: list[RuleOutcome] = []
    stopped_by: str | None = None
    for position, rule in enumerate(rules):
        if not rule.enabled:
            outcomes.append(RuleOutcome(rule.name, "disabled", "enabled: false"))
            continue
        if stopped_by is not None:
            outcomes.append(RuleOutcome(rule.name, "skipped", f"rule {stopped_by!r} has stop: true"))
            continue
        outcome = matched.get(position)
        if outcome is not None:
            outcomes.append(outcome)
            if rule.stop:
                stopped_by = rule.name
            continue
        reason = rule.applies_to(event)
        if reason is not None:
            outcomes.append(RuleOutcome(rule.name, "not_applicable", reason))
            continue
        if fields is None:
            fields = event.fields()
        reason = rule.when.first_failure(fields) if rule.when is not None else None
        # None only when the event read back differs from the one evaluated (a field cut to
        # its column's size): the rule did not match then, and the record says so.
        outcomes.append(
            RuleOutcome(rule.name, "not_matched", reason or "its conditions did not hold for the event as received")
        )
    return outcomes


# ---------------------------------------------------------------------------
# Loading


def load_rules(path: str | os.PathLike[str], *, sources: Sequence[str] | None = None) -> RuleSet:
    """Read and validate a rules file; RulesError lists every problem with file:line."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            # Read one byte past the cap, so an oversized file is refused without reading all of it.
            content = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesError([f"{path}: cannot read the rules file: {exc.strerror}"]) from None
    if len(content) > MAX_FILE_BYTES:
        raise RulesError([_too_big(str(path), path.stat().st_size)])
    try:
        source_text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise RulesError([f"{path}: the rules file is not UTF-8 text"]) from None
    return parse_rules(source_text, str(path), sources=sources)


def parse_rules(source_text: str, filename: str = "<rules>", *, sources: Sequence[str] | None = None) -> RuleSet:
    """Validate rules from text; `sources` (handler names), when given, are the only valid on.source names."""
    encoded = source_text.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_FILE_BYTES:
        raise RulesError([_too_big(filename, len(encoded))])
    document = _read_yaml(source_text, filename)
    validator = _Validator(filename, sources)
    rules = validator.document(document)
    if validator.problems:
        raise RulesError(validator.problems)
    digest = hashlib.sha256(encoded).hexdigest()
    return RuleSet(tuple(rules), filename, digest, tuple(validator.warnings), source_text)


def _too_big(filename: str, size: int) -> str:
    return (
        f"{filename}: the rules file is {size:,} bytes; a rules file may hold at most {MAX_FILE_BYTES:,} bytes"
        f" and {MAX_RULES:,} rules"
    )


def _read_yaml(source_text: str, filename: str) -> Any:
    loader = None
    # A rules file makes tens of thousands of small objects that live until the load ends:
    # the cyclic collector would look at them again and again for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        # The reader checks the characters as it is built, so a binary file fails here.
        loader = _Loader(source_text)
        node = loader.get_single_node()
        if node is None:
            return None
        # Aliases make a graph of a small file; building it out as a tree (examples, conditions)
        # is what an alias bomb exploits, so its size as a tree is measured first. Without an
        # anchor (&) there is no alias, and a text holds at most two values a character (`?`
        # alone is a mapping of a null to a null): a short one holds fewer, with nothing to count.
        size, line = (0, 0) if _plainly_under_cap(source_text) else _expanded_size(node)
        if size > MAX_YAML_NODES:
            raise RulesError(
                [
                    f"{filename}:{line}: the YAML holds more than {MAX_YAML_NODES:,} values, counting each"
                    " value an alias (*name) repeats; a rules file may hold no more"
                ]
            )
        rules = _rules_node(node)
        if rules is not None and len(rules[1].value) > MAX_RULES:
            # Counted before the rules are built, which is most of the work of a load.
            raise RulesError([_too_many_rules(filename, rules[0], len(rules[1].value))])
        return _construct_tree(loader, node)
    except yaml.MarkedYAMLError as exc:
        raise RulesError([_yaml_problem(exc, source_text, filename)]) from None
    except ReaderError as exc:
        line_number = source_text.count("\n", 0, max(exc.position, 0)) + 1
        raise RulesError([f"{filename}:{line_number}: not a YAML text file: {exc.reason}"]) from None
    except yaml.YAMLError as exc:
        raise RulesError([f"{filename}:1: not valid YAML: {exc}"]) from None
    finally:
        if loader is not None:
            loader.dispose()
        if collecting:
            gc.enable()


def _rules_node(root: yaml.Node) -> tuple[int, yaml.SequenceNode] | None:
    """The line of `rules:` and the list under it, if the document has one."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "rules" and isinstance(value, yaml.SequenceNode):
            return key.start_mark.line + 1, value
    return None


def _too_many_rules(filename: str, line: int, count: int) -> str:
    return f"{filename}:{line}: the file holds {count:,} rules; a rules file may hold at most {MAX_RULES:,}"


def _plainly_under_cap(source_text: str) -> bool:
    """Whether the text holds no anchor and too few characters for MAX_YAML_NODES values: never
    more than 2 × characters + 1 (tests/test_rules_hostile.py checks it on YAML's shortest forms)."""
    return 2 * len(source_text) + 1 <= MAX_YAML_NODES and "&" not in source_text


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """Values in the document once every alias is written out (MAX_YAML_NODES + 1 means more), and
    the line of the first node found to be over.

    Each node is sized once (aliases share their node), so this takes time in proportion to the file.
    """
    cap = MAX_YAML_NODES + 1
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, children_sized = pending.pop()
        key = id(node)
        if children_sized:
            ancestors.discard(key)
            total = 1
            for child in _yaml_children(node):
                total += 1 if isinstance(child, yaml.ScalarNode) else sizes[id(child)]
            if total >= cap:
                return cap, node.start_mark.line + 1
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in ancestors:
            return cap, node.start_mark.line + 1  # an alias inside the node it names: a tree of it is endless
        ancestors.add(key)
        pending.append((node, True))
        pending.extend(
            (child, False)
            for child in _yaml_children(node)
            if not isinstance(child, yaml.ScalarNode) and id(child) not in sizes
        )
    return sizes.get(id(root), 1), root.start_mark.line + 1


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        items: list[yaml.Node] = node.value
        return items
    return []


# PyYAML's findings, as a person would say them. The first entry whose words appear in
# PyYAML's problem is used; {context_line} is where the construct it was reading began.
_YAML_PROBLEMS = (
    (
        "mapping values are not allowed",
        "a ':' that cannot be here: put text that contains ': ' in quotes, or check this line's indentation",
    ),
    (
        "expected <block end>, but found",
        "this line is not indented like the lines of the block it belongs to (started on line {context_line})",
    ),
    (
        "did not find expected key",
        "this line is not indented like the lines of the block it belongs to (started on line {context_line})",
    ),
    (
        "did not find expected '-' indicator",
        "a '-' list item where the list that starts on line {context_line} has ended: check the indentation",
    ),
    (
        "could not find expected ':'",
        "a key without ':' after it (started on line {context_line}); or a quote on that line is never closed",
    ),
    ("found unexpected end of stream", "the quoted text that starts on line {context_line} is never closed"),
    ("expected ',' or ']'", "the [ list ] that starts on line {context_line} is not closed or lacks a comma"),
    ("expected ',' or '}'", "the { mapping } that starts on line {context_line} is not closed or lacks a comma"),
    ("found undefined alias", "an alias (*name) that names no anchor (&name) defined before it"),
    ("second occurrence", "an anchor (&name) defined twice (first on line {context_line})"),
    ("found duplicate anchor", "an anchor (&name) defined twice"),
    ("but found another document", "a second document ('---'); a rules file is one YAML document"),
    ("that cannot start any token", "a character that cannot start unquoted text; put the value in quotes"),
    ("expected alphabetic or numeric character", "an '&' or '*' not followed by a name; put the value in quotes"),
)
_YAML_TOKENS = (
    ("'<block mapping start>'", "an indented mapping"),
    ("'<block sequence start>'", "an indented list"),
    ("<block end>", "the end of the block"),
    ("'<stream end>'", "the end of the file"),
    ("'<scalar>'", "a value"),
    ("'<block entry>'", "a '-' list item"),
)


def _yaml_problem(exc: yaml.MarkedYAMLError, source_text: str, filename: str) -> str:
    """`file:line: not valid YAML at column N: what is wrong`, then the line itself and a caret under the column."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "not YAML"
    context_line = exc.context_mark.line + 1 if exc.context_mark else "?"
    lines = source_text.splitlines()
    shown = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    if mark is not None and shown[mark.column : mark.column + 1] == "\t":
        problem = "a tab"
    human = next((said for words, said in _YAML_PROBLEMS if words in problem), None)
    if problem == "a tab":
        human = "a tab character; YAML indents with spaces only"
    if human is None:
        human = problem
        for token, said in _YAML_TOKENS:
            human = human.replace(token, said)
    human = human.replace("{context_line}", str(context_line))
    if mark is None:
        return f"{filename}:1: not valid YAML: {human}"
    caret = " " * min(mark.column, len(shown)) + "^"
    number = str(mark.line + 1)
    return (
        f"{filename}:{number}: not valid YAML at column {mark.column + 1}: {human}\n"
        f"  {number} | {_show_line(shown)}\n  {' ' * len(number)} | {caret}"
    )


def _show_line(line: str, limit: int = 200) -> str:
    line = line.replace("\t", " ")
    return line if len(line) <= limit else line[:limit] + "…"


LOAD_WAIT = 0.05  # seconds the caller that notices a new rules file waits for its background load


class LiveRules:
    """The rules in force, reloaded when the file changes; a bad file never replaces good rules.

    A new file is loaded beside the rules in force: while one thread loads it
    (with `background`, a thread of its own) every other caller goes on with the
    rules in force and never waits. `file_in_force()` says whether the file on
    disk is the one those rules came from.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sources: Sequence[str] | None = None,
        check_every: float = 2.0,
        on_reload: Callable[[RuleSet | None, RulesError | None], None] | None = None,
        on_check: Callable[[bool], None] | None = None,
        background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sources = sources
        self.check_every = check_every
        self.on_reload = on_reload
        self.on_check = on_check
        self.background = background
        self.ruleset: RuleSet | None = None
        self.error: RulesError | None = None
        # When this process loaded the rules in force (Unix seconds).
        self.loaded_at: float | None = None
        self._stamp: tuple[int, int, int] | None = None  # of the file last read, loaded or not
        self._in_force_stamp: tuple[int, int, int] | None = None  # of the file the rules in force came from
        self._checked_at = 0.0
        self._loading = threading.Lock()
        with self._loading:
            self._load(self._file_stamp(), report=False)

    def current(self) -> RuleSet | None:
        now = time.monotonic()
        if now - self._checked_at >= self.check_every:
            self._checked_at = now
            stamp = self._file_stamp()
            if self.on_check:
                self.on_check(self.ruleset is not None and stamp == self._in_force_stamp)
            if stamp != self._stamp and self._loading.acquire(blocking=False):
                # Whoever finds the lock taken goes on with the rules in force.
                if self.background:
                    loader = threading.Thread(target=self._load_then_release, args=(stamp,), daemon=True)
                    loader.start()
                    # A usual file loads in milliseconds: the caller that noticed it gets it at once.
                    # A slow one costs that caller this much at most, and nobody else anything.
                    loader.join(LOAD_WAIT)
                else:
                    self._load_then_release(stamp)
        return self.ruleset

    def watch(self) -> threading.Thread:
        """Check the file every `check_every` seconds from a daemon thread of its own.

        Requests check it too, but a process that gets none (all of a load balancer's
        connections on another worker) would otherwise report, through its readiness and
        the `caselink_rules_file_in_force` gauge, a file it last saw long ago.
        """

        def check_forever() -> None:
            while True:
                time.sleep(self.check_every)
                self.current()

        watcher = threading.Thread(target=check_forever, name="caselink-rules-watch", daemon=True)
        watcher.start()
        return watcher

    @property
    def loading(self) -> bool:
        """True while a new file is being read."""
        return self._loading.locked()

    def file_in_force(self) -> bool:
        """Whether the file on disk now is the one the rules in force were loaded from."""
        return self.ruleset is not None and self._file_stamp() == self._in_force_stamp

    def _file_stamp(self) -> tuple[int, int, int] | None:
        # The inode changes when an editor or a deploy replaces the file; the
        # size and nanosecond mtime catch an edit in place.
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load_then_release(self, stamp: tuple[int, int, int] | None) -> None:
        try:
            self._load(stamp, report=True)
        finally:
            self._loading.release()

    def _load(self, stamp: tuple[int, int, int] | None, *, report: bool) -> None:
        # The stamp is taken before reading: a change while reading is seen at the next check.
        self._stamp = stamp
        self._checked_at = time.monotonic()
        ruleset: RuleSet | None = None
        error: RulesError | None = None
        try:
            ruleset = load_rules(self.path, sources=self.sources)
        except RulesError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - out of memory, too deep: say so and try again at the next check
            error = RulesError([f"{self.path}: loading the rules failed: {type(exc).__name__}: {exc}"])
            self._stamp = None
        if ruleset is not None:
            self.ruleset, self.error, self._in_force_stamp = ruleset, None, stamp
            self.loaded_at = time.time()
        else:
            self.error = error
        if report and self.on_reload:
            self.on_reload(ruleset, error)
        if self.on_check:
            self.on_check(self.ruleset is not None and stamp == self._in_force_stamp)
        del ruleset, error
        _release_memory()


def _release_memory() -> None:
    """Hand what a replaced (or refused) rule set held back to the system, not only to Python's allocator."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory stays with the process for its next use


class _Node:
    """Line numbers (and keys seen twice) carried by the mappings and lists the YAML loader builds."""

    line: int
    lines: dict[Any, int]
    duplicates: list[tuple[int, Any]]
    # On a document's root: no key is written twice anywhere in it, so nothing needs looking for.
    none_duplicated = False


class _Map(dict[Any, Any], _Node):
    pass


class _Seq(list[Any], _Node):
    pass


# The plain scalars the loader types; everything else stays text. YAML 1.1, PyYAML's
# default, also reads on/off/yes/no as booleans (a rule's `on:` key would become True),
# 2024-01-01 as a date (which JSON cannot carry), 12:30 as 750 and 010 as 8.
_TYPED_SCALARS = (
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
)
_RETYPED = {"tag:yaml.org,2002:timestamp", *(tag for tag, _, _ in _TYPED_SCALARS)}


# libyaml parses in C, ten times faster than PyYAML's own parser; the constructors stay Python.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader that records lines, notes duplicate keys and types only true/false, null and decimal numbers."""

    yaml_implicit_resolvers = {
        first: [pair for pair in resolvers if pair[0] not in _RETYPED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


for _tag, _pattern, _first in _TYPED_SCALARS:
    _Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    written = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    # Flattening puts the pairs of `<<: *anchor` merges first; a key written after them
    # overrides a merged one, which is the point of a merge and not a duplicate.
    loader.flatten_mapping(node)
    merged = len(node.value) - written
    mapping = _Map()
    mapping.line = node.start_mark.line + 1
    mapping.lines = {}
    mapping.duplicates = []
    written_keys = set()
    for position, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)):
            key = str(key)
        if position >= merged:
            if key in written_keys:
                mapping.duplicates.append((line, key))
            written_keys.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = line
    return mapping


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    sequence = _Seq()
    sequence.line = node.start_mark.line + 1
    sequence.lines = {}
    sequence.duplicates = []
    for index, item in enumerate(node.value):
        sequence.append(loader.construct_object(item, deep=True))
        sequence.lines[index] = item.start_mark.line + 1
    return sequence


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    # Python refuses to turn more digits than this into an int (CVE-2020-10735) with a
    # ValueError that would leave the file's line behind; say it here, with the line.
    limit = sys.get_int_max_str_digits() or 4300
    digits = len(node.value) - node.value.count("_") - node.value[:1].count("-") - node.value[:1].count("+")
    if digits > limit:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of more than {limit:,} digits (write it as a string, in quotes)", node.start_mark
        )
    return cast(int, loader.construct_yaml_int(node))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_tree(loader: _Loader, root: yaml.Node) -> Any:
    """What `loader.construct_document(root)` gives, building strings, mappings without merges
    and sequences directly: PyYAML's per-node dispatch was a third of a load. Every other node
    (numbers, booleans, nulls, merges, explicit tags) is built by the loader's constructors.
    An alias gives the object built for its anchor, as PyYAML does."""
    built: dict[int, Any] = {}
    # Whether a key may be written twice: found in a mapping, or one built the usual way.
    maybe_duplicated = False

    def build(node: yaml.Node) -> Any:
        nonlocal maybe_duplicated
        key = id(node)
        if key in built:
            return built[key]
        tag = node.tag
        if tag == _STR_TAG and isinstance(node, yaml.ScalarNode):
            return node.value
        if tag == _MAP_TAG and isinstance(node, yaml.MappingNode):
            if any(key_node.tag == _MERGE_TAG for key_node, _ in node.value):
                value = loader.construct_object(node, deep=True)
                maybe_duplicated = True
            else:
                value = _Map()
                built[key] = value
                _fill_map(value, node, build)
                maybe_duplicated = maybe_duplicated or bool(value.duplicates)
        elif tag == _SEQ_TAG and isinstance(node, yaml.SequenceNode):
            value = _Seq()
            built[key] = value
            value.line = node.start_mark.line + 1
            value.lines = {}
            value.duplicates = []
            for index, item in enumerate(node.value):
                value.append(build(item))
                value.lines[index] = item.start_mark.line + 1
        else:
            value = loader.construct_object(node, deep=True)
            maybe_duplicated = maybe_duplicated or isinstance(value, _Node)
        built[key] = value
        return value

    document = build(root)
    if isinstance(document, _Node) and not maybe_duplicated:
        document.none_duplicated = True
    return document


def _fill_map(mapping: _Map, node: yaml.MappingNode, build: Callable[[yaml.Node], Any]) -> None:
    mapping.line = node.start_mark.line + 1
    mapping.lines = {}
    mapping.duplicates = []
    for key_node, value_node in node.value:
        key = build(key_node)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)):
            key = str(key)
        if key in mapping.lines:
            mapping.duplicates.append((line, key))
        mapping[key] = build(value_node)
        mapping.lines[key] = line


def _duplicate_keys(node: Any) -> Iterator[tuple[int, Any]]:
    """Every key written twice in a mapping at or under `node`, each once even if aliased."""
    seen: set[int] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if not isinstance(current, _Node) or id(current) in seen:
            continue
        seen.add(id(current))
        yield from current.duplicates
        pending.extend(current.values() if isinstance(current, Mapping) else cast(_Seq, current))


class _Validator:
    """Turns the loaded YAML into rules, collecting every problem with its line."""

    def __init__(self, filename: str, sources: Sequence[str] | None) -> None:
        self.filename = filename
        self.sources = tuple(sources) if sources is not None else None
        self.problems: list[str] = []
        self.warnings: list[str] = []
        # Who the next problems are about: "rule 'NAME'", or "rules[3]" for a rule without a usable name.
        self.subject: str | None = None
        self.none_duplicated = False

    def problem(self, line: int, message: str) -> None:
        where = f" {self.subject}:" if self.subject else ""
        self.problems.append(f"{self.filename}:{line}:{where} {message}")

    def warning(self, line: int, message: str) -> None:
        where = f" {self.subject}:" if self.subject else ""
        self.warnings.append(f"{self.filename}:{line}:{where} warning: {message}")

    def duplicates(self, node: Any) -> None:
        if self.none_duplicated:
            return
        for line, key in sorted(_duplicate_keys(node), key=lambda item: item[0]):
            self.problem(line, f"key {key!r} appears twice in the same mapping")

    def document(self, document: Any) -> list[Rule]:
        if document is None:
            self.problem(1, "the file is empty; it needs version: 1 and rules:")
            return []
        if not isinstance(document, Mapping):
            self.problem(_line(document) or 1, "the file must be a mapping with version: 1 and rules:")
            return []
        self.none_duplicated = isinstance(document, _Node) and document.none_duplicated
        raw_rules = document.get("rules")
        if isinstance(raw_rules, list):
            # Duplicates inside a rule are reported with the rule's name, by `rule`.
            for line, key in cast(_Map, document).duplicates:
                self.problem(line, f"key {key!r} appears twice in the same mapping")
        else:
            self.duplicates(document)
        self.keys(document, _FILE_KEYS, "the file")
        version = document.get("version")
        if type(version) is not int or version != 1:
            self.problem(
                _line(document, "version"),
                f"version must be 1, not {version!r}" if "version" in document else "version: 1 is missing",
            )
        if raw_rules is None:
            self.problem(_line(document, "rules"), "rules: is missing (a list of rules)")
            return []
        if not isinstance(raw_rules, list):
            self.problem(_line(document, "rules"), "rules must be a list")
            return []
        if len(raw_rules) > MAX_RULES:
            self.problems.append(_too_many_rules(self.filename, _line(document, "rules"), len(raw_rules)))
            return []
        rules: list[Rule] = []
        names: dict[str, int] = {}
        for index, raw in enumerate(raw_rules):
            rule_line = _line(raw_rules, index)
            rule = self.rule(raw, rule_line, index)
            if rule is not None and rule.name in names:
                self.problem(rule_line, f"rule name {rule.name!r} is already used at line {names[rule.name]}")
            elif rule is not None:
                names[rule.name] = rule_line
                rules.append(rule)
            self.subject = None
        return rules

    def keys(self, mapping: Mapping[Any, Any], allowed: Sequence[str], what: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.problem(
                    _line(mapping, key),
                    f"unknown key {key!r} in {what}{did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})",
                )

    def rule(self, raw: Any, line: int, index: int) -> Rule | None:
        self.subject = f"rules[{index}]"
        if not isinstance(raw, Mapping):
            self.problem(line, "a rule must be a mapping with name: and link:")
            return None
        name = raw.get("name")
        if not isinstance(name, str) or not _RULE_NAME.match(name):
            self.problem(
                _line(raw, "name"),
                f"a rule name has letters, digits, '.', '_' and '-' (got {name!r})"
                if "name" in raw
                else "the rule has no name:",
            )
            name = None
        else:
            self.subject = f"rule {name!r}"
        self.duplicates(raw)
        self.keys(raw, _RULE_KEYS, "a rule")
        sources, kinds = self.on(raw)
        when = self.when(raw["when"], _line(raw, "when")) if "when" in raw else None
        link = self.link(raw.get("link"), _line(raw, "link") if "link" in raw else line)
        stop = self.boolean(raw, "stop", False)
        enabled = self.boolean(raw, "enabled", True)
        mode = raw.get("mode", "live")
        if mode not in MODES:
            self.problem(
                _line(raw, "mode"), f"mode must be live or dry-run, not {mode!r}{did_you_mean(str(mode), MODES)}"
            )
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.problem(_line(raw, "description"), "description must be text")
            description = ""
        examples = self.examples(raw.get("examples"), _line(raw, "examples"), sources) if "examples" in raw else ()
        if link is not None and not self.link_can_have_a_case_side(link, sources, kinds, _line(raw, "link")):
            return None
        if name is None or link is None:
            return None
        return Rule(
            name=name,
            link=link,
            description=description,
            sources=sources,
            kinds=kinds,
            when=when,
            stop=stop,
            enabled=enabled,
            mode=mode,
            examples=examples,
            line=line,
        )

    def boolean(self, raw: Mapping[str, Any], key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.problem(_line(raw, key), f"{key} must be true or false, not {value!r}")
            return default
        return value

    def on(self, raw: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        if "on" not in raw or raw["on"] is None:
            return None, None
        on = raw["on"]
        line = _line(raw, "on")
        if not isinstance(on, Mapping):
            self.problem(line, "on must be a mapping with source: and/or kind:")
            return None, None
        self.keys(on, _ON_KEYS, "on")
        sources = self.names(on, "source", "on.source")
        if sources is not None and self.sources is not None:
            for source in sources:
                if not any(fnmatch.fnmatchcase(known, source) for known in self.sources):
                    self.problem(
                        _line(on, "source"),
                        f"on.source: no source named {source!r}{did_you_mean(source, self.sources)}"
                        f" (sources: {', '.join(self.sources)})",
                    )
        kinds = self.names(on, "kind", "on.kind")
        if kinds is not None:
            kinds = self.canonical_kinds(kinds, _line(on, "kind"))
        return sources, kinds

    def canonical_kinds(self, kinds: tuple[str, ...], line: int) -> tuple[str, ...]:
        """on.kind as events carry kinds, canonical, so a rule written either way matches."""
        canonical = tuple(canonical_kind_pattern(kind) for kind in kinds)
        for written, kind in zip(kinds, canonical, strict=True):
            if not kind:
                self.problem(line, f"on.kind {written!r} names no kind (kinds have letters or digits)")
            elif kind != written:
                self.warning(line, f"on.kind {written!r} is not in canonical form; it matches as {kind!r}")
        return canonical

    def names(self, on: Mapping[str, Any], key: str, what: str) -> tuple[str, ...] | None:
        if key not in on:
            return None
        value = on[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(item, str) and item for item in values):
            self.problem(_line(on, key), f"{what} must be a name or a list of names")
            return None
        return tuple(values)

    def when(self, raw: Any, line: int) -> Group | None:
        if isinstance(raw, list):
            if not raw:
                self.problem(line, "when is an empty list; leave when: out to match every event")
                return None
            return self.group("all", raw, line, "when")
        if isinstance(raw, Mapping) and "field" not in raw:
            return self.block(raw, line, "when")
        if isinstance(raw, Mapping):
            condition = self.condition(raw, line, "when")
            return Group("all", (condition,), "when") if condition else None
        self.problem(line, "when must be a list of conditions or a mapping of all:/any:/none:")
        return None

    def block(self, raw: Mapping[str, Any], line: int, where: str) -> Group | None:
        unknown = [key for key in raw if key not in GROUP_KEYS]
        for key in unknown:
            self.problem(
                _line(raw, key),
                f"{where}: unknown key {key!r}{did_you_mean(str(key), (*GROUP_KEYS, 'field'))}"
                " (a group has all:, any: and/or none:; a condition has field:)",
            )
        groups = []
        for mode in GROUP_KEYS:
            if mode not in raw:
                continue
            items = raw[mode]
            if not isinstance(items, list) or not items:
                self.problem(_line(raw, mode), f"{where}.{mode} must be a non-empty list")
                continue
            groups.append(self.group(mode, items, _line(raw, mode), f"{where}.{mode}"))
        if not groups and not unknown:
            self.problem(line, f"{where}: a group needs all:, any: or none:")
        if len(groups) == 1:
            return groups[0]
        return Group("all", tuple(groups), where)

    def group(self, mode: str, raw: list[Any], line: int, where: str) -> Group:
        items: list[Condition | Group] = []
        for index, item in enumerate(raw):
            item_where = f"{where}[{index}]"
            item_line = _line(raw, index)
            if isinstance(item, Mapping) and "field" in item:
                condition = self.condition(item, item_line, item_where)
                if condition:
                    items.append(condition)
            elif isinstance(item, Mapping):
                group = self.block(item, item_line, item_where)
                if group:
                    items.append(group)
            else:
                self.problem(item_line, f"{item_where} must be a condition ({{field: …, operator: …}}) or a group")
        return Group(mode, tuple(items), where)

    def condition(self, raw: Mapping[str, Any], line: int, where: str) -> Condition | None:
        problems_before = len(self.problems)
        path = None
        raw_field = raw.get("field")
        if not isinstance(raw_field, str):
            self.problem(_line(raw, "field"), f"{where}: field must be a dotted path such as title or tags.service")
        else:
            try:
                path = FieldPath.parse(raw_field)
            except ValueError as exc:
                self.problem(_line(raw, "field"), f"{where}: {exc}")
        operators = [key for key in raw if key in OPERATORS]
        for key in raw:
            if key not in OPERATORS and key not in ("field", "ignore_case"):
                self.problem(
                    _line(raw, key),
                    f"{where}: unknown operator {key!r}"
                    f"{did_you_mean(str(key), (*OPERATORS, 'ignore_case'), _OPERATOR_ALIASES)}"
                    f" (operators: {', '.join(OPERATORS)})",
                )
        if len(operators) != 1:
            if not operators:
                if all(key in OPERATORS or key in ("field", "ignore_case") for key in raw):
                    self.problem(line, f"{where}: a condition needs one operator ({', '.join(OPERATORS)})")
            else:
                self.problem(line, f"{where}: a condition takes one operator, not {', '.join(operators)}")
            return None
        operator = operators[0]
        value = _plain(raw[operator])
        ignore_case = raw.get("ignore_case", False)
        value_line = _line(raw, operator)
        if not isinstance(ignore_case, bool):
            self.problem(_line(raw, "ignore_case"), f"{where}: ignore_case must be true or false")
            ignore_case = False
        if ignore_case and operator not in STRING_OPERATORS:
            self.problem(_line(raw, "ignore_case"), f"{where}: ignore_case applies to text operators, not {operator}")
        regex = None
        if operator == "exists":
            if not isinstance(value, bool):
                self.problem(value_line, f"{where}: exists takes true or false, not {value!r}")
        elif operator in ("in", "not_in"):
            if not isinstance(value, list) or not value or not all(_is_scalar(item) for item in value):
                self.problem(value_line, f"{where}: {operator} takes a non-empty list of values")
        elif operator in ("matches", "not_matches"):
            if not isinstance(value, str):
                self.problem(value_line, f"{where}: {operator} takes a regular expression as text")
            else:
                try:
                    regex = compile_rule_regex(value, ignore_case=ignore_case)
                except ValueError as exc:
                    self.problem(value_line, f"{where}: bad regular expression {value!r}: {exc}")
        elif operator in ORDER_OPERATORS:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                self.problem(value_line, f"{where}: {operator} takes a number or a text value")
        elif operator in ("contains", "not_contains", "starts_with", "ends_with"):
            if not _is_scalar(value) or value == "":
                self.problem(value_line, f"{where}: {operator} takes a non-empty text value")
        elif value is None:
            self.problem(value_line, f"{where}: {operator} needs a value; for a missing field use exists: false")
        elif not _is_scalar(value):
            self.problem(value_line, f"{where}: {operator} takes a single value (use in: for a list)")
        if len(self.problems) != problems_before or path is None:
            return None
        return Condition(path, operator, value, ignore_case, where, regex)

    def link(self, raw: Any, line: int) -> LinkSpec | None:
        if raw is None:
            self.problem(line, "link: is missing (relationship, parent, child)")
            return None
        if not isinstance(raw, Mapping):
            self.problem(line, "link must be a mapping with relationship, parent and child")
            return None
        problems_before = len(self.problems)
        self.keys(raw, _LINK_KEYS, "link")
        relationship = raw.get("relationship")
        if relationship not in RELATIONSHIPS:
            self.problem(
                _line(raw, "relationship"),
                f"link.relationship {relationship!r} is not one of {', '.join(RELATIONSHIPS)}"
                f"{did_you_mean(str(relationship), RELATIONSHIPS)}"
                if "relationship" in raw
                else "link.relationship is missing",
            )
        parent = self.ref(raw, "parent", line)
        child = self.ref(raw, "child", line)
        if parent and child and parent.is_event and child.is_event:
            self.problem(line, "link: parent and child are both event; a link needs two different entities")
        if parent and child and parent.type and child.type and "CASE" not in (parent.type, child.type):
            self.problem(
                line,
                f"link can never have a CASE side ({parent.type} {relationship} {child.type}); "
                "Datadog requires at least one side of a link to be a CASE",
            )
        if len(self.problems) != problems_before or parent is None or child is None:
            return None
        assert isinstance(relationship, str)  # one of RELATIONSHIPS, or a problem was recorded
        return LinkSpec(relationship, parent, child)

    def link_can_have_a_case_side(
        self, link: LinkSpec, sources: tuple[str, ...] | None, kinds: tuple[str, ...] | None, line: int
    ) -> bool:
        """Whether `event` sides, read with the events `on` selects, leave the link a chance of a CASE side."""
        sides = [(side, getattr(link, side)) for side in ("parent", "child")]
        if not any(spec.is_event for _, spec in sides):
            return True  # two explicit types were checked with the link
        event_types = _event_entity_types(sources, kinds, self.sources)
        if event_types is None:
            return True
        selected = f"on {_on_text(sources, kinds)}"
        if not event_types - {None}:
            return True  # such events are about no entity: the trace says so for each
        possible = [
            {spec.type} if not spec.is_event else {type_ for type_ in event_types if type_ is not None}
            for _, spec in sides
        ]
        if any("CASE" in types for types in possible):
            return True
        described = " ".join(
            [
                "/".join(sorted(possible[0])) + (" (the event)" if sides[0][1].is_event else ""),
                link.relationship,
                "/".join(sorted(possible[1])) + (" (the event)" if sides[1][1].is_event else ""),
            ]
        )
        self.problem(
            line,
            f"link can never have a CASE side ({described}): events {selected} are about "
            f"{' or '.join(sorted(type_ or 'no entity' for type_ in event_types))}; "
            "Datadog requires at least one side of a link to be a CASE",
        )
        return False

    def ref(self, link: Mapping[str, Any], side: str, link_line: int) -> RefSpec | None:
        where = f"link.{side}"
        if side not in link:
            self.problem(link_line, f"{where} is missing: event, {{type, id}} or {{type, find}}")
            return None
        raw = link[side]
        line = _line(link, side)
        if raw == "event":
            return RefSpec(where)
        if not isinstance(raw, Mapping):
            self.problem(
                line, f"{where} must be event, {{type, id: template}} or {{type, find: {{in, pattern}}}}, not {raw!r}"
            )
            return None
        problems_before = len(self.problems)
        self.keys(raw, _REF_KEYS, where)
        type_ = raw.get("type")
        if type_ not in ENTITY_TYPES:
            self.problem(
                _line(raw, "type"),
                f"{where}.type {type_!r} is not one of {', '.join(ENTITY_TYPES)}"
                f"{did_you_mean(str(type_), ENTITY_TYPES)}"
                if "type" in raw
                else f"{where}.type is missing ({', '.join(ENTITY_TYPES)})",
            )
        if ("id" in raw) == ("find" in raw):
            self.problem(line, f"{where} needs exactly one of id: (a template) or find: (a search)")
            return None
        if "id" in raw:
            spec = self.template_ref(raw, where, type_)
        else:
            spec = self.find_ref(raw, where, type_)
        return spec if len(self.problems) == problems_before else None

    def template_ref(self, raw: Mapping[str, Any], where: str, type_: Any) -> RefSpec | None:
        template_text = raw["id"]
        line = _line(raw, "id")
        if not isinstance(template_text, str) or not template_text.strip():
            self.problem(line, f"{where}.id must be text (a UUID, a case key or a template)")
            return None
        template = self.template(template_text, line, f"{where}.id")
        if template is None or type_ not in ENTITY_TYPES:
            return None
        if not any(mark in template_text for mark in _TEMPLATE_MARKS):
            # A constant id can be checked now rather than failing on every event.
            try:
                EntityRef.checked(type_, template_text)
            except ValueError as exc:
                self.problem(line, f"{where}.id: {exc}")
                return None
        return RefSpec(where, type_, template=template, template_text=template_text)

    def find_ref(self, raw: Mapping[str, Any], where: str, type_: Any) -> RefSpec | None:
        find = raw["find"]
        find_line = _line(raw, "find")
        if not isinstance(find, Mapping):
            self.problem(find_line, f"{where}.find must be a mapping with in: and pattern:")
            return None
        self.keys(find, _FIND_KEYS, f"{where}.find")
        fields_raw = find.get("in")
        fields_raw = [fields_raw] if isinstance(fields_raw, str) else fields_raw
        paths: list[FieldPath] = []
        if not isinstance(fields_raw, list) or not fields_raw:
            self.problem(find_line, f"{where}.find.in must name the fields to search, e.g. [title, message]")
        else:
            for item in fields_raw:
                if not isinstance(item, str):
                    self.problem(_line(find, "in"), f"{where}.find.in: {item!r} is not a field path")
                    continue
                try:
                    paths.append(FieldPath.parse(item))
                except ValueError as exc:
                    self.problem(_line(find, "in"), f"{where}.find.in: {exc}")
        pattern_text = find.get("pattern")
        pattern = None
        if not isinstance(pattern_text, str) or not pattern_text:
            self.problem(find_line, f"{where}.find.pattern must be a regular expression")
        else:
            try:
                pattern = compile_rule_regex(pattern_text)
            except ValueError as exc:
                self.problem(_line(find, "pattern"), f"{where}.find.pattern: bad regular expression: {exc}")
        if pattern is None or type_ not in ENTITY_TYPES:
            return None
        return RefSpec(where, type_, fields=tuple(paths), pattern=pattern)

    def template(self, source: str, line: int, where: str) -> jinja2.Template | None:
        template, syntax_error, unbounded, undefined = _compiled_template(source)
        if syntax_error is not None:
            self.problem(line, f"{where}: template does not parse: {syntax_error}")
            return None
        if unbounded:
            self.problem(line, f"{where}: template would be refused at every event: {'; '.join(unbounded)}")
        for name in undefined:
            self.problem(
                line,
                f"{where}: template uses undefined name {name!r}{did_you_mean(name, FIELD_NAMES)}"
                f" (names: {', '.join(FIELD_NAMES)})",
            )
        return None if undefined or unbounded else template

    def examples(self, raw: Any, line: int, rule_sources: tuple[str, ...] | None) -> tuple[Example, ...]:
        if not isinstance(raw, list):
            self.problem(line, "examples must be a list of {payload, links}")
            return ()
        # An example may leave out source: when the rule names exactly one.
        default_source = None
        if rule_sources is not None and len(rule_sources) == 1 and not _is_glob(rule_sources[0]):
            default_source = rule_sources[0]
        examples = []
        for index, item in enumerate(raw):
            item_line = _line(raw, index)
            where = f"examples[{index}]"
            if not isinstance(item, Mapping):
                self.problem(item_line, f"{where} must be a mapping with payload: and links:")
                continue
            self.keys(item, _EXAMPLE_KEYS, where)
            source = item.get("source", default_source)
            if source is None:
                self.problem(item_line, f"{where} needs source: (the rule's on.source names no single source)")
                continue
            if not isinstance(source, str) or (self.sources is not None and source not in self.sources):
                self.problem(
                    _line(item, "source"),
                    f"{where}.source: no source named {source!r}{did_you_mean(str(source), self.sources or ())}",
                )
                continue
            if "payload" not in item:
                self.problem(item_line, f"{where}.payload is missing")
                continue
            links_raw = item.get("links")
            if not isinstance(links_raw, list):
                self.problem(item_line, f"{where}.links must be a list (use [] when the rule must plan nothing)")
                continue
            links = [self.example_link(links_raw, link_index, where) for link_index in range(len(links_raw))]
            if all(link is not None for link in links):
                planned = tuple(link for link in links if link is not None)
                examples.append(Example(source, _plain(item["payload"]), planned, item_line))
        return tuple(examples)

    def example_link(self, links_raw: list[Any], index: int, example_where: str) -> PlannedLink | None:
        link = links_raw[index]
        line = _line(links_raw, index)
        where = f"{example_where}.links[{index}]"
        if not isinstance(link, Mapping):
            self.problem(line, f"{where} must be {{parent, relationship, child}}")
            return None
        problems_before = len(self.problems)
        self.keys(link, _EXAMPLE_LINK_KEYS, where)
        refs = []
        for side in ("parent", "child"):
            if side not in link:
                self.problem(line, f"{where}.{side} is missing (TYPE:ID, e.g. CASE:OPS-42)")
                continue
            try:
                refs.append(_example_ref(EntityRef.parse(str(link[side]))))
            except ValueError as exc:
                self.problem(_line(link, side), f"{where}.{side}: {exc}")
        relationship = link.get("relationship")
        if relationship not in RELATIONSHIPS:
            self.problem(
                _line(link, "relationship"),
                f"{where}.relationship {relationship!r} is not one of {', '.join(RELATIONSHIPS)}"
                f"{did_you_mean(str(relationship), RELATIONSHIPS)}",
            )
        if len(self.problems) != problems_before:
            return None
        parent, child = refs
        assert isinstance(relationship, str)  # one of RELATIONSHIPS, or a problem was recorded
        return PlannedLink(parent, relationship, child)


# Which entity a source's events are about. Datadog's own webhooks name it by the object
# they carry, which follows the kind's first segment (incident.created carries an incident);
# Standard Webhooks senders may name any entity; the other senders know none.
_ENTITIES_BY_KIND = {"datadog": {"incident": "INCIDENT", "case": "CASE", "page": "PAGE", "alert": None}}
_SOURCES_WITH_ANY_ENTITY = ("generic",)


def _event_entity_types(
    sources: tuple[str, ...] | None, kinds: tuple[str, ...] | None, known: tuple[str, ...] | None
) -> set[str | None] | None:
    """The entity types (None: no entity) an event selected by `on` may be about; None when any may be."""
    if sources is None or known is None:
        return None
    named = {source for pattern in sources for source in known if fnmatch.fnmatchcase(source, pattern)}
    types: set[str | None] = set()
    for source in named:
        if source in _SOURCES_WITH_ANY_ENTITY:
            return None
        by_kind = _ENTITIES_BY_KIND.get(source)
        if by_kind is None:
            types.add(None)
            continue
        if kinds is None:
            return None
        for kind in kinds:
            segment, dot, _ = kind.partition(".")
            if not dot or _is_glob(segment) or segment.lower() not in by_kind:
                return None  # the kind says nothing of the object the payload carries
            types.add(by_kind[segment.lower()])
    return types or None


def _on_text(sources: tuple[str, ...] | None, kinds: tuple[str, ...] | None) -> str:
    parts = [f"source {', '.join(sources)}"] if sources else []
    if kinds:
        parts.append(f"kind {', '.join(kinds)}")
    return " and ".join(parts)


def _example_ref(ref: EntityRef) -> EntityRef:
    """An expected ref in the form the engine plans it (UUIDs lower case, case keys upper case)."""
    try:
        return EntityRef.checked(ref.type, ref.id)
    except ValueError:
        return ref


def _plain(value: Any) -> Any:
    """The loader's line-carrying containers as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _line(container: Any, key: Any = None) -> int:
    if key is not None and isinstance(container, _Node) and key in getattr(container, "lines", {}):
        return container.lines[key]
    return getattr(container, "line", 0)


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


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARACTERS.isdisjoint(name)


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


def _show(value: Any, limit: int = 80) -> str:
    shown = repr(value) if not isinstance(value, str) else '"' + value.replace('"', '\\"') + '"'
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _cut(text: str, limit: int = MAX_TRACE_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_of(names: Sequence[str]) -> str:
    return repr(names[0]) if len(names) == 1 else "one of " + ", ".join(repr(name) for name in names)
