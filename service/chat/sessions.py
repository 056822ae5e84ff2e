"""Working memory: a session's turns, stored as encrypted ``turn`` memories of the subject.

A turn is a memory with ``kind="turn"``, ``session_id`` and ``source="chat"`` (``source_ref`` = message id,
metadata ``{"role", "message_id"}``), so the store encrypts it like any memory, and a turn that falls out of
the prompt's working-memory budget is still in long-term memory. Listing sessions reads only plaintext
columns (session id, kind, times) with one grouped query; turn text is decrypted only when read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory_store import Filters, MemoryRecord, MemoryStore, NewMemory, NotFoundError
from memory_store.models import Memory, Subject, utcnow

TURN_KIND = "turn"
CHAT_SOURCE = "chat"


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    subject: str
    turns: int
    created_at: datetime
    last_activity_at: datetime


class SessionStore:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def recent_turns(self, *, tenant_id: str, subject: str, session_id: str, limit: int) -> list[MemoryRecord]:
        """The session's newest ``limit`` turns, oldest first (empty for a new subject or session)."""
        if limit <= 0:
            return []
        try:
            page = self._store.list(
                tenant_id=tenant_id,
                subject=subject,
                filters=Filters(session_id=session_id, kinds=(TURN_KIND,), include_superseded=True),
                limit=min(limit, 1000),
            )
        except NotFoundError:
            return []
        return sorted(page.items, key=_turn_order)

    def append_turns(
        self,
        *,
        tenant_id: str,
        subject: str,
        session_id: str,
        message_id: str,
        user_text: str,
        assistant_text: str | None,
        actor: str,
        agent_id: str | None = None,
    ) -> list[MemoryRecord]:
        now = utcnow()
        items = [
            NewMemory(
                subject=subject, text=user_text, kind=TURN_KIND, session_id=session_id, agent_id=agent_id,
                source=CHAT_SOURCE, source_ref=message_id, importance=0.3, occurred_at=now,
                metadata={"role": "user", "message_id": message_id, "seq": 0},
            )
        ]
        if assistant_text and assistant_text.strip():
            items.append(
                NewMemory(
                    subject=subject, text=assistant_text, kind=TURN_KIND, session_id=session_id,
                    agent_id=agent_id, source=CHAT_SOURCE, source_ref=message_id, importance=0.2, occurred_at=now,
                    metadata={"role": "assistant", "message_id": message_id, "seq": 1},
                )
            )
        return self._store.add_batch(tenant_id=tenant_id, items=items, actor=actor)

    def list_sessions(self, *, tenant_id: str, subject: str, limit: int = 100) -> list[SessionInfo]:
        with Session(self._store.engine) as session:
            owner = session.scalar(
                select(Subject.id).where(Subject.tenant_id == tenant_id, Subject.external_id == subject)
            )
            if owner is None:
                return []
            rows = session.execute(
                select(
                    Memory.session_id,
                    func.count(Memory.id),
                    func.min(Memory.created_at),
                    func.max(Memory.created_at),
                )
                .where(
                    Memory.tenant_id == tenant_id,
                    Memory.subject_id == owner,
                    Memory.kind == TURN_KIND,
                    Memory.session_id.is_not(None),
                )
                .group_by(Memory.session_id)
                .order_by(func.max(Memory.created_at).desc())
                .limit(limit)
            ).all()
        return [
            SessionInfo(
                session_id=str(sid), subject=subject, turns=int(n),
                created_at=_aware(first), last_activity_at=_aware(last),
            )
            for sid, n, first, last in rows
        ]

    def session_turns(
        self, *, tenant_id: str, subject: str, session_id: str, limit: int = 200
    ) -> list[MemoryRecord]:
        """Every turn of the session (up to ``limit``, newest kept), oldest first; NotFoundError if none."""
        turns = self.recent_turns(tenant_id=tenant_id, subject=subject, session_id=session_id, limit=limit)
        if not turns:
            raise NotFoundError("session not found")
        return turns

    def delete_session(
        self, *, tenant_id: str, subject: str, session_id: str, actor: str, include_derived: bool = False
    ) -> list[str]:
        """Delete the session's turns (and, with ``include_derived``, every memory written from it)."""
        kinds: Sequence[str] | None = None if include_derived else (TURN_KIND,)
        deleted: list[str] = []
        try:
            while True:
                page = self._store.list(
                    tenant_id=tenant_id,
                    subject=subject,
                    filters=Filters(
                        session_id=session_id,
                        kinds=tuple(kinds) if kinds else None,
                        include_superseded=True,
                    ),
                    limit=500,
                )
                if not page.items:
                    break
                for record in page.items:
                    self._store.delete(tenant_id=tenant_id, memory_id=record.id, subject=subject, actor=actor)
                    deleted.append(record.id)
        except NotFoundError:
            pass
        if not deleted:
            raise NotFoundError("session not found")
        return deleted


def _turn_order(record: MemoryRecord) -> tuple[datetime, int]:
    seq = record.metadata.get("seq", 0)
    return (record.created_at, int(seq) if isinstance(seq, int) else 0)


def _aware(stamp: datetime) -> datetime:
    from datetime import UTC

    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
