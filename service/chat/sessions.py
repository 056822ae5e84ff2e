"""Working memory: a session's turns, stored as encrypted ``turn`` memories of the subject.

A turn is a memory with ``kind="turn"``, ``session_id`` and ``source="chat"`` (``source_ref`` = message id,
metadata ``{"role", "message_id"}``), so the store encrypts it like any memory, and a turn that falls out of
the prompt's working-memory budget is still in long-term memory. Listing sessions
(:meth:`MemoryStore.list_sessions`) reads only plaintext columns with one grouped query; turn text is
decrypted only when read. Deleting a session (:meth:`MemoryStore.delete_many`) is one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from memory_store import Filters, MemoryRecord, MemoryStore, NewMemory, NotFoundError
from memory_store.audit import AuditEvent
from memory_store.types import WriteGuard

TURN_KIND = "turn"
CHAT_SOURCE = "chat"
# Listing and deleting race with concurrent deletes of the same memories: list again this many times.
_DELETE_ATTEMPTS = 3


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
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> list[MemoryRecord]:
        now = datetime.now(UTC)
        items = [
            NewMemory(
                subject=subject,
                text=user_text,
                kind=TURN_KIND,
                session_id=session_id,
                agent_id=agent_id,
                source=CHAT_SOURCE,
                source_ref=message_id,
                importance=0.3,
                occurred_at=now,
                metadata={"role": "user", "message_id": message_id, "seq": 0},
            )
        ]
        if assistant_text and assistant_text.strip():
            items.append(
                NewMemory(
                    subject=subject,
                    text=assistant_text,
                    kind=TURN_KIND,
                    session_id=session_id,
                    agent_id=agent_id,
                    source=CHAT_SOURCE,
                    source_ref=message_id,
                    importance=0.2,
                    occurred_at=now,
                    metadata={"role": "assistant", "message_id": message_id, "seq": 1},
                )
            )
        return self._store.add_batch(tenant_id=tenant_id, items=items, actor=actor, audit=audit, guard=guard)

    def list_sessions(self, *, tenant_id: str, subject: str, limit: int = 100) -> list[SessionInfo]:
        """The subject's chat sessions, most recently active first (empty for an unknown subject)."""
        try:
            sessions = self._store.list_sessions(tenant_id=tenant_id, subject=subject, kinds=(TURN_KIND,), limit=limit)
        except NotFoundError:
            return []
        return [
            SessionInfo(
                session_id=s.session_id,
                subject=subject,
                turns=s.memory_count,
                created_at=s.first_created_at,
                last_activity_at=s.last_created_at,
            )
            for s in sessions
        ]

    def session_turns(self, *, tenant_id: str, subject: str, session_id: str, limit: int = 200) -> list[MemoryRecord]:
        """Every turn of the session (up to ``limit``, newest kept), oldest first; NotFoundError if none."""
        turns = self.recent_turns(tenant_id=tenant_id, subject=subject, session_id=session_id, limit=limit)
        if not turns:
            raise NotFoundError("session not found")
        return turns

    def delete_session(
        self,
        *,
        tenant_id: str,
        subject: str,
        session_id: str,
        actor: str,
        include_derived: bool = False,
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> list[str]:
        """Delete the session's turns (and, with ``include_derived``, every memory written from it) in one
        transaction; returns their ids, newest first. NotFoundError if the session has none."""
        filters = Filters(
            session_id=session_id, kinds=None if include_derived else (TURN_KIND,), include_superseded=True
        )
        for attempt in range(_DELETE_ATTEMPTS):
            ids = self._memory_ids(tenant_id=tenant_id, subject=subject, filters=filters)
            if not ids:
                break
            try:
                self._store.delete_many(
                    tenant_id=tenant_id, memory_ids=ids, subject=subject, actor=actor, audit=audit, guard=guard
                )
            except NotFoundError:
                if attempt == _DELETE_ATTEMPTS - 1:
                    raise
                continue  # one of them was deleted since the listing: list again
            return ids
        raise NotFoundError("session not found")

    def _memory_ids(self, *, tenant_id: str, subject: str, filters: Filters) -> list[str]:
        """Ids of the subject's memories that pass ``filters``, newest first (empty for an unknown subject)."""
        ids: list[str] = []
        cursor: str | None = None
        try:
            while True:
                page = self._store.list(
                    tenant_id=tenant_id, subject=subject, filters=filters, cursor=cursor, limit=1000
                )
                ids.extend(record.id for record in page.items)
                if page.next_cursor is None:
                    return ids
                cursor = page.next_cursor
        except NotFoundError:
            return []


def _turn_order(record: MemoryRecord) -> tuple[datetime, int]:
    seq = record.metadata.get("seq", 0)
    return (record.created_at, int(seq) if isinstance(seq, int) else 0)
