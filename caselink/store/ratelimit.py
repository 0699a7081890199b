"""The Datadog rate-limit budget that every process shares: requests counted per calendar-aligned
period in `rate_periods`, and the limits learned from Datadog's answers in service state.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import sqlalchemy as sa

from caselink.errors import StoreUnavailableError
from caselink.schema import rate_periods
from caselink.schema import service_state
from caselink.store.engine import Database
from caselink.store.engine import Statement


class RateBudget(Database):
    """Rate-limit periods and limits shared by every process that calls Datadog."""

    def _start(self) -> None:
        super()._start()
        dialect = self.engine.dialect
        self._take_rate_slot = Statement(
            "INSERT INTO rate_periods (name, period_number, used) VALUES (:name, :period_number, 1)"
            " ON CONFLICT (name, period_number) DO UPDATE SET used = rate_periods.used + 1"
            " WHERE rate_periods.used < :limit RETURNING used",
            dialect,
        )
        self._prune_rate_periods = Statement(
            "DELETE FROM rate_periods WHERE name = :name AND period_number < :period_number", dialect
        )

    def take_rate_slot(self, name: str, period_number: int, limit: int) -> bool:
        """Count one request in a rate-limit period shared by every process; False when it is full.

        If the store cannot be reached the request is let through: the local
        limiter still holds this process to the limit, and a 429 costs a wait,
        never a link.
        """
        values = {"name": name, "period_number": period_number, "limit": limit}
        try:
            with self._raw_transaction() as cursor:
                take, prune = self._take_rate_slot, self._prune_rate_periods
                cursor.execute(take.sql, take.params(values))
                taken = cursor.fetchone()
                if taken is not None and taken[0] == 1:
                    # A new period began: forget the old ones.
                    cursor.execute(prune.sql, prune.params(values))
        except StoreUnavailableError:
            return True
        return taken is not None

    def known_rate_limit(self, endpoint: str) -> tuple[str, int, float] | None:
        """The rate limit another process learned for this Datadog endpoint, if any."""
        try:
            value = self.get_state(f"ratelimit:{endpoint}")
        except StoreUnavailableError:
            return None
        if not value:
            return None
        name, limit, period = json.loads(value)
        return str(name), int(limit), float(period)

    def learn_rate_limit(self, endpoint: str, name: str, limit: int, period: float) -> None:
        with contextlib.suppress(StoreUnavailableError):
            self.set_state(f"ratelimit:{endpoint}", json.dumps([name, limit, period]))

    def rate_budgets(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each Datadog rate limit the delivery processes learned, with what its current period used.

        Shapes: {"name", "limit", "period" (seconds), "used" (requests counted in
        the current calendar-aligned period), "resets_in" (seconds), "endpoints"}.
        """
        now = time.time() if now is None else now
        with self.transaction(write=False) as connection:
            learned = connection.execute(
                sa.select(service_state.c.name, service_state.c.value).where(
                    service_state.c.name.startswith("ratelimit:", autoescape=True)
                )
            ).all()
            budgets: dict[str, dict[str, Any]] = {}
            for key, value in learned:
                try:
                    name, limit, period = json.loads(value or "")
                    limit, period = int(limit), float(period)
                except (ValueError, TypeError):
                    continue
                if period <= 0:
                    continue
                budget = budgets.setdefault(
                    name, {"name": name, "limit": limit, "period": period, "used": 0, "endpoints": []}
                )
                budget["endpoints"].append(key.removeprefix("ratelimit:"))
            for budget in budgets.values():
                number = int(now // budget["period"])
                used = connection.execute(
                    sa.select(rate_periods.c.used).where(
                        rate_periods.c.name == budget["name"], rate_periods.c.period_number == number
                    )
                ).scalar()
                budget["used"] = used or 0
                budget["resets_in"] = round((number + 1) * budget["period"] - now, 1)
        return sorted(budgets.values(), key=lambda budget: budget["name"])
