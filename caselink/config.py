"""Settings, read once from the environment and checked before anything starts.

This is the only module that reads `os.environ`. Everything else receives a
`Settings`; tests build one directly.
"""

from __future__ import annotations

import hmac
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import overload
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from caselink.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_PATH = PROJECT_ROOT / "instance"

DATADOG_SITES = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SECRET_SUFFIX = "_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration written as a number and a unit: `90s`, `30m`, `24h`, `30d`.

    Raises ValueError with what to write instead. One parser for every duration
    caselink reads (EVENT_RETENTION, `--since`), so they all take the same forms.
    """
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use a number and a unit: 90s, 30m, 24h, 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Secret:
    """A credential that never shows its value in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that must send it (a header, an HMAC key)."""
        return self._value

    def matches(self, candidate: str | bytes | None) -> bool:
        """Compare in constant time; None never matches."""
        if candidate is None:
            return False
        if isinstance(candidate, str):
            candidate = _bytes(candidate)
        return hmac.compare_digest(_bytes(self._value), candidate)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __eq__(self, other: object) -> bool:
        # Bytes, not str: compare_digest refuses str that is not ASCII.
        return isinstance(other, Secret) and hmac.compare_digest(_bytes(self._value), _bytes(other._value))

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


def _bytes(text: str) -> bytes:
    # surrogateescape: os.environ holds undecodable bytes as lone surrogates.
    return text.encode("utf-8", "surrogateescape")


def display_url(url: str) -> str:
    """`url` without user:password, query or fragment, fit for logs and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# Query parameters that carry credentials (libpq's `password`, `sslpassword`, tokens, keys).
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def masked_url(url: str) -> str:
    """`url` with the userinfo password and every secret-named query value shown as `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = urlencode(
        [
            (name, "***" if _SECRET_PARAMETER.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    # Built by hand: urlunsplit would turn sqlite:///path into sqlite:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _database_url_problem(url: str) -> str | None:
    """Why a postgres DATABASE_URL cannot be used (never quoting it), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "DATABASE_URL has a port that is not a number from 1 to 65535"
    if not parts.hostname and "host=" not in parts.query:
        return "DATABASE_URL names no host (postgres://user:password@host:5432/name)"
    if port == 0:
        return "DATABASE_URL has a port that is not a number from 1 to 65535"
    return None


def _rooted_sqlite(url: str) -> str:
    """`sqlite:///rel.db` (a relative path) as the file under the project root, whatever the
    directory caselink was started from, so that bin/serve, bin/caselink and gunicorn all open
    the same file; absolute paths and `:memory:` stay as they are."""
    scheme, sep, rest = url.partition(":///")
    path, mark, query = rest.partition("?")
    if not sep or not path or path.startswith("/") or path.startswith(":memory:"):
        return url
    return f"{scheme}:///{PROJECT_ROOT / path}{mark}{query}"


