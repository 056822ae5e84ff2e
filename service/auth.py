"""Who is calling: API keys and subject tokens become a :class:`Principal`; the credential alone decides the
tenant, role and (for subject tokens) the one subject a request may touch.

- no or bad credential: 401; valid credential without the role or scope: 403;
- anything outside the credential's tenant, or another subject than a token's: 404 (see :func:`subject_for`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from memory_store.credentials import KEY_SCHEME, ApiKeyStore
from service.errors import InvalidInput, NotFound, RateLimited, Unauthorized
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.tokens import SCOPES, InvalidToken, TokenSigner

log = logging.getLogger("sealmem.auth")
SUBJECT_TOKEN_ROLE = "subject"  # noqa: S105 (a role name, not a secret)
_KEY_SCOPES = {"admin": frozenset(SCOPES), "app": frozenset(SCOPES), "reader": frozenset({"read"})}


@dataclass(frozen=True, kw_only=True)
class Principal:
    """An authenticated caller. For a subject token, ``key_id`` is the key that minted it."""

    tenant_id: str
    role: str  # "admin", "app", "reader", or "subject" for a subject token
    key_id: str
    scopes: frozenset[str]
    subject: str | None = None
    token_id: str | None = None

    @property
    def is_subject_token(self) -> bool:
        return self.role == SUBJECT_TOKEN_ROLE

    @property
    def rate_key(self) -> str:
        # Tokens of one subject share a bucket, so minting new tokens does not reset a limit.
        return f"{self.key_id}/{self.subject}" if self.is_subject_token else self.key_id

    def allows(self, *, roles: frozenset[str], scopes: frozenset[str]) -> bool:
        """Keys are judged by role, subject tokens by holding any of ``scopes`` (none: no token may do this)."""
        if self.is_subject_token:
            return bool(self.scopes & scopes)
        return self.role in roles


class Authenticator:
    def __init__(self, *, keys: ApiKeyStore, signer: TokenSigner, limiter: RateLimiter, metrics: Metrics):
        self._keys = keys
        self._signer = signer
        self._limiter = limiter
        self._metrics = metrics

    def authenticate(self, credential: str) -> Principal:
        """Resolve a bearer credential (API key or subject token); raises :class:`Unauthorized` (401) or
        :class:`RateLimited` (429)."""
        principal = self._from_key(credential) if credential.startswith(KEY_SCHEME) else self._from_token(credential)
        retry_after = self._limiter.acquire(principal.rate_key)
        if retry_after is not None:
            self._metrics.rate_limited.inc()
            raise RateLimited(
                "rate limit exceeded for this credential",
                headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
            )
        return principal

    def _reject(self, reason: str) -> Unauthorized:
        self._metrics.auth_failures.labels(reason=reason).inc()
        return Unauthorized()

    def _from_key(self, secret: str) -> Principal:
        info = self._keys.authenticate(secret)
        if info is None:
            raise self._reject("unknown_key")
        return Principal(tenant_id=info.tenant_id, role=info.role, key_id=info.id, scopes=_KEY_SCOPES[info.role])

    def _from_token(self, token: str) -> Principal:
        try:
            claims = self._signer.verify(token)
        except InvalidToken as exc:
            raise self._reject(f"token_{exc.reason}") from None
        if not self._keys.is_active(tenant_id=claims.tenant_id, key_id=claims.key_id):
            raise self._reject("token_key_revoked")
        return Principal(
            tenant_id=claims.tenant_id,
            role=SUBJECT_TOKEN_ROLE,
            key_id=claims.key_id,
            scopes=claims.scopes,
            subject=claims.subject,
            token_id=claims.token_id,
        )


def subject_for(principal: Principal, requested: str | None) -> str:
    """The subject a request acts on. A subject token acts on its own subject only: asking for another one
    is answered exactly like a subject that does not exist (404). An API key must name the subject."""
    if principal.is_subject_token:
        assert principal.subject is not None
        if requested is not None and requested != principal.subject:
            raise NotFound("subject not found")
        return principal.subject
    if requested is None:
        raise InvalidInput("subject: required when calling with an API key")
    return requested
