"""The ingest service's start-up checks."""

from __future__ import annotations

from dataclasses import replace

from caselink.service import preflight
from handlers import REGISTRY


def test_preflight_warns_the_operator_of_each_on_kind_not_in_canonical_form(app, settings, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """version: 1
rules:
  - name: no-data
    on: {source: datadog, kind: alert.No Data}
    link: {relationship: RELATES_TO, parent: {type: CASE, id: OPS-1}, child: {type: CASE, id: OPS-2}}
"""
    )

    notes = preflight(replace(settings, rules_file=rules), REGISTRY)

    assert notes[:2] == [
        f"1 rules loaded from {rules}",
        # The "warning: " prefix is what makes the start-up log write it at level warning (gunicorn.conf.py).
        f"warning: {rules}:4: rule 'no-data': warning: on.kind 'alert.No Data' is not in canonical form;"
        " it matches as 'alert.no_data'",
    ]
