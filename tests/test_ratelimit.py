"""The rate limiter: budgets learned from X-RateLimit-* headers, on a fake clock (nothing sleeps)."""

import heapq
import math
import random
from collections import Counter

import pytest
import responses

from caselink.config import Secret
from caselink.datadog import CASE
from caselink.datadog import CREATE_LINK
from caselink.datadog import LIST_LINKS
from caselink.datadog import DatadogClient
from caselink.datadog import ResolvedLink
from caselink.errors import DatadogRateLimitedError
from caselink.ratelimit import RateLimiter

BASE = "https://api.test"
CASE_ID = "9daaa414-8843-46e2-8360-c36d3713285f"
INCIDENT_ID = "01c03111-172a-50c7-8df3-d61e64b0e74b"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rate_headers(remaining, *, limit=10, period=60, reset=30, name="cases"):
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Period": str(period),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }
    if name is not None:
        headers["X-RateLimit-Name"] = name
    return headers


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def limiter(clock):
    return RateLimiter(clock=clock)


def learn(limiter, endpoint=CREATE_LINK, remaining=5, **kwargs):
    """One request and its answer, as the client does it."""
    wait, ticket = limiter.reserve(endpoint)
    assert wait == 0
    limiter.settle(endpoint, ticket, rate_headers(remaining, **kwargs), 200)


def reserve_all(limiter, endpoint=CREATE_LINK):
    """Reserve until the limiter says wait; return the tickets and that wait."""
    tickets = []
    for _ in range(1000):
        wait, ticket = limiter.reserve(endpoint)
        if wait > 0:
            assert ticket is None
            return tickets, wait
        tickets.append(ticket)
    raise AssertionError("the limiter never said wait")


# -- learning ---------------------------------------------------------------------


def test_an_endpoint_not_heard_from_goes_at_once_without_a_ticket(limiter):
    assert limiter.reserve(CREATE_LINK) == (0.0, None)
    assert limiter.wait_time(CREATE_LINK) == 0.0
    assert limiter.snapshot() == {}


def test_the_headers_of_an_answer_teach_the_limit(limiter, clock):
    learn(limiter, remaining=7, limit=10, period=60, reset=25, name="cases_write")

    state = limiter.snapshot()["cases_write"]
    assert (state.limit, state.period, state.remaining, state.in_flight) == (10, 60.0, 7, 0)
    assert state.reset_at == clock.now + 25


def test_headers_are_read_whatever_their_case(limiter):
    headers = {key.lower(): value for key, value in rate_headers(3, name="cases").items()}
    wait, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, headers, 200)
    assert limiter.snapshot()["cases"].remaining == 3


def test_reset_is_seconds_from_now_not_an_epoch(limiter, clock):
    learn(limiter, remaining=0, reset=7)

    wait, ticket = limiter.reserve(CREATE_LINK)

    assert ticket is None
    assert wait == pytest.approx(7.0)


def test_a_limit_without_a_name_is_kept_under_the_endpoint(limiter):
    learn(limiter, remaining=0, reset=5, name=None)
    assert limiter.reserve(CREATE_LINK)[0] == pytest.approx(5.0)
    assert limiter.reserve(LIST_LINKS) == (0.0, None)


def test_an_answer_without_rate_headers_teaches_nothing(limiter):
    wait, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, {"Content-Type": "application/json"}, 201)
    assert limiter.snapshot() == {}
    assert limiter.reserve(CREATE_LINK) == (0.0, None)


