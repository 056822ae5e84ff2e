"""Subject tokens: short-lived HS256 JWTs (PyJWT) bound to one tenant, one subject and a set of scopes.

A token carries the id of the API key that minted it (``kid``); revoking that key invalidates its tokens.
Decoding pins the algorithm, issuer and audience and requires every claim.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import jwt

from memory_store.models import utcnow
from service.errors import Unauthorized

Scope = Literal["read", "write", "chat"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ALGORITHM = "HS256"
ISSUER = "sealmem"
AUDIENCE = "sealmem-api"
_REQUIRED = ["exp", "iat", "jti", "iss", "aud", "tenant", "subject", "scopes", "kid"]
_LEEWAY_SECONDS = 5


class InvalidToken(Unauthorized):
    """The token is not one this service issued and still honours (401); ``reason`` is for logs and metrics
    only, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class SubjectClaims:
    tenant_id: str
    subject: str
    scopes: frozenset[str]
    key_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime


class TokenSigner:
    def __init__(self, secret: str, *, max_ttl_seconds: int, now: Callable[[], datetime] = utcnow) -> None:
        self._secret = secret
        self._max_ttl = max_ttl_seconds
        self._now = now

    def __repr__(self) -> str:
        return "TokenSigner(<secret hidden>)"

    def mint(
        self, *, tenant_id: str, subject: str, scopes: Iterable[str], key_id: str, ttl_seconds: int
    ) -> tuple[str, SubjectClaims]:
        wanted = frozenset(scopes)
        if not wanted or not wanted <= set(SCOPES):
            raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")
        if not 1 <= ttl_seconds <= self._max_ttl:
            raise ValueError(f"ttl_seconds must be between 1 and {self._max_ttl}")
        issued = self._now().replace(microsecond=0)
        claims = SubjectClaims(
            tenant_id=tenant_id,
            subject=subject,
            scopes=wanted,
            key_id=key_id,
            token_id=uuid.uuid4().hex,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=ttl_seconds),
        )
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "jti": claims.token_id,
            "tenant": tenant_id,
            "subject": subject,
            "scopes": sorted(wanted),
            "kid": key_id,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), claims

    def verify(self, token: str) -> SubjectClaims:
        """Decode and check a token; raises :class:`InvalidToken`."""
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=_LEEWAY_SECONDS,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("bad_signature") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed") from exc
        tenant, subject, scopes, kid, jti = (payload.get(k) for k in ("tenant", "subject", "scopes", "kid", "jti"))
        iat, exp = payload.get("iat"), payload.get("exp")
        if not all(isinstance(v, str) and v for v in (tenant, subject, kid, jti)):
            raise InvalidToken("malformed")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
            raise InvalidToken("malformed")
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > self._max_ttl:
            raise InvalidToken("ttl_exceeded")
        return SubjectClaims(
            tenant_id=str(tenant),
            subject=str(subject),
            scopes=frozenset(scopes),
            key_id=str(kid),
            token_id=str(jti),
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
        )
