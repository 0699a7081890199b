"""What handlers produce and rules consume: webhook requests, events and entity refs."""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from functools import lru_cache
from typing import Any

ENTITY_TYPES = ("CASE", "INCIDENT", "PAGE", "AGENT_CONVERSATION")
RELATIONSHIPS = (
    "RELATES_TO",
    "CAUSES",
    "BLOCKS",
    "DUPLICATES",
    "PARENT_OF",
    "SUCCESSOR_OF",
    "ESCALATES_TO",
)
TEXT_FIELDS = ("title", "message", "severity", "priority", "status", "url")

# A Datadog case key: a project key, a dash, a number (OPS-42, DDFC-98813).
CASE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[0-9]+$")


# Everything that is not a letter, a digit or a combining mark separates words of a kind's segment.
_WORD_SEPARATORS = re.compile(r"[\W_]+")
# fnmatch's wildcards: `*`, `?` and a closed `[…]` set (a `]` right after `[` or `[!` is part of the set).
_GLOB_TOKEN = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")
_GLOB_CHARACTERS = frozenset("*?[")


@lru_cache(maxsize=4096)
def canonical_kind(kind: str) -> str:
    """A kind in canonical form: lower case (case-folded), words joined by `_`, segments by `.`.

    Whatever separates words in a sender's name (spaces, `-`, `_`, other
    punctuation) becomes one `_`; empty segments and separators at a segment's
    ends go. `alert.No Data`, `alert.no-data` and `ALERT..no_data` are all
    `alert.no_data`; a canonical kind is its own canonical form. Words run
    together stay together (`AddNote` is `addnote`). Cached: kinds are few.
    """
    segments = (_words(segment).strip("_") for segment in kind.split("."))
    return ".".join(segment for segment in segments if segment)


def _words(text: str) -> str:
    """`text` folded (NFKD, case folding, NFKC) with each run of separators as one `_`.

    A combining mark (Unicode category M*) belongs to the word before it:
    folding `İ` gives `i` and a combining dot, which is not a word break.
    """
    # Words are told apart in the text as written and folded one by one: folding can turn one
    # letter into a letter and punctuation (`Ŀ` is `l·`), which must not split the word.
    words = _WORD_SEPARATORS.sub(_separator, text).split("_")
    return "_".join(_WORD_SEPARATORS.sub(_within_word, _fold(word)) for word in words)


def _fold(word: str) -> str:
    # Decomposed before folding, composed after: canonical caseless matching (Unicode ch. 3.13).
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKD", word).casefold())


def _within_word(run: re.Match[str]) -> str:
    """What folding made of a word that is not a letter or digit: its marks stay, the rest goes."""
    return "".join(character for character in run.group() if unicodedata.category(character).startswith("M"))


def _separator(run: re.Match[str]) -> str:
    """A run of non-word characters as one `_`, except the marks right after a word, kept with it."""
    found = run.group()
    kept = 0
    if run.start() > 0:
        while kept < len(found) and unicodedata.category(found[kept]).startswith("M"):
            kept += 1
    return found[:kept] + ("_" if kept < len(found) else "")


def canonical_kind_pattern(pattern: str) -> str:
    """A kind or a glob of kinds (`on.kind`) in canonical form, its wildcards kept.

    The text between wildcards is canonicalised as in `canonical_kind`, so
    `alert.No *` is `alert.no_*` and still matches `alert.no_data`; `*`, `?` and
    `[…]` sets are kept as written (their letters case-folded), and a name
    without wildcards is exactly `canonical_kind(pattern)`.
    """
    if _GLOB_CHARACTERS.isdisjoint(pattern):
        return canonical_kind(pattern)
    segments: list[list[tuple[bool, str]]] = [[]]
    position = 0
    for token in (*_GLOB_TOKEN.finditer(pattern), None):
        literal = pattern[position : token.start() if token else len(pattern)]
        first, *rest = literal.split(".")
        segments[-1].append((False, first))
        segments.extend([(False, piece)] for piece in rest)
        if token is not None:
            segments[-1].append((True, token.group().casefold()))
            position = token.end()
    canonical = []
    for pieces in segments:
        words = [text if wildcard else _words(text) for wildcard, text in pieces]
        # Separators at a segment's ends go, as in canonical_kind; next to a wildcard they stay.
        words[0] = words[0].lstrip("_") if not pieces[0][0] else words[0]
        words[-1] = words[-1].rstrip("_") if not pieces[-1][0] else words[-1]
        segment = "".join(words)
        if segment:
            canonical.append(segment)
    return ".".join(canonical)


