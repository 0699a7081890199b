"""Regular expressions from rules, run on RE2 so that no pattern can hang a webhook.

Python's `re` backtracks: `(a+)+$` against thirty characters takes minutes. RE2
(google-re2) runs in time linear in the text, as Alertmanager and PagerDuty do
for their users' patterns, and refuses the few constructs that need
backtracking: backreferences and look-around. `compile_rule_regex` says which
one a pattern used and how to do without it.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import re2

# RE2 is linear in the text, but the constant grows with the pattern: when its DFA runs
# out of states it steps through the pattern's instructions for every character. Bounding
# both keeps one search under tens of milliseconds. The default rules' patterns compile to
# under 300 instructions; ref tokens are never longer than a few dozen characters.
MAX_PROGRAM_SIZE = 1000
MAX_SEARCH_CHARACTERS = 65_536
MAX_MATCH_CHARACTERS = 1024
MAX_MATCHES = 1000  # matches read in one value

# Linear is not cheap: a pattern such as `[ab]*a[ab]{900}c` overflows RE2's DFA and steps
# through its program for every character, 0.4 s for one 64 KiB value, 17 s for an event of
# thirty. The searches one event's evaluation makes share this much CPU time (their own, not
# the evaluation's: a garbage collection in between spends none of it); once it is spent, the
# next search raises SearchBudgetSpent instead of running.
SEARCH_SECONDS_PER_EVENT = 0.1
# And the events of one webhook (an Alertmanager group holds hundreds) share this much: 400 events
# of slow values took 43 s under the per-event budget alone.
SEARCH_SECONDS_PER_WEBHOOK = 0.5

# A value longer than this is searched in growing prefixes (×4 each), so that a search whose
# next prefix would cost more than the budget has left, at the pace the last one ran, is refused
# before it runs rather than cut off after: RE2 cannot be interrupted.
FIRST_WINDOW = 4096


class _Budget:
    """What is left of a block's search time, in seconds of thread CPU time; a nested block's
    budget pays from the enclosing one's too."""

    __slots__ = ("_left", "_outer", "refused")

    def __init__(self, seconds: float, outer: _Budget | None) -> None:
        self._left, self._outer = seconds, outer
        self.refused = 0  # searches refused in the block (nested blocks' included)

    @property
    def left(self) -> float:
        return self._left if self._outer is None else min(self._left, self._outer.left)

    def spend(self, seconds: float) -> None:
        self._left -= seconds
        if self._outer is not None:
            self._outer.spend(seconds)

    def refuse(self) -> SearchBudgetSpent:
        """Count a refused search here and in the enclosing blocks; the exception to raise."""
        budget: _Budget | None = self
        while budget is not None:
            budget.refused += 1
            budget = budget._outer
        return SearchBudgetSpent()


# The budget of the evaluation under way in this context, if any.
_BUDGET: ContextVar[_Budget | None] = ContextVar("caselink_regex_budget", default=None)


# How a search the budget refused is said, wherever its reason is read (the explain record, `rules test`).
NOT_SEARCHED = "not searched: "


class SearchBudgetSpent(Exception):  # noqa: N818 - a state, not an error of the caller's
    """The event's searches used SEARCH_SECONDS_PER_EVENT of CPU time, or its webhook's
    SEARCH_SECONDS_PER_WEBHOOK: no more run for it."""

    def __init__(self) -> None:
        super().__init__(
            f"{NOT_SEARCHED}this event's searches had used their {SEARCH_SECONDS_PER_EVENT:g} s of CPU time,"
            f" or its webhook's their {SEARCH_SECONDS_PER_WEBHOOK:g} s (a pattern that is slow on its text)"
        )


