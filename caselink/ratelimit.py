"""Datadog's rate limits, learned from the X-RateLimit-* headers of every answer.

Each limit (X-RateLimit-Name) has a budget for its current period: what
Datadog last said remains, minus the requests sent since and not yet
answered. When the budget is spent, nothing more is sent on that limit until
the period ends (X-RateLimit-Reset seconds after the answer that said so);
then the full X-RateLimit-Limit is available again.

Answers arrive out of order when several requests are in flight, and an answer
to a request sent just before a period ended can arrive after the next one
began. So an answer is placed in its period by its reset time: within the
current period the lowest Remaining is the newest truth, an answer from a
period already over says nothing about this one, and one from a later period
starts that period.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from typing import Protocol


@dataclass
class LimitState:
    """One named limit as this process knows it."""

    name: str
    limit: int | None = None
    period: float | None = None
    # What Datadog last said is left in the current period (None: not known).
    remaining: int | None = None
    # Clock time at which the current period ends (None: not known).
    reset_at: float | None = None
    # Requests reserved on this limit and not answered yet.
    in_flight: int = 0
    # Clock time before which nothing is sent, whatever the budget says: set by a 429.
    blocked_until: float | None = None

    def available(self) -> int | None:
        """Requests that may still be sent in this period (None: no known limit)."""
        if self.remaining is None:
            return None
        return self.remaining - self.in_flight


# How long a request may take to reach Datadog; longer only costs a little of a period's budget.
_IN_TRANSIT = 0.1
# How long a request waits while the first request to an endpoint finds out its limit.
_PROBE_WAIT = 0.02
# A 429 holds requests back at least this long, even when X-RateLimit-Reset rounds down to 0.
_MIN_HOLD = 0.25


class SharedBudget(Protocol):
    """Rate-limit counts kept where every delivery process sees them (the store)."""

    def take_rate_slot(self, name: str, period_number: int, limit: int) -> bool:
        """Count one request in a calendar-aligned period; False when the period is full."""

    def known_rate_limit(self, endpoint: str) -> tuple[str, int, float] | None:
        """(name, limit, period) of the limit another process learned for this endpoint."""

    def learn_rate_limit(self, endpoint: str, name: str, limit: int, period: float) -> None:
        """Tell the other processes which limit this endpoint falls under."""


class RateLimiter:
    """Thread-safe budget keeping for every rate limit an endpoint falls under."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        shared: SharedBudget | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._shared = shared
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._limit_of: dict[str, str] = {}
        self._limits: dict[str, LimitState] = {}
        # Endpoints whose limit was looked up in the shared budget, and when to look again.
        self._look_again: dict[str, float] = {}
        # What this process has told the shared budget, so it tells it once.
        self._told: dict[str, tuple[str, int, float]] = {}
        # Endpoints with a first request under way / that have answered at least once.
        self._probing: set[str] = set()
        self._answered: set[str] = set()

    def reserve(self, endpoint: str) -> tuple[float, str | None]:
        """Take a place for one request on `endpoint`.

        Returns (0, ticket) when the request may go now, the ticket naming the
        limit it counts against (None while that limit is unknown), or
        (seconds to wait, None) when its limit is spent.
        """
        limit: int | None
        period: float | None
        with self._lock:
            name = self._limit_of.get(endpoint)
            if name is None and not self._look_up_due(endpoint):
                return self._probe(endpoint)
        if name is None:
            # Another process may know this endpoint's limit already: start from it.
            known = self._shared.known_rate_limit(endpoint) if self._shared is not None else None
            if known is None:
                with self._lock:
                    return self._probe(endpoint)
            with self._lock:
                name, limit, period = known
                self._limit_of.setdefault(endpoint, name)
                self._limits.setdefault(name, LimitState(name, limit=limit, period=period))
            return self.reserve(endpoint)
        with self._lock:
            state = self._limits[name]
            now = self._clock()
            _roll(state, now)
            wait = _wait(state, now)
            if wait > 0:
                return wait, None
            state.in_flight += 1
            limit, period = state.limit, state.period
        if self._shared is not None and limit and period:
            # Other processes spend the same budget: count this request where
            # they all count it, in the calendar-aligned period it falls in. One
            # sent just before a period ends may reach Datadog after it ends, so
            # near the end it counts in the next period: under the limit, never over.
            wall = self._wall_clock()
            number = int((wall + min(_IN_TRANSIT, period / 4)) // period)
            if not self._shared.take_rate_slot(name, number, limit):
                with self._lock:
                    state.in_flight = max(state.in_flight - 1, 0)
                return max((number + 1) * period - wall, 0.001), None
        return 0.0, name

    def wait_time(self, *endpoints: str) -> float:
        """How long until a request on every one of these endpoints could go (0: now)."""
        longest = 0.0
        with self._lock:
            now = self._clock()
            for endpoint in endpoints:
                name = self._limit_of.get(endpoint)
                if name is None:
                    continue
                state = self._limits[name]
                _roll(state, now)
                longest = max(longest, _wait(state, now))
        return longest

    def settle(
        self,
        endpoint: str,
        ticket: str | None,
        headers: Mapping[str, str] | None,
        status: int | None,
        *,
        reached: bool = True,
    ) -> None:
        """Account for the answer to a reserved request.

        `headers` is None when no answer came; `reached` then says whether the
        request may have reached Datadog anyway (a read timeout), in which case
        it stays counted against the budget: Datadog counted it too.
        """
        with self._lock:
            self._probing.discard(endpoint)
            if headers is not None:
                self._answered.add(endpoint)
        self._settle(endpoint, ticket, headers, status, reached=reached)
        if self._shared is not None and headers is not None:
            self._tell(endpoint)

    def _probe(self, endpoint: str) -> tuple[float, str | None]:
        """An endpoint nobody has had an answer from: one request at a time until its answer
        says what the limit is, so a cold start with several processes cannot burst past it."""
        if self._shared is None or endpoint in self._answered:
            return 0.0, None
        if endpoint in self._probing:
            return _PROBE_WAIT, None
        self._probing.add(endpoint)
        return 0.0, None

    def _look_up_due(self, endpoint: str) -> bool:
        """Whether to ask the shared budget for an unknown endpoint's limit (at most every 5 s)."""
        if self._shared is None:
            return False
        now = self._clock()
        if now < self._look_again.get(endpoint, 0.0):
            return False
        self._look_again[endpoint] = now + 5.0
        return True

    def _tell(self, endpoint: str) -> None:
        """Share what this process learned of the endpoint's limit, once per change."""
        assert self._shared is not None
        with self._lock:
            name = self._limit_of.get(endpoint)
            state = self._limits.get(name) if name is not None else None
            if state is None or state.limit is None or state.period is None:
                return
            learned = (state.name, state.limit, state.period)
            if self._told.get(endpoint) == learned:
                return
            self._told[endpoint] = learned
        self._shared.learn_rate_limit(endpoint, *learned)

    def _settle(
        self,
        endpoint: str,
        ticket: str | None,
        headers: Mapping[str, str] | None,
        status: int | None,
        *,
        reached: bool,
    ) -> None:
        with self._lock:
            now = self._clock()
            held = self._limits.get(ticket) if ticket is not None else None
            if held is not None:
                held.in_flight = max(held.in_flight - 1, 0)
            if headers is None:
                if held is not None and reached and held.remaining is not None:
                    held.remaining = max(held.remaining - 1, 0)
                return
            found = {key.lower(): value for key, value in headers.items()}
            name = found.get("x-ratelimit-name") or self._limit_of.get(endpoint)
            if name is None and (status == 429 or "x-ratelimit-remaining" in found):
                name = endpoint
            if name is None:
                return
            self._limit_of[endpoint] = name
            state = self._limits.setdefault(name, LimitState(name))
            _roll(state, now)
            limit = _int(found.get("x-ratelimit-limit"))
            period = parse_seconds(found.get("x-ratelimit-period"))
            remaining = _int(found.get("x-ratelimit-remaining"))
            reset = parse_seconds(found.get("x-ratelimit-reset"))
            if limit is not None:
                state.limit = limit
            if period is not None and period > 0:
                state.period = period
            if status == 429:
                # Whatever the headers say, Datadog just refused: nothing is left until the reset.
                remaining = 0
                if reset is None:
                    reset = parse_seconds(found.get("retry-after"))
                if reset is None:
                    reset = state.period or 1.0
                # Held apart from the period bookkeeping: a 429 that looks like it belongs to the
                # period just ended may mean this process began the next one too early.
                state.blocked_until = max(state.blocked_until or 0.0, now + max(reset, _MIN_HOLD))
                if state.reset_at is not None and state.period and now + reset < state.reset_at - state.period / 2:
                    # Datadog's last period ended no sooner than it says: the current one ends a period later.
                    state.reset_at = max(state.reset_at, now + reset + state.period)
            if remaining is None:
                return
            _observe(state, remaining, now + reset if reset is not None else None, now)

    def snapshot(self) -> dict[str, LimitState]:
        """A copy of every limit learned so far, by name."""
        with self._lock:
            now = self._clock()
            for state in self._limits.values():
                _roll(state, now)
            return {name: replace(state) for name, state in self._limits.items()}


def _roll(state: LimitState, now: float) -> None:
    """Begin a new period if the current one has ended."""
    if state.reset_at is None or now < state.reset_at:
        return
    if state.limit is None:
        # Without a known limit, the next answer says what the new period allows.
        state.remaining, state.reset_at = None, None
        return
    state.remaining = state.limit
    if state.period:
        # Periods are calendar aligned: the next one ends a whole number of periods on.
        state.reset_at += state.period * (math.floor((now - state.reset_at) / state.period) + 1)
    else:
        state.reset_at = None


def _observe(state: LimitState, remaining: int, ends: float | None, now: float) -> None:
    """Fold what one answer said into the budget of its period."""
    remaining = max(remaining, 0)
    if ends is None:
        # No reset time: the answer belongs to the current period, whose end is then a guess.
        if state.reset_at is None:
            state.reset_at = now + (state.period or 1.0)
        ends = state.reset_at
    if state.reset_at is None or state.remaining is None:
        state.remaining, state.reset_at = remaining, ends
        return
    # Answers of one period disagree on its end by rounding and network delay, never by half a period.
    slack = state.period / 2 if state.period else 0.5
    if ends > state.reset_at + slack:
        # A later period than the one assumed here: the clock estimate was late.
        state.remaining, state.reset_at = remaining, ends
    elif ends >= state.reset_at - slack:
        # The newest answer has the lowest Remaining; the latest end estimate is the safe one.
        state.remaining = min(state.remaining, remaining)
        state.reset_at = max(state.reset_at, ends)
    # Otherwise the answer is from a period already over and says nothing about this one.


def _wait(state: LimitState, now: float) -> float:
    """Seconds before the next request on this limit may go (0: now)."""
    if state.blocked_until is not None and now < state.blocked_until:
        return state.blocked_until - now
    available = state.available()
    if available is None or available > 0:
        return 0.0
    if state.reset_at is None:
        # The budget is spent by requests in flight and the period end is unknown: look again soon.
        return 1.0
    return max(state.reset_at - now, 0.001)


def _int(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def parse_seconds(value: str | None) -> float | None:
    """A non-negative finite number of seconds, or None."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
