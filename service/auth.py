"""Who is calling: API keys and subject tokens become a :class:`Principal`; the credential alone decides the
tenant, role and (for subject tokens) the one subject a request may touch.

- no or bad credential: 401; valid credential without the role or scope: 403;
- a rate limit exhausted (see :class:`Authenticator`): 429 with ``Retry-After``;
- anything outside the credential's tenant, or another subject than a token's: 404 (see :func:`subject_for`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from dataclasses import dataclass

from memory_store.credentials import KEY_SCHEME, ApiKeyStore
from memory_store.errors import NotFoundError
from service.errors import InvalidInput, NotFound, RateLimited, Unauthorized
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.tokens import SCOPES, InvalidToken, TokenSigner

log = logging.getLogger("sealmem.auth")
SUBJECT_TOKEN_ROLE = "subject"  # noqa: S105 (a role name, not a secret)
_KEY_SCOPES = {"admin": frozenset(SCOPES), "app": frozenset(SCOPES), "reader": frozenset({"read"})}
# Keys are KEY_SCHEME + secrets.token_urlsafe(32): 43 characters of unpadded base64url. Anything else cannot
# be a key and is refused without a database lookup.
_WELL_FORMED_KEY = re.compile(re.escape(KEY_SCHEME) + r"[A-Za-z0-9_-]{43}")
UNKNOWN_CLIENT = "unknown"


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

    def allows(self, *, roles: frozenset[str], scopes: frozenset[str]) -> bool:
        """Keys are judged by role, subject tokens by holding any of ``scopes`` (none: no token may do this)."""
        if self.is_subject_token:
            return bool(self.scopes & scopes)
        return self.role in roles


def client_bucket(host: str | None) -> str:
    """The failure bucket of a client address: the address itself, for IPv6 its /64 network (one host
    usually holds a whole /64), ``unknown`` when the server does not know it."""
    if not host:
        return UNKNOWN_CLIENT
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Authenticator:
    """Resolves credentials and applies the rate limits (each per process; ``per_minute=0`` disables one):

    - ``token_limiter``: one bucket per subject of a tenant, shared by all tokens of that subject whichever
      key minted them; taken before the token's one database lookup (is its minting key still active?);
    - ``key_limiter``: one bucket per API key. A subject token's request also takes one from its minting
      key's bucket, so minting tokens for many subjects cannot multiply an app's budget;
    - ``failure_limiter``: one bucket per client address (:func:`client_bucket`), drained by each failed
      authentication that cost a database lookup (unknown key, token of a revoked key). While it is empty,
      requests from that address with an API key get 429 before any lookup. Credentials refused without a
      lookup (malformed key, bad or expired token) are not counted and still get 401: refusing them costs no
      more than a 429 would. Subject tokens with a valid signature are not held back: only this server can
      sign them, and their lookup is bounded by their subject's bucket.
    """

    def __init__(
        self,
        *,
        keys: ApiKeyStore,
        signer: TokenSigner,
        metrics: Metrics,
        token_limiter: RateLimiter,
        key_limiter: RateLimiter,
        failure_limiter: RateLimiter,
    ):
        self._keys = keys
        self._signer = signer
        self._metrics = metrics
        self._token_limiter = token_limiter
        self._key_limiter = key_limiter
        self._failure_limiter = failure_limiter

    def authenticate(self, credential: str, *, client: str | None) -> Principal:
        """Resolve a bearer credential (API key or subject token) presented from the address ``client``;
        raises :class:`Unauthorized` (401) or :class:`RateLimited` (429)."""
        if credential.startswith(KEY_SCHEME):
            return self._from_key(credential, client_bucket(client))
        return self._from_token(credential, client_bucket(client))

    def for_session(self, *, tenant_id: str, key_id: str) -> Principal:
        """The caller of a console session signed in with the API key ``key_id``: that key's principal while the
        key is active (looked up on every request, as a subject token's minting key is), else 401. Takes from the
        key's rate-limit bucket like a request with the key itself."""
        try:
            info = self._keys.get(tenant_id=tenant_id, key_id=key_id)
        except NotFoundError:
            raise self._reject("session_key_unknown") from None
        if not info.active:
            raise self._reject("session_key_revoked")
        self._check(self._key_limiter.acquire(info.id), "rate limit exceeded for this credential")
        return Principal(tenant_id=info.tenant_id, role=info.role, key_id=info.id, scopes=_KEY_SCOPES[info.role])

    def _from_key(self, secret: str, address: str) -> Principal:
        if not _WELL_FORMED_KEY.fullmatch(secret):
            raise self._reject("malformed_key")
        self._check(self._failure_limiter.wait(address), "too many failed authentications from this address")
        info = self._keys.authenticate(secret)
        if info is None:
            self._failure_limiter.acquire(address)
            raise self._reject("unknown_key")
        self._check(self._key_limiter.acquire(info.id), "rate limit exceeded for this credential")
        return Principal(tenant_id=info.tenant_id, role=info.role, key_id=info.id, scopes=_KEY_SCOPES[info.role])

    def _from_token(self, token: str, address: str) -> Principal:
        try:
            claims = self._signer.verify(token)
        except InvalidToken as exc:
            raise self._reject(f"token_{exc.reason}") from None
        self._acquire_for_token(subject_key=f"{claims.tenant_id}/{claims.subject}", key_id=claims.key_id)
        if not self._keys.is_active(tenant_id=claims.tenant_id, key_id=claims.key_id):
            self._failure_limiter.acquire(address)
            raise self._reject("token_key_revoked")
        return Principal(
            tenant_id=claims.tenant_id,
            role=SUBJECT_TOKEN_ROLE,
            key_id=claims.key_id,
            scopes=claims.scopes,
            subject=claims.subject,
            token_id=claims.token_id,
        )

    def _acquire_for_token(self, *, subject_key: str, key_id: str) -> None:
        """Take one from the subject's bucket and one from the minting key's, or from neither."""
        message = "rate limit exceeded for this credential"
        if self._key_limiter.enabled:
            pending = (self._token_limiter.wait(subject_key), self._key_limiter.wait(key_id))
            waits = [w for w in pending if w is not None]
            self._check(max(waits) if waits else None, message)
        self._check(self._token_limiter.acquire(subject_key), message)
        self._check(self._key_limiter.acquire(key_id), message)

    def _check(self, retry_after: float | None, message: str) -> None:
        if retry_after is not None:
            self._metrics.rate_limited.inc()
            raise RateLimited(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})

    def _reject(self, reason: str) -> Unauthorized:
        self._metrics.auth_failures.labels(reason=reason).inc()
        return Unauthorized()


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
