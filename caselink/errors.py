"""The exceptions caselink raises on purpose.

Each class knows the HTTP status it answers with and whether trying again can
help; `web` renders them as JSON and the worker decides retries from them.
Messages never contain a secret: callers pass names, not values.
"""

from __future__ import annotations

from typing import Any
from typing import ClassVar


class CaselinkError(Exception):
    """Root of every error caselink raises on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.detail)
        return {"error": error}


# Start-up and configuration.


class ConfigError(CaselinkError):
    """The environment holds a value caselink cannot run with."""

    code = "config_error"


class RulesError(CaselinkError):
    """A rules file failed validation; `problems` lists every finding."""

    code = "rules_error"

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the rules:\n" + "\n".join(problems))
        self.problems = problems


class SchemaError(CaselinkError):
    """The database schema is not the one this release knows."""

    status_code = 503
    code = "schema_mismatch"


# Answers to webhook senders and API callers.


class BadRequestError(CaselinkError):
    """The body could not be read as what the sender promised."""

    status_code = 400
    code = "bad_request"


class BrokenBodyError(BadRequestError):
    """The request's framing is broken (a chunk size that is not hex, a body cut short)."""


class AuthenticationError(CaselinkError):
    """Missing or wrong credentials, or no secret configured in live mode."""

    status_code = 401
    code = "unauthenticated"


class NotFoundError(CaselinkError):
    """No such source, event or link."""

    status_code = 404
    code = "not_found"


class ConflictError(CaselinkError):
    """The request is valid but the resource is not in a state that allows it."""

    status_code = 409
    code = "conflict"


class PayloadTooLargeError(CaselinkError):
    """The body is larger than MAX_BODY_BYTES."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(CaselinkError):
    """The content type is not one this source sends."""

    status_code = 415
    code = "unsupported_media_type"


class StoreUnavailableError(CaselinkError):
    """The database cannot be reached or written; senders should try again.

    `message` is what a sender and the unauthenticated /readyz see: never a
    host, port, database name or path. `operator` says which DATABASE_URL
    (password masked) and what the driver said, for logs and the command line.
    """

    status_code = 503
    code = "store_unavailable"
    retryable = True

    def __init__(self, message: str, *, operator: str | None = None, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.operator = operator or message


class NotReadyError(CaselinkError):
    """The service cannot take webhooks now (no valid rules loaded)."""

    status_code = 503
    code = "not_ready"
    retryable = True


# Calls to Datadog. The class is the retry policy.


class DatadogError(CaselinkError):
    """A call to the Datadog API did not succeed."""

    status_code = 502
    code = "datadog_error"

    def __init__(self, message: str, *, http_status: int | None = None, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.http_status = http_status


class DatadogUnavailableError(DatadogError):
    """Timeout, connection failure or 5xx: worth trying again later.

    `ambiguous` is true when the request may have reached Datadog, so a POST
    may have taken effect and must be checked before it is sent again.
    """

    code = "datadog_unavailable"
    retryable = True

    def __init__(self, message: str, *, ambiguous: bool, failure: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.ambiguous = ambiguous
        # For a request that got no answer, what happened to it: "timeout", "refused", "reset", …
        self.failure = failure


class DatadogRateLimitedError(DatadogError):
    """429: wait `retry_after` seconds, then try again."""

    code = "datadog_rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None, sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        # False when caselink held the request back itself because the budget was spent.
        self.sent = sent


class DatadogAuthError(DatadogError):
    """401/403: the keys are wrong or lack a permission; pause, do not dead-letter."""

    code = "datadog_credentials_rejected"
    retryable = True


class DatadogRejectedError(DatadogError):
    """Another 4xx: this request will never succeed as it is."""

    code = "datadog_rejected"
