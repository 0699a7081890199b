"""rules.yaml as YAML: libyaml parses it, and mappings and lists come back knowing their lines.

The limits a file is held to before any rule is built (size, rules, values with aliases
written out, digits of a number) are checked here, and PyYAML's findings are said as a
person would, with the line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from functools import partial
from typing import Any
from typing import cast

import yaml
from yaml.reader import ReaderError

from caselink.errors import RulesError

# What one rules file may hold: more is refused with a message saying so, so that a
# runaway or hostile file cannot stall a reload or hold the memory of every worker.
MAX_FILE_BYTES = 8 << 20
MAX_RULES = 10_000
MAX_YAML_NODES = 1_000_000


def read_yaml(source_text: str, filename: str) -> Any:
    """The document in the text: LocatedMap / LocatedList (with lines) for mappings and lists,
    str, int, float, bool or None for scalars; None for an empty text.

    RulesError, with filename:line, for a file that is not YAML text, does not parse, holds more
    than MAX_YAML_NODES values (a list or mapping counting two, each alias written out) or more
    than MAX_RULES rules.
    """
    loader = None
    try:
        # Aliases make a graph of a small file; building it out as a tree (examples, conditions)
        # is what an alias bomb exploits, so its size as a tree is measured. Without an anchor
        # (&) there is no alias, and a text holds at most four values a character (`?` alone is a
        # mapping of a null to a null): a short one holds fewer, with nothing to count.
        count = not _plainly_under_cap(source_text)
        if count:
            # A long text's parser events, counted by libyaml in C (30 ms a MB): a value makes one
            # and a list or mapping two, as they are counted, so without an anchor they are the
            # count, and with one no more than it: too many refuses the text before Python builds
            # a node of it.
            events = _event_count(source_text)
            if events is not None and events - 4 > MAX_YAML_NODES:
                raise RulesError([_too_many_values(filename, 1)])
            if events is not None and events > _COUNT_RULES_OVER:
                # Composing 10,001 rules' nodes took over a second; their events, a third of it.
                counted = _rules_counted(source_text)
                if counted is not None and counted[1] > MAX_RULES:
                    raise RulesError([too_many_rules(filename, *counted)])
            count = events is None or "&" in source_text
        # The reader checks the characters as it is built, so a binary file fails here.
        loader = Loader(source_text)
        node = loader.get_single_node()
        if node is None:
            return None
        size, line = _expanded_size(node) if count else (0, 0)
        if size > MAX_YAML_NODES:
            raise RulesError([_too_many_values(filename, line)])
        rules = _rules_node(node)
        if rules is not None and len(rules[1].value) > MAX_RULES:
            # Counted before the rules are built, which is most of the work of a load.
            raise RulesError([too_many_rules(filename, rules[0], len(rules[1].value))])
        if "<<" in source_text:
            # A merge flattens its mapping in place, which an alias of it then shares: PyYAML's
            # own constructors keep both right (the fast build would see the merged keys twice).
            return loader.construct_document(node)
        return _construct_tree(loader, node)
    except yaml.MarkedYAMLError as exc:
        raise RulesError([_yaml_problem(exc, source_text, filename)]) from None
    except ReaderError as exc:
        line_number = source_text.count("\n", 0, max(exc.position, 0)) + 1
        raise RulesError([f"{filename}:{line_number}: not a YAML text file: {exc.reason}"]) from None
    except yaml.YAMLError as exc:
        raise RulesError([f"{filename}:1: not valid YAML: {exc}"]) from None
    except RecursionError:
        # Lists or mappings nested hundreds deep: building them goes as deep as Python's stack.
        raise RulesError(
            [f"{filename}:1: the YAML nests lists or mappings deeper than caselink reads (a few hundred levels)"]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _too_many_values(filename: str, line: int) -> str:
    return (
        f"{filename}:{line}: the YAML holds more than {MAX_YAML_NODES:,} values (a list or mapping"
        " counting two), counting each value an alias (*name) repeats; a rules file may hold no more"
    )


def _event_count(source_text: str) -> int | None:
    """libyaml's parser events in the text (stream and document start and end, then one for each
    scalar or alias and two for each mapping or list); None without libyaml or when it finds the
    text is not YAML (composing it then says where)."""
    if not hasattr(_BaseLoader, "raw_parse"):
        return None
    parser: Any = _BaseLoader(source_text)
    try:
        return int(parser.raw_parse())
    except yaml.YAMLError:
        return None
    finally:
        parser.dispose()


# Parser events over which the rules are counted from the events before the document is composed:
# a rule makes a few dozen, so a file this long may be near MAX_RULES.
_COUNT_RULES_OVER = 200_000


def _rules_counted(source_text: str) -> tuple[int, int] | None:
    """The line of the top-level `rules:` list and how many items it holds, read from libyaml's
    events (no node is built); None when there is no such list or the text does not parse."""
    depth, expecting_key, key, line, count, key_line = 0, True, None, 0, 0, 0
    try:
        for event in yaml.parse(source_text, Loader=_BaseLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                if line and depth == 2:
                    count += 1
                elif depth == 1 and not expecting_key and key == "rules" and not line:
                    if isinstance(event, yaml.SequenceStartEvent):
                        line = key_line
                depth += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                if depth == 1:
                    if line:
                        return line, count
                    expecting_key = not expecting_key
            elif isinstance(event, yaml.NodeEvent):
                if line and depth == 2:
                    count += 1
                elif depth == 1:
                    if expecting_key:
                        key = event.value if isinstance(event, yaml.ScalarEvent) else None
                        key_line = event.start_mark.line + 1 if event.start_mark is not None else 1
                    expecting_key = not expecting_key
    except yaml.YAMLError:
        return None
    return None


def _rules_node(root: yaml.Node) -> tuple[int, yaml.SequenceNode] | None:
    """The line of `rules:` and the list under it, if the document has one."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "rules" and isinstance(value, yaml.SequenceNode):
            return key.start_mark.line + 1, value
    return None


