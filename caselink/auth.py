"""How handlers check who sent a webhook: shared tokens and HMAC signatures.

Every comparison is constant-time, every check runs on the raw body before it
is parsed, and a source without a secret is refused unless caselink runs in
dry-run (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from caselink.config import Secret
from caselink.errors import AuthenticationError
from caselink.events import WebhookRequest

# Ten digits today; a bound keeps int() cheap on whatever a stranger sends.
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class AuthPolicy:
    """What a handler needs to authenticate one request."""

    source: str
    secrets: tuple[Secret, ...]
    open_without_secret: bool
    tolerance: float = 300.0
    now: float = 0.0
    grafana_signature_header: str = "X-Grafana-Alerting-Signature"
    grafana_timestamp_header: str = "X-Grafana-Alerting-Timestamp"

    def required_secrets(self) -> tuple[Secret, ...]:
        """The secrets to check against; empty means the source runs open (dry-run only)."""
        if self.secrets:
            return self.secrets
        if self.open_without_secret:
            return ()
        env_name = f"{self.source.upper()}_WEBHOOK_SECRET"
        raise AuthenticationError(
            f"no secret is configured for source {self.source!r}; set {env_name}",
            reason="no_secret_configured",
        )


def presented_token(request: WebhookRequest) -> str | None:
    """The token a sender presents: Bearer, basic-auth password or X-Webhook-Token."""
    header: str = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    token: str | None = request.headers.get("X-Webhook-Token")
    return token.strip() if token else None


def check_token(request: WebhookRequest, policy: AuthPolicy) -> None:
    """Accept the request if it presents any configured token."""
    secrets = policy.required_secrets()
    if not secrets:
        return
    token = presented_token(request)
    if token is None:
        raise AuthenticationError(
            "no credentials: send the secret as a Bearer token, a basic-auth password or an X-Webhook-Token header",
            reason="missing_credentials",
        )
    # Check every secret so the time taken does not say which one came close.
    matched = [secret.matches(token) for secret in secrets]
    if not any(matched):
        raise AuthenticationError("the credentials do not match", reason="bad_credentials")


def hmac_sha256(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_timestamp(value: str | None, policy: AuthPolicy, header: str) -> str:
    """The signed timestamp as sent, if it is Unix seconds within ±tolerance of receipt.

    The text is returned unchanged because senders sign the header as they
    wrote it; the check stops a captured request from being replayed later.
    """
    raw = (value or "").strip()
    if not _UNIX_SECONDS.fullmatch(raw):
        raise AuthenticationError(f"{header} must be a Unix time in whole seconds", reason="bad_timestamp")
    skew = int(raw) - policy.now
    if abs(skew) > policy.tolerance:
        direction = "ahead of" if skew > 0 else "behind"
        raise AuthenticationError(
            f"{header} is {abs(skew):.0f}s {direction} the time of receipt; at most {policy.tolerance:.0f}s is "
            "allowed (a replayed request, or a clock that is wrong)",
            reason="stale_timestamp",
        )
    return raw


def require_signature(expected: list[bytes], presented: list[bytes], header: str) -> None:
    """Accept when one presented signature is one expected signature; else 401 saying which."""
    if not presented:
        raise AuthenticationError(f"no usable signature in {header}", reason="missing_signature")
    if not any_signature_matches(expected, presented):
        raise AuthenticationError(
            f"the {header} signature does not match the body and the configured secret", reason="bad_signature"
        )


def any_signature_matches(expected: list[bytes], presented: list[bytes]) -> bool:
    """True when one presented signature equals one expected signature, compared in constant time."""
    found = False
    for want in expected:
        for got in presented:
            found |= hmac.compare_digest(want, got)
    return found