def test_unparseable_header_values_are_ignored(limiter):
    learn(limiter, remaining=4, reset=20)
    wait, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(
        CREATE_LINK,
        ticket,
        {"X-RateLimit-Name": "cases", "X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "soon"},
        200,
    )
    state = limiter.snapshot()["cases"]
    assert (state.remaining, state.in_flight) == (4, 0)


# -- spending the budget -------------------------------------------------------------


def test_requests_in_flight_count_against_the_budget(limiter):
    learn(limiter, remaining=3, reset=30)

    tickets, wait = reserve_all(limiter)

    assert tickets == ["cases", "cases", "cases"]
    assert wait == pytest.approx(30.0)
    assert limiter.snapshot()["cases"].in_flight == 3


def test_an_answer_frees_its_place_and_sets_the_remaining(limiter):
    learn(limiter, remaining=2, reset=30)
    tickets, _ = reserve_all(limiter)
    assert len(tickets) == 2

    # Datadog answers the first: one left, and one still in flight, so nothing is free.
    limiter.settle(CREATE_LINK, tickets[0], rate_headers(1, reset=29), 201)
    assert limiter.reserve(CREATE_LINK)[1] is None

    limiter.settle(CREATE_LINK, tickets[1], rate_headers(1, reset=29), 201)
    wait, ticket = limiter.reserve(CREATE_LINK)
    assert (wait, ticket) == (0.0, "cases")


def test_nothing_is_reserved_until_the_reset_then_the_full_limit_is_there(limiter, clock):
    learn(limiter, remaining=0, limit=10, period=60, reset=10)

    for elapsed, expected in ((0, 10.0), (5, 5.0), (9.5, 0.5)):
        clock.now = 1000.0 + elapsed
        assert limiter.reserve(CREATE_LINK) == (pytest.approx(expected), None)
    assert limiter.snapshot()["cases"].in_flight == 0

    clock.now = 1010.0
    tickets, wait = reserve_all(limiter)

    assert len(tickets) == 10
    # The next period ends a whole period after this one.
    assert wait == pytest.approx(60.0)


def test_a_reset_missed_by_several_periods_lands_on_the_next_boundary(limiter, clock):
    learn(limiter, remaining=0, limit=10, period=60, reset=10)
    clock.now = 1000.0 + 10 + 60 * 3 + 15

    tickets, wait = reserve_all(limiter)

    assert len(tickets) == 10
    assert wait == pytest.approx(45.0)


def test_the_lowest_remaining_of_a_period_wins_whatever_the_order_of_answers(limiter):
    learn(limiter, remaining=9, reset=30)
    tickets = [limiter.reserve(CREATE_LINK)[1] for _ in range(3)]
    # Answered out of order: the request Datadog counted last answers first.
    limiter.settle(CREATE_LINK, tickets[2], rate_headers(6, reset=29.9), 201)
    limiter.settle(CREATE_LINK, tickets[0], rate_headers(8, reset=29.8), 201)
    limiter.settle(CREATE_LINK, tickets[1], rate_headers(7, reset=29.7), 201)

    assert limiter.snapshot()["cases"].remaining == 6


def test_a_late_answer_from_the_period_before_says_nothing_about_this_one(limiter, clock):
    learn(limiter, remaining=1, limit=10, period=60, reset=2)
    _, late = limiter.reserve(CREATE_LINK)
    clock.advance(3)  # the period ended while that request was in flight

    limiter.settle(CREATE_LINK, late, rate_headers(0, reset=0), 201)

    state = limiter.snapshot()["cases"]
    assert (state.remaining, state.in_flight) == (10, 0)
    assert state.reset_at == pytest.approx(1062.0)


def test_requests_still_in_flight_when_a_period_ends_stay_counted(limiter, clock):
    learn(limiter, remaining=3, limit=3, period=60, reset=1)
    tickets, _ = reserve_all(limiter)
    clock.advance(2)

    # Datadog may count those three in the new period: until they answer, only the rest is free.
    assert len(reserve_all(limiter)[0]) == 0
    limiter.settle(CREATE_LINK, tickets[0], rate_headers(2, limit=3, reset=58), 201)
    assert limiter.snapshot()["cases"].remaining == 2


def test_an_answer_from_a_later_period_than_expected_starts_it(limiter, clock):
    learn(limiter, remaining=1, limit=10, period=60, reset=30)
    _, ticket = limiter.reserve(CREATE_LINK)
    clock.advance(29)

    # Datadog's period ended before this process expected: the answer belongs to the next one.
    limiter.settle(CREATE_LINK, ticket, rate_headers(8, reset=59.5), 201)

    state = limiter.snapshot()["cases"]
    assert state.remaining == 8
    assert state.reset_at == pytest.approx(clock.now + 59.5)


def test_a_request_that_got_no_answer_but_may_have_arrived_stays_spent(limiter):
    learn(limiter, remaining=5)
    _, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, None, None, reached=True)
    state = limiter.snapshot()["cases"]
    assert (state.remaining, state.in_flight) == (4, 0)


