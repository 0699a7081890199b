"""The operator's terminal against hostile or odd input: control codes in sender text, ids past the
database's range, windows finer than the counters, databases without a schema, relative paths."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import create_app
from caselink import migrations
from caselink.cli import printable
from caselink.config import PROJECT_ROOT
from caselink.config import Settings
from tests.conftest import ROOT
from tests.servers import base_env
from tests.servers import flask
from tests.test_cli_operations import invoke
from tests.test_cli_operations import receive_at

HOSTILE = "\x1b]0;pwned\x07 OPS-9\rFAKE \x9b2J \u202eevil\u202c \x7f"
HUGE = "9" * 21


def _is_terminal_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or unicodedata.bidirectional(char) in (
        "LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI", "LRM", "RLM", "ALM"
    )  # fmt: skip


@given(st.text())
def test_printable_text_holds_no_character_a_terminal_acts_on(text):
    assert not any(_is_terminal_control(char) for char in printable(text))


@pytest.mark.parametrize("command", [("events", "list"), ("events", "show", "1")])
def test_sender_text_reaches_the_terminal_with_its_control_codes_escaped(service, runner, command):
    receive_at(service, 1_780_000_000.0, key="k", title=HOSTILE)

    shown = invoke(runner, *command).output
    as_json = invoke(runner, *command, "--json").output

    assert not any(_is_terminal_control(char) for char in shown.replace("\n", ""))
    assert "\\x1b]0;pwned\\x07 OPS-9\\rFAKE" in shown
    record = json.loads(as_json)
    assert HOSTILE in {row["title"] for row in record} if isinstance(record, list) else record["title"] == HOSTILE


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store_runner(request, settings, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'any.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    app = create_app(replace(settings, database_url=url))
    store = app.extensions["caselink"].store
    migrations.upgrade(store.engine)
    yield app.test_cli_runner()
    store.dispose()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (("events", "show", HUGE), f"no event {HUGE}"),
        (("events", "show", "--json", HUGE), f"no event {HUGE}"),
        (("links", "retry", HUGE), f"no link {HUGE}"),
    ],
)
def test_an_id_too_large_for_the_database_is_one_line_not_a_traceback(any_store_runner, command, said):
    result = invoke(any_store_runner, *command)

    assert result.exit_code == 1
    assert said in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("since", ["1s", "59m", "3599s"])
def test_rules_stats_refuses_a_window_shorter_than_its_hourly_counters(runner, since):
    result = invoke(runner, "rules", "stats", "--since", since)

    assert result.exit_code == 2
    assert "shorter than an hour" in result.output


def test_rules_stats_takes_a_window_of_an_hour(runner):
    assert invoke(runner, "rules", "stats", "--since", "1h").exit_code == 0


def test_links_retry_dead_in_dry_run_is_refused_and_changes_nothing(runner, store):
    from tests.test_pages import dead_letter

    link_id = dead_letter(store)

    result = invoke(runner, "links", "retry", "--dead")

    assert result.exit_code == 1
    assert "dead links cannot be sent until DD_API_KEY" in result.output
    assert store.get_link(link_id)["state"] == "dead"


@pytest.mark.parametrize(
    "command",
    [
        ("events", "list"),
        ("events", "show", "1"),
        ("links", "list"),
        ("links", "retry", "1"),
        ("rules", "stats"),
        ("rules", "stats", "--json"),
        ("db", "prune"),
        ("replay",),
    ],
)
def test_every_reading_command_on_a_database_without_the_schema_exits_1_saying_how_to_fix_it(tmp_path, command):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}", rules_file=ROOT / "rules.yaml")
    app = create_app(settings)
    result = app.test_cli_runner().invoke(args=list(command))
    app.extensions["caselink"].store.dispose()

    assert result.exit_code == 1, result.output
    assert "no caselink schema; run `bin/caselink db upgrade`" in result.output


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("sqlite:///rel.db", f"sqlite:///{PROJECT_ROOT / 'rel.db'}"),
        ("sqlite:///instance/x.db?timeout=5", f"sqlite:///{PROJECT_ROOT / 'instance/x.db'}?timeout=5"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
    ],
)
def test_a_relative_sqlite_path_is_under_the_project_root_from_any_directory(
    given_url, expected, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)

    settings = Settings.from_env({"DATABASE_URL": given_url})

    assert settings.database_url == expected


READING_COMMANDS = [
    ("events", "list"),
    ("events", "list", "--outcome", "linked"),
    ("events", "show", "1"),
    ("links", "list"),
    ("rules", "stats"),
    ("rules", "stats", "--json"),
    ("db", "current"),
    ("db", "prune", "--dry-run"),
    ("replay",),
]


@pytest.mark.parametrize("command", READING_COMMANDS)
def test_a_reading_command_pointed_at_a_missing_sqlite_file_creates_nothing_and_says_so_in_one_line(
    tmp_path, command
):
    folder = tmp_path / "not-here"
    settings = Settings(database_url=f"sqlite:///{folder / 'caselink.db'}", rules_file=ROOT / "rules.yaml")
    app = create_app(settings)
    result = app.test_cli_runner().invoke(args=list(command))
    app.extensions["caselink"].store.dispose()

    assert result.exit_code != 0, result.output
    [line] = result.output.splitlines()
    assert "DATABASE_URL" in line
    assert str(folder / "caselink.db") in line
    assert "run `bin/caselink db upgrade` to create it" in line
    assert not folder.exists()


def test_flask_events_list_on_a_missing_sqlite_file_leaves_no_file_and_db_upgrade_creates_it(tmp_path):
    database = tmp_path / "not-here" / "caselink.db"
    env = base_env(DATABASE_URL=f"sqlite:///{database}", RULES_FILE=str(ROOT / "rules.yaml"))

    listed = flask(env, "events", "list")

    assert listed.returncode != 0
    assert "DATABASE_URL" in listed.stderr
    assert "Traceback" not in listed.stderr
    assert not database.parent.exists()
    upgraded = flask(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert database.exists()
    assert flask(env, "events", "list").returncode == 0
