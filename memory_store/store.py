"""MemoryStore: the typed, keyword-only API of the storage core."""

from __future__ import annotations

import builtins
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

import numpy as np
from sqlalchemy import Engine, Select, Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from memory_store import validation
from memory_store.access import ApiKey, AuditHead
from memory_store.audit import GENESIS_HASH, AuditEvent, AuditLog, append_all_in
from memory_store.crypto import MasterKey, generate_key
from memory_store.db import make_engine, make_sessionmaker
from memory_store.embedder import Embedder
from memory_store.errors import (
    ConfigurationError,
    ConflictError,
    CredentialRevokedError,
    NotFoundError,
    SubjectForgottenError,
    ValidationError,
    WriteRacedError,
)
from memory_store.fusion import FusionConfig
from memory_store.group_commit import GroupCommit
from memory_store.index_registry import IndexRegistry
from memory_store.jobs import JobLog
from memory_store.keys import KeyManager
from memory_store.lexical import LexicalCache, LexicalSource
from memory_store.migrate import require_head
from memory_store.models import (
    Memory,
    MemoryEvent,
    SensitiveValue,
    Subject,
    SubjectTombstone,
    Tenant,
    VectorChange,
    utcnow,
)
from memory_store.pgvector_backend import PgVectorBackend
from memory_store.prepared import EarlyVector, PreparedAdd, PreparedSearch
from memory_store.records import (
    RECORD_COLUMNS,
    apply_filters,
    decode,
    decode_cursor,
    encode_cursor,
    metadata_matches,
    record,
)
from memory_store.retry import retry_read, retry_write
from memory_store.sealing import MemorySealer
from memory_store.search import HybridSearcher, lexical_source
from memory_store.sensitive.detector import Detector
from memory_store.sensitive.policy import SensitivePolicy
from memory_store.sensitive.screener import Screener
from memory_store.sensitive.vault import Screened, Vault, placeholders_in, restore
from memory_store.settings import StoreSettings
from memory_store.types import (
    Filters,
    HistoryEntry,
    MemoryRecord,
    NewMemory,
    Page,
    SearchHit,
    SessionSummary,
    Stats,
    StoreTotals,
    SubjectInfo,
    TenantInfo,
    WriteGuard,
)
from memory_store.vector_backend import FaissBackend, VectorBackend
from memory_store.vector_index import set_faiss_threads

log = logging.getLogger("sealmem.store")
_UNSET: Any = object()
# Rows per statement when a write touches many memories (keeps ``IN (...)`` lists and executemany batches small).
_CHUNK = 500
# Memories one group commit stores at most (adds of one tenant committed together, see add_batch).
_ADD_GROUP_MAX = 256
# How long a forgotten subject's tombstone is kept; a guarded write from a request older than this is refused.
TOMBSTONE_RETENTION = timedelta(days=1)
# Who the audit records of the store's own changes (expiry) name.
SYSTEM_AUDIT = AuditEvent(credential_id="system", role="system", action="memory.expire")

# Statements of every write, built once (building one costs more CPU than SQLite takes to run it).
_BUMP = (
    update(Tenant)
    .where(Tenant.id == bindparam("tenant_id"))
    .values(change_seq=Tenant.change_seq + bindparam("count"))
    .returning(Tenant.change_seq, Tenant.policy_rev)
)
_KEY_REVOKED = select(ApiKey.revoked_at).where(ApiKey.id == bindparam("credential_id")).with_for_update(read=True)
_FORGOTTEN_SINCE = (
    select(SubjectTombstone.id)
    .where(
        SubjectTombstone.tenant_id == bindparam("tenant_id"),
        SubjectTombstone.digest.in_(bindparam("digests", expanding=True)),
        SubjectTombstone.forgotten_at >= bindparam("since"),
    )
    .limit(1)
)
_SUBJECTS_NAMED = select(Subject).where(
    Subject.tenant_id == bindparam("tenant_id"), Subject.external_id.in_(bindparam("names", expanding=True))
)
# An add's rows, on Core: the ORM's unit of work (flush bookkeeping per object, then per table) cost more CPU
# than the database spends on these inserts. The new ids come back with their rows' uids (drawn here), so a
# batch goes in as multi-row VALUES: asking for them in the order given made SQLite insert one row a statement.
_MEMORIES = cast(Table, Memory.__table__)
_INSERT_MEMORIES = insert(_MEMORIES).returning(_MEMORIES.c.uid, _MEMORIES.c.id)
_INSERT_CHANGES = insert(cast(Table, VectorChange.__table__))
_INSERT_EVENTS = insert(cast(Table, MemoryEvent.__table__))
_SUBJECTS = cast(Table, Subject.__table__)
_SUBJECT_SEQS = select(_SUBJECTS.c.id, _SUBJECTS.c.change_seq).where(
    _SUBJECTS.c.id.in_(bindparam("ids", expanding=True))
)
_SUBJECT_WRITTEN = (
    update(_SUBJECTS)
    .where(_SUBJECTS.c.id == bindparam("subject"))
    .values(change_seq=bindparam("seq"), last_activity_at=bindparam("at"))
)
# Access times, one executemany per flush (:meth:`MemoryStore._flush_touches`).
_TOUCH = update(Memory).where(Memory.id == bindparam("memory_id")).values(last_accessed_at=bindparam("stamp"))


def _new_memory_row(
    sealer: MemorySealer, subject: Subject, item: NewMemory, text: str, vector: np.ndarray, now: datetime
) -> dict[str, Any]:
    """The columns of a new memory row (a fresh uid; its text, metadata and vector sealed by the subject's key),
    for an insert on Core."""
    uid = str(uuid.uuid4())
    return {
        "uid": uid,
        "tenant_id": subject.tenant_id,
        "subject_id": subject.id,
        "agent_id": item.agent_id,
        "session_id": item.session_id,
        "kind": item.kind,
        "status": "active",
        "superseded_by": None,
        "text_ct": sealer.seal_text(uid, text),
        "metadata_ct": sealer.seal_metadata(uid, item.metadata),
        "embedding_ct": sealer.seal_embedding(uid, vector),
        "importance": float(item.importance),
        "source": item.source,
        "source_ref": item.source_ref,
        "created_at": now,
        "updated_at": now,
        "last_accessed_at": None,
        "occurred_at": item.occurred_at,
        "expires_at": item.expires_at,
    }


