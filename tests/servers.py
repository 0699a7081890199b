"""Real processes for end-to-end tests: caselink under gunicorn, and its worker.

Each process gets an environment built from scratch (nothing leaks in from the
developer's shell), a free loopback port, and a log file the test can read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "hook-secret-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**settings: Any) -> dict[str, str]:
    # COVERAGE_PROCESS_CONFIG: set by bin/test's coverage, so these processes are measured too.
    passed_on = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "COVERAGE_PROCESS_CONFIG")
    env = {name: os.environ[name] for name in passed_on if name in os.environ}
    env.update({name: str(value) for name, value in settings.items() if value is not None})
    return env


def flask(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Process:
    """A child process with its output in a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.popen is not None
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, as a PaaS does on deploy; SIGKILL if it will not go."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)


class Service(Process):
    """caselink served by gunicorn with the project's gunicorn.conf.py."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        env = dict(env, PORT=str(self.port))
        super().__init__(name, [sys.executable, "-m", "gunicorn", "app:app"], env, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()

    def start(self, *, wait: bool = True, timeout: float = 30) -> Service:
        super().start()
        if wait:
            self.wait_until_up(timeout)
        return self

    def wait_until_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not come up in {timeout}s:\n{self.logs()}")

    def post(
        self,
        source: str,
        body: bytes | str,
        *,
        headers: dict[str, str] | None = None,
        token: str | None = WEBHOOK_SECRET,
        content_type: str = "application/json",
    ) -> requests.Response:
        all_headers = {"Content-Type": content_type}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        data = body.encode() if isinstance(body, str) else body
        return self.http.post(f"{self.url}/webhooks/{source}", data=data, headers=all_headers, timeout=10)

    def api(self, path: str, method: str = "GET") -> requests.Response:
        return self.http.request(
            method, self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )


class Worker(Process):
    """`flask --app app worker` as its own process."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, [sys.executable, "-m", "flask", "--app", "app", "worker"], env, log_dir)


def wait_for(condition: Any, timeout: float = 10, interval: float = 0.02, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
