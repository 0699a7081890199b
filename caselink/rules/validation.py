"""From the YAML of rules.yaml to rules: every key, operator, ref, template and example checked,
each problem with its file:line and rule name (`Validator`).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import cast

import jinja2
from jinja2 import meta

from caselink.events import ENTITY_TYPES
from caselink.events import FIELD_NAMES
from caselink.events import RELATIONSHIPS
from caselink.events import EntityRef
from caselink.events import Event
from caselink.events import canonical_kind_pattern
from caselink.regex import compile_rule_regex
from caselink.rules.model import GROUP_KEYS
from caselink.rules.model import MAX_CONDITIONS_PER_RULE
from caselink.rules.model import MAX_GROUP_DEPTH
from caselink.rules.model import MAX_REF_CHARACTERS
from caselink.rules.model import MODES
from caselink.rules.model import OPERATORS
from caselink.rules.model import ORDER_OPERATORS
from caselink.rules.model import STRING_OPERATORS
from caselink.rules.model import Condition
from caselink.rules.model import Example
from caselink.rules.model import FieldPath
from caselink.rules.model import Group
from caselink.rules.model import LinkSpec
from caselink.rules.model import PlannedLink
from caselink.rules.model import RefSpec
from caselink.rules.model import Rule
from caselink.rules.model import did_you_mean
from caselink.rules.reader import MAX_RULES
from caselink.rules.reader import Located
from caselink.rules.reader import LocatedMap
from caselink.rules.reader import duplicate_keys
from caselink.rules.reader import line_of
from caselink.rules.reader import too_many_rules
from caselink.templates import MAX_SOURCE
from caselink.templates import MAX_SOURCES_PER_FILE
from caselink.templates import MAX_TEMPLATES_PER_FILE
from caselink.templates import TemplateEnvironment
from caselink.templates import TemplateLimitError
from caselink.templates import render
from caselink.templates import unbounded_constants

_FILE_KEYS = ("version", "rules")
_RULE_KEYS = ("name", "description", "on", "when", "link", "stop", "enabled", "mode", "examples")
_ON_KEYS = ("source", "kind")
_LINK_KEYS = ("relationship", "parent", "child")
_REF_KEYS = ("type", "id", "find")
_FIND_KEYS = ("in", "pattern")
_EXAMPLE_KEYS = ("source", "payload", "links")
_EXAMPLE_LINK_KEYS = ("parent", "relationship", "child")
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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


class Validator:
    """Turns the loaded YAML into rules, collecting every problem with its line."""

    def __init__(self, filename: str, sources: Sequence[str] | None) -> None:
        self.filename = filename
        self.sources = tuple(sources) if sources is not None else None
        self.problems: list[str] = []
        self.warnings: list[str] = []
        # Who the next problems are about: "rule 'NAME'", or "rules[3]" for a rule without a usable name.
        self.subject: str | None = None
        self.none_duplicated = False
        # The distinct template sources compiled for this file, and their characters.
        self.template_sources: set[str] = set()
        self.template_characters = 0

    def problem(self, line: int, message: str) -> None:
        where = f" {self.subject}:" if self.subject else ""
        self.problems.append(f"{self.filename}:{line}:{where} {message}")

    def warning(self, line: int, message: str) -> None:
        where = f" {self.subject}:" if self.subject else ""
        self.warnings.append(f"{self.filename}:{line}:{where} warning: {message}")

    def duplicates(self, node: Any) -> None:
        if self.none_duplicated:
            return
        for line, key in sorted(duplicate_keys(node), key=lambda item: item[0]):
            self.problem(line, f"key {key!r} appears twice in the same mapping")

    def document(self, document: Any) -> list[Rule]:
        if document is None:
            self.problem(1, "the file is empty; it needs version: 1 and rules:")
            return []
        if not isinstance(document, Mapping):
            self.problem(line_of(document) or 1, "the file must be a mapping with version: 1 and rules:")
            return []
        self.none_duplicated = isinstance(document, Located) and document.none_duplicated
        raw_rules = document.get("rules")
        if isinstance(raw_rules, list):
            # Duplicates inside a rule are reported with the rule's name, by `rule`.
            for line, key in cast(LocatedMap, document).duplicates:
                self.problem(line, f"key {key!r} appears twice in the same mapping")
        else:
            self.duplicates(document)
        self.keys(document, _FILE_KEYS, "the file")
        version = document.get("version")
        if type(version) is not int or version != 1:
            self.problem(
                line_of(document, "version"),
                f"version must be 1, not {version!r}" if "version" in document else "version: 1 is missing",
            )
        if raw_rules is None:
            self.problem(line_of(document, "rules"), "rules: is missing (a list of rules)")
            return []
        if not isinstance(raw_rules, list):
            self.problem(line_of(document, "rules"), "rules must be a list")
            return []
        if len(raw_rules) > MAX_RULES:
            self.problems.append(too_many_rules(self.filename, line_of(document, "rules"), len(raw_rules)))
            return []
        rules: list[Rule] = []
        names: dict[str, int] = {}
        for index, raw in enumerate(raw_rules):
            rule_line = line_of(raw_rules, index)
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
                    line_of(mapping, key),
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
                line_of(raw, "name"),
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
        when = self.when(raw["when"], line_of(raw, "when")) if "when" in raw else None
        if when is not None and when.size > MAX_CONDITIONS_PER_RULE:
            self.problem(
                line_of(raw, "when"),
                f"when holds {when.size:,} conditions; a rule may hold at most {MAX_CONDITIONS_PER_RULE}"
                " (one `in` or `not_in` takes a list of values; or split the rule)",
            )
            when = None
        link = self.link(raw.get("link"), line_of(raw, "link") if "link" in raw else line)
        stop = self.boolean(raw, "stop", False)
        enabled = self.boolean(raw, "enabled", True)
        mode = raw.get("mode", "live")
        if mode not in MODES:
            self.problem(
                line_of(raw, "mode"), f"mode must be live or dry-run, not {mode!r}{did_you_mean(str(mode), MODES)}"
            )
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.problem(line_of(raw, "description"), "description must be text")
            description = ""
        examples = self.examples(raw.get("examples"), line_of(raw, "examples"), sources) if "examples" in raw else ()
        if link is not None and not self.link_can_have_a_case_side(link, sources, kinds, line_of(raw, "link")):
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
            self.problem(line_of(raw, key), f"{key} must be true or false, not {value!r}")
            return default
        return value

    def on(self, raw: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        if "on" not in raw or raw["on"] is None:
            return None, None
        on = raw["on"]
        line = line_of(raw, "on")
        if not isinstance(on, Mapping):
            self.problem(line, "on must be a mapping with source: and/or kind:")
            return None, None
        self.keys(on, _ON_KEYS, "on")
        sources = self.names(on, "source", "on.source")
        if sources is not None and self.sources is not None:
            for source in sources:
                if not any(fnmatch.fnmatchcase(known, source) for known in self.sources):
                    self.problem(
                        line_of(on, "source"),
                        f"on.source: no source named {source!r}{did_you_mean(source, self.sources)}"
                        f" (sources: {', '.join(self.sources)})",
                    )
        kinds = self.names(on, "kind", "on.kind")
        if kinds is not None:
            kinds = self.canonical_kinds(kinds, line_of(on, "kind"))
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
            self.problem(line_of(on, key), f"{what} must be a name or a list of names")
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
        # Each group in a group adds one `[index]` to where it is.
        if where.count("[") >= MAX_GROUP_DEPTH:
            self.problem(line, f"{where}: groups nest more than {MAX_GROUP_DEPTH} deep; a rule may nest no deeper")
            return None
        unknown = [key for key in raw if key not in GROUP_KEYS]
        for key in unknown:
            self.problem(
                line_of(raw, key),
                f"{where}: unknown key {key!r}{did_you_mean(str(key), (*GROUP_KEYS, 'field'))}"
                " (a group has all:, any: and/or none:; a condition has field:)",
            )
        groups = []
        for mode in GROUP_KEYS:
            if mode not in raw:
                continue
            items = raw[mode]
            if not isinstance(items, list) or not items:
                self.problem(line_of(raw, mode), f"{where}.{mode} must be a non-empty list")
                continue
            groups.append(self.group(mode, items, line_of(raw, mode), f"{where}.{mode}"))
        if not groups and not unknown:
            self.problem(line, f"{where}: a group needs all:, any: or none:")
        if len(groups) == 1:
            return groups[0]
        return Group("all", tuple(groups), where)

    def group(self, mode: str, raw: list[Any], line: int, where: str) -> Group:
        items: list[Condition | Group] = []
        for index, item in enumerate(raw):
            item_where = f"{where}[{index}]"
            item_line = line_of(raw, index)
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
            self.problem(line_of(raw, "field"), f"{where}: field must be a dotted path such as title or tags.service")
        else:
            try:
                path = FieldPath.parse(raw_field)
            except ValueError as exc:
                self.problem(line_of(raw, "field"), f"{where}: {exc}")
        operators = [key for key in raw if key in OPERATORS]
        for key in raw:
            if key not in OPERATORS and key not in ("field", "ignore_case"):
                self.problem(
                    line_of(raw, key),
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
        value_line = line_of(raw, operator)
        if not isinstance(ignore_case, bool):
            self.problem(line_of(raw, "ignore_case"), f"{where}: ignore_case must be true or false")
            ignore_case = False
        if ignore_case and operator not in STRING_OPERATORS:
            self.problem(line_of(raw, "ignore_case"), f"{where}: ignore_case applies to text operators, not {operator}")
        regex = None
        if any(isinstance(item, str) and "\x00" in item for item in (value if isinstance(value, list) else [value])):
            # Its reason, quoted in a trace, would be refused by PostgreSQL, failing a blameless webhook.
            self.problem(value_line, f"{where}: {operator}'s value holds NUL (\\0), which no sender's text holds")
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
                line_of(raw, "relationship"),
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
        line = line_of(link, side)
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
                line_of(raw, "type"),
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
        line = line_of(raw, "id")
        if not isinstance(template_text, str) or not template_text.strip():
            self.problem(line, f"{where}.id must be text (a UUID, a case key or a template)")
            return None
        if not any(mark in template_text for mark in _TEMPLATE_MARKS):
            # A constant id is no template (nor counted as one: a file may link a thousand rules
            # to a thousand cases), and can be checked now rather than failing on every event.
            if type_ not in ENTITY_TYPES:
                return None
            if len(template_text) > MAX_REF_CHARACTERS:
                self.problem(
                    line,
                    f"{where}.id is {len(template_text):,} characters; an id may hold at most {MAX_REF_CHARACTERS}",
                )
                return None
            try:
                EntityRef.checked(type_, template_text)
            except ValueError as exc:
                self.problem(line, f"{where}.id: {exc}")
                return None
            return RefSpec(where, type_, template_text=template_text)
        template = self.template(template_text, line, f"{where}.id")
        if template is None or type_ not in ENTITY_TYPES:
            return None
        return RefSpec(where, type_, template=template, template_text=template_text)

    def find_ref(self, raw: Mapping[str, Any], where: str, type_: Any) -> RefSpec | None:
        find = raw["find"]
        find_line = line_of(raw, "find")
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
                    self.problem(line_of(find, "in"), f"{where}.find.in: {item!r} is not a field path")
                    continue
                try:
                    paths.append(FieldPath.parse(item))
                except ValueError as exc:
                    self.problem(line_of(find, "in"), f"{where}.find.in: {exc}")
        pattern_text = find.get("pattern")
        pattern = None
        if not isinstance(pattern_text, str) or not pattern_text:
            self.problem(find_line, f"{where}.find.pattern must be a regular expression")
        else:
            try:
                pattern = compile_rule_regex(pattern_text)
            except ValueError as exc:
                self.problem(line_of(find, "pattern"), f"{where}.find.pattern: bad regular expression: {exc}")
        if pattern is None or type_ not in ENTITY_TYPES:
            return None
        return RefSpec(where, type_, fields=tuple(paths), pattern=pattern)

    def template(self, source: str, line: int, where: str) -> jinja2.Template | None:
        if len(source) > MAX_SOURCE:
            self.problem(
                line, f"{where}: template is {len(source):,} characters; a template may hold at most {MAX_SOURCE:,}"
            )
            return None
        if source not in self.template_sources:
            if (
                len(self.template_sources) == MAX_TEMPLATES_PER_FILE
                or self.template_characters + len(source) > MAX_SOURCES_PER_FILE
            ):
                self.problem(
                    line,
                    f"{where}: a rules file may hold at most {MAX_TEMPLATES_PER_FILE:,} distinct templates of"
                    f" {MAX_SOURCES_PER_FILE:,} characters together (share one template between rules, or use find)",
                )
                return None
            self.template_sources.add(source)
            self.template_characters += len(source)
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
            item_line = line_of(raw, index)
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
                    line_of(item, "source"),
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
        line = line_of(links_raw, index)
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
                self.problem(line_of(link, side), f"{where}.{side}: {exc}")
        relationship = link.get("relationship")
        if relationship not in RELATIONSHIPS:
            self.problem(
                line_of(link, "relationship"),
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


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARACTERS.isdisjoint(name)
