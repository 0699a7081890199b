"""The store when it is gone, read-only or unreachable, for real: gunicorn, SQLite files, PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from caselink.store import Store
from tests.servers import ROOT
from tests.servers import Service
from tests.servers import free_port
from tests.servers import wait_for

pytestmark = pytest.mark.slow


def incident(index: int) -> bytes:
    return json.dumps(
        {
            "event": "incident.created",
            "id": f"evt-{index}",
            "incident": {
                "id": f"00000000-0000-4000-8000-{index:012d}",
                "title": f"Incident {index}, related to OPS-42",
                "severity": "SEV-1",
            },
        }
    ).encode()


def sqlite_files(stack) -> list[Path]:
    database = Path(stack.database_url.removeprefix("sqlite:///"))
    return [database, Path(f"{database}-wal"), Path(f"{database}-shm")]


def stored_event_ids(database_url: str) -> set[str]:
    store = Store(database_url)
    try:
        with store.transaction(write=False) as connection:
            return set(connection.execute(sa.text("SELECT dedup_key FROM events")).scalars())
    finally:
        store.dispose()


def readyz(web) -> tuple[int, dict]:
    answer = web.http.get(web.url + "/readyz", timeout=10)
    return answer.status_code, answer.json()


def test_deleting_the_sqlite_files_while_serving_gets_503s_not_202s_until_a_store_is_there_again(stack):
    web = stack.service()
    assert web.post("datadog", incident(0)).status_code == 202
    acknowledged = {"incident.created:evt-0"}

    for path in sqlite_files(stack):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    answers = [web.post("datadog", incident(index)) for index in range(1, 21)]
    assert {answer.status_code for answer in answers} == {503}
    assert answers[0].json()["error"]["code"] == "store_unavailable"
    status, body = readyz(web)
    assert status == 503, body
    assert stack.tmp_path.as_posix() not in json.dumps(body) + answers[0].text

    # A store is there again: an empty one, made as an operator would.
    stack.migrate()
    wait_for(lambda: web.post("datadog", incident(21)).status_code == 202, timeout=15, message="a 202 again")
    acknowledged.add("incident.created:evt-21")
    wait_for(lambda: readyz(web)[0] == 200, timeout=10, message="ready again")
    web.stop()

    # Everything acknowledged since the store came back is in it (evt-0 went with the old file).
    assert acknowledged - {"incident.created:evt-0"} <= stored_event_ids(stack.database_url)
    assert "the file was deleted or moved" in web.logs()


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """Files nobody may write, root included (chattr +i), until the block ends."""
    existing = [path for path in paths if path.exists()]
    result = subprocess.run(["chattr", "+i", *map(str, existing)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot make files immutable here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, existing)], check=False)


def ready(web) -> dict | None:
    """/readyz's checks when it answers 503, None when it answers otherwise or not at all."""
    try:
        status, body = readyz(web)
    except requests.ConnectionError:
        return None
    return body["checks"] if status == 503 else None


def test_read_only_sqlite_files_get_503s_and_writes_resume_by_themselves_once_writable(stack):
    web = stack.service(WEB_CONCURRENCY="2")
    assert web.post("datadog", incident(0)).status_code == 202

    def answer(index: int) -> int | None:
        try:
            return web.post("datadog", incident(index)).status_code
        except requests.ConnectionError:
            return None

    with immutable(sqlite_files(stack)):
        answers = [answer(index) for index in range(1, 11)]
        # A process writing SQLite's mapped -shm at the instant it turns immutable is killed by the
        # kernel (SIGBUS, docs/operations.md): its request gets no answer, never a 202.
        assert set(answers) <= {503, None}, answers
        assert answers.count(503) >= 5, answers
        wait_for(lambda: "read-only" in (ready(web) or {}).get("store", ""), timeout=10, message="/readyz read-only")

    wait_for(lambda: answer(11) == 202, timeout=10, message="a 202 again")
    wait_for(lambda: readyz(web)[0] == 200, timeout=10, message="ready again")
    assert web.running
    assert {"incident.created:evt-0", "incident.created:evt-11"} <= stored_event_ids(stack.database_url)
    assert not {f"incident.created:evt-{index}" for index in range(1, 11)} & stored_event_ids(stack.database_url)


PASSWORD = "pw-for-tests"


