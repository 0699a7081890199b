"""A rule set and its evaluation: which rules an event matched, the links they plan, and why the
others did not (`explain`), in file order with `stop`, `enabled` and `mode` applied.

Evaluation is pure and cheap, so it runs inside the webhook request; it produces an
`Evaluation` (the matched rules, the planned links, and the explain record on demand) that
the store writes in the same transaction as the event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import cached_property
from typing import Any

from caselink.events import Event
from caselink.regex import SEARCH_SECONDS_PER_WEBHOOK
from caselink.regex import SearchBudgetSpent
from caselink.regex import search_budget
from caselink.rules.index import RuleIndex
from caselink.rules.model import MAX_LINKS_PER_EVENT
from caselink.rules.model import MAX_PROBLEMS
from caselink.rules.model import PlannedLink
from caselink.rules.model import Rule
from caselink.rules.model import cut

# What one webhook's events may spend on their evaluation inside its request, in seconds of the
# request thread's CPU time. Each rule is cheap, but rules × events is not bounded by either:
# 9,999 `contains` rules against an Alertmanager group of 2,000 alerts took 59 s before its
# answer, and the sender retried it. The events past this are stored all the same, marked
# deferred, and housekeeping evaluates them beside delivery (caselink.housekeeping).
EVALUATION_SECONDS_PER_WEBHOOK = 1.0
DEFERRED = "deferred"
# Conditions asked between two looks at the clock against a deadline (a look costs ~0.1 µs, a
# condition ~1); a rule counts one more than its conditions, and holds at most
# MAX_CONDITIONS_PER_RULE of them.
_CONDITIONS_BETWEEN_CLOCKS = 32


class OverDeadline(Exception):  # noqa: N818 - a state, like StopIteration
    """An evaluation passed its deadline (RuleSet.evaluate): what it found so far is dropped."""


@dataclass
class RuleOutcome:
    """What one rule did with one event; the explain record is a list of these."""

    rule: str
    outcome: str  # matched | not_matched | not_applicable | disabled | skipped | deferred
    reason: str | None = None
    links: list[PlannedLink] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False

    def __post_init__(self) -> None:
        # Stored with the event: each entry is bounded whatever the payload held.
        if self.reason is not None:
            self.reason = cut(self.reason)
        if len(self.problems) > MAX_PROBLEMS:
            more = len(self.problems) - MAX_PROBLEMS
            self.problems = [*self.problems[:MAX_PROBLEMS], f"… and {more} more problem(s)"]
        self.problems = [cut(problem) for problem in self.problems]

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

    An indexed evaluation knows only the rules that matched and those its search budget left
    undecided; the others' outcomes (the explain record) are made when first asked for, from
    the rule set and the event.
    `ruleset` is the rule set evaluated, when the trace may refer to it rather than list it.
    """

    def __init__(
        self,
        outcomes: list[RuleOutcome] | None = None,
        *,
        matched: Mapping[int, RuleOutcome] | None = None,
        unsearched: Mapping[int, RuleOutcome] | None = None,
        explain: Callable[[], list[RuleOutcome]] | None = None,
        ruleset: RuleSet | None = None,
    ) -> None:
        if outcomes is None and explain is None:
            raise ValueError("an evaluation needs its outcomes or a way to explain them")
        self._outcomes = outcomes
        self._explain = explain
        self.positions: dict[int, RuleOutcome] = dict(matched or {})
        # The rules whose conditions the event's search budget left undecided, by position: asked
        # again when the record is read, under a budget of its own, they could hold.
        self.unsearched: dict[int, RuleOutcome] = dict(unsearched or {})
        self._matched = (
            list(self.positions.values())
            if matched is not None
            else [outcome for outcome in outcomes or () if outcome.outcome == "matched"]
        )
        self.ruleset = ruleset

    @classmethod
    def deferral(cls, reason: str) -> Evaluation:
        """An event not evaluated yet: no rule asked, no link planned, and `reason` in its trace."""
        return cls([RuleOutcome("(every rule)", DEFERRED, reason)])

    @property
    def deferred(self) -> bool:
        """Whether the event waits for its evaluation (see EVALUATION_SECONDS_PER_WEBHOOK)."""
        return self._outcomes is not None and any(outcome.outcome == DEFERRED for outcome in self._outcomes)

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
        return RuleIndex(self.rules)

    @cached_property
    def _weights(self) -> tuple[int, ...]:
        """What asking each rule costs, in conditions: one, and one for each of its conditions."""
        return tuple(1 + (rule.when.size if rule.when is not None else 0) for rule in self.rules)

    def evaluate(self, event: Event, *, deadline: float | None = None) -> Evaluation:
        """The rules that can apply to the event, from the index, evaluated in file order.

        `deadline`: a time.thread_time() past which the evaluation stops (OverDeadline), looked
        at every 32 conditions: ten thousand rules of long conditions on a long message take seconds.
        """
        names = event.fields()
        matched: dict[int, RuleOutcome] = {}
        # What one rule found out about this event that another rule asks again (conditions, ref searches).
        shared: dict[Any, Any] = {}
        unsearched: dict[int, RuleOutcome] = {}
        planned = 0
        weights = self._weights
        asked = 0  # conditions asked since the clock was last looked at
        with search_budget():
            for position in self.index.candidates(event, names):
                if deadline is not None:
                    if asked <= 0:
                        if time.thread_time() > deadline:
                            raise OverDeadline
                        asked = _CONDITIONS_BETWEEN_CLOCKS
                    asked -= weights[position]
                rule = self.rules[position]
                # A candidate is enabled and selected by `on`: only its conditions are left to ask.
                try:
                    if not self.index.holds(position, names, shared):
                        continue
                except SearchBudgetSpent as exc:
                    # Not matched, and why: asked again later, under a budget of its own, it could hold.
                    unsearched[position] = RuleOutcome(rule.name, "not_matched", cut(str(exc)))
                    continue
                links, problems = rule.plan(event, names, shared)
                links, planned = _within_event_cap(links, problems, planned)
                matched[position] = RuleOutcome(rule.name, "matched", None, links, problems, dry_run=rule.dry_run)
                if rule.stop:
                    break
        rules = self.rules
        given = {**matched, **unsearched}
        return Evaluation(
            matched=matched, unsearched=unsearched, explain=lambda: explain(rules, event, given), ruleset=self
        )

    def evaluate_webhook(
        self, events: Sequence[Event], seconds: float = EVALUATION_SECONDS_PER_WEBHOOK
    ) -> list[Evaluation]:
        """Each of one webhook's events evaluated, in order, until they have used `seconds` of this
        thread's CPU time; the one under way then and the rest are deferred (Evaluation.deferral).
        Their searches share SEARCH_SECONDS_PER_WEBHOOK as well as each its event's: the event
        during which that runs out, if a search of it was refused, is deferred with the rest, so
        that no event is left undecided because the events before it were slow to search."""
        deadline = time.thread_time() + seconds
        evaluations: list[Evaluation] = []
        spent = f"{seconds:g} s of evaluation time"
        with search_budget(SEARCH_SECONDS_PER_WEBHOOK) as shared:
            for event in events:
                refused = shared.refused
                try:
                    evaluation = self.evaluate(event, deadline=deadline)
                except OverDeadline:
                    break
                if shared.left <= 0 and shared.refused > refused:
                    spent = f"{SEARCH_SECONDS_PER_WEBHOOK:g} s of search time"
                    break
                evaluations.append(evaluation)
        if len(evaluations) < len(events):
            reason = (
                f"not evaluated yet: this webhook's events had used its {spent}"
                f" ({len(evaluations)} of {len(events)} evaluated); housekeeping evaluates this one with"
                " the rules in force, and plans its links then"
            )
            evaluations.extend(Evaluation.deferral(reason) for _ in events[len(evaluations) :])
        return evaluations

    def evaluate_linear(self, event: Event) -> Evaluation:
        """Every rule asked in turn: what `evaluate` must agree with, and the reference for its tests."""
        names = event.fields()
        outcomes: list[RuleOutcome] = []
        stopped_by: str | None = None
        planned = 0
        with search_budget():
            for rule in self.rules:
                stopped_by, planned = _ask_in_turn(rule, event, names, outcomes, stopped_by, planned)
        return Evaluation(outcomes)

    def rule(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)