def test_a_request_that_never_left_gives_its_place_back(limiter):
    learn(limiter, remaining=5)
    _, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, None, None, reached=False)
    state = limiter.snapshot()["cases"]
    assert (state.remaining, state.in_flight) == (5, 0)


# -- 429 --------------------------------------------------------------------------------


def test_a_429_empties_the_budget_until_the_reset(limiter, clock):
    learn(limiter, remaining=8, reset=40)
    _, ticket = limiter.reserve(CREATE_LINK)

    # Another process spent the budget; the 429 says so even if its Remaining does not.
    limiter.settle(CREATE_LINK, ticket, rate_headers(3, reset=40), 429)

    assert limiter.reserve(CREATE_LINK) == (pytest.approx(40.0), None)
    clock.advance(40)
    assert len(reserve_all(limiter)[0]) == 10


def test_a_429_without_reset_header_holds_for_retry_after(limiter, clock):
    _, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, {"Retry-After": "4"}, 429)

    assert limiter.reserve(CREATE_LINK) == (pytest.approx(4.0), None)
    clock.advance(4)
    assert limiter.reserve(CREATE_LINK)[0] == 0


def test_a_429_with_no_headers_at_all_holds_the_endpoint(limiter, clock):
    _, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, {}, 429)

    wait, ticket = limiter.reserve(CREATE_LINK)
    assert wait > 0
    assert ticket is None
    clock.advance(wait)
    assert limiter.reserve(CREATE_LINK)[0] == 0


def test_a_429_after_starting_a_period_too_early_still_holds(limiter, clock):
    # This process believes the period ended (its estimate was early); Datadog disagrees.
    learn(limiter, remaining=0, limit=10, period=60, reset=5)
    clock.advance(5)
    _, ticket = limiter.reserve(CREATE_LINK)

    limiter.settle(CREATE_LINK, ticket, rate_headers(0, reset=0.8), 429)

    assert limiter.reserve(CREATE_LINK) == (pytest.approx(0.8), None)
    clock.advance(0.8)
    # Datadog's new period has begun and the refused request was not counted in it.
    assert len(reserve_all(limiter)[0]) == 10
    # And it ends a whole period after Datadog's last one did, not after this process's guess.
    assert limiter.snapshot()["cases"].reset_at == pytest.approx(1005.8 + 60)


def test_a_429_saying_reset_0_still_holds_a_moment(limiter, clock):
    # Whole-second Reset values can round a fraction of a second down to 0.
    _, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, rate_headers(0, reset=0), 429)

    wait, ticket = limiter.reserve(CREATE_LINK)
    assert 0 < wait <= 1
    assert ticket is None


# -- shared limits and wait_time ----------------------------------------------------------


def test_endpoints_that_share_a_limit_name_share_a_budget(limiter):
    learn(limiter, LIST_LINKS, remaining=5, name="cases")
    learn(limiter, CREATE_LINK, remaining=2, name="cases")

    tickets, _ = reserve_all(limiter, LIST_LINKS)

    assert tickets == ["cases", "cases"]
    assert limiter.reserve(CREATE_LINK)[1] is None
    assert limiter.wait_time(CREATE_LINK) > 0


def test_endpoints_with_different_limit_names_do_not_share(limiter):
    learn(limiter, CASE, remaining=0, name="cases_read")
    learn(limiter, CREATE_LINK, remaining=5, name="cases_write")

    assert limiter.reserve(CASE)[1] is None
    assert limiter.reserve(CREATE_LINK) == (0.0, "cases_write")


def test_wait_time_is_the_longest_wait_of_the_endpoints_given(limiter, clock):
    learn(limiter, LIST_LINKS, remaining=0, reset=12, name="read")
    learn(limiter, CREATE_LINK, remaining=0, reset=3, name="write")

    assert limiter.wait_time() == 0.0
    assert limiter.wait_time(CASE) == 0.0
    assert limiter.wait_time(CREATE_LINK) == pytest.approx(3.0)
    assert limiter.wait_time(LIST_LINKS, CREATE_LINK) == pytest.approx(12.0)
    clock.advance(12)
    assert limiter.wait_time(LIST_LINKS, CREATE_LINK) == 0.0