# The kind of an authenticated delivery a handler cannot read; every sender can produce it.
UNRECOGNISED = "unrecognised"


@dataclass(frozen=True)
class SenderKinds:
    """The kinds one sender's events can have (canonical), as the "Event kinds" table of docs/senders.md lists them.

    `documented`: the kinds the sender documents (or the templates in docs/senders.md use).
    `possible`: globs of the other kinds it can still produce: names its users
    choose (a Datadog template's `event`, a Standard Webhooks `type`, an Opsgenie
    custom action) or types the sender adds later. Every sender also produces
    `unrecognised`. Each handler module has one as `KINDS`; the rules lint reads them.
    """

    documented: tuple[str, ...]
    possible: tuple[str, ...] = ()

    def documents(self, pattern: str) -> bool:
        """Whether a documented kind (or `unrecognised`) is one the kind glob `pattern` selects."""
        return any(fnmatch.fnmatchcase(kind, pattern) for kind in (*self.documented, UNRECOGNISED))

    def may_produce(self, pattern: str) -> bool:
        """Whether some kind this sender can produce is selected by the kind glob `pattern`.

        Errs towards yes: a glob is taken to meet a `possible` glob unless their
        literal beginnings (the text before the first wildcard) differ.
        """
        return self.documents(pattern) or any(globs_may_meet(pattern, other) for other in self.possible)


def globs_may_meet(first: str, second: str) -> bool:
    """False only when no name can match both globs: their literal beginnings disagree."""
    start, other = glob_prefix(first), glob_prefix(second)
    return start.startswith(other) or other.startswith(start)


def glob_prefix(pattern: str) -> str:
    """The text of a glob before its first wildcard (all of a plain name): every name it matches begins with it."""
    cut = min((pattern.index(char) for char in _GLOB_CHARACTERS if char in pattern), default=len(pattern))
    return pattern[:cut]


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_uuid(value: str) -> bool:
    """The 36-character hyphenated form Datadog uses for entity ids."""
    return _UUID.fullmatch(value) is not None


@dataclass(frozen=True, order=True)
class EntityRef:
    """One side of a link: an entity type and a UUID or, for cases, a case key."""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"

    @property
    def is_resolved(self) -> bool:
        return is_uuid(self.id)

    @classmethod
    def parse(cls, text: str) -> EntityRef:
        """Read 'CASE:OPS-42' (the form used in logs, examples and the API)."""
        kind, sep, ident = text.partition(":")
        if not sep or kind.upper() not in ENTITY_TYPES or not ident:
            raise ValueError(f"{text!r} is not TYPE:ID with TYPE one of {', '.join(ENTITY_TYPES)}")
        return cls(kind.upper(), ident)

    @classmethod
    def checked(cls, type_: str, token: str) -> EntityRef:
        """A ref from a token found or templated by a rule; ValueError says why it is unusable."""
        token = token.strip()
        if not token:
            raise ValueError(f"{type_} ref is empty")
        if is_uuid(token):
            return cls(type_, token.lower())
        if type_ == "CASE" and CASE_KEY.match(token.upper()):
            return cls(type_, token.upper())
        if type_ == "CASE":
            raise ValueError(f"{token!r} is neither a case UUID nor a case key like OPS-42")
        raise ValueError(f"{type_} ref {token!r} is not a UUID; only case keys can be resolved to UUIDs")


class Headers(Mapping[str, str]):
    """Request headers, looked up without regard to case."""

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {name.lower(): value for name, value in pairs}

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> Headers:
        """The headers of a WSGI request, looked up in its environ when asked for."""
        return _EnvironHeaders(environ)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str, default: Any = None) -> Any:
        return self._items.get(name.lower(), default)


