"""Several web and worker processes on one PostgreSQL database: one queue, each link exactly once."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from tests.servers import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CASES = [f"OPS-{number}" for number in range(200, 240)]


def delivery(index: int, kind: str) -> bytes:
    """Incident `index` created or updated: both plan the same link to the case it names."""
    case = CASES[index % len(CASES)]
    return json.dumps(
        {
            "event": kind,
            "id": f"{kind}-{index}",
            "incident": {
                "id": f"00000000-0000-4000-8000-{index:012d}",
                "title": f"Incident {index}, see {case}",
                "severity": "SEV-2",
            },
        }
    ).encode()


def test_two_web_instances_and_two_workers_deliver_each_link_exactly_once(stack, postgres_url, fake_datadog):
    for case in CASES:
        fake_datadog.add_case(case)
    shared = {"DATABASE_URL": postgres_url, "IN_PROCESS_WORKER": "false", "WEB_CONCURRENCY": "2"}
    instances = [stack.service("web-a", **shared), stack.service("web-b", migrate=False, **shared)]
    stack.worker("worker-1", **shared)
    stack.worker("worker-2", **shared)
    bodies = [delivery(index, kind) for index in range(1000) for kind in ("incident.created", "incident.updated")]
    random.Random(5).shuffle(bodies)

    def deliver_twice(body: bytes) -> list[int]:
        # Every delivery reaches both instances, as a retrying sender behind a load balancer would.
        first, second = random.sample(instances, 2)
        return sorted([first.post("datadog", body).status_code, second.post("datadog", body).status_code])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(deliver_twice, bodies))

    assert answers == [[200, 202]] * len(bodies)
    wait_for(lambda: len(fake_datadog.links) >= 1000, timeout=120, interval=0.2, message="1000 links")
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        states = dict(connection.execute(sa.text("SELECT state, count(*) FROM links GROUP BY state")).all())
        workers = {row[0].split(":")[0] for row in connection.execute(sa.text("SELECT DISTINCT claimed_by FROM links"))}
        events = connection.execute(sa.text("SELECT count(*) FROM events")).scalar()
    engine.dispose()
    assert states == {"delivered": 1000}
    assert events == 2000
    assert len(fake_datadog.creations()) == 1000
    assert set(fake_datadog.link_counts().values()) == {1}
    assert len(workers) >= 1
