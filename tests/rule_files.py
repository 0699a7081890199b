"""Generated rules files shared by the tests of the index and of stored traces.

The shape of issue 15's benchmark (bench/rules_scale.py): every rule for Datadog incidents,
with a severity `in`, a `tags.service` equality and a `matches` on the title, and a `find`
child; one rule in a hundred (the first included) is for the `payments-api` service.
"""

from __future__ import annotations

import json


def generated_rules_text(size: int) -> str:
    rules = [
        {
            "name": f"service-{index}",
            "on": {"source": "datadog", "kind": ["incident.created", "incident.updated"]},
            "when": [
                {"field": "severity", "in": ["SEV-1", "SEV-2"]},
                {"field": "tags.service", "equals": "payments-api" if index % 100 == 0 else f"service-{index}"},
                {"field": "title", "matches": "(?i)latency|errors|down"},
            ],
            "link": {
                "relationship": "CAUSES",
                "parent": "event",
                "child": {"type": "CASE", "find": {"in": ["title"], "pattern": "OPS-\\d+"}},
            },
        }
        for index in range(size)
    ]
    return json.dumps({"version": 1, "rules": rules})