@dataclass(frozen=True)
class Settings:
    """Everything caselink can be configured with. See the table in docs/configuration.md."""

    dd_api_key: Secret | None = None
    dd_app_key: Secret | None = None
    dd_site: str = "datadoghq.com"
    dd_api_url: str = "https://api.datadoghq.com"
    dd_timeout: float = 10.0
    dd_failed_calls_per_second: int = 10
    dd_link_list_window: float = 3.0
    dd_link_list_interval: float = 0.25
    rules_file: Path = PROJECT_ROOT / "rules.yaml"
    database_url: str = f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"
    webhook_secrets: Mapping[str, tuple[Secret, ...]] = field(default_factory=dict)
    admin_token: Secret | None = None
    secret_key: Secret | None = None
    dry_run_requested: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    signature_tolerance: float = 300.0
    grafana_signature_header: str = "X-Grafana-Alerting-Signature"
    grafana_timestamp_header: str = "X-Grafana-Alerting-Timestamp"
    in_process_worker: bool = True
    worker_concurrency: int = 4
    worker_poll_interval: float = 0.25
    delivery_lease: float = 60.0
    delivery_max_attempts: int = 40
    delivery_backoff_base: float = 1.0
    delivery_backoff_max: float = 300.0
    auth_probe_max: float = 300.0
    log_level: str = "INFO"
    log_format: str = "json"
    prometheus_multiproc_dir: str | None = None
    port: int = 8000
    web_concurrency: int = 2
    event_retention: float = 30 * 86400.0

    @property
    def dry_run(self) -> bool:
        """True when caselink must never call Datadog."""
        return self.dry_run_requested or self.dd_api_key is None or self.dd_app_key is None

    @property
    def dry_run_reason(self) -> str | None:
        """Why caselink runs in dry-run, for the start-up notes and /readyz; None when live."""
        if self.dry_run_requested:
            return "DRY_RUN is set"
        if self.dd_api_key is None or self.dd_app_key is None:
            return "DD_API_KEY and DD_APP_KEY are not set"
        return None

    @property
    def dd_api_display_url(self) -> str:
        """The Datadog base URL without any user:password DD_API_URL may carry."""
        return display_url(self.dd_api_url)

    @property
    def database_engine(self) -> str:
        return "postgresql" if self.database_url.startswith("postgresql") else "sqlite"

    def secrets_for(self, source: str) -> tuple[Secret, ...]:
        return self.webhook_secrets.get(source, ())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; raise ConfigError naming every bad value."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        settings = cls(
            dd_api_key=reader.header_secret("DD_API_KEY"),
            dd_app_key=reader.header_secret("DD_APP_KEY"),
            dd_site=reader.site(),
            dd_api_url=reader.api_url(),
            dd_timeout=reader.number("DD_TIMEOUT", 10.0, minimum=0.1),
            dd_failed_calls_per_second=reader.integer("DD_FAILED_CALLS_PER_SECOND", 10, minimum=1),
            dd_link_list_window=reader.number("DD_LINK_LIST_WINDOW", 3.0, minimum=0),
            dd_link_list_interval=reader.number("DD_LINK_LIST_INTERVAL", 0.25, minimum=0),
            rules_file=reader.path("RULES_FILE", "rules.yaml"),
            database_url=reader.database_url(),
            webhook_secrets=reader.webhook_secrets(),
            admin_token=reader.secret("ADMIN_TOKEN"),
            secret_key=reader.secret("SECRET_KEY"),
            dry_run_requested=reader.flag("DRY_RUN", False),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024),
            signature_tolerance=reader.number("WEBHOOK_TOLERANCE", 300.0, minimum=1),
            grafana_signature_header=reader.text("GRAFANA_SIGNATURE_HEADER", "X-Grafana-Alerting-Signature"),
            grafana_timestamp_header=reader.text("GRAFANA_TIMESTAMP_HEADER", "X-Grafana-Alerting-Timestamp"),
            in_process_worker=reader.flag("IN_PROCESS_WORKER", True),
            worker_concurrency=reader.integer("WORKER_CONCURRENCY", 4, minimum=1),
            worker_poll_interval=reader.number("WORKER_POLL_INTERVAL", 0.25, minimum=0.01),
            delivery_lease=reader.number("DELIVERY_LEASE", 60.0, minimum=1),
            delivery_max_attempts=reader.integer("DELIVERY_MAX_ATTEMPTS", 40, minimum=1),
            delivery_backoff_base=reader.number("DELIVERY_BACKOFF_BASE", 1.0, minimum=0.01),
            delivery_backoff_max=reader.number("DELIVERY_BACKOFF_MAX", 300.0, minimum=0.01),
            auth_probe_max=reader.number("AUTH_PROBE_MAX", 300.0, minimum=0.1),
            log_level=reader.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=reader.choice("LOG_FORMAT", "json", ("json", "text")),
            # Set by gunicorn.conf.py so every worker process adds to the same metrics.
            prometheus_multiproc_dir=reader.text("PROMETHEUS_MULTIPROC_DIR", None),
            # gunicorn.conf.py reads these two itself; checked here so a typo is reported, not a traceback.
            port=reader.integer("PORT", 8000, minimum=1, maximum=65535),
            web_concurrency=reader.integer("WEB_CONCURRENCY", 2, minimum=1),
            event_retention=reader.duration("EVENT_RETENTION", "30d", minimum=3600),
        )
        reader.check_pairs(settings)
        if reader.problems:
            raise ConfigError(
                "invalid configuration: " + "; ".join(reader.problems),
                problems=reader.problems,
            )
        return settings


