"""Settings, read once from the environment and checked before anything starts.

This is the only module that reads `os.environ`. Everything else receives a
`Settings`; tests build one directly.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import urlsplit

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


class Secret:
    """A credential that never shows its value in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str | bytes | None) -> bool:
        """Compare in constant time; None never matches."""
        if candidate is None:
            return False
        if isinstance(candidate, str):
            candidate = candidate.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self._value.encode("utf-8"), candidate)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


@dataclass(frozen=True)
class Settings:
    """Everything caselink can be configured with. See the README's table."""

    dd_api_key: Secret | None = None
    dd_app_key: Secret | None = None
    dd_site: str = "datadoghq.com"
    dd_api_url: str = "https://api.datadoghq.com"
    dd_timeout: float = 10.0
    rules_file: Path = PROJECT_ROOT / "rules.yaml"
    database_url: str = f"sqlite:///{INSTANCE_PATH / 'caselink.db'}"
    webhook_secrets: Mapping[str, tuple[Secret, ...]] = field(default_factory=dict)
    admin_token: Secret | None = None
    dry_run_requested: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    signature_tolerance: float = 300.0
    grafana_signature_header: str = "X-Grafana-Alerting-Signature"
    grafana_timestamp_header: str = "X-Grafana-Alerting-Timestamp"
    in_process_worker: bool = True
    worker_concurrency: int = 4
    worker_poll_interval: float = 1.0
    delivery_lease: float = 60.0
    delivery_max_attempts: int = 40
    delivery_backoff_base: float = 1.0
    delivery_backoff_max: float = 300.0
    auth_probe_max: float = 300.0
    log_level: str = "INFO"
    log_format: str = "json"
    prometheus_multiproc_dir: str | None = None

    @property
    def dry_run(self) -> bool:
        """True when caselink must never call Datadog."""
        return self.dry_run_requested or self.dd_api_key is None

    @property
    def dry_run_reason(self) -> str | None:
        if self.dry_run_requested:
            return "DRY_RUN is set"
        if self.dd_api_key is None:
            return "DD_API_KEY and DD_APP_KEY are not set"
        return None

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
            dd_api_key=reader.secret("DD_API_KEY"),
            dd_app_key=reader.secret("DD_APP_KEY"),
            dd_site=reader.site(),
            dd_api_url=reader.api_url(),
            dd_timeout=reader.number("DD_TIMEOUT", 10.0, minimum=0.1),
            rules_file=reader.path("RULES_FILE", "rules.yaml"),
            database_url=reader.database_url(),
            webhook_secrets=reader.webhook_secrets(),
            admin_token=reader.secret("ADMIN_TOKEN"),
            dry_run_requested=reader.flag("DRY_RUN", False),
            max_body_bytes=int(reader.number("MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)),
            signature_tolerance=reader.number("WEBHOOK_TOLERANCE", 300.0, minimum=1),
            grafana_signature_header=env.get("GRAFANA_SIGNATURE_HEADER", "X-Grafana-Alerting-Signature"),
            grafana_timestamp_header=env.get("GRAFANA_TIMESTAMP_HEADER", "X-Grafana-Alerting-Timestamp"),
            in_process_worker=reader.flag("IN_PROCESS_WORKER", True),
            worker_concurrency=int(reader.number("WORKER_CONCURRENCY", 4, minimum=1)),
            worker_poll_interval=reader.number("WORKER_POLL_INTERVAL", 1.0, minimum=0.01),
            delivery_lease=reader.number("DELIVERY_LEASE", 60.0, minimum=1),
            delivery_max_attempts=int(reader.number("DELIVERY_MAX_ATTEMPTS", 40, minimum=1)),
            delivery_backoff_base=reader.number("DELIVERY_BACKOFF_BASE", 1.0, minimum=0.01),
            delivery_backoff_max=reader.number("DELIVERY_BACKOFF_MAX", 300.0, minimum=0.01),
            auth_probe_max=reader.number("AUTH_PROBE_MAX", 300.0, minimum=0.1),
            log_level=reader.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=reader.choice("LOG_FORMAT", "json", ("json", "text")),
            # Set by gunicorn.conf.py so every worker process adds to the same metrics.
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
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
            self.problems.append(f"{name}={value!r} is not a number")
            return default
        if number < minimum:
            self.problems.append(f"{name}={value!r} must be at least {minimum:g}")
            return default
        return number

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
        if site.startswith(("https://", "http://", "api.", "app.")):
            self.problems.append(
                f"DD_SITE={site!r} should be a bare site such as datadoghq.eu "
                "(no scheme, no api./app. prefix); use DD_API_URL for a full URL"
            )
            return "datadoghq.com"
        if site not in DATADOG_SITES:
            self.problems.append(f"DD_SITE={site!r} is not a Datadog site; use one of {', '.join(DATADOG_SITES)}")
            return "datadoghq.com"
        return site

    def api_url(self) -> str:
        url = self._get("DD_API_URL")
        if url is None:
            return f"https://api.{self.site_quiet()}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problems.append("DD_API_URL must be an http:// or https:// URL with a host")
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
        if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
            return f"postgresql+psycopg://{rest}"
        if scheme == "sqlite":
            return url
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
