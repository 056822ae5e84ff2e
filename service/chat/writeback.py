"""Background write-back: distil facts from a chat turn and reconcile them with what the subject has.

Runs as an asyncio task beside the request handlers (store calls go to threads), so a request never waits
for it. Per statement: a near-duplicate of an existing memory updates that memory (its history records the
update); a statement that fills the same slot with another value ("I moved to Porto" after "I live in
Lisbon") is added and supersedes the old one, which stays in history but no longer ranks; anything else is
added. Every written memory carries source ``chat``, the session id and the message id.

Each change is audited in its own transaction (action ``chat.write_back``) and guarded: it is refused once the
subject has been forgotten or the caller's API key revoked since the chat request began, and
:meth:`WriteBackWorker.forget` cancels a forgotten subject's queued jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from memory_store import Filters, FusionConfig, MemoryRecord, MemoryStore, NewMemory, NotFoundError, SearchHit
from memory_store.audit import AuditEvent
from memory_store.errors import CredentialRevokedError, SubjectForgottenError
from memory_store.models import utcnow
from memory_store.store import TOMBSTONE_RETENTION
from memory_store.types import WriteGuard
from service.auditing import Caller, outcome_of
from service.chat.distill import (
    Distiller,
    Slot,
    Statement,
    conflicts,
    is_duplicate_slot,
    slot_of,
    slot_query,
    split_statements,
)
from service.chat.sessions import CHAT_SOURCE
from service.chat.shield import Shield
from service.errors import InvalidInput

log = logging.getLogger("sealmem.chat")
FACT_KINDS = ("fact", "preference", "event", "note", "summary")
# Duplicate and conflict lookups search with a statement, not a question: the list questions' dense weight (tuned
# on questions) stays off, since "Tim and Gina both like jazz" reads as one.
_LOOKUP = FusionConfig(list_dense_weight=None)
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class WriteBackJob:
    tenant_id: str
    subject: str
    session_id: str
    message_id: str
    text: str
    caller: Caller
    turn_id: str | None = None
    agent_id: str | None = None
    job_id: str = field(default_factory=lambda: "wb_" + uuid.uuid4().hex)
    # The message as the chat's LLM saw it (sensitive values as placeholders) when the backend is outside the
    # process: the distiller, which may call that LLM, gets this, and ``shield`` restores its statements.
    masked_text: str | None = None
    shield: Shield | None = None
    source: str = CHAT_SOURCE  # the source of the memories written
    action: str = "chat.write_back"  # the audit action of each change
    metadata: dict[str, Any] = field(default_factory=dict)  # merged into every memory written
    tracked: bool = False  # its state is kept in SQL (``store.jobs``) for a status endpoint
    max_statements: int | None = None  # more distilled statements fail the job (nothing written)


@dataclass(frozen=True)
class Change:
    """What one statement did to memory: ``ADD`` (a new memory), ``UPDATE`` (a near-duplicate took the newer
    wording; ``previous`` is the memory before), ``SUPERSEDE`` (a new memory replacing ``replaces``: the same
    slot with another value), ``NOOP`` (already known: only its mention count went up)."""

    event: str
    memory: MemoryRecord
    previous: MemoryRecord | None = None
    replaces: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Ids only (no content): for job state kept in SQL."""
        return {"event": self.event, "memory_id": self.memory.id, "replaces": list(self.replaces)}


@dataclass
class WriteBackResult:
    job_id: str
    status: str = "queued"  # queued | running | done | failed | cancelled
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    superseded: list[dict[str, str]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    statements: int = 0
    seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "added": self.added,
            "updated": self.updated,
            "superseded": self.superseded,
            "statements": self.statements,
            "error": self.error,
        }


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb) if wa or wb else 1.0


def _slot_of_record(record: MemoryRecord) -> Slot | None:
    meta = record.metadata
    if isinstance(meta.get("slot"), str) and isinstance(meta.get("slot_value"), str):
        return Slot(meta["slot"], meta["slot_value"])
    return slot_of(record.text)


def _parts_of_record(record: MemoryRecord) -> list[tuple[str, Slot | None]]:
    """The statements a memory holds, each with its slot: one for most memories, several for a compound one
    ("My dog is named Biscuit and I live in Lisbon." added as it came), so a change can replace one clause."""
    clauses = split_statements(record.text)
    if len(clauses) <= 1:
        return [(record.text, _slot_of_record(record))]
    return [(clause, slot_of(clause)) for clause in clauses]


