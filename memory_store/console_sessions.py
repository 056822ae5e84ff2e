"""Server-side sessions of the admin console, in SQL so that every worker process (and replica) sees them.

The browser holds only an opaque random token (256 bits) in a cookie. The table stores a keyed digest of it
(HMAC under a key derived from the master key, :meth:`MasterKey.pseudonym`), never the token itself, nor the
API key it was exchanged for: only the key's id, so that a revoked key ends its sessions. A session ends when it
has been idle longer than the idle timeout, when its absolute lifetime is over, or on sign-out. Schema in
``migrations/versions/0007_console_sessions.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Index, String, delete, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from memory_store.models import Base, UTCDateTime, utcnow
from memory_store.retry import retry_read, retry_write

TOKEN_BYTES = 32
# Tokens are secrets.token_urlsafe(32): 43 characters; anything else is refused without a lookup.
TOKEN_CHARS = 43


class ConsoleSession(Base):
    """One signed-in console session. ``id`` is the keyed digest of the cookie's token."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_key_id", "key_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


@dataclass(frozen=True, kw_only=True)
class ConsoleSessionInfo:
    """A live session: whose it is (tenant, API key id) and its times. Never the token."""

    digest: str
    tenant_id: str
    key_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def _info(row: ConsoleSession) -> ConsoleSessionInfo:
    return ConsoleSessionInfo(
        digest=row.id,
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        expires_at=row.expires_at,
    )


class ConsoleSessionStore:
    """Create, resolve and end console sessions.

    ``digest`` turns a token into the stored keyed digest (the store passes ``MemoryStore.pseudonym``).
    ``idle`` is the idle timeout, ``lifetime`` the absolute one. ``last_seen_at`` is written at most once per
    ``touch_interval``, so reading pages does not write on every request.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        digest: Callable[[str], str],
        *,
        idle: timedelta,
        lifetime: timedelta,
        touch_interval: timedelta = timedelta(seconds=5),
    ) -> None:
        self._sessions = sessions
        self._digest = digest
        self.idle = idle
        self.lifetime = lifetime
        self._touch_interval = min(touch_interval, idle / 4)

    def digest(self, token: str) -> str:
        return self._digest(token)

    @retry_write
    def create(self, *, tenant_id: str, key_id: str) -> tuple[str, ConsoleSessionInfo]:
        """A new session for the API key ``key_id``: the token (for the cookie only) and the session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = utcnow()
        row = ConsoleSession(
            id=self._digest(token),
            tenant_id=tenant_id,
            key_id=key_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.lifetime,
        )
        with self._sessions.begin() as session:
            session.add(row)
        return token, _info(row)

    @retry_read
    def resolve(self, token: str | None) -> ConsoleSessionInfo | None:
        """The live session of ``token``, its idle clock restarted; None if there is none (unknown token, idle
        for too long, past its lifetime: such a session is deleted)."""
        if not token or len(token) != TOKEN_CHARS:
            return None
        digest = self._digest(token)
        now = utcnow()
        with self._sessions.begin() as session:
            row = session.get(ConsoleSession, digest)
            if row is None:
                return None
            info = _info(row)
        if now >= info.expires_at or now - info.last_seen_at >= self.idle:
            self.end_digest(digest)
            return None
        if now - info.last_seen_at >= self._touch_interval:
            with self._sessions.begin() as session:
                session.execute(update(ConsoleSession).where(ConsoleSession.id == digest).values(last_seen_at=now))
        return info

    def end(self, token: str | None) -> None:
        """Sign-out: the session of ``token`` is deleted (nothing happens for an unknown token)."""
        if token and len(token) == TOKEN_CHARS:
            self.end_digest(self._digest(token))

    @retry_write
    def end_digest(self, digest: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.id == digest))

    @retry_write
    def end_for_key(self, *, tenant_id: str, key_id: str) -> int:
        """End every session signed in with the API key ``key_id`` (when it is revoked); returns how many."""
        with self._sessions.begin() as session:
            result = session.execute(
                delete(ConsoleSession).where(ConsoleSession.tenant_id == tenant_id, ConsoleSession.key_id == key_id)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    @retry_write
    def purge_expired(self) -> int:
        """Delete sessions past their lifetime or idle timeout (run periodically); returns how many."""
        now = utcnow()
        with self._sessions.begin() as session:
            result = session.execute(
                delete(ConsoleSession).where(
                    (ConsoleSession.expires_at <= now) | (ConsoleSession.last_seen_at <= now - self.idle)
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)