def too_many_rules(filename: str, line: int, count: int) -> str:
    return f"{filename}:{line}: the file holds {count:,} rules; a rules file may hold at most {MAX_RULES:,}"


def _plainly_under_cap(source_text: str) -> bool:
    """Whether the text holds no anchor and too few characters for MAX_YAML_NODES values: never
    more than 4 × characters (tests/rules/test_hostile.py checks it on YAML's shortest forms)."""
    return 4 * len(source_text) <= MAX_YAML_NODES and "&" not in source_text


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """Values in the document once every alias is written out, a list or mapping counting two as
    its parser events do (MAX_YAML_NODES + 1 means more), and the line of the first node found to be over.

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
            total = 2
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


_SURROGATE_PAIR = re.compile(r"[dD][89abAB][0-9a-fA-F]{2}\\u([dD][c-fC-F][0-9a-fA-F]{2})")


def _escape_hint(source_text: str, at: int) -> str | None:
    """What to write instead of the \\u or \\U escape whose digits start at `at`, which libyaml
    refused: a surrogate (half of a UTF-16 pair, as JSON writes characters past U+FFFF), or a
    code past U+10FFFF. None when the text there is no such escape."""
    letter = source_text[at - 1 : at]
    if source_text[at - 2 : at - 1] != "\\" or letter not in ("u", "U"):
        return None
    digits = source_text[at : at + (4 if letter == "u" else 8)]
    try:
        code = int(digits, 16)
    except ValueError:
        return None
    written = f"\\{letter}{digits}"
    if code > 0x10FFFF:
        return f"{written} is past the last Unicode character, \\U0010FFFF"
    if not 0xD800 <= code <= 0xDFFF:
        return None
    pair = _SURROGATE_PAIR.match(source_text, at) if letter == "u" else None
    if pair is not None:
        low = int(pair.group(1), 16)
        character = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
        return (
            f"{written}\\u{pair.group(1)} is a surrogate pair, as JSON writes {chr(character)!r}; YAML has no"
            f" surrogates: write \\U{character:08X} or the character itself"
        )
    return (
        f"{written} is half of a UTF-16 surrogate pair, which YAML cannot hold: write the character's"
        " \\U escape (\\U0001F600 for 😀) or the character itself"
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
    if mark is not None and "invalid Unicode character escape" in problem:
        human = _escape_hint(source_text, mark.index) or human
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


class Located:
    """Line numbers (and keys seen twice) carried by the mappings and lists the YAML loader builds."""

    line: int
    lines: dict[Any, int]
    duplicates: list[tuple[int, Any]]
    # On a document's root: no key is written twice anywhere in it, so nothing needs looking for.
    none_duplicated = False


class LocatedMap(dict[Any, Any], Located):
    pass


class LocatedList(list[Any], Located):
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


# The base is chosen at import (libyaml when present), which mypy cannot follow as a class.
class Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader that records lines, notes duplicate keys and types only true/false, null and decimal numbers."""

    yaml_implicit_resolvers = {
        first: [pair for pair in resolvers if pair[0] not in _RETYPED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


for _tag, _pattern, _first in _TYPED_SCALARS:
    Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))