def test_wait_time_counts_requests_in_flight_and_reserves_nothing(limiter):
    learn(limiter, remaining=2, reset=20)
    assert limiter.wait_time(CREATE_LINK) == 0.0
    reserve_all(limiter)
    assert limiter.wait_time(CREATE_LINK) == pytest.approx(20.0)
    assert limiter.snapshot()["cases"].in_flight == 2


def test_a_limit_whose_size_is_unknown_is_forgotten_at_its_reset(limiter, clock):
    wait, ticket = limiter.reserve(CREATE_LINK)
    limiter.settle(CREATE_LINK, ticket, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "3"}, 200)
    assert limiter.reserve(CREATE_LINK)[0] == pytest.approx(3.0)
    clock.advance(3)
    assert limiter.reserve(CREATE_LINK)[0] == 0


def test_snapshot_is_a_copy(limiter):
    learn(limiter, remaining=5)
    limiter.snapshot()["cases"].remaining = 0
    assert limiter.snapshot()["cases"].remaining == 5


# -- at the limit, never over ----------------------------------------------------------------


def exact(seconds):
    return f"{seconds:.3f}"


def whole_seconds_rounded_down(seconds):
    return str(math.floor(seconds))


def whole_seconds_rounded_up(seconds):
    return str(math.ceil(seconds))


def simulate(*, limit, period, workers, duration, seed, start=1000.0, reset_format=exact):
    """Workers sending as fast as the limiter lets them to a server with calendar-aligned periods.

    Returns (requests Datadog accepted per period, 429 answers per period).
    """
    rng = random.Random(seed)
    clock = FakeClock(start)
    limiter = RateLimiter(clock=clock)
    accepted, refused, used = Counter(), Counter(), Counter()
    events = [(start + rng.random() * 0.01, n, "send", None) for n in range(workers)]
    heapq.heapify(events)
    serial = workers
    while events:
        at, _, kind, data = heapq.heappop(events)
        if at > start + duration:
            break
        clock.now = at
        serial += 1
        if kind == "send":
            wait, ticket = limiter.reserve(CREATE_LINK)
            if wait > 0:
                heapq.heappush(events, (at + wait, serial, "send", None))
            else:
                heapq.heappush(events, (at + rng.uniform(0.001, 0.05), serial, "arrive", ticket))
        elif kind == "arrive":
            window = math.floor(at / period)
            if used[window] < limit:
                used[window] += 1
                accepted[window] += 1
                status = 201
            else:
                refused[window] += 1
                status = 429
            reset = reset_format(period - (at % period))
            headers = rate_headers(max(limit - used[window], 0), limit=limit, period=period, reset=reset)
            heapq.heappush(events, (at + rng.uniform(0.001, 0.2), serial, "answer", (data, headers, status)))
        else:
            ticket, headers, status = data
            limiter.settle(CREATE_LINK, ticket, headers, status)
            heapq.heappush(events, (at, serial, "send", None))
    return accepted, refused


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("limit", "period", "workers", "reset_format", "learning_periods"),
    [
        (20, 10, 4, exact, 1),
        (5, 2, 8, exact, 1),
        (50, 60, 16, exact, 1),
        (20, 10, 4, whole_seconds_rounded_up, 1),
        (50, 60, 16, whole_seconds_rounded_up, 1),
        # Rounded down, Reset can say a period ends up to a second before it does: the first
        # early start meets a 429 that shows where the period really ends.
        (20, 10, 4, whole_seconds_rounded_down, 3),
        (50, 60, 16, whole_seconds_rounded_down, 3),
    ],
)
def test_the_limiter_runs_at_the_limit_and_never_over_it(limit, period, workers, reset_format, learning_periods, seed):
    accepted, refused = simulate(
        limit=limit, period=period, workers=workers, duration=period * 8, seed=seed, reset_format=reset_format
    )

    first = min(accepted)
    full_periods = [window for window in accepted if first < window < max(accepted)]
    assert len(full_periods) >= 6
    # Once the limit is learned from the first answers, no 429 at all...
    assert not {window: count for window, count in refused.items() if window >= first + learning_periods}
    # ...and every period uses its whole budget.
    assert all(accepted[window] == limit for window in full_periods)