def _within_event_cap(links: list[PlannedLink], problems: list[str], planned: int) -> tuple[list[PlannedLink], int]:
    """The links a matched rule may plan when the rules before it planned `planned` for the event
    (MAX_LINKS_PER_EVENT in all, a problem added for the rest), and the event's count after it."""
    room = MAX_LINKS_PER_EVENT - planned
    if len(links) > room:
        problems.append(
            f"link: more than {MAX_LINKS_PER_EVENT} links for one event, all rules together;"
            f" {len(links) - max(room, 0)} of this rule's are not planned"
        )
        links = links[: max(room, 0)]
    return links, planned + len(links)


def _ask_in_turn(
    rule: Rule,
    event: Event,
    names: Mapping[str, Any],
    outcomes: list[RuleOutcome],
    stopped_by: str | None,
    planned: int,
) -> tuple[str | None, int]:
    """`evaluate_linear`'s question to one rule, its outcome added to `outcomes`; the rule that
    stops the rest (the one given, or this one), and the links planned for the event so far."""
    if not rule.enabled:
        outcomes.append(RuleOutcome(rule.name, "disabled", "enabled: false"))
    elif stopped_by is not None:
        outcomes.append(RuleOutcome(rule.name, "skipped", f"rule {stopped_by!r} has stop: true"))
    elif (reason := rule.applies_to(event)) is not None:
        outcomes.append(RuleOutcome(rule.name, "not_applicable", reason))
    elif (reason := _first_failure(rule, names)) is not None:
        outcomes.append(RuleOutcome(rule.name, "not_matched", reason))
    else:
        links, problems = rule.plan(event, names)
        links, planned = _within_event_cap(links, problems, planned)
        outcomes.append(RuleOutcome(rule.name, "matched", None, links, problems, dry_run=rule.dry_run))
        if rule.stop:
            return rule.name, planned
    return stopped_by, planned