def _construct_map(loader: Loader, node: yaml.MappingNode) -> LocatedMap:
    written = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    # Flattening puts the pairs of `<<: *anchor` merges first; a key written after them
    # overrides a merged one, which is the point of a merge and not a duplicate.
    loader.flatten_mapping(node)
    merged = len(node.value) - written
    mapping = LocatedMap()
    _fill_map(mapping, node, partial(loader.construct_object, deep=True), merged=merged)
    return mapping


def _construct_seq(loader: Loader, node: yaml.SequenceNode) -> LocatedList:
    sequence = LocatedList()
    _fill_list(sequence, node, partial(loader.construct_object, deep=True))
    return sequence


def _construct_int(loader: Loader, node: yaml.ScalarNode) -> int:
    # Python refuses to turn more digits than this into an int (CVE-2020-10735) with a
    # ValueError that would leave the file's line behind; say it here, with the line.
    limit = sys.get_int_max_str_digits() or 4300
    digits = len(node.value) - node.value.count("_") - node.value[:1].count("-") - node.value[:1].count("+")
    if digits > limit:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of more than {limit:,} digits (write it as a string, in quotes)", node.start_mark
        )
    return cast(int, loader.construct_yaml_int(node))


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_tree(loader: Loader, root: yaml.Node) -> Any:
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
                value = LocatedMap()
                built[key] = value
                _fill_map(value, node, build)
                maybe_duplicated = maybe_duplicated or bool(value.duplicates)
        elif tag == _SEQ_TAG and isinstance(node, yaml.SequenceNode):
            value = LocatedList()
            built[key] = value
            _fill_list(value, node, build)
        else:
            value = loader.construct_object(node, deep=True)
            maybe_duplicated = maybe_duplicated or isinstance(value, Located)
        built[key] = value
        return value

    document = build(root)
    if isinstance(document, Located) and not maybe_duplicated:
        document.none_duplicated = True
    return document


def _fill_map(
    mapping: LocatedMap, node: yaml.MappingNode, build: Callable[[yaml.Node], Any], *, merged: int = 0
) -> None:
    """Build the pairs into `mapping` with their lines; a key written twice among those after the
    first `merged` (the pairs a `<<` merge put first, which a written key overrides) is noted."""
    mapping.line = node.start_mark.line + 1
    mapping.lines = {}
    mapping.duplicates = []
    written: set[Any] = set()
    for position, (key_node, value_node) in enumerate(node.value):
        key = build(key_node)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)):
            key = str(key)
        if position >= merged:
            if key in written:
                mapping.duplicates.append((line, key))
            written.add(key)
        mapping[key] = build(value_node)
        mapping.lines[key] = line


def _fill_list(sequence: LocatedList, node: yaml.SequenceNode, build: Callable[[yaml.Node], Any]) -> None:
    sequence.line = node.start_mark.line + 1
    sequence.lines = {}
    sequence.duplicates = []
    for index, item in enumerate(node.value):
        sequence.append(build(item))
        sequence.lines[index] = item.start_mark.line + 1


def duplicate_keys(node: Any) -> Iterator[tuple[int, Any]]:
    """Every key written twice in a mapping at or under `node`, each once even if aliased."""
    seen: set[int] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if not isinstance(current, Located) or id(current) in seen:
            continue
        seen.add(id(current))
        yield from current.duplicates
        pending.extend(current.values() if isinstance(current, Mapping) else cast(LocatedList, current))


def line_of(container: Any, key: Any = None) -> int:
    if key is not None and isinstance(container, Located) and key in getattr(container, "lines", {}):
        return container.lines[key]
    return getattr(container, "line", 0)