def with_password(url: str) -> str:
    """The same URL with a password in it (the test server trusts every login, so any will do)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def shown(url: str) -> str:
    """How caselink names a DATABASE_URL to its operator."""
    return f"DATABASE_URL ({url.replace(f':{PASSWORD}@', ':***@')})"


COMMANDS = [
    ["db", "upgrade"],
    ["db", "current"],
    ["links", "list"],
    ["links", "retry", "--dead"],
    ["replay"],
    ["worker", "--once"],
]


def unusable_database(kind: str, request) -> str:
    if kind == "refused":
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/caselink"
    server = request.getfixturevalue("postgres_server")
    return with_password(server.rsplit("/", 1)[0] + "/caselink_no_such_database")


@pytest.mark.parametrize("kind", ["refused", pytest.param("missing", marks=pytest.mark.postgres)])
def test_every_command_and_gunicorn_say_in_one_line_which_database_url_they_cannot_use(stack, request, kind):
    url = unusable_database(kind, request)
    env = stack.env(DATABASE_URL=url)

    for command in COMMANDS:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *command],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        said = result.stdout + result.stderr
        assert result.returncode == 1, (command, said)
        assert "Traceback" not in said, (command, said)
        assert PASSWORD not in said
        [line] = [line for line in said.splitlines() if line.strip()]
        assert shown(url) in line, (command, line)

    web = Service("web-no-database", env, stack.tmp_path)
    stack.processes.append(web)
    web.start(wait=False)
    web.popen.wait(30)
    said = web.logs()
    assert web.popen.returncode != 0
    assert "Traceback" not in said
    assert PASSWORD not in said
    [line] = [line for line in said.splitlines() if "DATABASE_URL" in line]
    assert line.startswith(f"caselink cannot start: {shown(url)}")


@contextlib.contextmanager
def database_closed(url: str) -> Iterator[None]:
    """No new connections to the database, and the present ones cut."""
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(
        url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
            )
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.mark.postgres
def test_a_sender_and_readyz_never_see_the_host_port_or_name_of_a_database_that_is_down(stack, postgres_url):
    url = with_password(postgres_url)
    web = stack.service(DATABASE_URL=url)
    name = url.rsplit("/", 1)[1]

    with database_closed(url):
        down = web.post("datadog", incident(1))
        status, body = readyz(web)

    assert down.status_code == 503
    assert status == 503
    for text in (down.text, json.dumps(body)):
        for private in ("127.0.0.1", "5432", name, "postgres", PASSWORD):
            assert private not in text, (private, text)
    wait_for(lambda: shown(url) in web.logs(), timeout=5, message="the log to name the database")
    assert PASSWORD not in web.logs()


TERMINATE_OTHERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
)


@pytest.mark.postgres
def test_a_postgresql_database_that_refuses_writes_is_not_ready_and_gets_503s_until_it_takes_them(stack, postgres_url):
    web = stack.service(DATABASE_URL=postgres_url)
    name = postgres_url.rsplit("/", 1)[1]
    admin = sa.create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )

    def read_only(on: bool) -> None:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')
            )
            connection.execute(sa.text(TERMINATE_OTHERS), {"name": name})

    try:
        read_only(True)
        answers = [web.post("datadog", incident(index)) for index in range(3)]
        status, body = readyz(web)
        assert [answer.status_code for answer in answers] == [503] * 3
        assert answers[0].json()["error"]["message"] == "the database is unavailable: the database is read-only"
        assert status == 503, body
    finally:
        read_only(False)
        admin.dispose()

    wait_for(lambda: web.post("datadog", incident(9)).status_code == 202, timeout=10, message="a 202 again")
    wait_for(lambda: readyz(web)[0] == 200, timeout=10, message="ready again")


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only), unmounted at the end."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small disk here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; returns it."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    return filler


def test_a_full_disk_gets_503s_and_readyz_not_ready_and_writes_resume_by_themselves_when_space_returns(stack):
    with small_disk(stack.tmp_path / "disk") as disk:
        stack.database_url = f"sqlite:///{disk / 'caselink.db'}"
        web = stack.service()
        assert web.post("datadog", incident(0)).status_code == 202
        acknowledged = {"incident.created:evt-0"}

        filler = fill(disk)
        answers = {index: web.post("datadog", incident(index)).status_code for index in range(1, 31)}
        acknowledged |= {f"incident.created:evt-{index}" for index, status in answers.items() if status == 202}
        status, body = readyz(web)
        assert set(answers.values()) <= {202, 503}
        assert 503 in answers.values(), answers
        assert status == 503, body

        filler.unlink()
        wait_for(lambda: web.post("datadog", incident(99)).status_code == 202, timeout=10, message="a 202 again")
        wait_for(lambda: readyz(web)[0] == 200, timeout=10, message="ready again")
        acknowledged.add("incident.created:evt-99")
        web.stop()
        # Every 202 was stored, full disk or not.
        assert acknowledged <= stored_event_ids(stack.database_url)


def test_deleting_only_the_wal_and_shm_files_while_webhooks_flow_never_acknowledges_an_event_it_loses(stack):
    web = stack.service(WEB_CONCURRENCY="2")
    database, wal, shm = sqlite_files(stack)
    answers: dict[int, int] = {}

    def send(index: int) -> None:
        try:
            answers[index] = web.post("datadog", incident(index)).status_code
        except requests.RequestException:
            answers[index] = 0

    # 300 webhooks at 50 a second; 1.5 s in, the -wal and -shm files go (the database file stays).
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for index in range(300):
            time.sleep(max(0.0, started + index / 50 - time.monotonic()))
            if index == 75:
                for path in (wal, shm):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            pool.submit(send, index)

    # It recovers by itself once the files it relies on are consistent again: 202s and ready.
    wait_for(lambda: web.post("datadog", incident(300)).status_code == 202, timeout=20, message="a 202 again")
    answers[300] = 202
    wait_for(lambda: readyz(web)[0] == 200, timeout=20, message="ready again")
    web.stop()

    acknowledged = {f"incident.created:evt-{index}" for index, status in answers.items() if status == 202}
    lost = acknowledged - stored_event_ids(stack.database_url)
    assert not lost, f"{len(lost)} events answered 202 are not in the database: {sorted(lost)[:10]}"
    # Answers were 202 or 503 (never an error page), and the batches whose files went got 503s.
    assert set(answers.values()) == {202, 503}, answers
    assert database.exists()
    assert "-wal was deleted or replaced" in web.logs() or "-shm was deleted or replaced" in web.logs()