def _first_failure(rule: Rule, fields: Mapping[str, Any]) -> str | None:
    """Why the rule's conditions do not hold for the event (None when they do), a search the
    event's budget did not allow included (caselink.regex.search_budget)."""
    if rule.when is None:
        return None
    try:
        return rule.when.first_failure(fields)
    except SearchBudgetSpent as exc:
        return cut(str(exc))


def explain(rules: Sequence[Rule], event: Event, matched: Mapping[int, RuleOutcome]) -> list[RuleOutcome]:
    """Every rule's outcome, in file order, given the outcomes of the rules that matched (and of
    those whose search the event's budget refused at evaluation).

    The others are asked what the plain loop would have asked them: a disabled rule and
    a rule after a `stop` are said so, and any other did not apply or did not match. Their
    searches share one event's budget (caselink.regex.search_budget), as at evaluation.
    """
    with search_budget():
        return _explain(rules, event, matched)


def _explain(rules: Sequence[Rule], event: Event, matched: Mapping[int, RuleOutcome]) -> list[RuleOutcome]:
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
            if rule.stop and outcome.outcome == "matched":
                stopped_by = rule.name
            continue
        reason = rule.applies_to(event)
        if reason is not None:
            outcomes.append(RuleOutcome(rule.name, "not_applicable", reason))
            continue
        if fields is None:
            fields = event.fields()
        reason = _first_failure(rule, fields)
        # None only when the event read back differs from the one evaluated (a field cut to
        # its column's size): the rule did not match then, and the record says so.
        outcomes.append(
            RuleOutcome(rule.name, "not_matched", reason or "its conditions did not hold for the event as received")
        )
    return outcomes
