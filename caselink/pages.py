"""The status page: server-rendered pages at `/` for operators.

Overview, events (each with its explain record), links (with Retry for dead
letters) and rules. Pages read through the store's read functions; the only
writes are the Retry buttons, POSTs that carry a CSRF token (Flask-WTF).
Every page needs a session signed in with ADMIN_TOKEN; without ADMIN_TOKEN the
pages are closed. Jinja escapes everything rendered: titles and payloads come
from senders.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask_wtf.csrf import CSRFError
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from caselink import logs
from caselink.config import Secret
from caselink.config import Settings
from caselink.errors import BadRequestError
from caselink.errors import CaselinkError
from caselink.errors import ConflictError
from caselink.rules import RefSpec
from caselink.rules import Rule
from caselink.schema import LINK_STATES
from caselink.service import RULE_STATS_WINDOW
from caselink.service import RuleReports
from caselink.service import Service
from caselink.store import EVENT_OUTCOMES
from caselink.store import EVENT_SEARCH_WINDOW
from caselink.store import RuleStats
from caselink.worker import CREDENTIALS_STATE

pages = Blueprint(
    "pages", __name__, template_folder="templates", static_folder="static", static_url_path="/assets/pages"
)
csrf = CSRFProtect()
log = logs.get("pages")

SESSION_LIFETIME = timedelta(hours=12)
# service_state row: when the status page was last signed out of (Unix seconds).
SIGNED_OUT_STATE = "pages_signed_out_at"
PAGE_SIZE = 50
OUTCOME_LABELS = {
    "linked": "linked",
    "not-linked": "not linked",
    "deferred": "waiting for its evaluation",
    "unrecognised": "unrecognised",
    "rejected": "rejected (unreadable body)",
    "duplicate-conflict": "duplicate conflict",
}
RULE_OUTCOME_LABELS = {
    "matched": "matched",
    "not_matched": "not matched",
    "not_applicable": "not applicable",
    "disabled": "disabled",
    "skipped": "skipped",
    "deferred": "not evaluated yet",
}
NO_FIGURE = "—"
# Characters of sender text (titles, ids, errors) a list or table shows per cell.
LIST_TEXT_LIMIT = 200
# Why the key is derived, not ADMIN_TOKEN itself: the cookie signature must never be the token.
_KEY_LABEL = b"caselink status page: session signing key"
_SIGN_IN_LABEL = b"caselink status page: signed in"


def init_app(app: Flask, settings: Settings) -> None:
    """Sessions, CSRF protection and the pages blueprint."""
    app.secret_key = session_key(settings)
    app.config.update(
        # Only the pages' forms are checked; /api/* authenticates every request with the bearer token.
        WTF_CSRF_CHECK_DEFAULT=False,
        # A token lives as long as the session: a page left open for an hour still retries.
        WTF_CSRF_TIME_LIMIT=None,
        SESSION_COOKIE_NAME="caselink_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    csrf.init_app(app)
    app.register_blueprint(pages)
    app.add_template_filter(_moment, "moment")
    app.add_template_filter(shorten, "shorten")


def session_key(settings: Settings) -> str | None:
    """SECRET_KEY if set, else a key derived from ADMIN_TOKEN (so every process agrees on it,
    and changing the token signs everyone out); None when the pages are closed."""
    if settings.secret_key is not None:
        return settings.secret_key.reveal()
    if settings.admin_token is None:
        return None
    return hmac.new(_token_bytes(settings.admin_token), _KEY_LABEL, hashlib.sha256).hexdigest()


def _token_bytes(token: Secret) -> bytes:
    return token.reveal().encode("utf-8", "surrogateescape")


def _sign_in_mark(token: Secret) -> str:
    """What a signed-in session holds: tied to the token, so a new ADMIN_TOKEN signs everyone out
    even when SECRET_KEY stays the same."""
    return hmac.new(_token_bytes(token), _SIGN_IN_LABEL, hashlib.sha256).hexdigest()


def service() -> Service:
    svc: Service = current_app.extensions["caselink"]
    return svc


# -- access -----------------------------------------------------------------------


@pages.before_request
def _signed_in_only() -> Any:
    if request.endpoint == "pages.static":
        return None
    token = service().settings.admin_token
    if token is None or not current_app.secret_key:
        return render_template("pages/closed.html"), 403
    if request.method == "POST":
        csrf.protect()
    if request.endpoint == "pages.login":
        return None
    held = str(session.get("signed_in", "")).encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(held, _sign_in_mark(token).encode()) or _signed_out_since(session.get("since")):
        session.clear()
        return redirect(url_for("pages.login", next=_here()))
    return None


def _signed_out_since(issued: Any) -> bool:
    """Whether someone signed out after this session was issued (at `issued`, Unix seconds).
    The cookie is the whole session, so sign-out is recorded in the store: a copy of the
    cookie taken before it is refused by every process."""
    if not isinstance(issued, (int, float)):
        return True
    signed_out = service().store.get_state(SIGNED_OUT_STATE)
    return signed_out is not None and issued <= float(signed_out)


@pages.after_request
def _headers(response: Response) -> Response:
    # No framing (a Retry button under someone else's page), no script or style from elsewhere,
    # and no copy of a payload left in a shared cache.
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "pages.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@pages.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = _local(request.values.get("next")) or url_for("pages.overview")
    if request.method == "GET":
        return render_template("pages/login.html", next=target)
    token = service().settings.admin_token
    assert token is not None  # the pages are closed without it
    if not token.matches(request.form.get("token", "")):
        log.warning("status page sign-in refused", extra={"fields": {"remote": request.remote_addr}})
        return render_template("pages/login.html", next=target, refused=True), 401
    session.clear()
    session.permanent = True
    session["signed_in"] = _sign_in_mark(token)
    session["since"] = time.time()
    log.info("status page sign-in", extra={"fields": {"remote": request.remote_addr}})
    return redirect(target)


@pages.post("/logout")
def logout() -> Response:
    # One ADMIN_TOKEN, one operator: signing out ends every session issued until now.
    service().store.set_state(SIGNED_OUT_STATE, repr(time.time()))
    session.clear()
    return redirect(url_for("pages.login"))


def _here() -> str:
    return request.full_path.rstrip("?")


# What browsers drop from a URL before reading it (WHATWG URL parsing): tab, LF and CR anywhere,
# C0 controls and space at either end. `/\t/evil.com` is `//evil.com` to a browser.
_URL_DROPPED = str.maketrans("", "", "\t\n\r")
_URL_TRIMMED = "".join(map(chr, range(0x21)))


def _local(target: str | None) -> str | None:
    """`target` if a browser reads it as a path on this site (one "/" not followed by "/" or
    "\\", after the browser's own clean-up), so that no redirect ever leaves the site; else None."""
    if not target:
        return None
    seen = target.translate(_URL_DROPPED).strip(_URL_TRIMMED)
    if not seen.startswith("/") or seen[1:2] in ("/", "\\") or "\\" in seen:
        return None
    return seen


# -- overview ---------------------------------------------------------------------


@pages.get("/")
def overview() -> str:
    svc = service()
    settings = svc.settings
    store = svc.store
    ruleset = svc.rules.current()
    newest_id, newest_at = store.event_bounds()
    return render_template(
        "pages/overview.html",
        mode=_mode(settings),
        credentials=_credentials(svc),
        database=store.describe(),
        ruleset=ruleset,
        enabled=sum(1 for rule in ruleset.rules if rule.enabled) if ruleset else 0,
        loaded_at=svc.rules.loaded_at,
        rules_error=svc.rules.error.problems if svc.rules.error else [],
        rules_path=str(svc.rules.path),
        counts=store.count_links(),
        budgets=store.rate_budgets(),
        errors=store.delivery_errors(10),
        newest_id=newest_id,
        newest_at=newest_at,
        next_due=store.next_due(),
        now=time.time(),
    )


def _mode(settings: Settings) -> dict[str, str]:
    if settings.dry_run:
        return {"name": "dry-run", "detail": f"{settings.dry_run_reason}; links are recorded, never sent"}
    return {"name": "live", "detail": f"links go to {settings.dd_api_display_url}"}


def _credentials(svc: Service) -> str:
    """The Datadog keys' state, never their values."""
    settings = svc.settings
    if settings.dd_api_key is None or settings.dd_app_key is None:
        return "not set"
    if settings.dry_run:
        return "set, not used (DRY_RUN is set)"
    rejected = svc.store.get_state(CREDENTIALS_STATE)
    if rejected:
        return f"{rejected}; delivery is paused until Datadog accepts them"
    return "set; Datadog has not rejected them"


# -- events -----------------------------------------------------------------------


@pages.get("/events")
def events() -> str:
    svc = service()
    filters = {
        "source": request.args.get("source", "").strip(),
        "kind": request.args.get("kind", "").strip(),
        "outcome": request.args.get("outcome", "").strip(),
        "q": request.args.get("q", "").strip(),
    }
    page = svc.store.page_events(
        limit=PAGE_SIZE,
        before=_whole_number("before"),
        source=filters["source"] or None,
        kind=filters["kind"] or None,
        outcome=filters["outcome"] or None,
        text=filters["q"] or None,
    )
    active = {name: value for name, value in filters.items() if value}
    return render_template(
        "pages/events.html",
        page=page,
        filters=filters,
        active=active,
        sources=sorted(svc.handlers),
        outcomes=[(outcome, OUTCOME_LABELS[outcome]) for outcome in EVENT_OUTCOMES],
        first_page=not request.args.get("before"),
        window=EVENT_SEARCH_WINDOW,
    )


@pages.get("/events/<int:event_id>")
def event(event_id: int) -> str:
    record = service().store.get_event(event_id)
    states = {(link["rule"], link["parent"], link["relationship"], link["child"]): link for link in record["links"]}
    return render_template(
        "pages/event.html",
        event=record,
        labels=RULE_OUTCOME_LABELS,
        states=states,
        payload=json.dumps(record["payload"], indent=2, ensure_ascii=False),
        tags=json.dumps(record["tags"], ensure_ascii=False) if record["tags"] else "",
    )


# -- links ------------------------------------------------------------------------


@pages.get("/links")
def links() -> str:
    store = service().store
    state = request.args.get("state") or None
    page = store.page_links(state=state, limit=PAGE_SIZE, after=request.args.get("after") or None)
    return render_template(
        "pages/links.html",
        page=page,
        state=state,
        states=LINK_STATES,
        counts=store.count_links(),
        here=_here(),
    )


@pages.post("/links/<int:link_id>/retry")
def retry_link(link_id: int) -> Response:
    # The same rules as the API and `links retry`: a dry-run link is not sent while in dry-run.
    back = _local(request.form.get("next")) or url_for("pages.links", state="pending")
    try:
        link = service().retry_link(link_id)
    except ConflictError as exc:
        flash(exc.message, "refused")
        return redirect(back)
    log.info("dead letter retried from the status page", extra={"fields": {"link": link_id}})
    flash(f"Link #{link_id} ({link['parent']} {link['relationship']} {link['child']}) is pending again.")
    return redirect(back)


@pages.post("/links/retry-dead")
def retry_dead() -> Response:
    back = _local(request.form.get("next")) or url_for("pages.links", state="pending")
    try:
        count = service().retry_dead()
    except ConflictError as exc:
        flash(exc.message, "refused")
        return redirect(back)
    log.info("every dead letter retried from the status page", extra={"fields": {"links": count}})
    flash(f"{count} dead link(s) are pending again." if count else "There were no dead links to retry.")
    return redirect(back)


# -- rules ------------------------------------------------------------------------


@pages.get("/rules")
def rules() -> str:
    svc = service()
    ruleset = svc.rules.current()
    reports = rule_statistics_source(svc)
    window = f"{RULE_STATS_WINDOW.days}d"
    return render_template(
        "pages/rules.html",
        ruleset=ruleset,
        rules_error=svc.rules.error.problems if svc.rules.error else [],
        window=window,
        retired=reports.retired if reports else [],
        rows=[
            {
                "rule": report.rule,
                "on": _on_summary(report.rule),
                "when": report.rule.when.describe() if report.rule.when is not None else "always",
                "link": _link_summary(report.rule),
                "examples": report.examples,
                "flags": report.flags(window),
                "stats": {
                    "all time": rule_statistics(report.all_time),
                    f"last {window}": rule_statistics(report.window),
                },
            }
            for report in (reports.rules if reports else ())
        ],
    )


def rule_statistics_source(svc: Service) -> RuleReports | None:
    """The rules in force with their statistics from the store, all time and over the last
    RULE_STATS_WINDOW (as `rules stats` shows them), and their examples, run; None without rules."""
    ruleset = svc.rules.current()
    return svc.rule_reports(ruleset, RULE_STATS_WINDOW) if ruleset is not None else None


def rule_statistics(stats: RuleStats) -> dict[str, str]:
    """The cells of one rule's statistics over one period: hits (events matched), links planned,
    links delivered, last matched ("never" when it did not match in the period)."""
    last = stats.last_matched_at
    return {
        "hits": str(stats.matched),
        "links_planned": str(stats.links_planned),
        "links_delivered": str(stats.links_delivered),
        "last_matched": last.strftime("%Y-%m-%d %H:%M:%S UTC") if last is not None else "never",
    }


def _on_summary(rule: Rule) -> str:
    parts = []
    if rule.sources is not None:
        parts.append("source " + " or ".join(rule.sources))
    if rule.kinds is not None:
        parts.append("kind " + " or ".join(rule.kinds))
    return ", ".join(parts) or "every event"


def _link_summary(rule: Rule) -> str:
    return f"{_ref_summary(rule.link.parent)} {rule.link.relationship} {_ref_summary(rule.link.child)}"


def _ref_summary(ref: RefSpec) -> str:
    if ref.is_event:
        return "the event's entity"
    if ref.template_text is not None:
        return f"{ref.type}:{ref.template_text}"
    fields = ", ".join(path.text for path in ref.fields)
    pattern = ref.pattern.pattern if ref.pattern is not None else ""
    return f"{ref.type} found by /{pattern}/ in {fields}"


# -- helpers ------------------------------------------------------------------------


def _whole_number(name: str) -> int | None:
    raw = request.args.get(name)
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequestError(f"{name} must be a positive whole number")
    return int(raw)


def shorten(text: str | None, limit: int = LIST_TEXT_LIMIT) -> str:
    """`text` cut to `limit` characters with "…" for lists and tables, so that one huge title
    cannot make a page huge; the event's own page shows it all. None is ""."""
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _moment(value: float | str | None) -> str:
    """Unix seconds, or the store's ISO 8601 text, as `2026-12-04 20:45:01 UTC`."""
    if value is None or value == "":
        return NO_FIGURE
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    return value.replace("T", " ").split(".")[0].rstrip("Z") + " UTC"


@pages.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> tuple[str, int]:
    message = f"The form could not be checked ({exc.description}). Reload the page and try again."
    return render_template("pages/error.html", status=400, message=message), 400


@pages.errorhandler(CaselinkError)
def _caselink_error(exc: CaselinkError) -> tuple[str, int]:
    return render_template("pages/error.html", status=exc.status_code, message=exc.message), exc.status_code


@pages.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    code = exc.code or 500
    return render_template("pages/error.html", status=code, message=exc.description or exc.name), code


@pages.errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[str, int]:
    log.exception("unhandled error", extra={"fields": {"path": request.path}})
    return render_template(
        "pages/error.html", status=500, message="caselink failed to show this page; see its logs"
    ), 500