class _Reader:
    """Reads and coerces variables, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def _get(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def secret(self, name: str) -> Secret | None:
        value = self._get(name)
        return Secret(value) if value else None

    def header_secret(self, name: str) -> Secret | None:
        """A secret sent as an HTTP header value, which cannot hold spaces or control characters."""
        secret = self.secret(name)
        if secret is not None and any(char.isspace() or not char.isprintable() for char in secret.reveal()):
            # Named, never quoted: the value is a credential.
            self.problems.append(f"{name} contains spaces or control characters; copy the key again")
        return secret

    @overload
    def text(self, name: str, default: str) -> str: ...
    @overload
    def text(self, name: str, default: None) -> str | None: ...
    def text(self, name: str, default: str | None) -> str | None:
        return self._get(name) or default

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (use true or false)")
        return default

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.problems.append(f"{name}={value!r} is not a number")
            return default
        if number < minimum:
            self.problems.append(f"{name}={value!r} must be at least {minimum:g}")
            return default
        return number

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not a whole number")
            return default
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.problems.append(f"{name}={value!r} must be {bounds}")
            return default
        return number

    def duration(self, name: str, default: str, *, minimum: float) -> float:
        value = self._get(name) or default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return parse_duration(default)
        if seconds < minimum:
            self.problems.append(f"{name}={value!r} must be at least {minimum:g} seconds")
            return parse_duration(default)
        return seconds

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name)
        if value is None:
            return default
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        self.problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
        return default

    def path(self, name: str, default: str) -> Path:
        path = Path(self._get(name) or default)
        return path if path.is_absolute() else (Path.cwd() / path)

    def site(self) -> str:
        site = (self._get("DD_SITE") or "datadoghq.com").lower()
        if site in DATADOG_SITES:
            return site
        hint = ""
        if site.startswith(("https://", "http://", "api.", "app.")):
            hint = " (give the bare site, without scheme or api./app. prefix, or a full URL in DD_API_URL)"
        self.problems.append(f"DD_SITE={site!r} is not a Datadog site{hint}; use one of {', '.join(DATADOG_SITES)}")
        return "datadoghq.com"

    def api_url(self) -> str:
        url = self._get("DD_API_URL")
        if url is None:
            return f"https://api.{self.site_quiet()}"
        # The value is never quoted back: a proxy URL may carry a password.
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            self.problems.append("DD_API_URL has a port that is not a number")
            return "https://api.datadoghq.com"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problems.append("DD_API_URL must be an http:// or https:// URL with a host")
            return "https://api.datadoghq.com"
        if parts.query or parts.fragment:
            self.problems.append("DD_API_URL must be a base URL, without ?query or #fragment")
            return "https://api.datadoghq.com"
        return url.rstrip("/")

    def site_quiet(self) -> str:
        site = (self._get("DD_SITE") or "datadoghq.com").lower()
        return site if site in DATADOG_SITES else "datadoghq.com"

    def database_url(self) -> str:
        url = self._get("DATABASE_URL")
        if url is None:
            return f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"
        scheme, sep, rest = url.partition("://")
        if not sep:
            self.problems.append("DATABASE_URL must look like postgres://… or sqlite:///path")
            return f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"
        scheme = scheme.lower()
        if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
            # psycopg (3) is the driver caselink ships; PaaS add-ons say postgres://.
            problem = _database_url_problem(url)
            if problem:
                self.problems.append(problem)
                return f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"
            return f"postgresql+psycopg://{rest}"
        if scheme == "sqlite":
            return _rooted_sqlite(url)
        self.problems.append(
            f"DATABASE_URL uses {scheme!r}; caselink supports postgres://, postgresql:// and sqlite:///"
        )
        return f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"

    def webhook_secrets(self) -> dict[str, tuple[Secret, ...]]:
        secrets: dict[str, tuple[Secret, ...]] = {}
        for name in self.env:
            if not name.endswith(_SECRET_SUFFIX) or name == _SECRET_SUFFIX:
                continue
            source = name[: -len(_SECRET_SUFFIX)].lower()
            values = [part.strip() for part in (self._get(name) or "").split(",")]
            values = [part for part in values if part]
            if values:
                secrets[source] = tuple(Secret(value) for value in values)
        return secrets

    def check_pairs(self, settings: Settings) -> None:
        if (settings.dd_api_key is None) != (settings.dd_app_key is None):
            present, missing = ("DD_API_KEY", "DD_APP_KEY") if settings.dd_api_key else ("DD_APP_KEY", "DD_API_KEY")
            self.problems.append(
                f"{present} is set but {missing} is not; set both to call Datadog, or neither to run in dry-run"
            )
        if settings.delivery_backoff_base > settings.delivery_backoff_max:
            self.problems.append("DELIVERY_BACKOFF_BASE must not exceed DELIVERY_BACKOFF_MAX")
        if settings.delivery_lease <= settings.dd_timeout * 2:
            self.problems.append(
                "DELIVERY_LEASE must be longer than twice DD_TIMEOUT, so a lease never "
                "expires while its delivery is still waiting on Datadog"
            )