@dataclass
class _Verdict:
    """What one statement does to the memories found for it."""

    duplicate: MemoryRecord | None = None
    duplicate_is_compound: bool = False
    best: float = 0.0
    conflicts: list[MemoryRecord] = field(default_factory=list)  # superseded whole
    trims: list[tuple[MemoryRecord, list[tuple[str, Slot | None]]]] = field(default_factory=list)  # clauses kept


class Reconciler:
    """The synchronous part: one statement against the subject's memories (runs in a worker thread).

    Per statement: a memory of the same slot and value, or a near-duplicate wording, is updated (``UPDATE``, or
    ``NOOP`` when the wording is the same or the memory is a compound one that says it among other things); a
    statement that replaces what memories say (:func:`~service.chat.distill.conflicts`: another value of the
    slot, a negation, a diet against a food) is added and supersedes them (``SUPERSEDE``); a compound memory
    of which only some clauses are replaced keeps the others: it is updated to them (an extra ``UPDATE`` in
    ``result.changes``, after the statement's own change) and the statement is added. Anything else is added.
    """

    def __init__(self, store: MemoryStore, *, duplicate_similarity: float = 0.8, duplicate_dense: float = 0.95):
        self._store = store
        self._dup_words = duplicate_similarity
        self._dup_dense = duplicate_dense

    def _candidates(self, job: WriteBackJob, statement: Statement, slot: Slot | None) -> list[SearchHit]:
        hits: dict[str, SearchHit] = {}
        searches = [(statement.text, Filters(kinds=FACT_KINDS))]
        if slot is not None:
            searches.append((statement.text, Filters(kinds=FACT_KINDS, metadata={"slot": slot.key})))
            # memories about the slot in other words (compound ones, or ones written before slots were kept)
            searches.append((slot_query(slot), Filters(kinds=FACT_KINDS)))
        for query, filters in searches:
            try:
                found = self._store.search(
                    tenant_id=job.tenant_id, subject=job.subject, query=query, k=10, filters=filters, fusion=_LOOKUP
                )
            except NotFoundError:
                return []
            for hit in found:
                hits.setdefault(hit.memory.id, hit)
        return list(hits.values())

    def _judge(self, stored: str, slot: Slot | None, candidates: list[SearchHit]) -> _Verdict:
        verdict = _Verdict()
        for hit in candidates:
            record = hit.memory
            parts = _parts_of_record(record)
            slotted = [s for _, s in parts if s is not None]
            if slot is not None and slotted:
                same = any(is_duplicate_slot(slot, s) for s in slotted)
                clash = [i for i, (_, s) in enumerate(parts) if s is not None and conflicts(slot, s)]
                if same and verdict.best < 2.0:
                    # the same slot and value: a duplicate whatever the wording
                    verdict.duplicate, verdict.best = record, 2.0
                    verdict.duplicate_is_compound = len(parts) > 1
                elif clash and len(clash) == len(parts):
                    verdict.conflicts.append(record)
                elif clash:
                    verdict.trims.append((record, [p for i, p in enumerate(parts) if i not in clash]))
                if same or clash or len(parts) == 1:
                    continue  # a single statement about something else is not a duplicate
            similarity = jaccard(stored, record.text)
            dense = hit.dense_score or 0.0
            if (similarity >= self._dup_words or dense >= self._dup_dense) and max(similarity, dense) > verdict.best:
                verdict.duplicate, verdict.best = record, max(similarity, dense)
                verdict.duplicate_is_compound = False
        return verdict

    def apply(self, job: WriteBackJob, statement: Statement, result: WriteBackResult) -> Change:
        audit = job.caller.event(job.action, detail={"job_id": job.job_id, "message_id": job.message_id})
        guard = job.caller.guard(delayed=True)
        # Slots and similarity are judged on the statement as it would be stored (sensitive values as their
        # placeholders): slot values go into metadata, which is not screened.
        stored = self._store.as_stored(tenant_id=job.tenant_id, subject=job.subject, text=statement.text)
        slot = slot_of(stored)
        candidates = self._candidates(job, replace(statement, text=stored), slot)
        verdict = self._judge(stored, slot, candidates)
        meta = {**job.metadata, "message_id": job.message_id, "session_id": job.session_id}
        if job.turn_id:
            meta["turn_id"] = job.turn_id
        if slot is not None:
            meta.update(slot=slot.key, slot_value=slot.value)
        duplicate = verdict.duplicate
        if duplicate is not None:
            mentions = duplicate.metadata.get("mentions", 1)
            merged = {
                **duplicate.metadata,
                "mentions": (mentions if isinstance(mentions, int) else 1) + 1,
                "last_message_id": job.message_id,
                "last_session_id": job.session_id,
            }
            if slot is not None and not verdict.duplicate_is_compound:
                merged.update(slot=slot.key, slot_value=slot.value)
            # a compound memory keeps its wording: the statement is one of the things it says
            reworded = stored.strip() != duplicate.text.strip() and not verdict.duplicate_is_compound
            newer_text = statement.text if reworded else None
            updated = self._store.update(
                tenant_id=job.tenant_id,
                memory_id=duplicate.id,
                subject=job.subject,
                text=newer_text,
                metadata=merged,
                importance=min(1.0, max(duplicate.importance, statement.importance) + 0.05),
                actor=job.caller.actor,
                audit=audit,
                guard=guard,
            )
            result.updated.append(duplicate.id)
            change = Change("UPDATE" if newer_text is not None else "NOOP", updated, previous=duplicate)
            result.changes.append(change)
            return change
        record = self._store.add(
            tenant_id=job.tenant_id,
            item=NewMemory(
                subject=job.subject,
                text=statement.text,
                kind=statement.kind,
                importance=statement.importance,
                metadata=meta,
                session_id=job.session_id,
                agent_id=job.agent_id,
                source=job.source,
                source_ref=job.message_id,
                occurred_at=utcnow(),
            ),
            actor=job.caller.actor,
            audit=audit,
            guard=guard,
        )
        result.added.append(record.id)
        for old in verdict.conflicts:
            self._store.supersede(
                tenant_id=job.tenant_id,
                memory_id=old.id,
                by=record.id,
                subject=job.subject,
                actor=job.caller.actor,
                audit=audit,
                guard=guard,
            )
            result.superseded.append({"id": old.id, "by": record.id})
        conflicting = tuple(old.id for old in verdict.conflicts)
        change = Change("SUPERSEDE" if conflicting else "ADD", record, replaces=conflicting)
        result.changes.append(change)
        for compound, kept in verdict.trims:
            result.changes.append(self._trim(job, compound, kept, record, audit, guard))
            result.updated.append(compound.id)
        return change

    def _trim(
        self,
        job: WriteBackJob,
        compound: MemoryRecord,
        kept: list[tuple[str, Slot | None]],
        by: MemoryRecord,
        audit: AuditEvent,
        guard: WriteGuard,
    ) -> Change:
        """A compound memory loses the clauses ``by`` replaces: it keeps the others (its history keeps all)."""
        metadata = {k: v for k, v in compound.metadata.items() if k not in ("slot", "slot_value")}
        remaining = kept[0][1] if len(kept) == 1 else None
        if remaining is not None:
            metadata.update(slot=remaining.key, slot_value=remaining.value)
        metadata["replaced_clauses_by"] = by.id
        updated = self._store.update(
            tenant_id=job.tenant_id,
            memory_id=compound.id,
            subject=job.subject,
            text=" ".join(clause for clause, _ in kept),
            metadata=metadata,
            actor=job.caller.actor,
            audit=audit,
            guard=guard,
        )
        return Change("UPDATE", updated, previous=compound)