class _EnvironHeaders(Headers):
    # A handler reads two or three headers; copying all of them first cost more than the lookups.

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def get(self, name: str, default: Any = None) -> Any:
        key = name.upper().replace("-", "_")
        value = self._environ.get(key if key in _UNPREFIXED else "HTTP_" + key)
        return default if value is None or value == "" and key in _UNPREFIXED else value

    def __getitem__(self, name: str) -> str:
        value: str | None = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._copy())

    def __len__(self) -> int:
        return len(self._copy())

    def _copy(self) -> dict[str, str]:
        environ = self._environ
        items = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
        items.update((key.replace("_", "-").lower(), environ[key]) for key in _UNPREFIXED if environ.get(key))
        return items


_UNPREFIXED = ("CONTENT_TYPE", "CONTENT_LENGTH")


@dataclass(frozen=True)
class WebhookRequest:
    """The raw request as a handler sees it: bytes first, nothing parsed yet."""

    source: str
    body: bytes
    headers: Headers = field(default_factory=Headers)
    content_type: str = "application/json"
    received_at: float = 0.0

    @property
    def mimetype(self) -> str:
        return self.content_type.split(";", 1)[0].strip().lower()


# The fields the events table keeps at most so many characters of (caselink/schema.py).
CUT_FIELDS = {"kind": 255, "severity": 255, "priority": 255, "status": 255, "occurred_at": 64}


@dataclass(frozen=True)
class Event:
    """The normal form of one thing a sender told us (product brief §2).

    `kind` is kept in canonical form (`canonical_kind`), whatever form it is given in.
    """

    source: str
    kind: str
    dedup_key: str
    entity: EntityRef | None = None
    title: str = ""
    message: str = ""
    severity: str = ""
    priority: str = ""
    status: str = ""
    url: str = ""
    tags: Mapping[str, list[str]] = field(default_factory=dict)
    occurred_at: str | None = None
    payload: Any = None
    # Set when the handler could not make sense of an authenticated payload.
    problem: str | None = None
    # Hex SHA-256 of what the event was built from, when the handler leaves out of it parts
    # of the payload that say who delivered it rather than what; empty: the store hashes
    # the payload as it stores it. A dedup key repeated with another digest is a new event.
    digest: str = ""

    def __post_init__(self) -> None:
        # Every sender's kind, and every stored one read back, in one form, so a rule
        # written `alert.no_data` or `alert.No Data` sees the same events.
        object.__setattr__(self, "kind", canonical_kind(self.kind))
        # Cut to what the events table keeps, here where the event is born: the rules see the
        # event as it is stored and read back, and its trace can stay compact. A 256-character
        # severity made every rule's outcome stored in full, 0.4 MB an event, 8 s a webhook.
        for name, limit in CUT_FIELDS.items():
            value = getattr(self, name)
            if value is not None and len(value) > limit:
                object.__setattr__(self, name, value[:limit])

    def fields(self) -> dict[str, Any]:
        """The names rules and templates see."""
        return {
            "source": self.source,
            "kind": self.kind,
            "entity": {"type": self.entity.type, "id": self.entity.id} if self.entity else None,
            "title": self.title,
            "message": self.message,
            "severity": self.severity,
            "priority": self.priority,
            "status": self.status,
            "url": self.url,
            "tags": {name: list(values) for name, values in self.tags.items()},
            "occurred_at": self.occurred_at,
            "payload": self.payload,
        }


FIELD_NAMES = tuple(Event("", "", "").fields())


def parse_tags(value: Any) -> dict[str, list[str]]:
    """Read tags as Datadog sends them: 'k:v,k2:v2', ['k:v'], or already a mapping."""
    tags: dict[str, list[str]] = {}
    if value is None:
        return tags
    if isinstance(value, Mapping):
        for name, values in value.items():
            items = values if isinstance(values, list) else [values]
            tags.setdefault(str(name), []).extend(text(item) for item in items if item is not None)
        return tags
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        return tags
    for item in items:
        if not isinstance(item, str):
            continue
        name, _, tag_value = item.strip().partition(":")
        if name:
            tags.setdefault(name, []).append(tag_value)
    return tags


def text(value: Any) -> str:
    """A payload value as event text: None is empty, numbers are their decimal form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