# -- through the client -----------------------------------------------------------------


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client(limiter):
    return DatadogClient(BASE, Secret("api-key-0123456789"), Secret("app-key-0123456789"), limiter=limiter)


LINK = ResolvedLink("INCIDENT", INCIDENT_ID, "CAUSES", "CASE", CASE_ID)


def test_the_client_sends_nothing_once_remaining_is_zero(api, client, clock):
    api.post(
        f"{BASE}/api/v2/cases/link",
        json={"data": {"id": "link-1", "type": "link", "attributes": LINK.attributes()}},
        status=201,
        headers=rate_headers(0, reset=17),
    )
    assert client.create_link(LINK) == "link-1"

    with pytest.raises(DatadogRateLimitedError) as caught:
        client.create_link(LINK)

    assert caught.value.sent is False
    assert caught.value.retry_after == pytest.approx(17.0)
    assert len(api.calls) == 1


def test_the_client_holds_back_after_a_429_until_the_reset(api, client, clock):
    api.post(
        f"{BASE}/api/v2/cases/link",
        json={"errors": ["Too many requests"]},
        status=429,
        headers=rate_headers(0, reset=9),
    )
    with pytest.raises(DatadogRateLimitedError) as first:
        client.create_link(LINK)
    assert first.value.sent is True

    with pytest.raises(DatadogRateLimitedError) as second:
        client.create_link(LINK)
    assert second.value.sent is False
    assert second.value.retry_after == pytest.approx(9.0)
    assert len(api.calls) == 1

    clock.advance(9)
    api.replace(
        responses.POST,
        f"{BASE}/api/v2/cases/link",
        json={"data": {"id": "link-2", "type": "link", "attributes": LINK.attributes()}},
        status=201,
        headers=rate_headers(9, reset=51),
    )
    assert client.create_link(LINK) == "link-2"


class SharedBudget:
    """What the store keeps for every delivery process, in memory."""

    def __init__(self, room: int = 1_000_000) -> None:
        self.room = room
        self.taken: list[tuple[str, int, int]] = []
        self.limits: dict[str, tuple[str, int, float]] = {}

    def take_rate_slot(self, name, period_number, limit):
        self.taken.append((name, period_number, limit))
        return len(self.taken) <= self.room

    def known_rate_limit(self, endpoint):
        return self.limits.get(endpoint)

    def learn_rate_limit(self, endpoint, name, limit, period):
        self.limits[endpoint] = (name, limit, period)


def test_a_shared_count_that_is_full_holds_the_request_back_until_the_next_calendar_period(clock):
    shared = SharedBudget(room=1)
    limiter = RateLimiter(clock=clock, shared=shared, wall_clock=lambda: 1000.25)
    learn(limiter, remaining=8, limit=10, period=1, reset=0.75)

    first = limiter.reserve(CREATE_LINK)
    second = limiter.reserve(CREATE_LINK)

    assert first == (0.0, "cases")
    assert second[1] is None
    assert second[0] == pytest.approx(0.75)
    assert shared.taken == [("cases", 1000, 10)] * 2
    assert limiter.snapshot()["cases"].in_flight == 1


def test_a_process_that_starts_later_counts_from_its_first_request_with_what_others_learned(clock):
    shared = SharedBudget()
    early = RateLimiter(clock=clock, shared=shared, wall_clock=lambda: 1000.5)
    learn(early, remaining=8, limit=10, period=1, reset=0.5)
    late = RateLimiter(clock=clock, shared=shared, wall_clock=lambda: 1000.5)

    wait, ticket = late.reserve(CREATE_LINK)

    assert shared.limits == {CREATE_LINK: ("cases", 10, 1.0)}
    assert (wait, ticket) == (0.0, "cases")
    assert shared.taken == [("cases", 1000, 10)]