class WriteBackWorker:
    """A bounded queue of jobs served by one asyncio task; results of recent jobs are kept for inspection."""

    def __init__(
        self,
        store: MemoryStore,
        distiller: Distiller,
        *,
        queue_max: int = 1000,
        duplicate_similarity: float = 0.8,
        duplicate_dense: float = 0.95,
        results_kept: int = 1000,
        per_tenant_max: int | None = None,
    ) -> None:
        self._store = store
        self.distiller = distiller
        self._forgotten: dict[tuple[str, str], datetime] = {}
        self._forgotten_lock = threading.Lock()  # forget() runs on request threads
        self._reconciler = Reconciler(store, duplicate_similarity=duplicate_similarity, duplicate_dense=duplicate_dense)
        self._queue_max = queue_max
        self._queue: asyncio.Queue[WriteBackJob] | None = None
        self._task: asyncio.Task[None] | None = None
        self._results: OrderedDict[str, WriteBackResult] = OrderedDict()
        self._results_kept = results_kept
        # One tenant may hold at most this many queued jobs (default: a tenth of the queue), so it cannot crowd
        # out the others' write-back and ingestion.
        self._per_tenant_max = per_tenant_max or max(1, queue_max // 10)
        self._pending: Counter[str] = Counter()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue(maxsize=self._queue_max)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sealmem-write-back")

    async def stop(self, *, drain_timeout: float = 10.0) -> None:
        """Finish queued jobs (up to ``drain_timeout`` seconds), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), drain_timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def drain(self) -> None:
        """Wait until every job submitted so far is done."""
        if self._queue is not None:
            await self._queue.join()

    def submit(self, job: WriteBackJob) -> WriteBackResult:
        result = self._remember(WriteBackResult(job.job_id))
        if self._queue is None or not self.running:
            result.status, result.error = "failed", "the write-back worker is not running"
            return result
        if self._pending[job.tenant_id] >= self._per_tenant_max:
            log.warning("write-back queue: the tenant's share is full; message %s skipped", job.message_id)
            result.status, result.error = "dropped", "this tenant's share of the write-back queue is full"
            return result
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            log.warning("write-back queue full: distillation of message %s skipped", job.message_id)
            result.status, result.error = "dropped", "the write-back queue is full"
            return result
        self._pending[job.tenant_id] += 1
        return result

    def forget(self, tenant_id: str, subject: str) -> None:
        """A subject was forgotten: its jobs queued or running now are cancelled (their remaining writes would
        be refused by the store anyway, in every process; this stops them doing the work)."""
        now = utcnow()
        with self._forgotten_lock:
            kept = {k: at for k, at in self._forgotten.items() if at >= now - TOMBSTONE_RETENTION}
            kept[(tenant_id, subject)] = now
            self._forgotten = kept

    def _cancelled(self, job: WriteBackJob) -> bool:
        with self._forgotten_lock:
            forgotten = self._forgotten.get((job.tenant_id, job.subject))
        return forgotten is not None and forgotten >= job.caller.begun_at

    def result(self, job_id: str) -> WriteBackResult | None:
        return self._results.get(job_id)

    def _remember(self, result: WriteBackResult) -> WriteBackResult:
        self._results[result.job_id] = result
        while len(self._results) > self._results_kept:
            self._results.popitem(last=False)
        return result

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await self.process(job)
            except Exception:  # one bad job must not stop the worker
                log.exception("write-back job %s failed", job.job_id)
            finally:
                self._pending[job.tenant_id] -= 1
                if self._pending[job.tenant_id] <= 0:
                    del self._pending[job.tenant_id]
                self._queue.task_done()

    async def process(self, job: WriteBackJob) -> WriteBackResult:
        result = self._results.get(job.job_id) or self._remember(WriteBackResult(job.job_id))
        result.status = "running"
        started = time.perf_counter()
        try:
            if not self._cancelled(job):
                if job.masked_text is not None and job.shield is not None:
                    statements = await self.distiller.distill(job.masked_text)
                    statements = [replace(s, text=job.shield.restore(s.text)) for s in statements]
                else:
                    statements = await self.distiller.distill(job.text)
                if job.max_statements is not None and len(statements) > job.max_statements:
                    raise InvalidInput(
                        f"messages: {len(statements)} statements distilled, at most {job.max_statements} at once; "
                        "split the conversation"
                    )
                result.statements = len(statements)
                for statement in statements:
                    if self._cancelled(job):
                        break
                    await asyncio.to_thread(self._reconciler.apply, job, statement, result)
            result.status = "cancelled" if self._cancelled(job) else "done"
        except (SubjectForgottenError, CredentialRevokedError) as exc:
            result.status, result.error = "cancelled", exc.code
            await self._record_failure(job, result, exc)  # a refused write attempt stays on the record
        except Exception as exc:
            result.status, result.error = "failed", type(exc).__name__
            await self._record_failure(job, result, exc)
            raise
        finally:
            result.seconds = time.perf_counter() - started
            if job.tracked:
                await self._save(job, result)
        return result

    async def _save(self, job: WriteBackJob, result: WriteBackResult) -> None:
        detail = {"statements": result.statements, "events": [c.as_dict() for c in result.changes]}
        try:
            await asyncio.to_thread(
                self._store.jobs.finish, job_id=job.job_id, status=result.status, detail=detail, error=result.error
            )
        except Exception:
            log.exception("could not save the state of job %s", job.job_id)

    async def _record_failure(self, job: WriteBackJob, result: WriteBackResult, exc: Exception) -> None:
        """The changes made before the failure are audited already (each in its transaction); this records the
        failure itself."""
        event = job.caller.event(
            job.action,
            subject=job.subject,
            outcome=outcome_of(exc),
            detail={"job_id": job.job_id, "message_id": job.message_id, "error": type(exc).__name__},
        )
        try:
            await asyncio.to_thread(self._store.audit.append, tenant_id=job.tenant_id, event=event)
        except Exception:
            log.exception("audit append failed for write-back job %s", job.job_id)