class search_budget:  # noqa: N801 - used as a function: `with search_budget(0.5) as budget:`
    """Searches in the block share `seconds` (SEARCH_SECONDS_PER_EVENT) of this thread's CPU time
    (time.thread_time, which a busy machine does not use up), counted while they run. A search
    the budget cannot pay for, at the pace its text has been searched so far, is refused.
    A nested block has its own budget and pays from the enclosing one's too: a webhook's
    (RuleSet.evaluate_webhook, SEARCH_SECONDS_PER_WEBHOOK) holds each of its events'. Yields the
    budget: what is `left`, and how many searches it `refused`.

    A class rather than a generator: every event of every webhook enters one, and
    contextlib's generator machinery cost several times what the block's own work does."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float | None = None) -> None:
        self._seconds = SEARCH_SECONDS_PER_EVENT if seconds is None else seconds

    def __enter__(self) -> _Budget:
        budget = _Budget(self._seconds, _BUDGET.get())
        self._token = _BUDGET.set(budget)
        return budget

    def __exit__(self, *_exc: object) -> None:
        _BUDGET.reset(self._token)


# What RE2 cannot run, how to recognise it in a pattern, and what to write instead.
_UNSUPPORTED = (
    (
        re.compile(r"\(\?<?[=!]"),
        "look-around ((?=…), (?!…), (?<=…), (?<!…))",
        "spell the exclusion with character classes, or match the text and add a not_matches condition",
    ),
    (
        re.compile(r"\\[1-9]|\(\?P=\w+\)|\\g<\w+>|\\k<\w+>"),
        "a backreference (\\1, (?P=name))",
        "RE2 cannot match a repeat of an earlier group; match the shape of the text instead",
    ),
    (
        re.compile(r"\(\?>|[*+?}][+]"),
        "an atomic group or a possessive quantifier",
        "drop it: RE2 never backtracks, so it is not needed",
    ),
    (re.compile(r"\\Z"), "\\Z", "write \\z (end of text) or $"),
)


def _searched(text: str) -> bytes:
    """The part of `text` a search reads, as UTF-8. Bytes, so that RE2's offsets are used as they
    are (with text, the wrapper converts each match's offsets from the start, quadratic in the
    matches); a lone surrogate, which no sender's JSON should hold but a handler might let
    through, is searched as its bytes rather than failing the webhook."""
    return text[:MAX_SEARCH_CHARACTERS].encode("utf-8", "surrogatepass")


def _character_boundary(data: bytes, end: int) -> int:
    """`end`, moved on to the end of the UTF-8 character it falls in (the length, past it)."""
    while end < len(data) and 0x80 <= data[end] < 0xC0:
        end += 1
    return min(end, len(data))


class Regex:
    """A rule's pattern, compiled twice for RE2: without captures to search, with them to pick a token.

    RE2 finds a match with its DFA in a few nanoseconds a character; captures need its
    slower engines, so they run only over a match already found, and only a short one.
    Both run on UTF-8 bytes (see _searched).
    """

    __slots__ = ("__weakref__", "_capturing", "_group", "_searching", "pattern")

    def __init__(self, pattern: str, ignore_case: bool) -> None:
        self.pattern = pattern
        encoded = pattern.encode("utf-8", "surrogatepass")
        self._capturing = _compile(encoded, ignore_case, capture=True)
        self._searching = _compile(encoded, ignore_case, capture=False)
        # The token: the group named ref, else the first group, else (0) the whole match.
        self._group = self._capturing.groupindex.get(b"ref", 1 if self._capturing.groups else 0)

    @property
    def program_size(self) -> int:
        return int(self._capturing.programsize)

    def search(self, text: str) -> bool:
        """Whether the pattern is found in the first MAX_SEARCH_CHARACTERS of `text`;
        SearchBudgetSpent inside a `search_budget` that is spent or cannot pay for this search."""
        data = _searched(text)
        budget = _BUDGET.get()
        if budget is None:
            return self._searching.search(data) is not None
        return self._search_within(data, budget) is not None

    def _search_within(self, data: bytes, budget: _Budget, start: int = 0, *, to_end: bool = False) -> Any:
        """The pattern's match in `data` from `start` on, or None. Searched in growing windows from
        `start`, each paid from `budget` and refused (SearchBudgetSpent) when its cost at the slowest
        pace seen so far is more than is left. The first window that holds a match answers, unless
        `to_end`: then the windows grow on to the end of the text and the last one's match is the
        one a search of the whole rest finds (re2's leftmost-first match can read on past where a
        window found one: a greedy tail, `OPS-\\d+(?:[ab]*a[ab]{980}c)?`, runs to the end of the text)."""
        if budget.left <= 0:
            raise budget.refuse()
        if len(data) - start <= FIRST_WINDOW:
            # The rest is one first window, which is never refused: most fields are this short.
            started = time.thread_time()
            match = self._searching.search(data, start)
            budget.spend(time.thread_time() - started)
            return match
        pace = 0.0  # CPU seconds a byte, the slowest window's; the first window is not refused
        window = FIRST_WINDOW
        while True:
            end = _character_boundary(data, start + window)
            # Is a window's pace a fair price for the next one (4x as long, from the same start)?
            # A search that stopped before the window's end (a match that could not go on, a DFA
            # with nothing left to find) read fewer bytes than its pace is counted over: the next
            # window reads those same bytes and stops there too, costing what this one did, less
            # than the estimate. A search that read to the window's end ran at that pace over the
            # bytes the next window reads again, and the estimate assumes the 3x as many new ones
            # go no slower. They may (a fast prefix, then the slow text): that overshoot is at most
            # the cost of the one window that ran, after which the pace is known.
            if pace * (end - start) > budget.left:
                raise budget.refuse()
            started = time.thread_time()
            match = self._searching.search(data, start, end)
            spent = time.thread_time() - started
            budget.spend(spent)
            # RE2 reads what the window's end asserts ($, \b) in the whole text: a match in a
            # window is one in the text (tests/test_regex.py holds it to that).
            if end == len(data) or (match is not None and not to_end):
                return match
            pace = max(pace, spent / (end - start))
            window *= 4

    def tokens(self, text: str) -> Iterator[str | int]:
        """Each match's token (the group named ref, else the first group, else the whole match).

        A match longer than MAX_MATCH_CHARACTERS yields its length instead: no id is that long.
        Only the first MAX_MATCHES matches are read. Inside a `search_budget`, each step searches
        the rest of the text in growing windows (SearchBudgetSpent when the next cannot be paid
        for) and reads its match from the last, which runs to the end of the text: after a match
        found at once, the rest of a 64 KiB value can be slow to search, and so can the match
        itself when it may read on to the end.
        """
        data = _searched(text)
        budget = _BUDGET.get()
        if budget is None or len(data) <= FIRST_WINDOW:
            yield from self._tokens_in_one_window(data, budget)
            return
        group = self._group
        # As re2's finditer steps, with a search at each step (which the budget can refuse). A step
        # within FIRST_WINDOW bytes of the end is one window, run if any budget is left: it costs
        # no more than a first window may.
        pos = 0
        for _ in range(MAX_MATCHES):
            match = self._search_within(data, budget, pos, to_end=True)
            if match is None:
                return
            started = time.thread_time()
            token = self._token(match.span(), data, group)  # captures over at most MAX_MATCH_CHARACTERS
            budget.spend(time.thread_time() - started)
            if token is not None:
                yield token
            end = match.span()[1]
            if pos == len(data):
                return
            pos = pos + 1 if pos == end else end

    def _tokens_in_one_window(self, data: bytes, budget: _Budget | None) -> Iterator[str | int]:
        """`tokens` of a text no longer than FIRST_WINDOW (most fields), or outside any budget: re2's
        own finditer, whose every step is one first window. Each step is paid from the budget as it
        ends, with one clock reading, and the next is refused once the budget is spent, as
        `_search_within` refuses it. Tokens are read before any is yielded, so that what the caller
        does in between is not paid from the budget; MAX_MATCHES at most, of MAX_SEARCH_CHARACTERS."""
        if budget is not None and budget.left <= 0:
            raise budget.refuse()
        group, found, refused = self._group, [], False
        clock = time.thread_time() if budget is not None else 0.0
        for count, match in enumerate(self._searching.finditer(data), 1):
            token = self._token(match.span(), data, group)  # captures over at most MAX_MATCH_CHARACTERS
            if token is not None:
                found.append(token)
            if budget is not None:
                now = time.thread_time()
                budget.spend(now - clock)
                clock = now
            if count == MAX_MATCHES:
                break
            if budget is not None and budget.left <= 0:
                refused = True
                break
        else:
            if budget is not None:
                budget.spend(time.thread_time() - clock)  # the last search, which found nothing
        yield from found
        if refused:
            assert budget is not None
            raise budget.refuse()

    def _token(self, span: tuple[int, int], data: bytes, group: int) -> str | int | None:
        """The token of the match at `span`; None for a match that has none (an empty one)."""
        start, end = span
        if start == end:
            return None
        if end - start > MAX_MATCH_CHARACTERS:
            return len(data[start:end].decode("utf-8", "replace"))
        if group == 0:
            return data[start:end].decode("utf-8", "replace")
        captured = self._capturing.fullmatch(data, start, end)
        if captured is None:
            return None
        token = captured.group(group)
        return token.decode("utf-8", "replace") if token else ""


# Patterns compiled, kept while a rule set holds them: a reload compiles only what the rules in
# force do not already hold, a thousand rules sharing one pattern compile it once, and a replaced
# rule set's patterns (and the DFA memory RE2 built for them) go with it. A Regex never changes.
_COMPILED: weakref.WeakValueDictionary[tuple[str, bool], Regex] = weakref.WeakValueDictionary()
_COMPILED_LOCK = threading.Lock()


def compile_rule_regex(pattern: str, *, ignore_case: bool = False) -> Regex:
    """Compile a rule's pattern for RE2, once per (pattern, ignore_case) while a rule set holds it;
    ValueError says what RE2 refused and what to write instead."""
    key = (pattern, ignore_case)
    with _COMPILED_LOCK:
        found = _COMPILED.get(key)
    if found is not None:
        return found
    regex = Regex(pattern, ignore_case)
    if regex.program_size > MAX_PROGRAM_SIZE:
        raise ValueError(
            f"the pattern compiles to {regex.program_size} RE2 instructions, more than {MAX_PROGRAM_SIZE}:"
            " counted repeats ({20}, {1,9}) copy what they repeat, nested ones multiply; use + or * where you can"
        )
    with _COMPILED_LOCK:
        return _COMPILED.setdefault(key, regex)


def _compile(pattern: str | bytes, ignore_case: bool, *, capture: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.never_capture = not capture
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        # RE2 names what it refused after ": " (`invalid perl operator: (?=`): a construct is blamed
        # only where it is that, not for being elsewhere in the pattern (`\p{Greek}+ \u00e9`
        # holds `}+`, and RE2 refused its `\u`).
        refused = reason.split(": ", 1)[1] if ": " in reason else ""
        text = pattern if isinstance(pattern, str) else pattern.decode("utf-8", "replace")
        for construct, found, hint in _UNSUPPORTED:
            if any(
                not refused or used.group() in refused or refused in used.group() for used in construct.finditer(text)
            ):
                raise ValueError(f"RE2 does not support {found}: {hint}") from None
        raise ValueError(f"not a valid RE2 regular expression: {reason}") from None
