"""User regexes on RE2 (caselink.regex): one event's searches share a budget of their own CPU time."""

from __future__ import annotations

import contextlib
import random
import re
import time

import pytest
import re2
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from caselink import regex
from caselink.regex import SearchBudgetSpent
from caselink.regex import compile_rule_regex
from caselink.regex import search_budget
from tests import hostile_rules as hostile

# Overflows RE2's DFA: ~25 ms for 4 KiB of random a's and b's, ~0.4 s for 64 KiB.
SLOW_ON_AB = compile_rule_regex(hostile.SLOW_ON_AB)
AB = hostile.AB_64K


def busy(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU time in Python."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_cpu_spent_between_searches_leaves_the_budget_whole():
    # What happens between searches (a garbage collection, other rules, coverage's tracer)
    # is not the searches' doing: it used to spend the budget and leave a matching rule unsearched.
    with search_budget(0.05):
        busy(0.2)
        assert compile_rule_regex("down").search("db down")
        assert list(compile_rule_regex(r"OPS-\d+").tokens("OPS-1 and OPS-2")) == ["OPS-1", "OPS-2"]


def test_a_search_the_budget_cannot_pay_for_is_refused_before_it_runs_not_after():
    started = time.thread_time()
    with search_budget(0.1), pytest.raises(SearchBudgetSpent):
        SLOW_ON_AB.search(AB)
    # Whole, the search takes ~0.4 s; the first prefix says what the rest would cost.
    assert time.thread_time() - started < 0.2


def test_a_token_search_the_budget_cannot_pay_for_is_refused_before_it_reads_a_match():
    with search_budget(0.1), pytest.raises(SearchBudgetSpent):
        list(SLOW_ON_AB.tokens(AB))


def test_searches_that_fit_run_until_the_budget_is_spent_then_are_refused():
    searched = 0
    with search_budget(0.1), pytest.raises(SearchBudgetSpent):  # noqa: PT012 - counts the searches that ran
        for _ in range(100):
            SLOW_ON_AB.search(AB[:4096])
            searched += 1
    assert 1 <= searched < 100


@pytest.mark.parametrize("budget", [None, 0.1])
def test_a_lone_surrogate_in_a_value_is_searched_as_its_bytes_not_a_failed_webhook(budget):
    # A handler that let one through made the whole webhook a 500 (UnicodeEncodeError in RE2's wrapper).
    text = "OPS-7 \ud800 down " + "x" * regex.FIRST_WINDOW
    ops = compile_rule_regex(r"OPS-\d+")
    with search_budget(budget) if budget else contextlib.nullcontext():
        assert ops.search(text)
        assert compile_rule_regex("down").search(text)
        assert list(ops.tokens(text)) == ["OPS-7"]
        assert not compile_rule_regex("zzz").search(text)


def test_outside_a_budget_a_search_runs_whole():
    assert SLOW_ON_AB.search(AB + "c") is False  # past MAX_SEARCH_CHARACTERS: the c is not searched
    assert SLOW_ON_AB.search(AB[:2000] + "a" + "b" * 900 + "c") is True


_PATTERNS = st.sampled_from(
    [
        r"a$",
        r"ab\b",
        r"\bba",
        r"^b",
        r"a+b",
        r"b{3}$",
        r"(?P<ref>ab+)\b",
        r"x",
        r"b\B",
        r"\d+$",
        r"a.?$",
        r"(a|ab)(c|bcd)",
        r"a*",
        r"\b",
        r"(?P<ref>b?)a",
    ]
)


@settings(max_examples=600, deadline=None)
@given(pattern=_PATTERNS, text=st.text(alphabet="ab 1cdé\ud800", max_size=200), window=st.integers(1, 40))
def test_searching_in_growing_prefixes_finds_what_searching_the_whole_text_finds(pattern, text, window):
    # RE2 asserts $ and \b at a window's end against the whole text, so a window finds no match
    # the whole text lacks; tokens are read as re2's finditer reads them, budget or not.
    compiled = compile_rule_regex(pattern)
    data = text.encode("utf-8", "surrogatepass")
    whole = re2.compile(pattern.encode(), re2.Options()).search(data) is not None
    tokens = [compiled._token(match.span(), data, compiled._group) for match in compiled._searching.finditer(data)]
    tokens = [token for token in tokens if token is not None]
    assert compiled.search(text) == whole
    assert list(compiled.tokens(text)) == tokens
    first_window, regex.FIRST_WINDOW = regex.FIRST_WINDOW, window
    try:
        with search_budget(10.0):
            assert compiled.search(text) == whole
            assert list(compiled.tokens(text)) == tokens
    finally:
        regex.FIRST_WINDOW = first_window


def test_a_nested_budget_pays_from_the_enclosing_one_too():
    # A webhook's budget holds each of its events': many events cannot add up to more.
    searched = 0
    with search_budget(0.1), pytest.raises(SearchBudgetSpent):  # noqa: PT012 - counts the events searched
        for _ in range(100):
            with search_budget(1.0):
                SLOW_ON_AB.search(AB[:4096])
            searched += 1
    assert 1 <= searched < 20


def test_reading_tokens_after_a_match_found_at_once_is_refused_when_the_rest_would_overrun_the_budget():
    # A tester's alternation: `OPS-1` is found at once, then the next step searched 64 KiB
    # with the slow branch, 0.4 s on a 0.1 s budget.
    either = compile_rule_regex(r"(?P<ref>OPS-\d+)|[ab]*a[ab]{900}c")
    started = time.thread_time()
    found = []
    with search_budget(0.1), pytest.raises(SearchBudgetSpent):  # noqa: PT012 - keeps what was read before
        found.extend(either.tokens("OPS-1 " + AB))
    assert found == ["OPS-1"]
    assert time.thread_time() - started < 0.2


def test_reading_the_tokens_of_a_short_value_stops_once_the_budget_is_spent_and_keeps_what_was_read():
    # A value of one window (most fields) is read with re2's own finditer: every step is paid as it
    # ends, and the step after the one that spent the budget is refused, as in a long value.
    either = compile_rule_regex(r"(?P<ref>OPS-\d+)|[ab]*a[ab]{900}c")
    refs = [f"OPS-{number}" for number in range(1, 5)]
    text = "".join(f"{ref} {AB[:900]} " for ref in refs)  # ~5 ms a step at the slow pace
    assert len(text.encode()) <= regex.FIRST_WINDOW
    found: list[str | int] = []
    with search_budget(0.002), pytest.raises(SearchBudgetSpent):  # noqa: PT012 - keeps what was read before
        found.extend(either.tokens(text))
    assert found == refs[: len(found)]
    assert 1 <= len(found) < len(refs)
    with search_budget(10.0):
        assert list(either.tokens(text)) == refs


# A tester's optional tail: `OPS-1` is found at once, but re2's leftmost-first match reads the tail on
# to the end of the text.
TAILED = compile_rule_regex(r"OPS-\d+(?:[ab]*a[ab]{980}c)?")


def _random_ab(seed: int) -> str:
    chooser = random.Random(seed)
    return "".join(chooser.choice("ab") for _ in range(65_536))


def _reading_whole_costs(pattern, text: str) -> float:
    """The CPU time of one unbudgeted search of `text`, as the step reading a match makes it."""
    started = time.thread_time()
    pattern._searching.search(text.encode())
    return time.thread_time() - started


def _tokens_within(pattern, text: str, budget: float) -> tuple[list[str | int], bool, float]:
    """The tokens read within `budget`, whether the budget refused the rest, and the CPU time spent."""
    found: list[str | int] = []
    started = time.thread_time()
    try:
        with search_budget(budget):
            found.extend(pattern.tokens(text))
    except SearchBudgetSpent:
        return found, True, time.thread_time() - started
    return found, False, time.thread_time() - started


@pytest.mark.parametrize("seed", [0, 1])
def test_reading_a_match_whose_greedy_tail_runs_past_where_the_look_ahead_found_it_is_refused_before_it_runs(seed):
    # Reading the match ran the tail over all 64 KiB at the slow pace after the look-ahead had
    # found `OPS-1` in its first window: 0.42 s on a 0.1 s budget (0.2-0.45 s, by machine).
    text = "OPS-1" + (AB if seed == 0 else _random_ab(seed))
    whole = _reading_whole_costs(TAILED, text)
    found, refused, spent = _tokens_within(TAILED, text, 0.1)
    assert refused or found == ["OPS-1"]
    # The budget, and at most one window's cost past it (16 KiB, a quarter of the whole).
    assert spent < min(0.25, 0.1 + whole / 4)


def test_a_match_whose_tail_turns_slow_past_the_first_window_costs_at_most_one_window_more_than_the_budget():
    # 4 KiB of a's go fast (few DFA states), the a's and b's after them slow: the first window's
    # pace said reading the match whole was cheap, and it ran, as long as with no budget. Searched
    # in growing windows to the end, the step pays for 4 KiB, then 16 KiB, whose pace refuses the rest.
    text = "OPS-1" + "a" * 4000 + AB[:61_000]
    whole = _reading_whole_costs(TAILED, text)
    found, refused, spent = _tokens_within(TAILED, text, 0.1)
    assert refused or found == ["OPS-1"]
    assert spent < min(0.25, 0.1 + whole / 4)


def test_a_slow_tail_the_budget_can_pay_for_is_read_whole():
    text = "OPS-1" + AB[:8000]
    assert TAILED._searching.search(text.encode()).span() == (0, 5)  # no c: the tail never matches
    with search_budget(10.0):
        assert list(TAILED.tokens(text)) == ["OPS-1"]


def test_an_ordinary_ref_pattern_reads_every_ref_of_a_64_kib_message_within_its_budget():
    # Each step now searches to the end of the text in growing windows: for a pattern that stops
    # at its match that costs a few more searches, not a refusal.
    refs = [f"OPS-{number}" for number in range(900)]
    text = "".join(f"{ref} deploy failed on host web-{number} " + "x" * 40 + " " for number, ref in enumerate(refs))
    text = text[: 65_536 - 9] + " OPS-9999"
    expected = [ref for ref in refs if f"{ref} " in text[: 65_536 - 9]] + ["OPS-9999"]
    assert len(text) == 65_536
    assert len(expected) > 500
    ops = compile_rule_regex(r"OPS-\d+")
    started = time.thread_time()
    with search_budget():
        assert list(ops.tokens(text)) == expected
    assert time.thread_time() - started < 0.1


def test_a_ref_pattern_reads_every_ref_of_a_long_value_within_its_budget():
    refs = compile_rule_regex(r"\b[A-Z][A-Z0-9]{1,9}-\d+\b")
    text = "x " * 30_000 + "OPS-42 " + "y " * 1_000 + "OPS-43"

    with search_budget(0.1):
        assert list(refs.tokens(text)) == ["OPS-42", "OPS-43"]


@pytest.mark.parametrize(
    ("pattern", "said"),
    [
        (r"a(?=b)", "RE2 does not support look-around"),
        (r"(?P<x>a)(?P=x)", "RE2 does not support a backreference"),
        (r"a{2}+", "RE2 does not support an atomic group or a possessive quantifier"),
        # `}+` is there, but RE2 refused the `\u`: blaming the quantifier sent a tester the wrong way.
        (r"\p{Greek}+ \u00e9", "not a valid RE2 regular expression: invalid escape sequence: \\u"),
    ],
)
def test_a_refused_pattern_is_blamed_on_what_re2_refused_in_it(pattern, said):
    with pytest.raises(ValueError, match=re.escape(said)):
        compile_rule_regex(pattern)