def _memory_event(
    *,
    tenant_id: str,
    subject_id: str,
    memory_uid: str,
    action: str,
    actor: str,
    at: datetime,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The history row of one action on one memory: who did what and when, never the memory's content. Its
    columns, for ``MemoryEvent(**...)`` or an insert on Core."""
    return {
        "tenant_id": tenant_id,
        "subject_id": subject_id,
        "memory_uid": memory_uid,
        "action": action,
        "actor": actor,
        "at": at,
        "detail": {} if detail is None else detail,
    }


def _history_entry(event: MemoryEvent) -> HistoryEntry:
    return HistoryEntry(
        memory_id=event.memory_uid, action=event.action, actor=event.actor, at=event.at, detail=event.detail
    )


def _utc(stamp: datetime) -> datetime:
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


class _AddPart(NamedTuple):
    """One caller's add, screened and embedded, waiting for its transaction (see :meth:`MemoryStore.add_batch`)."""

    items: tuple[NewMemory, ...]
    actor: str
    audit: AuditEvent | None
    guard: WriteGuard | None
    policy: SensitivePolicy
    screened: tuple[Screened, ...]
    vectors: np.ndarray


class _Doomed(NamedTuple):
    """A memory about to be deleted: its row id, public id and owner."""

    id: int
    uid: str
    owner: Subject


def _by_subject(rows: Iterable[_Doomed]) -> dict[str, list[str]]:
    """Memory ids per subject name, for the audit records of a deletion."""
    touched: dict[str, list[str]] = {}
    for row in rows:
        touched.setdefault(row.owner.external_id, []).append(row.uid)
    return touched


class MemoryStore:
    """Encrypted, tenant- and subject-isolated memory storage with hybrid retrieval."""

    def __init__(
        self,
        *,
        engine: Engine,
        master_key: MasterKey,
        embedder: Embedder,
        settings: StoreSettings,
        detector: Detector | None = None,
    ) -> None:
        self._engine = engine
        # Whether an add may write its rows before it takes the tenant's write lock (held to commit, so that
        # commit order is change-seq order): on PostgreSQL, where that lock is a row lock its waiters queue on,
        # this keeps the memory, history and vector inserts (a pgvector insert updates the HNSW graph) out of
        # the time the tenant's other writers wait. A forget meanwhile does not wait for such an add (memories'
        # subject key is checked at commit, revision 0010, so the add holds no lock on the subject's row); the add
        # then finds the tombstone under the lock (guarded), or its subject key fails at commit and it is retried
        # (WriteRacedError). Not on SQLite: a transaction that read before it writes cannot take the write lock
        # once another has committed.
        self._locks_late = engine.dialect.name == "postgresql"
        self._sessions: sessionmaker[Session] = make_sessionmaker(engine)
        self._embedder = embedder
        self._settings = settings
        self._keys = KeyManager(master_key)
        self.audit = AuditLog(self._sessions)
        self.add_commits: GroupCommit[_AddPart, list[MemoryRecord]] = GroupCommit(
            self._add_parts, size=lambda part: len(part.items), max_size=_ADD_GROUP_MAX
        )
        self.screener = Screener(self._sessions, detector)
        self.jobs = JobLog(self._sessions)
        set_faiss_threads(settings.faiss_threads)
        require_head(engine)
        self._bind_master_key()
        self.indexes = IndexRegistry(
            self._sessions,
            self._keys,
            index_dir=settings.index_dir,
            exact_max=settings.index_exact_max,
            nprobe=settings.index_ivf_nprobe,
            persist_every=settings.index_persist_every,
        )
        self.vectors: VectorBackend = self._vector_backend(settings, engine)
        self._lexical = LexicalCache()
        self._searcher = HybridSearcher(
            self._sessions,
            self._keys,
            embedder,
            self.vectors,
            self._lexical,
            query_cache_size=settings.query_cache_size,
        )
        self._touch_lock = threading.Lock()
        self._touched: dict[int, datetime] = {}

    def _bind_master_key(self) -> None:
        """Verify the master key, or bind a fresh database to it. Replicas starting together on an empty
        database race to insert the keyring row: the loser re-reads the winner's row and verifies it."""
        try:
            with self._sessions.begin() as session:
                self._keys.verify_or_initialise(session)
        except IntegrityError:
            with self._sessions.begin() as session:
                self._keys.verify_or_initialise(session)

    def _vector_backend(self, settings: StoreSettings, engine: Engine) -> VectorBackend:
        if settings.vector_backend == "faiss":
            return FaissBackend(self.indexes)
        if engine.dialect.name != "postgresql":
            raise ConfigurationError("SEALMEM_VECTOR_BACKEND=pgvector needs a PostgreSQL SEALMEM_DATABASE_URL")
        return PgVectorBackend(self._sessions, self._keys, dim=self._embedder.dim)

    @classmethod
    def open(
        cls,
        settings: StoreSettings,
        *,
        master_key: MasterKey,
        embedder: Embedder,
        detector: Detector | None = None,
    ) -> MemoryStore:
        return cls(
            engine=make_engine(settings),
            master_key=master_key,
            embedder=embedder,
            settings=settings,
            detector=detector,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def close(self) -> None:
        self.persist()
        self.audit.close()
        self._engine.dispose()

    def persist(self, *, only_due: bool = False) -> None:
        """Flush access times and save changed indexes. ``only_due``: only indexes changed enough to be due for a
        save (what the service's periodic upkeep asks: rewriting a large index for a few changes would cost more
        than replaying them from the change log after a crash); :meth:`close` saves every changed one."""
        self._flush_touches()
        self.vectors.persist(only_due=only_due)

    # ---- tenants and subjects ---------------------------------------------------------------------

    def create_tenant(self, *, name: str) -> TenantInfo:
        validation.check_identifier(name, "tenant name")
        tenant_id = str(uuid.uuid4())
        index_key = generate_key()
        tenant = Tenant(
            id=tenant_id,
            name=name,
            wrapped_index_key=self._keys.wrap_index_key(tenant_id, 1, index_key),
            index_key_version=1,
            change_seq=0,
            embedding_model=self._embedder.model_id,
            embedding_dim=self._embedder.dim,
        )
        try:
            with self._sessions.begin() as session:
                self._keys.require_current(session)
                session.add(tenant)
                session.flush()
                session.add(AuditHead(tenant_id=tenant_id, seq=0, last_hash=GENESIS_HASH))
        except IntegrityError as exc:
            raise ConflictError("a tenant with this name already exists") from exc
        self.vectors.after_commit(tenant_id)
        self.vectors.persist(tenant_id, force=True)
        return TenantInfo(id=tenant.id, name=tenant.name, created_at=tenant.created_at)

    def get_tenant(self, *, tenant_id: str) -> TenantInfo:
        with self._sessions.begin() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                raise NotFoundError("tenant not found")
            return TenantInfo(id=tenant.id, name=tenant.name, created_at=tenant.created_at)

    def list_tenants(self) -> list[TenantInfo]:
        with self._sessions.begin() as session:
            return [
                TenantInfo(id=t.id, name=t.name, created_at=t.created_at)
                for t in session.scalars(select(Tenant).order_by(Tenant.created_at))
            ]

    def _subject(self, session: Session, tenant_id: str, subject: str) -> Subject:
        row = session.scalar(select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject))
        if row is None:
            raise NotFoundError("subject not found")
        return row

    def _subject_or_create(self, session: Session, tenant_id: str, subject: str) -> Subject:
        row = session.scalar(select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject))
        if row is None:
            self._keys.require_current(session)
            subject_id = str(uuid.uuid4())
            row = Subject(
                id=subject_id,
                tenant_id=tenant_id,
                external_id=subject,
                wrapped_key=self._keys.wrap_subject_key(tenant_id, subject_id, generate_key()),
                change_seq=0,
            )
            session.add(row)
            session.flush()
        return row

    @staticmethod
    def _subjects_named(session: Session, tenant_id: str, names: Iterable[str]) -> dict[str, Subject]:
        return {
            row.external_id: row
            for row in session.scalars(_SUBJECTS_NAMED, {"tenant_id": tenant_id, "names": sorted(names)})
        }

    def _sealer(self, subject: Subject) -> MemorySealer:
        return MemorySealer(self._keys.subject_key(subject), subject.tenant_id, subject.id)

    def _bump(self, session: Session, tenant_id: str, count: int, policy: SensitivePolicy | None = None) -> int:
        """Take the tenant's write lock and reserve ``count`` change sequence numbers; returns the last. A write
        whose texts were screened under ``policy`` fails (and is retried) if the tenant's policy changed since."""
        # On the session's connection, not through the ORM: no Tenant object is loaded before a write's bump (the
        # ORM's bulk-update bookkeeping was two thirds of the call's CPU).
        row = session.connection().execute(_BUMP, {"tenant_id": tenant_id, "count": count}).first()
        if row is None:
            raise NotFoundError("tenant not found")
        if policy is not None:
            self.screener.check(tenant_id, policy, int(row[1] or 0))
        return int(row[0])

    def _vault(self, session: Session, subject: Subject) -> Vault:
        return Vault(session, tenant_id=subject.tenant_id, subject_id=subject.id, key=self._keys.subject_key(subject))

    def _stored_text(self, session: Session, subject: Subject, screened: Screened) -> str:
        """The text to store: pseudonymised values numbered (and sealed) in the subject's vault."""
        pending = screened.pending
        if not pending:
            return screened.embedded
        return screened.render(self._vault(session, subject).number(pending))

    def pseudonym(self, purpose: str, *parts: str) -> str:
        """A keyed digest of ``parts`` (HMAC under a key derived from the master key): a stable name for values
        that must not be stored or guessable, such as a conversation's first message."""
        return self._keys.master.pseudonym(purpose, *parts)

    def tombstones_since(self, since: datetime) -> builtins.list[tuple[int, str, str, datetime]]:
        """Forgets stamped after ``since``, as (tombstone id, tenant id, subject digest, time), oldest first: how
        other processes learn of a forget to drop what they hold of the subject in RAM."""
        with self._sessions.begin() as session:
            rows = session.execute(
                select(
                    SubjectTombstone.id,
                    SubjectTombstone.tenant_id,
                    SubjectTombstone.digest,
                    SubjectTombstone.forgotten_at,
                )
                .where(SubjectTombstone.forgotten_at > since)
                .order_by(SubjectTombstone.forgotten_at)
            ).all()
        return [(int(r[0]), str(r[1]), str(r[2]), _utc(r[3])) for r in rows]

    def subject_digest(self, tenant_id: str, subject: str) -> str:
        """The keyed digest that names a subject where its id must not be kept (tombstones)."""
        return self.pseudonym("subject", tenant_id, subject)

    def _guard(self, session: Session, tenant_id: str, subjects: Iterable[str], guard: WriteGuard | None) -> None:
        """Refuse a guarded write (see :class:`WriteGuard`). Runs inside the write's transaction after the
        tenant's write lock, which a forget takes too: a forget that committed first is seen here, and one that
        comes later waits for this write and then deletes what it wrote."""
        if guard is None:
            return
        if guard.begun_at < utcnow() - TOMBSTONE_RETENTION:
            raise SubjectForgottenError("the request is too old to write; nothing was written")
        if guard.credential_id is not None:
            # Share-locked: a revoke waits for this write's commit, so none can commit after the revoke returned.
            key = session.connection().execute(_KEY_REVOKED, {"credential_id": guard.credential_id}).first()
            if key is None or key[0] is not None:
                raise CredentialRevokedError("the API key of this request has been revoked; nothing was written")
        digests = sorted({self.subject_digest(tenant_id, subject) for subject in subjects})
        forgotten = session.connection().scalar(
            _FORGOTTEN_SINCE, {"tenant_id": tenant_id, "digests": digests, "since": guard.begun_at}
        )
        if forgotten is not None:
            raise SubjectForgottenError(
                "the subject was forgotten while this request was in progress; nothing was written"
            )

    @classmethod
    def _record_audit(
        cls,
        session: Session,
        tenant_id: str,
        audit: AuditEvent | None,
        touched: Mapping[str, Sequence[str]],
        desensitised: Mapping[str, Mapping[str, int]] | None = None,
        **detail: Any,
    ) -> None:
        """Append ``audit`` to the tenant's chain inside the change's transaction (see :meth:`_audit_events`)."""
        if audit is not None:
            append_all_in(session, tenant_id, cls._audit_events(audit, touched, desensitised, **detail))

    @staticmethod
    def _audit_events(
        audit: AuditEvent | None,
        touched: Mapping[str, Sequence[str]],
        desensitised: Mapping[str, Mapping[str, int]] | None = None,
        **detail: Any,
    ) -> list[AuditEvent]:
        """``audit`` as one record per subject touched (``touched``: subject -> memory ids), so a per-subject
        audit query finds every change. ``desensitised`` (subject -> sensitive values found by type) goes into
        that subject's record: counts, never values."""
        if audit is None:
            return []
        events = []
        for subject, ids in touched.items():
            extra = {**audit.detail, **detail}
            found = (desensitised or {}).get(subject)
            if found:
                extra["desensitised"] = dict(sorted(found.items()))
            events.append(replace(audit, subject=subject, memory_ids=list(ids), detail=extra))
        return events

    # ---- writes ------------------------------------------------------------------------------------

    def add(
        self,
        *,
        tenant_id: str,
        item: NewMemory,
        actor: str = "system",
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> MemoryRecord:
        return self.add_batch(tenant_id=tenant_id, items=[item], actor=actor, audit=audit, guard=guard)[0]

    @retry_write
    def add_batch(
        self,
        *,
        tenant_id: str,
        items: Sequence[NewMemory],
        actor: str = "system",
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
        prepared: PreparedAdd | None = None,
    ) -> list[MemoryRecord]:
        """Store ``items`` atomically (all or nothing), embedding them in batches.

        Every write method takes ``audit`` (appended to the tenant's audit chain in the same transaction, one
        record per subject, with the subject and memory ids filled in) and ``guard`` (see :class:`WriteGuard`).
        ``prepared``: the screening and embedding :meth:`prepare_add` did beforehand, used when it is for the same
        texts under the tenant's current policy (otherwise done again here).

        Adds to one tenant that arrive while another is committing are committed together, in the next
        transaction (:mod:`memory_store.group_commit`); each stays all or nothing, and fails only as it would alone.
        """
        if not items:
            return []
        for item in items:
            validation.check_new_memory(item)
        given = tuple(item.text for item in items)
        if prepared is not None and self._prepared_fits(prepared, tenant_id, given):
            policy, screened, vectors = prepared.policy, list(prepared.screened), prepared.vectors
        else:
            policy, screened = self.screener.screen(tenant_id, given)
            vectors = self._embedder.embed([s.embedded for s in screened])
        part = _AddPart(tuple(items), actor, audit, guard, policy, tuple(screened), vectors)
        return self.add_commits.run((tenant_id, policy.revision), part)

    def _add_parts(self, key: Hashable, parts: Sequence[_AddPart]) -> list[list[MemoryRecord]]:
        """Commit the adds ``parts`` (of one tenant, screened under one policy) in one transaction: the tenant's
        write lock taken once, each part's guard checked and its audit records appended; its records per part."""
        tenant_id, _ = cast(tuple[str, int], key)
        policy = parts[0].policy
        items = [item for part in parts for item in part.items]
        screened = [screen for part in parts for screen in part.screened]
        vectors = (
            np.concatenate([np.asarray(part.vectors, dtype=np.float32) for part in parts])
            if len(parts) > 1
            else parts[0].vectors
        )
        now = utcnow()
        known: dict[int, np.ndarray] = {}
        records: list[MemoryRecord] = []
        wanted = {item.subject for item in items}
        late = False
        try:
            with self._sessions.begin() as session:
                # The tenant's write lock is held from the bump to the commit. On PostgreSQL an add to subjects that
                # exist, with nothing to number in a vault, writes its rows first and takes the lock last (see
                # _locks_late); otherwise the lock comes first, as SQLite needs (no read->write upgrade) and as
                # creating a subject or numbering its values does.
                late = self._locks_late and not any(s.pending for s in screened)
                subjects: dict[str, Subject] = {}
                if late:
                    subjects = self._subjects_named(session, tenant_id, wanted)
                    late = len(subjects) == len(wanted)
                if not late:
                    last_seq = self._bump(session, tenant_id, len(items), policy)
                    self._guard_parts(session, tenant_id, parts)
                    subjects = self._subjects_named(session, tenant_id, wanted)
                rows: list[Memory] = []
                values: list[dict[str, Any]] = []
                texts: list[str] = []
                actors: list[str] = []
                for part in parts:
                    for item, screen in zip(part.items, part.screened, strict=True):
                        subject = subjects.get(item.subject) or self._subject_or_create(
                            session, tenant_id, item.subject
                        )
                        subjects[item.subject] = subject
                        text = self._stored_text(session, subject, screen)
                        texts.append(text)
                        actors.append(part.actor)
                        values.append(
                            _new_memory_row(self._sealer(subject), subject, item, text, vectors[len(values)], now)
                        )
                session.flush()  # what the ORM holds (a new subject, vault entries) goes first
                connection = session.connection()
                inserted = connection.execute(_INSERT_MEMORIES, values)
                ids: dict[str, int] = {str(uid): int(row_id) for uid, row_id in inserted}
                for row_values in values:
                    # Never added to the session: the rows' public views and lexical entries are built from them.
                    rows.append(Memory(id=ids[row_values["uid"]], **row_values))
                connection.execute(
                    _INSERT_EVENTS,
                    [
                        _memory_event(
                            tenant_id=tenant_id,
                            subject_id=row.subject_id,
                            memory_uid=row.uid,
                            action="add",
                            actor=row_actor,
                            at=now,
                            detail={"kind": row.kind, "source": row.source},
                        )
                        for row, row_actor in zip(rows, actors, strict=True)
                    ],
                )
                staged = [(row.id, row.subject_id, vector) for row, vector in zip(rows, vectors, strict=True)]
                known.update((row_id, vector) for row_id, _, vector in staged)
                self.vectors.stage(session, tenant_id, staged)
                if late:
                    last_seq = self._bump(session, tenant_id, len(items), policy)
                    self._guard_parts(session, tenant_id, parts)
                    # Read again under the lock: the seqs read before it may predate a write that committed since.
                    seqs = connection.execute(_SUBJECT_SEQS, {"ids": [subject.id for subject in subjects.values()]})
                    lexical_before = {str(subject_id): int(seq) for subject_id, seq in seqs}
                else:
                    lexical_before = {subject.id: subject.change_seq for subject in subjects.values()}
                first_seq = last_seq - len(items) + 1
                connection.execute(
                    _INSERT_CHANGES,
                    [
                        {"tenant_id": tenant_id, "seq": first_seq + offset, "memory_id": row.id, "op": "upsert"}
                        for offset, row in enumerate(rows)
                    ],
                )
                connection.execute(
                    _SUBJECT_WRITTEN,
                    [{"subject": subject.id, "seq": last_seq, "at": now} for subject in subjects.values()],
                )
                records = [
                    record(row, item.subject, text=text, metadata=item.metadata)
                    for row, item, text in zip(rows, items, texts, strict=True)
                ]
                events: list[AuditEvent] = []
                start = 0
                for part in parts:
                    touched: dict[str, list[str]] = {}
                    found: dict[str, Counter[str]] = {}
                    for item, row, screen in zip(part.items, rows[start:], part.screened, strict=False):
                        touched.setdefault(item.subject, []).append(row.uid)
                        found.setdefault(item.subject, Counter()).update(screen.counts)
                    start += len(part.items)
                    events.extend(self._audit_events(part.audit, touched, desensitised=found))
                if events:
                    append_all_in(session, tenant_id, events)
        except IntegrityError as exc:
            if late:  # a subject (or the tenant, or its vector key) it read was deleted or created meanwhile
                raise WriteRacedError(
                    "a row the add had read changed before it took its lock; nothing was written"
                ) from exc
            raise
        self.vectors.after_commit(tenant_id, known, seqs=(first_seq, last_seq))
        added: dict[str, list[LexicalSource]] = {}
        for row, text in zip(rows, texts, strict=True):
            added.setdefault(row.subject_id, []).append(lexical_source(row, text))
        for subject_id, sources in added.items():
            self._lexical.advance(subject_id, lexical_before[subject_id], last_seq, upserts=sources)
        results: list[list[MemoryRecord]] = []
        for part in parts:
            results.append(records[: len(part.items)])
            records = records[len(part.items) :]
        return results

    def _guard_parts(self, session: Session, tenant_id: str, parts: Sequence[_AddPart]) -> None:
        for part in parts:
            self._guard(session, tenant_id, {item.subject for item in part.items}, part.guard)

    def prepare_add(self, *, tenant_id: str, items: Sequence[NewMemory]) -> PreparedAdd:
        """Screen and embed ``items`` ahead of :meth:`add_batch` (no database write; raises what the add would
        raise for invalid or rejected items)."""
        for item in items:
            validation.check_new_memory(item)
        texts = tuple(item.text for item in items)
        policy, screened = self.screener.screen(tenant_id, texts)
        vectors = self._embedder.embed([s.embedded for s in screened])
        return PreparedAdd(tenant_id=tenant_id, texts=texts, policy=policy, screened=tuple(screened), vectors=vectors)

    def _prepared_fits(self, prepared: PreparedAdd, tenant_id: str, texts: tuple[str, ...]) -> bool:
        """Whether ``prepared`` is for these texts under the tenant's policy as this process knows it now (after
        a write failed on a changed policy, the reloaded one: the retry screens again)."""
        if prepared.tenant_id != tenant_id or prepared.texts != texts:
            return False
        current = self.screener.policy(tenant_id, max_age_s=self.screener.read_ttl_s)
        return current.revision == prepared.policy.revision

    @retry_write
    def update(
        self,
        *,
        tenant_id: str,
        memory_id: str,
        subject: str | None = None,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        kind: str | None = None,
        importance: float | None = None,
        expires_at: datetime | None = _UNSET,
        actor: str = "system",
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> MemoryRecord:
        """Change a memory; a new text is re-embedded. The history records which fields changed."""
        if text is not None:
            validation.check_text(text)
        if metadata is not None:
            validation.check_metadata(metadata)
        if kind is not None:
            validation.check_kind(kind)
        if importance is not None:
            validation.check_importance(importance)
        policy, screened = self.screener.screen(tenant_id, [text] if text is not None else [])
        vector = self._embedder.embed([screened[0].embedded])[0] if screened else None
        now = utcnow()
        with self._sessions.begin() as session:
            seq = self._bump(session, tenant_id, 1, policy)  # write lock first: no SQLite read->write upgrade
            row, owner = self._memory_row(session, tenant_id, memory_id, subject)
            self._guard(session, tenant_id, [owner.external_id], guard)
            sealer = self._sealer(owner)
            changed: list[str] = []
            if screened:
                row.text_ct = sealer.seal_text(row.uid, self._stored_text(session, owner, screened[0]))
                row.embedding_ct = sealer.seal_embedding(row.uid, vector)  # type: ignore[arg-type]
                changed.append("text")
            if metadata is not None:
                row.metadata_ct = sealer.seal_metadata(row.uid, metadata)
                changed.append("metadata")
            if kind is not None:
                row.kind = kind
                changed.append("kind")
            if importance is not None:
                row.importance = float(importance)
                changed.append("importance")
            if expires_at is not _UNSET:
                if expires_at is not None and expires_at.tzinfo is None:
                    raise ValidationError("expires_at must carry a timezone")
                row.expires_at = expires_at
                changed.append("expires_at")
            if not changed:
                raise ValidationError("nothing to update")
            row.updated_at = now
            lexical_before = owner.change_seq
            owner.change_seq = seq
            owner.last_activity_at = now
            session.add(VectorChange(tenant_id=tenant_id, seq=seq, memory_id=row.id, op="upsert"))
            if vector is not None:
                self.vectors.stage(session, tenant_id, [(row.id, row.subject_id, vector)])
            session.add(
                MemoryEvent(
                    **_memory_event(
                        tenant_id=tenant_id,
                        subject_id=owner.id,
                        memory_uid=row.uid,
                        action="update",
                        actor=actor,
                        at=now,
                        detail={"fields": changed},
                    )
                )
            )
            self._record_audit(
                session,
                tenant_id,
                audit,
                {owner.external_id: [row.uid]},
                desensitised={owner.external_id: screened[0].counts} if screened else None,
                fields=changed,
            )
            record = decode(row, owner, sealer)
            row_id = row.id
        self.vectors.after_commit(tenant_id, {row_id: vector} if vector is not None else None)
        relexed = [lexical_source(row, record.text)] if {"text", "kind"} & set(changed) else []
        self._lexical.advance(owner.id, lexical_before, seq, upserts=relexed)
        return record

    @retry_write
    def supersede(
        self,
        *,
        tenant_id: str,
        memory_id: str,
        by: str,
        subject: str | None = None,
        actor: str = "system",
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> MemoryRecord:
        """Mark ``memory_id`` as replaced by memory ``by``: it stays in history and is left out of rankings."""
        now = utcnow()
        with self._sessions.begin() as session:
            seq = self._bump(session, tenant_id, 1)
            row, owner = self._memory_row(session, tenant_id, memory_id, subject)
            newer, newer_owner = self._memory_row(session, tenant_id, by, subject)
            if newer_owner.id != owner.id or newer.id == row.id:
                raise ValidationError("a memory can only be superseded by another memory of the same subject")
            self._guard(session, tenant_id, [owner.external_id], guard)
            row.status = "superseded"
            row.superseded_by = newer.uid
            row.updated_at = now
            lexical_before = owner.change_seq
            owner.change_seq = seq
            session.add(VectorChange(tenant_id=tenant_id, seq=seq, memory_id=row.id, op="upsert"))
            session.add(
                MemoryEvent(
                    **_memory_event(
                        tenant_id=tenant_id,
                        subject_id=owner.id,
                        memory_uid=row.uid,
                        action="supersede",
                        actor=actor,
                        at=now,
                        detail={"superseded_by": newer.uid},
                    )
                )
            )
            self._record_audit(
                session, tenant_id, audit, {owner.external_id: [row.uid, newer.uid]}, superseded_by=newer.uid
            )
            superseded = decode(row, owner, self._sealer(owner))
        self._lexical.advance(owner.id, lexical_before, seq)  # the documents do not change
        return superseded

    def delete(
        self,
        *,
        tenant_id: str,
        memory_id: str,
        subject: str | None = None,
        actor: str = "system",
        include_expired: bool = False,
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> None:
        """Delete one memory (its history stays); see :meth:`delete_many`."""
        self.delete_many(
            tenant_id=tenant_id,
            memory_ids=[memory_id],
            subject=subject,
            actor=actor,
            include_expired=include_expired,
            audit=audit,
            guard=guard,
        )

    @retry_write
    def delete_many(
        self,
        *,
        tenant_id: str,
        memory_ids: Sequence[str],
        subject: str | None = None,
        actor: str = "system",
        include_expired: bool = False,
        audit: AuditEvent | None = None,
        guard: WriteGuard | None = None,
    ) -> int:
        """Delete memories in one transaction, all or nothing; returns how many were deleted.

        NotFoundError, and nothing is deleted, when any of ``memory_ids`` does not exist in the tenant, belongs
        to a subject other than ``subject`` (when given) or has expired (unless ``include_expired``). Each
        memory's history records the deletion; its vector goes with it (FAISS through the change log,
        pgvector rows by foreign-key cascade) and it leaves its subject's cached lexical index.
        """
        if isinstance(memory_ids, str):
            raise ValidationError("memory_ids must be a sequence of memory ids, not one string")
        wanted = list(dict.fromkeys(memory_ids))
        if not wanted:
            return 0
        with self._sessions.begin() as session:
            # Write lock first (no SQLite read->write upgrade), reserving one change seq per memory.
            last_seq = self._bump(session, tenant_id, len(wanted))
            now = utcnow()
            found: dict[str, _Doomed] = {}
            for start in range(0, len(wanted), _CHUNK):
                query = (
                    select(Memory.id, Memory.uid, Memory.expires_at, Subject)
                    .join(Subject, Subject.id == Memory.subject_id)
                    .where(Memory.tenant_id == tenant_id, Memory.uid.in_(wanted[start : start + _CHUNK]))
                )
                if subject is not None:
                    query = query.where(Subject.external_id == subject)
                for row_id, uid, expires_at, owner in session.execute(query):
                    if include_expired or expires_at is None or expires_at > now:
                        found[uid] = _Doomed(row_id, uid, owner)
            if len(found) != len(wanted):
                raise NotFoundError("memory not found")
            doomed = [found[uid] for uid in wanted]
            self._guard(session, tenant_id, {row.owner.external_id for row in doomed}, guard)
            removed = self._delete_rows(session, tenant_id, doomed, last_seq=last_seq, actor=actor, at=now)
            self._record_audit(session, tenant_id, audit, _by_subject(doomed))
        self.vectors.after_commit(tenant_id)
        self._lexical_removed(removed, last_seq)
        return len(wanted)

    @staticmethod
    def _delete_rows(
        session: Session, tenant_id: str, rows: Sequence[_Doomed], *, last_seq: int, actor: str, at: datetime
    ) -> dict[str, tuple[int, builtins.list[int]]]:
        """Delete ``rows`` inside the caller's transaction, which holds the tenant's write lock and has reserved
        the change seqs ``last_seq - len(rows) + 1 .. last_seq`` (one per row). Returns, per owner, its change
        seq before this write and its deleted row ids (for :meth:`_lexical_removed` after the commit)."""
        removed: dict[str, tuple[int, builtins.list[int]]] = {}
        for row in rows:
            removed.setdefault(row.owner.id, (row.owner.change_seq, []))[1].append(row.id)
        first_seq = last_seq - len(rows) + 1
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            session.execute(
                insert(VectorChange),
                [
                    {"tenant_id": tenant_id, "seq": first_seq + start + i, "memory_id": row.id, "op": "delete"}
                    for i, row in enumerate(chunk)
                ],
            )
            session.add_all(
                [
                    MemoryEvent(
                        **_memory_event(
                            tenant_id=tenant_id,
                            subject_id=row.owner.id,
                            memory_uid=row.uid,
                            action="delete",
                            actor=actor,
                            at=at,
                        )
                    )
                    for row in chunk
                ]
            )
            session.execute(
                delete(Memory)
                .where(Memory.id.in_([row.id for row in chunk]))
                .execution_options(synchronize_session=False)
            )
        for owner in {row.owner.id: row.owner for row in rows}.values():
            owner.change_seq = last_seq  # new lexical-cache version for the subject
            owner.last_activity_at = at
        return removed

    def _lexical_removed(self, removed: dict[str, tuple[int, builtins.list[int]]], last_seq: int) -> None:
        """Take committed deletions (from :meth:`_delete_rows`) out of the cached lexical indexes."""
        for subject_id, (before, row_ids) in removed.items():
            self._lexical.advance(subject_id, before, last_seq, removals=row_ids)

    @retry_write
    def forget_subject(
        self, *, tenant_id: str, subject: str, actor: str = "system", audit: AuditEvent | None = None
    ) -> int:
        """Crypto-shred a subject: destroy its data key, delete its rows and vectors; returns memories removed.

        The tenant's index key is replaced too, so an index file saved before the forget (a backup, a stray
        copy) cannot be decrypted afterwards. A tombstone (the subject's keyed digest and the time) is laid in
        the same transaction: a guarded write from a request that began before it cannot bring the subject back
        (:meth:`_guard`). A subject that does not exist is a NotFoundError and changes nothing.
        """
        with self._sessions.begin() as session:
            self._bump(session, tenant_id, 0)  # write lock first
            owner = self._subject(session, tenant_id, subject)
            ids = self._shred(session, tenant_id, owner)
            self._record_audit(session, tenant_id, audit, {subject: []}, memories_deleted=len(ids))
            subject_id = owner.id
            tombstone = SubjectTombstone(
                tenant_id=tenant_id, digest=self.subject_digest(tenant_id, subject), forgotten_at=utcnow()
            )
            session.add(tombstone)
            session.flush()
            tombstone_id = tombstone.id
        # Stamped again once the forget has committed: a request that began while the forget ran could still
        # read the old data (its snapshot predates the commit), and it began before this stamp, so its writes
        # are refused; one that begins after it cannot have seen anything of the subject.
        with self._sessions.begin() as session:
            session.execute(
                update(SubjectTombstone).where(SubjectTombstone.id == tombstone_id).values(forgotten_at=utcnow())
            )
        self._keys.forget(subject_id)
        self._lexical.drop(subject_id)
        self._searcher.queries.forget(subject_id)
        self.vectors.after_commit(tenant_id)
        self.vectors.persist(tenant_id, force=True)
        if self._engine.dialect.name == "sqlite":
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        log.info("forgot a subject of tenant %s: %d memories shredded", tenant_id, len(ids))
        return len(ids)

    def _shred(self, session: Session, tenant_id: str, owner: Subject) -> builtins.list[int]:
        """Delete ``owner`` with its memories, vectors (through the change log) and history, and replace the
        tenant's index key, inside the caller's transaction (which holds the tenant's write lock)."""
        mine = (Memory.tenant_id == tenant_id, Memory.subject_id == owner.id)  # (tenant, subject, id) index
        ids = list(session.scalars(select(Memory.id).where(*mine)))
        last_seq = self._bump(session, tenant_id, max(len(ids), 1))
        first_seq = last_seq - max(len(ids), 1) + 1
        if ids:
            session.execute(
                insert(VectorChange),
                [
                    {"tenant_id": tenant_id, "seq": first_seq + i, "memory_id": mid, "op": "delete"}
                    for i, mid in enumerate(ids)
                ],
            )
        else:
            session.add(VectorChange(tenant_id=tenant_id, seq=first_seq, memory_id=-1, op="delete"))
        session.execute(delete(Memory).where(*mine))
        session.execute(delete(MemoryEvent).where(MemoryEvent.subject_id == owner.id))
        session.execute(delete(SensitiveValue).where(SensitiveValue.subject_id == owner.id))
        JobLog.forget_subject(session, tenant_id, self.subject_digest(tenant_id, owner.external_id))
        session.delete(owner)
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        self._keys.require_current(session)
        tenant.index_key_version += 1
        tenant.wrapped_index_key = self._keys.wrap_index_key(tenant_id, tenant.index_key_version, generate_key())
        return ids

    def rotate_master_key(self, *, new_master_key: MasterKey, audit: AuditEvent | None = None) -> int:
        """Re-wrap every data key under a new master key (memories are not re-encrypted); ``audit`` goes into
        every tenant's chain in the same transaction.

        Run it with the API stopped: a process still running with the old key refuses to wrap new keys
        (``MasterKeyChangedError``) and must be restarted with the new one."""
        with self._sessions.begin() as session:
            moved = self._keys.rotate(session, new_master_key)
            if audit is not None:
                for tenant_id in session.scalars(select(Tenant.id).order_by(Tenant.id)):
                    append_all_in(session, tenant_id, [audit])
        self._keys.use(new_master_key)
        log.info("master key rotated to fingerprint %s: %d data keys re-wrapped", new_master_key.fingerprint, moved)
        return moved

    def reindex_tenant(self, *, tenant_id: str) -> int:
        return self.vectors.rebuild(tenant_id)

    @retry_write
    def purge_expired(self, *, tenant_id: str) -> int:
        """Delete every expired memory of the tenant in one transaction; returns how many.

        Their history records the deletion with actor ``"expiry"``. With nothing expired no write lock is taken.
        """
        now = utcnow()
        expired = (Memory.tenant_id == tenant_id, Memory.expires_at <= now)
        with self._sessions.begin() as session:
            if session.scalar(select(Memory.id).where(*expired).limit(1)) is None:
                return 0
        with self._sessions.begin() as session:
            self._bump(session, tenant_id, 0)  # write lock first
            rows = [
                _Doomed(row_id, uid, owner)
                for row_id, uid, owner in session.execute(
                    select(Memory.id, Memory.uid, Subject)
                    .join(Subject, Subject.id == Memory.subject_id)
                    .where(*expired)
                    .order_by(Memory.id)
                )
            ]
            if rows:
                last_seq = self._bump(session, tenant_id, len(rows))
                removed = self._delete_rows(session, tenant_id, rows, last_seq=last_seq, actor="expiry", at=now)
                self._record_audit(session, tenant_id, SYSTEM_AUDIT, _by_subject(rows))
        self.vectors.after_commit(tenant_id)
        if rows:
            self._lexical_removed(removed, last_seq)
            log.info("purged %d expired memories of tenant %s", len(rows), tenant_id)
        return len(rows)

    def purge_all_expired(self) -> int:
        """:meth:`purge_expired` for every tenant holding expired memories (a transaction per tenant); returns
        how many memories were deleted in all; tombstones past :data:`TOMBSTONE_RETENTION` and jobs past
        :data:`~memory_store.jobs.JOB_RETENTION` go too. Meant to run periodically."""
        with self._sessions.begin() as session:
            session.execute(
                delete(SubjectTombstone).where(SubjectTombstone.forgotten_at < utcnow() - TOMBSTONE_RETENTION)
            )
        self.jobs.purge()
        with self._sessions.begin() as session:
            tenants = list(session.scalars(select(Memory.tenant_id).where(Memory.expires_at <= utcnow()).distinct()))
        return sum(self.purge_expired(tenant_id=tenant_id) for tenant_id in tenants)

    # ---- reads -------------------------------------------------------------------------------------

    # ---- desensitisation -----------------------------------------------------------------------------

    def sensitive_policy(self, tenant_id: str) -> SensitivePolicy:
        """The tenant's desensitisation policy (at most a couple of seconds old)."""
        return self.screener.read_policy(tenant_id)

    @retry_write
    def set_sensitive_policy(
        self,
        *,
        tenant_id: str,
        actions: Mapping[str, str] | None = None,
        reveal_roles: Iterable[str] | None = None,
        audit: AuditEvent | None = None,
    ) -> SensitivePolicy:
        """Change the tenant's policy (``actions`` for some types, ``reveal_roles`` as a whole); audited in the
        same transaction with the types whose action changed. Writes already screened under the old policy
        are screened again before they commit. Nothing already stored is rewritten."""
        with self._sessions.begin() as session:
            self._bump(session, tenant_id, 0)  # write lock first
            row = session.execute(
                select(Tenant.sensitive_policy, Tenant.policy_rev).where(Tenant.id == tenant_id)
            ).one()
            before = SensitivePolicy.stored(row[0], int(row[1] or 0))
            after = self.screener.store_policy(
                session, tenant_id, before.changed(actions=actions, reveal_roles=reveal_roles)
            )
            if audit is not None:
                changes = {t: a for t, a in after.actions.items() if before.actions.get(t) != a}
                detail = {**audit.detail, "actions": changes, "reveal_roles": sorted(after.reveal_roles)}
                append_all_in(session, tenant_id, [replace(audit, detail=detail)])
        self.screener.remember(tenant_id, after)
        return after

    @retry_read
    def reveal(
        self, *, tenant_id: str, records: Sequence[MemoryRecord], role: str | None
    ) -> builtins.list[MemoryRecord]:
        """``records`` with pseudonymised placeholders replaced by the originals from their subjects' vaults,
        if the tenant's policy shows originals to ``role`` (None: the operator, always). Placeholders with no
        original (masked values, or text that merely looks like one) stay as they are."""
        if not records or (role is not None and not self.sensitive_policy(tenant_id).reveals_to(role)):
            return list(records)
        wanted: dict[str, set[tuple[str, int]]] = {}
        for item in records:
            found = placeholders_in(item.text)
            if found:
                wanted.setdefault(item.subject, set()).update(found)
        if not wanted:
            return list(records)
        originals: dict[str, dict[tuple[str, int], str]] = {}
        with self._sessions.begin() as session:
            owners = session.scalars(
                select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id.in_(wanted))
            )
            for owner in owners:
                originals[owner.external_id] = self._vault(session, owner).originals(wanted[owner.external_id])
        return [
            replace(item, text=restore(item.text, originals[item.subject])) if item.subject in originals else item
            for item in records
        ]

    @retry_read
    def originals(
        self, *, tenant_id: str, subject: str, placeholders: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], str]:
        """The originals behind a subject's numbered placeholders (type, ordinal) that its vault holds. The
        caller checks the policy (:meth:`SensitivePolicy.reveals_to`)."""
        wanted = set(placeholders)
        if not wanted:
            return {}
        with self._sessions.begin() as session:
            owner = session.scalar(
                select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject)
            )
            return {} if owner is None else self._vault(session, owner).originals(wanted)

    @retry_read
    def pseudonyms(
        self, *, tenant_id: str, subject: str, values: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """For text about to leave the process (a prompt to an outside LLM): the ordinals the subject's vault
        already gives ``values`` (type, original), and the highest ordinal of each type, so new values can be
        numbered after them. Nothing is added to the vault."""
        with self._sessions.begin() as session:
            owner = session.scalar(
                select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject)
            )
            if owner is None:
                return {}, {}
            vault = self._vault(session, owner)
            return vault.find(values), vault.top_ordinals()

    def _memory_row(
        self,
        session: Session,
        tenant_id: str,
        memory_id: str,
        subject: str | None,
    ) -> tuple[Memory, Subject]:
        query = (
            select(Memory, Subject)
            .join(Subject, Subject.id == Memory.subject_id)
            .where(Memory.uid == memory_id, Memory.tenant_id == tenant_id)
        )
        if subject is not None:
            query = query.where(Subject.external_id == subject)
        found = session.execute(query).first()
        if found is None:
            raise NotFoundError("memory not found")
        row, owner = found
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise NotFoundError("memory not found")
        return row, owner

    @retry_read
    def get(self, *, tenant_id: str, memory_id: str, subject: str | None = None) -> MemoryRecord:
        with self._sessions.begin() as session:
            row, owner = self._memory_row(session, tenant_id, memory_id, subject)
            record = decode(row, owner, self._sealer(owner))
        self._touch([row.id])
        return record

    @retry_read
    def list(
        self,
        *,
        tenant_id: str,
        subject: str | None = None,
        filters: Filters | None = None,
        cursor: str | None = None,
        limit: int = 50,
        status: str | None = None,
        source: str | None = None,
    ) -> Page:
        """Newest first; ``subject=None`` lists across the tenant (admin inspection). ``status`` (``active`` or
        ``superseded``; superseded ones need ``filters.include_superseded``) and ``source`` keep only memories with
        that status or source, in the query (plaintext columns), so a page is full whenever more match."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        if status is not None and status not in ("active", "superseded"):
            raise ValidationError("status must be active or superseded")
        filters = filters or Filters(include_superseded=True)
        after = decode_cursor(cursor) if cursor else None
        items: builtins.list[MemoryRecord] = []
        last_id: int | None = None
        with self._sessions.begin() as session:
            query: Select[*tuple[Any, ...]] = (
                select(*RECORD_COLUMNS, Subject)  # columns, not Memory objects: a page is read, never changed
                .join(Subject, Subject.id == Memory.subject_id)
                .where(Memory.tenant_id == tenant_id)
            )
            if subject is not None:
                query = query.where(Subject.id == self._subject(session, tenant_id, subject).id)
            query = apply_filters(query, filters, utcnow())
            if status is not None:
                query = query.where(Memory.status == status)
            if source is not None:
                query = query.where(Memory.source == source)
            query = query.order_by(Memory.id.desc())
            batch = limit + 1 if not filters.metadata else max(4 * limit, 200)
            more = True
            while more and len(items) <= limit:
                page_query = query.where(Memory.id < after) if after is not None else query
                rows = session.execute(page_query.limit(batch)).all()
                more = len(rows) == batch
                for row in rows:
                    owner: Subject = row[-1]
                    after = row.id
                    record = decode(row, owner, self._sealer(owner))
                    if filters.metadata and not metadata_matches(record.metadata, filters.metadata):
                        continue
                    if len(items) == limit:
                        more = True
                        break
                    items.append(record)
                    last_id = row.id
                else:
                    continue
                break
        next_cursor = encode_cursor(last_id) if more and last_id is not None and len(items) == limit else None
        return Page(items=items, next_cursor=next_cursor)

    @retry_read
    def search(
        self,
        *,
        tenant_id: str,
        subject: str,
        query: str,
        k: int = 10,
        filters: Filters | None = None,
        fusion: FusionConfig | None = None,
        role: str | None = None,
        min_score: float = 0.0,
        include_assistant: bool = False,
        prepared: PreparedSearch | None = None,
    ) -> builtins.list[SearchHit]:
        """Hybrid dense + BM25 search over one subject's memories, filters applied inside the search. The query
        is screened as a write would be (:meth:`as_stored`, for a caller of ``role``).

        Hits whose ``relevance`` (estimated probability of being relevant, comparable across queries; see
        :mod:`memory_store.calibration`) is below ``min_score`` are left out, so an unrelated query can return
        nothing (with an embedder that has no calibration, relevance is None and nothing is left out). The
        assistant's own chat replies (``turn`` memories with metadata ``role: "assistant"``) are left out
        unless ``include_assistant`` (or a metadata filter on ``role: "assistant"``) asks for them.

        ``prepared``: the screening and query embedding :meth:`prepare_search` did beforehand, used when it is for
        the same tenant, subject, query, role and name stripping."""
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query must be a non-empty string")
        if not 1 <= k <= 1000:
            raise ValidationError("k must be between 1 and 1000")
        if not isinstance(min_score, int | float) or not -1.0 <= min_score <= 1.0:  # NaN fails too
            raise ValidationError("min_score must be between -1 and 1")
        fusion = fusion or FusionConfig()
        early: EarlyVector | None = None
        if prepared is not None and (prepared.tenant_id, prepared.subject, prepared.query, prepared.role) == (
            tenant_id,
            subject,
            query,
            role,
        ):
            stored = prepared.stored
            early = prepared.early if prepared.strip_speakers == fusion.strip_speakers else None
        else:
            stored = self.as_stored(tenant_id=tenant_id, subject=subject, text=query, role=role)
        hits, row_ids = self._searcher.search(
            tenant_id=tenant_id,
            subject=subject,
            query=stored,
            k=k,
            filters=filters or Filters(),
            fusion=fusion,
            min_score=float(min_score),
            include_assistant=include_assistant,
            early=early,
        )
        self._touch(row_ids)
        return hits

    def prepare_search(
        self, *, tenant_id: str, subject: str, query: str, role: str | None = None, fusion: FusionConfig | None = None
    ) -> PreparedSearch:
        """Screen ``query`` and embed it ahead of :meth:`search` (a guess at the subject, checked by the search)."""
        fusion = fusion or FusionConfig()
        stored = self.as_stored(tenant_id=tenant_id, subject=subject, text=query, role=role)
        return PreparedSearch(
            tenant_id=tenant_id,
            subject=subject,
            query=query,
            role=role,
            strip_speakers=fusion.strip_speakers,
            stored=stored,
            early=self._searcher.early_vector(tenant_id, subject, stored, fusion),
        )

    def as_stored(self, *, tenant_id: str, subject: str, text: str, role: str | None = None) -> str:
        """``text`` as memories are stored, without writing anything: a value the subject's vault holds becomes
        its ``<TYPE_N>`` (so a search finds the memories that mention it), any other value the policy does not
        keep becomes ``<TYPE>``. Vault ordinals are used only for ``role`` None (the service itself) or a role
        the policy shows originals to: to anyone else a match would confirm a guessed value. Nothing is
        rejected; a search query passes through here, so the embedder never sees a value."""
        policy = self.screener.policy(tenant_id, max_age_s=self.screener.read_ttl_s)
        if not policy.screens:
            return text
        findings = [f for f in self.screener.detect(text) if policy.action(f.entity_type) != "keep"]
        if not findings:
            return text
        values = [(f.entity_type, text[f.start : f.end]) for f in findings]
        known: dict[tuple[str, str], int] = {}
        if role is None or policy.reveals_to(role):
            known = self.pseudonyms(tenant_id=tenant_id, subject=subject, values=values)[0]
        parts, at = [], 0
        for finding, value in zip(findings, values, strict=True):
            ordinal = known.get(value)
            parts += [text[at : finding.start], f"<{value[0]}_{ordinal}>" if ordinal else f"<{value[0]}>"]
            at = finding.end
        return "".join(parts) + text[at:]

    @retry_read
    def history(self, *, tenant_id: str, memory_id: str, subject: str | None = None) -> builtins.list[HistoryEntry]:
        with self._sessions.begin() as session:
            query = select(MemoryEvent).where(MemoryEvent.tenant_id == tenant_id, MemoryEvent.memory_uid == memory_id)
            if subject is not None:
                owner = session.scalar(
                    select(Subject.id).where(Subject.tenant_id == tenant_id, Subject.external_id == subject)
                )
                query = query.where(MemoryEvent.subject_id == owner)
            events = list(session.scalars(query.order_by(MemoryEvent.id)))
        if not events:
            raise NotFoundError("memory not found")
        return [_history_entry(e) for e in events]

    @retry_read
    def lineage(
        self, *, tenant_id: str, memory_id: str, subject: str | None = None, limit: int = 100
    ) -> builtins.list[MemoryRecord]:
        """The supersede lineage of a memory, oldest first: the memories it replaced (directly or not), itself,
        and the memories that replaced it (following ``superseded_by``), at most ``limit`` of them. Links are
        read from plaintext columns of the subject's superseded memories; only the lineage is decrypted, and
        nothing is marked as accessed. An empty list when the memory does not exist (or is expired)."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        with self._sessions.begin() as session:
            try:
                _, owner = self._memory_row(session, tenant_id, memory_id, subject)
            except NotFoundError:
                return []
            links = session.execute(
                select(Memory.uid, Memory.superseded_by).where(
                    Memory.tenant_id == tenant_id,
                    Memory.subject_id == owner.id,
                    Memory.superseded_by.is_not(None),
                )
            ).all()
            replaced_by = {str(old): str(new) for old, new in links}
            replaced: dict[str, builtins.list[str]] = {}
            for old, new in replaced_by.items():
                replaced.setdefault(new, []).append(old)
            wanted, todo = {memory_id}, [memory_id]
            while todo and len(wanted) < limit:  # back: everything this memory replaced, directly or not
                for older in replaced.get(todo.pop(), []):
                    if older not in wanted and len(wanted) < limit:
                        wanted.add(older)
                        todo.append(older)
            current = replaced_by.get(memory_id)
            while current is not None and current not in wanted and len(wanted) < limit:  # forward to the newest
                wanted.add(current)
                current = replaced_by.get(current)
            rows = session.execute(
                select(Memory)
                .where(
                    Memory.tenant_id == tenant_id,
                    Memory.subject_id == owner.id,
                    Memory.uid.in_(sorted(wanted)),
                    or_(Memory.expires_at.is_(None), Memory.expires_at > utcnow()),
                )
                .order_by(Memory.id)
            ).scalars()
            sealer = self._sealer(owner)
            return [decode(row, owner, sealer) for row in rows]

    @retry_read
    def list_subjects(
        self, *, tenant_id: str, limit: int = 100, offset: int = 0, prefix: str | None = None
    ) -> builtins.list[SubjectInfo]:
        """The tenant's subjects in id order, with memory counts; ``prefix`` keeps those whose id starts with it
        (case-sensitive, compared in the query on the plaintext id)."""
        with self._sessions.begin() as session:
            counts = (
                select(Memory.subject_id, func.count(Memory.id).label("n"))
                .where(Memory.tenant_id == tenant_id)
                .group_by(Memory.subject_id)
                .subquery()
            )
            query = (
                select(Subject, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.subject_id == Subject.id)
                .where(Subject.tenant_id == tenant_id)
            )
            if prefix:
                # substr, not LIKE: no wildcards to escape, and case-sensitive on SQLite as on PostgreSQL
                query = query.where(func.substr(Subject.external_id, 1, len(prefix)) == prefix)
            rows = session.execute(query.order_by(Subject.external_id).limit(limit).offset(offset)).all()
        return [
            SubjectInfo(
                subject=s.external_id,
                memory_count=int(n),
                created_at=s.created_at,
                last_activity_at=s.last_activity_at,
            )
            for s, n in rows
        ]

    @retry_read
    def list_sessions(
        self,
        *,
        tenant_id: str,
        subject: str,
        kinds: Sequence[str] | None = None,
        limit: int = 100,
    ) -> builtins.list[SessionSummary]:
        """The subject's sessions, most recently written first: every ``session_id`` among its memories (of
        ``kinds``, when given), with counts and times. Reads plaintext columns only, in one grouped query.
        NotFoundError if the subject does not exist."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        with self._sessions.begin() as session:
            owner = self._subject(session, tenant_id, subject)
            query = select(
                Memory.session_id,
                func.count(Memory.id),
                func.min(Memory.created_at),
                func.max(Memory.created_at),
            ).where(
                Memory.tenant_id == tenant_id,
                Memory.subject_id == owner.id,
                Memory.session_id.is_not(None),
            )
            if kinds is not None:
                query = query.where(Memory.kind.in_(list(kinds)))
            rows = session.execute(
                query.group_by(Memory.session_id).order_by(func.max(Memory.created_at).desc()).limit(limit)
            ).all()
        return [
            SessionSummary(
                session_id=str(session_id),
                memory_count=int(count),
                first_created_at=_utc(first),
                last_created_at=_utc(last),
            )
            for session_id, count, first, last in rows
        ]

    def export_subject(self, *, tenant_id: str, subject: str) -> dict[str, Any]:
        """Everything held about a subject, decrypted, for data portability."""
        memories: builtins.list[MemoryRecord] = []
        cursor: str | None = None
        while True:
            page = self.list(tenant_id=tenant_id, subject=subject, cursor=cursor, limit=1000)
            memories.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        with self._sessions.begin() as session:
            owner = self._subject(session, tenant_id, subject)
            events = list(
                session.scalars(select(MemoryEvent).where(MemoryEvent.subject_id == owner.id).order_by(MemoryEvent.id))
            )
            info = {"subject": owner.external_id, "created_at": owner.created_at}
        return {
            **info,
            "memories": memories,
            "history": [_history_entry(e) for e in events],
        }

    @retry_read
    def stats(self, *, tenant_id: str) -> Stats:
        with self._sessions.begin() as session:
            if session.get(Tenant, tenant_id) is None:
                raise NotFoundError("tenant not found")
            by_kind = dict(
                session.execute(
                    select(Memory.kind, func.count()).where(Memory.tenant_id == tenant_id).group_by(Memory.kind)
                ).all()
            )
            per_subject = dict(
                session.execute(
                    select(Subject.external_id, func.count(Memory.id))
                    .join(Memory, Memory.subject_id == Subject.id)
                    .where(Subject.tenant_id == tenant_id)
                    .group_by(Subject.external_id)
                ).all()
            )
            subjects = session.scalar(select(func.count()).where(Subject.tenant_id == tenant_id)) or 0
        index = self.vectors.stats(tenant_id)
        return Stats(
            memories=sum(by_kind.values()),
            subjects=int(subjects),
            by_kind={k: int(v) for k, v in by_kind.items()},
            per_subject={k: int(v) for k, v in per_subject.items()},
            index_vectors=index.vectors,
            index_bytes=index.bytes,
            index_kind=index.kind,
        )

    @retry_read
    def totals(self) -> StoreTotals:
        """Memories, subjects and tenants across the database, and the vectors and approximate bytes of the
        FAISS indexes loaded in this process (0 with the pgvector backend)."""
        with self._sessions.begin() as session:
            memories = session.scalar(select(func.count()).select_from(Memory)) or 0
            subjects = session.scalar(select(func.count()).select_from(Subject)) or 0
            tenants = session.scalar(select(func.count()).select_from(Tenant)) or 0
        loaded = self.indexes.loaded().values()
        return StoreTotals(
            memories=int(memories),
            subjects=int(subjects),
            tenants=int(tenants),
            loaded_index_vectors=sum(index.ntotal for index in loaded),
            loaded_index_bytes=sum(index.size_bytes for index in loaded),
        )

    # ---- access times ------------------------------------------------------------------------------

    def _touch(self, row_ids: Sequence[int]) -> None:
        now = utcnow()
        with self._touch_lock:
            for row_id in row_ids:
                self._touched[row_id] = now

    def _flush_touches(self) -> None:
        """Write the access times noted since the last flush: one statement run for every memory (executemany),
        in id order (two processes flushing together lock rows in the same order). It holds the write lock
        briefly: grouped by time instead (one UPDATE per search noted, each scanning every noted memory), the
        flush after 1,500 searches took 120 ms and stalled both workers' writes under load, every 30 s."""
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        if not touched:
            return
        rows = [{"memory_id": memory_id, "stamp": touched[memory_id]} for memory_id in sorted(touched)]
        with self._sessions.begin() as session:
            connection = session.connection()
            for start in range(0, len(rows), _CHUNK):
                connection.execute(_TOUCH, rows[start : start + _CHUNK])
