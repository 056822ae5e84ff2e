"""State of background jobs in SQL, so the worker process that answers a status request need not be the one
that ran the job. Holds no content: a job's detail names memories by id, and its subject is named by the keyed
digest the store uses for tombstones (:meth:`MemoryStore.subject_digest`), never by its id. Kept for
:data:`JOB_RETENTION`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from memory_store.errors import NotFoundError
from memory_store.models import Job, utcnow
from memory_store.retry import retry_read, retry_write

JOB_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class JobInfo:
    id: str
    kind: str
    subject_digest: str
    status: str
    detail: dict[str, Any]
    error: str | None
    created_at: datetime
    updated_at: datetime


def _info(row: Job) -> JobInfo:
    return JobInfo(
        id=row.id,
        kind=row.kind,
        subject_digest=row.subject,
        status=row.status,
        detail=dict(row.detail or {}),
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class JobLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @retry_write
    def create(self, *, job_id: str, tenant_id: str, kind: str, subject_digest: str, credential_id: str) -> JobInfo:
        now = utcnow()
        row = Job(
            id=job_id,
            tenant_id=tenant_id,
            kind=kind,
            subject=subject_digest,
            credential_id=credential_id,
            status="queued",
            detail={},
            created_at=now,
            updated_at=now,
        )
        with self._sessions.begin() as session:
            session.add(row)
        return _info(row)

    @retry_write
    def finish(self, *, job_id: str, status: str, detail: dict[str, Any], error: str | None = None) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=status, detail=detail, error=error, updated_at=utcnow())
            )

    @retry_read
    def get(self, *, tenant_id: str, job_id: str, subject_digest: str | None = None) -> JobInfo:
        """A job of the tenant (and of that subject when given: a subject token sees its own jobs only)."""
        with self._sessions.begin() as session:
            row = session.get(Job, job_id)
            if (
                row is None
                or row.tenant_id != tenant_id
                or (subject_digest is not None and row.subject != subject_digest)
            ):
                raise NotFoundError("job not found")
            return _info(row)

    @staticmethod
    def forget_subject(session: Session, tenant_id: str, subject_digest: str) -> None:
        """Inside a forget's transaction: the subject's jobs go too."""
        session.execute(delete(Job).where(Job.tenant_id == tenant_id, Job.subject == subject_digest))

    @retry_write
    def purge(self) -> int:
        """Delete jobs older than :data:`JOB_RETENTION` (run periodically); returns how many."""
        with self._sessions.begin() as session:
            result = session.execute(delete(Job).where(Job.created_at < utcnow() - JOB_RETENTION))
        return int(getattr(result, "rowcount", 0) or 0)
