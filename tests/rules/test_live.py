"""The rules in force in a running service, reloaded when the file changes (caselink/rules/live.py)."""

from __future__ import annotations

import os
from typing import Any

from caselink.errors import RulesError
from caselink.rules import LiveRules
from tests.rule_files import write_rules


def test_live_rules_reload_when_the_file_changes(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "first")
    reloads: list[tuple[Any, Any]] = []
    live = LiveRules(path, check_every=0, on_reload=lambda rules, error: reloads.append((rules, error)))

    assert [rule.name for rule in live.current().rules] == ["first"]
    write_rules(path, "second", "third")

    assert [rule.name for rule in live.current().rules] == ["second", "third"]
    assert live.error is None
    assert [(rules.rules[0].name, error) for rules, error in reloads] == [("second", None)]


def test_live_rules_keep_the_rules_in_force_when_the_new_file_fails_validation(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "good")
    reloads: list[tuple[Any, Any]] = []
    live = LiveRules(path, check_every=0, on_reload=lambda rules, error: reloads.append((rules, error)))
    good = live.current()

    path.write_text("version: 1\nrules:\n  - name: bad\n    whn: []\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_mtime_ns + 2_000_000_000,) * 2)

    assert live.current() is good
    assert isinstance(live.error, RulesError)
    assert live.error.problems[0].startswith(f"{path}:4: rule 'bad': unknown key 'whn'")
    assert reloads == [(None, live.error)]

    write_rules(path, "fixed")
    assert [rule.name for rule in live.current().rules] == ["fixed"]
    assert live.error is None


def test_live_rules_keep_the_rules_in_force_when_the_file_disappears(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "good")
    live = LiveRules(path, check_every=0)
    good = live.current()

    path.unlink()

    assert live.current() is good
    assert "cannot read the rules file" in live.error.problems[0]


def test_live_rules_start_without_rules_when_the_first_file_is_bad(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 2\nrules: []\n", encoding="utf-8")

    live = LiveRules(path, check_every=0)

    assert live.current() is None
    assert live.error.problems == [f"{path}:1: version must be 1, not 2"]


def test_live_rules_look_at_the_file_no_more_often_than_asked(tmp_path):
    path = tmp_path / "rules.yaml"
    write_rules(path, "first")
    live = LiveRules(path, check_every=3600)

    write_rules(path, "second")

    assert [rule.name for rule in live.current().rules] == ["first"]
