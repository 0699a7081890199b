"""caselink's WSGI application: `create_app()` builds it, gunicorn serves `app:app`."""

from __future__ import annotations

from flask import Flask

from caselink import cli
from caselink import logs
from caselink import metrics
from caselink import pages
from caselink import web
from caselink.config import INSTANCE_PATH
from caselink.config import Settings
from caselink.datadog import DatadogClient
from caselink.errors import ConfigError
from caselink.errors import RulesError
from caselink.ratelimit import RateLimiter
from caselink.rules import LiveRules
from caselink.rules import RuleSet
from caselink.service import Service
from caselink.store import Store
from handlers import REGISTRY

log = logs.get("app")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; raise ConfigError naming every bad setting. Touches no database."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    app = Flask(__name__, instance_path=str(INSTANCE_PATH))
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    rules = LiveRules(
        settings.rules_file,
        sources=tuple(REGISTRY),
        on_reload=_report_reload,
        on_check=lambda in_force: metrics.RULES_FILE_IN_FORCE.set(1 if in_force else 0),
        background=True,
    )
    metrics.RULES_LOADED.set(0 if rules.error else 1)
    # From the start, not only from the first check a few seconds in.
    metrics.RULES_FILE_IN_FORCE.set(1 if rules.file_in_force() else 0)
    store = Store(settings.database_url)
    client = None
    if not settings.dry_run:
        # Every delivery process counts its requests in the store, against one Datadog budget.
        client = DatadogClient.from_settings(settings, limiter=RateLimiter(shared=store))
    app.extensions["caselink"] = Service(settings=settings, store=store, rules=rules, handlers=REGISTRY, client=client)
    # Webhooks are answered before Flask routes anything (web.WebhookEndpoint says why).
    # Wrapping wsgi_app is Flask's documented way to add middleware; mypy sees a method.
    app.wsgi_app = web.WebhookEndpoint(app)  # type: ignore[method-assign]
    app.register_blueprint(web.bp)
    app.register_blueprint(web.api)
    pages.init_app(app, settings)
    web.register_error_handlers(app)
    cli.register(app)
    return app


def _report_reload(ruleset: RuleSet | None, error: RulesError | None) -> None:
    """The rules file changed while running: say what is in force now."""
    if ruleset is not None:
        metrics.RULES_LOADED.set(1)
        log.info(
            "rules reloaded",
            extra={"fields": {"file": ruleset.path, "rules": len(ruleset.rules), "sha256": ruleset.digest[:12]}},
        )
    elif error is not None:
        metrics.RULES_LOADED.set(0)
        log.error("the rules file has errors; the rules in force stay", extra={"fields": {"problems": error.problems}})


try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"caselink: {exc.message}") from None
