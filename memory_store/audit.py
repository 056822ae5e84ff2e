"""Append-only audit log with a SHA-256 hash chain per tenant.

Each record stores the hash of the tenant's previous record and its own hash over a canonical JSON of all
its fields, and ``audit_heads`` holds the newest sequence number and hash. :meth:`AuditLog.verify`
recomputes the chain, so an edited, deleted or reordered record is found. The chain proves integrity against
anyone who cannot also rewrite every later record and the head; publishing the head hash elsewhere
(``verify`` returns it) closes that gap. Records never contain memory content, only ids.

Appends are serialised per tenant: the first statement of an append is an ``UPDATE`` of the tenant's head row,
which takes a row lock on PostgreSQL and the write lock on SQLite until the transaction commits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from memory_store.access import AuditHead, AuditRecord
from memory_store.errors import NotFoundError, ValidationError
from memory_store.models import Tenant, utcnow

GENESIS_HASH = "0" * 64
_HASHED_FIELDS = (
    "tenant_id",
    "seq",
    "at",
    "credential_id",
    "role",
    "token_id",
    "subject",
    "action",
    "memory_ids",
    "detail",
    "request_id",
    "outcome",
    "prev_hash",
)


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What the caller reports; the log adds time, sequence number and hashes."""

    credential_id: str
    role: str
    action: str
    outcome: str = "ok"
    subject: str | None = None
    memory_ids: Sequence[str] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    token_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    seq: int
    at: datetime
    credential_id: str
    role: str
    token_id: str | None
    subject: str | None
    action: str
    memory_ids: list[str]
    detail: dict[str, Any]
    request_id: str | None
    outcome: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    ok: bool
    records_checked: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    reason: str | None = None


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def chain_hash(values: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON (sorted keys, no spaces, ASCII) of the hashed fields."""
    payload = {name: values[name] for name in _HASHED_FIELDS}
    payload["at"] = _stamp(payload["at"])
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def _values(row: AuditRecord) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _HASHED_FIELDS}


def _entry(row: AuditRecord) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=row.at,
        credential_id=row.credential_id,
        role=row.role,
        token_id=row.token_id,
        subject=row.subject,
        action=row.action,
        memory_ids=list(row.memory_ids),
        detail=dict(row.detail),
        request_id=row.request_id,
        outcome=row.outcome,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def append_in(session: Session, tenant_id: str, event: AuditEvent) -> AuditEntry:
    """Append one record to the tenant's chain inside the caller's transaction (see :func:`append_all_in`)."""
    return append_all_in(session, tenant_id, [event])[0]


_HEADS = cast(Table, AuditHead.__table__)
# Built once: every request appends a record, and building these per call (ORM statements, their coercions and
# cache keys) cost more CPU than SQLite spends running them.
_RESERVE = (
    update(_HEADS)
    .where(_HEADS.c.tenant_id == bindparam("tenant"))
    .values(seq=_HEADS.c.seq + bindparam("count"))
    .returning(_HEADS.c.seq, _HEADS.c.last_hash)
)
_INSERT = insert(cast(Table, AuditRecord.__table__))
_MOVE_HEAD = update(_HEADS).where(_HEADS.c.tenant_id == bindparam("tenant")).values(last_hash=bindparam("hash"))


def append_all_in(session: Session, tenant_id: str, events: Sequence[AuditEvent]) -> list[AuditEntry]:
    """Append records, in order, to the tenant's chain inside the caller's transaction, which then commits them
    with whatever else it changes, or neither. Three statements however many records: the head's ``UPDATE``
    (which takes the tenant's audit head lock until that commit) reserves their sequence numbers, one
    multi-row ``INSERT`` writes them, one ``UPDATE`` moves the head's hash."""
    count = len(events)
    if count == 0:
        return []
    connection = session.connection()
    head = connection.execute(_RESERVE, {"tenant": tenant_id, "count": count}).first()
    if head is None:  # a tenant created before its head row existed (they are created together now)
        session.add(AuditHead(tenant_id=tenant_id, seq=count, last_hash=GENESIS_HASH))
        session.flush()
        first, prev_hash = 1, GENESIS_HASH
    else:
        first, prev_hash = int(head[0]) - count + 1, str(head[1])
    at = utcnow()
    rows: list[dict[str, Any]] = []
    for offset, event in enumerate(events):
        values: dict[str, Any] = {
            "tenant_id": tenant_id,
            "seq": first + offset,
            "at": at,
            "credential_id": event.credential_id[:64],
            "role": event.role[:16],
            "token_id": event.token_id[:64] if event.token_id else None,
            "subject": event.subject,
            "action": event.action[:32],
            "memory_ids": [str(m) for m in event.memory_ids],
            "detail": dict(event.detail),
            "request_id": event.request_id[:64] if event.request_id else None,
            "outcome": event.outcome[:16],
            "prev_hash": prev_hash,
        }
        values["hash"] = prev_hash = chain_hash(values)
        rows.append(values)
    connection.execute(_INSERT, rows)
    connection.execute(_MOVE_HEAD, {"tenant": tenant_id, "hash": prev_hash})
    return [AuditEntry(**{name: value for name, value in row.items() if name != "tenant_id"}) for row in rows]


@dataclass
class _Waiting:
    """Records one caller waits to see committed (see :class:`AuditLog`)."""

    tenant_id: str
    events: Sequence[AuditEvent]
    committed: Future[list[AuditEntry]] = field(default_factory=Future)
    entries: list[AuditEntry] | None = None
    error: BaseException | None = None

    def resolve(self) -> None:
        if self.error is not None:
            self.committed.set_exception(self.error)
        elif self.entries is not None:
            self.committed.set_result(self.entries)
        else:
            self.committed.set_exception(RuntimeError("audit records were not committed"))


class AuditLog:
    """The audit trail. Records of reads (which change nothing) are appended here; a change appends its record
    inside its own transaction with :func:`append_in`.

    Appends are committed by one writer thread per log (started on first use), in batches: every record queued
    while a commit runs goes into the next transaction (group commit: one commit and one fsync for many
    requests, and on SQLite one write transaction instead of many, each of which would also reset every other
    connection's page cache). :meth:`submit` returns at once with a future that resolves when the caller's own
    records are committed, or fails with what failed them; :meth:`append_all` waits for it. A caller can so
    hand its records over and go on working, and wait only before it hands out what they record (the service
    holds the response, see :class:`service.auditing.AuditBarrier`).
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._changed = threading.Condition()
        self._queue: list[_Waiting] = []
        self._writer: threading.Thread | None = None
        self._stopping = False

    def append(self, *, tenant_id: str, event: AuditEvent) -> AuditEntry:
        """Append one record; returns when it is committed."""
        return self.append_all(tenant_id=tenant_id, events=[event])[0]

    def append_all(self, *, tenant_id: str, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Append records together; returns when they are committed (safe under concurrent appends from any
        process), or raises what failed them."""
        return self.submit(tenant_id=tenant_id, events=events).result()

    def submit(self, *, tenant_id: str, events: Sequence[AuditEvent]) -> Future[list[AuditEntry]]:
        """Queue records for the writer; the future resolves once they are committed, in order and together."""
        mine = _Waiting(tenant_id, list(events))
        if not mine.events:
            mine.committed.set_result([])
            return mine.committed
        with self._changed:
            self._queue.append(mine)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="sealmem-audit-writer", daemon=True)
                self._writer.start()
            self._changed.notify()
        return mine.committed

    def close(self) -> None:
        """Commit what is queued and stop the writer (a later append starts a new one)."""
        with self._changed:
            writer, self._stopping = self._writer, True
            self._changed.notify_all()
        if writer is not None:
            writer.join()
        with self._changed:
            self._stopping = False

    def _write(self) -> None:
        """The writer: commit everything queued, one transaction a batch, until stopped with nothing queued."""
        try:
            while True:
                with self._changed:
                    while not self._queue:
                        if self._stopping:
                            return
                        self._changed.wait()
                    batch, self._queue = self._queue, []
                # A caller that stopped waiting (a client gone, its task cancelled) cancelled its future: its
                # records are still committed (the read happened); only the others are told.
                told = [waiting for waiting in batch if waiting.committed.set_running_or_notify_cancel()]
                try:
                    self._commit(batch)
                except BaseException as exc:  # e.g. a broken engine: every caller of the batch learns it
                    for waiting in batch:
                        if waiting.entries is None and waiting.error is None:
                            waiting.error = exc
                for waiting in told:
                    waiting.resolve()
        finally:
            with self._changed:
                self._writer = None  # the next append starts another

    def _commit(self, batch: list[_Waiting]) -> None:
        # Tenants in a fixed order: two processes committing batches lock the same audit heads in the same order.
        batch = sorted(batch, key=lambda w: w.tenant_id)
        try:
            with self._sessions.begin() as session:
                results: list[list[AuditEntry]] = []
                for tenant_id, group in itertools.groupby(batch, key=lambda w: w.tenant_id):
                    callers = list(group)
                    entries = append_all_in(session, tenant_id, [e for w in callers for e in w.events])
                    for caller in callers:
                        results.append(entries[: len(caller.events)])
                        entries = entries[len(caller.events) :]
        except Exception:
            if len(batch) == 1:
                self._commit_alone(batch[0])
                return
            for waiting in batch:  # one bad append must not fail the others: each on its own
                self._commit_alone(waiting)
            return
        for waiting, entries in zip(batch, results, strict=True):
            waiting.entries = entries

    def _commit_alone(self, waiting: _Waiting) -> None:
        try:
            waiting.entries = self._append_now(waiting.tenant_id, waiting.events)
        except BaseException as exc:  # handed to the caller, which raises it
            waiting.error = exc

    def _append_now(self, tenant_id: str, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        for attempt in range(3):
            try:
                with self._sessions.begin() as session:
                    return append_all_in(session, tenant_id, events)
            except IntegrityError:
                # Two first appends raced to create the head row (PostgreSQL); the loser retries and
                # then finds it. A tenant that does not exist fails the same way, every time.
                with self._sessions.begin() as session:
                    if session.get(Tenant, tenant_id) is None:
                        raise NotFoundError("tenant not found") from None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def entries(
        self,
        *,
        tenant_id: str,
        before_seq: int | None = None,
        limit: int = 100,
        action: str | None = None,
        subject: str | None = None,
        credential_id: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
    ) -> list[AuditEntry]:
        """Newest first; page with ``before_seq`` = the last seq of the previous page. Optional filters: action,
        subject, credential (the actor's API key id), and record time (``after`` inclusive, ``before`` not)."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        query = select(AuditRecord).where(AuditRecord.tenant_id == tenant_id)
        if before_seq is not None:
            query = query.where(AuditRecord.seq < before_seq)
        if action is not None:
            query = query.where(AuditRecord.action == action)
        if subject is not None:
            query = query.where(AuditRecord.subject == subject)
        if credential_id is not None:
            query = query.where(AuditRecord.credential_id == credential_id)
        if after is not None:
            query = query.where(AuditRecord.at >= after)
        if before is not None:
            query = query.where(AuditRecord.at < before)
        with self._sessions.begin() as session:
            rows = session.scalars(query.order_by(AuditRecord.seq.desc()).limit(limit))
            return [_entry(row) for row in rows]

    def head(self, *, tenant_id: str) -> tuple[int, str]:
        """The tenant's chain head: the newest sequence number (the number of records) and its hash; one row read,
        nothing recomputed (``(0, GENESIS_HASH)`` before the first record)."""
        with self._sessions.begin() as session:
            head = session.get(AuditHead, tenant_id)
            return (head.seq, head.last_hash) if head else (0, GENESIS_HASH)

    def verify(self, *, tenant_id: str) -> VerifyReport:
        """Recompute the tenant's chain; report the first record whose link or content does not hold."""
        expected_seq, expected_prev, checked = 1, GENESIS_HASH, 0

        def broken(seq: int, reason: str) -> VerifyReport:
            return VerifyReport(
                ok=False,
                records_checked=checked,
                head_seq=head_seq,
                head_hash=head_hash,
                broken_seq=seq,
                reason=reason,
            )

        with self._sessions.begin() as session:
            head = session.get(AuditHead, tenant_id)
            head_seq, head_hash = (head.seq, head.last_hash) if head else (0, GENESIS_HASH)
            rows = session.scalars(
                select(AuditRecord)
                .where(AuditRecord.tenant_id == tenant_id)
                .order_by(AuditRecord.seq)
                .execution_options(yield_per=1000)
            )
            for row in rows:
                if row.seq != expected_seq:
                    return broken(expected_seq, f"record {expected_seq} is missing")
                if row.prev_hash != expected_prev:
                    return broken(row.seq, f"record {row.seq} does not link to the record before it")
                if chain_hash(_values(row)) != row.hash:
                    return broken(row.seq, f"record {row.seq} was altered (its content does not match its hash)")
                expected_prev, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
            if head_seq > checked:
                return broken(checked + 1, f"records after {checked} are missing (the head is at {head_seq})")
            if head_seq < checked:
                return broken(head_seq + 1, f"record {head_seq + 1} lies beyond the chain head")
            if head_hash != expected_prev:
                return broken(head_seq, f"record {head_seq} does not match the chain head")
        return VerifyReport(ok=True, records_checked=checked, head_seq=head_seq, head_hash=head_hash)
