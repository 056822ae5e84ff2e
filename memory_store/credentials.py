"""Tenant API keys: random 256-bit secrets, stored only as a SHA-256 hash, found by a visible prefix.

SHA-256 (not a slow password hash) is enough because the keys are uniformly random and 256 bits long:
there is nothing to guess. Comparison is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol, get_args

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from memory_store import validation
from memory_store.access import ApiKey
from memory_store.audit import AuditEvent, append_in
from memory_store.errors import NotFoundError, ValidationError
from memory_store.models import Tenant, utcnow

Role = Literal["admin", "app", "reader"]
ROLES: tuple[Role, ...] = get_args(Role)
KEY_SCHEME = "smk_"
PREFIX_CHARS = len(KEY_SCHEME) + 8
_DUMMY_HASH = hashlib.sha256(b"sealmem-no-such-key").hexdigest()
# Built once and run on the session's connection, as columns: every request authenticates, and the ORM's
# execution and loading of an ApiKey object cost more CPU than the query.
_BY_PREFIX = select(
    ApiKey.id,
    ApiKey.tenant_id,
    ApiKey.prefix,
    ApiKey.key_hash,
    ApiKey.role,
    ApiKey.name,
    ApiKey.created_by,
    ApiKey.created_at,
    ApiKey.last_used_at,
    ApiKey.revoked_at,
).where(ApiKey.prefix == bindparam("prefix"))


@dataclass(frozen=True, kw_only=True)
class ApiKeyInfo:
    """Everything about a key except its secret."""

    id: str
    tenant_id: str
    prefix: str
    role: Role
    name: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, kw_only=True)
class IssuedKey:
    """A newly created key: ``secret`` is shown once and never stored."""

    info: ApiKeyInfo
    secret: str = field(repr=False)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _about(row: ApiKey) -> dict[str, str]:
    """What an audit record says about a key: its id and role, never its secret or hash."""
    return {"key_id": row.id, "role": row.role}


class _KeyRow(Protocol):
    """What a key's public view is built from: an ``ApiKey``, or a row of :data:`_BY_PREFIX`."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def created_by(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def last_used_at(self) -> datetime | None: ...
    @property
    def revoked_at(self) -> datetime | None: ...


def _info(row: _KeyRow) -> ApiKeyInfo:
    role = row.role if row.role in ROLES else "reader"  # an unknown stored role grants the least
    return ApiKeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        prefix=row.prefix,
        role=role,
        name=row.name,
        created_by=row.created_by,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class ApiKeyStore:
    """Create, authenticate, list and revoke API keys. ``last_used_at`` is refreshed at most once per
    ``touch_interval`` per key, so authentication does not write on every request."""

    def __init__(self, sessions: sessionmaker[Session], *, touch_interval: timedelta = timedelta(seconds=60)):
        self._sessions = sessions
        self._touch_interval = touch_interval

    def create(
        self, *, tenant_id: str, role: str, name: str, created_by: str, audit: AuditEvent | None = None
    ) -> IssuedKey:
        """A new key; ``audit`` is appended to the tenant's audit chain in the same transaction (with the key's
        id and role in its detail)."""
        if role not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}")
        validation.check_identifier(name, "key name")
        if len(name) > 128:
            raise ValidationError("key name must be at most 128 characters")
        for _ in range(5):
            secret = KEY_SCHEME + secrets.token_urlsafe(32)  # 32 random bytes = 256 bits
            row = ApiKey(
                id=str(uuid.uuid4()),
                tenant_id=tenant_id,
                prefix=secret[:PREFIX_CHARS],
                key_hash=_hash(secret),
                role=role,
                name=name,
                created_by=created_by[:64],
                created_at=utcnow(),
            )
            try:
                with self._sessions.begin() as session:
                    if session.get(Tenant, tenant_id) is None:
                        raise NotFoundError("tenant not found")
                    session.add(row)
                    if audit is not None:
                        session.flush()  # a prefix collision fails here, before the audit head is locked
                        append_in(session, tenant_id, replace(audit, detail={**audit.detail, **_about(row)}))
            except IntegrityError:  # a prefix collision (about 2^-48): draw another key
                continue
            return IssuedKey(info=_info(row), secret=secret)
        raise RuntimeError("could not draw a unique API key prefix")

    def authenticate(self, secret: str) -> ApiKeyInfo | None:
        """The active key matching ``secret``, or None. Unknown, malformed and revoked keys look alike."""
        prefix = secret[:PREFIX_CHARS]
        well_formed = secret.startswith(KEY_SCHEME) and len(secret) <= 128
        with self._sessions.begin() as session:
            row = session.connection().execute(_BY_PREFIX, {"prefix": prefix}).first() if well_formed else None
            stored = row.key_hash if row is not None else _DUMMY_HASH
            if not hmac.compare_digest(stored, _hash(secret)) or row is None or row.revoked_at is not None:
                return None
            info = _info(row)
        now = utcnow()
        if info.last_used_at is None or now - info.last_used_at >= self._touch_interval:
            with self._sessions.begin() as session:
                session.execute(update(ApiKey).where(ApiKey.id == info.id).values(last_used_at=now))
        return info

    def get(self, *, tenant_id: str, key_id: str) -> ApiKeyInfo:
        with self._sessions.begin() as session:
            row = session.get(ApiKey, key_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFoundError("API key not found")
            return _info(row)

    def is_active(self, *, tenant_id: str, key_id: str) -> bool:
        try:
            return self.get(tenant_id=tenant_id, key_id=key_id).active
        except NotFoundError:
            return False

    def list_keys(self, *, tenant_id: str) -> list[ApiKeyInfo]:
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
            )
            return [_info(row) for row in rows]

    def revoke(self, *, tenant_id: str, key_id: str, audit: AuditEvent | None = None) -> ApiKeyInfo:
        """Revoke a key (idempotent); requests and subject tokens made with it stop working at once, and so
        do delayed writes of earlier requests (see :class:`~memory_store.types.WriteGuard`). ``audit`` is
        appended in the same transaction."""
        with self._sessions.begin() as session:
            row = session.get(ApiKey, key_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFoundError("API key not found")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            if audit is not None:
                append_in(session, tenant_id, replace(audit, detail={**audit.detail, **_about(row)}))
            return _info(row)
