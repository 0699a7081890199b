"""Datadog's rate limits, learned from the X-RateLimit-* headers of every answer.

Each limit (X-RateLimit-Name) has a budget: what the last answer said remains,
minus the requests sent since and not yet answered. When the budget is spent,
nothing more is sent on that limit until X-RateLimit-Reset seconds have
passed; then the full X-RateLimit-Limit is available again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class LimitState:
    name: str
    limit: int | None = None
    period: float | None = None
    remaining: int | None = None
    reset_at: float = 0.0
    in_flight: int = 0

    def available(self) -> int | None:
        if self.remaining is None:
            return None
        return self.remaining - self.in_flight


class RateLimiter:
    """Thread-safe budget keeping for every rate limit an endpoint falls under."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limit_of: dict[str, str] = {}
        self._limits: dict[str, LimitState] = {}

    def reserve(self, endpoint: str) -> tuple[float, str | None]:
        """Take a place for one request on `endpoint`.

        Returns (0, ticket) when the request may go now, the ticket naming the
        limit it counts against (None while that limit is unknown), or
        (seconds to wait, None) when its limit is spent.
        """
        with self._lock:
            name = self._limit_of.get(endpoint)
            if name is None:
                return 0.0, None
            state = self._limits[name]
            now = self._clock()
            if now >= state.reset_at and state.limit is not None:
                # A new period has begun: its whole budget is there to spend.
                state.remaining = state.limit
                period = state.period or 1.0
                state.reset_at += period * ((now - state.reset_at) // period + 1)
            available = state.available()
            if available is None or available > 0:
                state.in_flight += 1
                return 0.0, name
            return max(state.reset_at - now, 0.001), None

    def wait_time(self, *endpoints: str) -> float:
        """How long until a request on every one of these endpoints could go (0: now)."""
        longest = 0.0
        with self._lock:
            now = self._clock()
            for endpoint in endpoints:
                name = self._limit_of.get(endpoint)
                state = self._limits.get(name) if name else None
                if state is None or now >= state.reset_at:
                    continue
                available = state.available()
                if available is not None and available <= 0:
                    longest = max(longest, state.reset_at - now)
        return longest

    def settle(
        self,
        endpoint: str,
        ticket: str | None,
        headers: Mapping[str, str] | None,
        status: int | None,
    ) -> None:
        """Account for the answer to a reserved request (headers None when none came)."""
        with self._lock:
            if ticket is not None:
                held = self._limits[ticket]
                held.in_flight = max(held.in_flight - 1, 0)
            if headers is None:
                return
            name = headers.get("X-RateLimit-Name") or self._limit_of.get(endpoint)
            if name is None and headers.get("X-RateLimit-Remaining") is not None:
                name = endpoint
            if name is None:
                return
            self._limit_of[endpoint] = name
            state = self._limits.setdefault(name, LimitState(name))
            limit = _int(headers.get("X-RateLimit-Limit"))
            period = _float(headers.get("X-RateLimit-Period"))
            remaining = _int(headers.get("X-RateLimit-Remaining"))
            reset = _float(headers.get("X-RateLimit-Reset"))
            if limit is not None:
                state.limit = limit
            if period is not None:
                state.period = period
            if status == 429:
                remaining = 0
                reset = reset if reset is not None else (state.period or 1.0)
            if remaining is not None:
                state.remaining = remaining
            if reset is not None:
                state.reset_at = self._clock() + reset

    def snapshot(self) -> dict[str, LimitState]:
        with self._lock:
            return {name: LimitState(**vars(state)) for name, state in self._limits.items()}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
