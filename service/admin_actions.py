"""Tenant administration as one set of functions, called by the REST admin routes (``/v1/admin``) and the admin
console (``/admin``) alike: the same authorisation (the caller is admitted by :func:`service.deps.permit` before
it gets here), the same audit records, the same reveal rules and the same errors. Each takes the services, the
request (for the audit record's request id and times) and the admitted principal, and works only within the
principal's tenant. Reads of memories that every role makes too (list, search, history), the admin inspection
among them, are :mod:`service.memory_actions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request

from memory_store.activity import Activity, tenant_activity
from memory_store.audit import AuditEntry, VerifyReport
from memory_store.credentials import ApiKeyInfo, IssuedKey
from memory_store.db import make_sessionmaker
from memory_store.types import SessionSummary, Stats, SubjectInfo
from service.auth import Principal
from service.errors import InvalidInput
from service.services import Services


def list_subjects(
    services: Services,
    request: Request,
    principal: Principal,
    *,
    limit: int | None,
    offset: int,
    prefix: str | None = None,
) -> tuple[list[SubjectInfo], int | None]:
    """A page of the tenant's subjects (those whose id starts with ``prefix``, when given: one query) and the
    offset of the next page (None: no more); one ``admin.subjects`` record."""
    page_size = services.limits.page_size(limit, default=100)
    with services.auditor.record(request, principal, "admin.subjects") as note:
        infos = services.store.list_subjects(
            tenant_id=principal.tenant_id, limit=page_size + 1, offset=offset, prefix=prefix or None
        )
        note.detail = {"offset": offset, "count": min(len(infos), page_size), **({"prefix": prefix} if prefix else {})}
    more = len(infos) > page_size
    return infos[:page_size], offset + page_size if more else None


def tenant_stats(services: Services, request: Request, principal: Principal) -> Stats:
    with services.auditor.record(request, principal, "admin.stats"):
        return services.store.stats(tenant_id=principal.tenant_id)


@dataclass(frozen=True, kw_only=True)
class ChainStatus:
    """The audit chain as the overview shows it without recomputing it: the head (newest record and its hash)
    and the last ``audit.verify`` record, if any (its time, outcome and what it found)."""

    head_seq: int
    head_hash: str
    last_verify: AuditEntry | None

    @property
    def last_ok(self) -> bool | None:
        """Whether the last verification found the chain intact (None: never verified, or it failed to run)."""
        if self.last_verify is None or self.last_verify.outcome != "ok":
            return None
        return bool(self.last_verify.detail.get("ok"))


@dataclass(frozen=True, kw_only=True)
class Overview:
    stats: Stats
    activity: Activity
    chain: ChainStatus


def tenant_overview(services: Services, request: Request, principal: Principal) -> Overview:
    """Counts (by kind and by status), subjects, writes per day and the audit chain's head and last
    verification (read, not recomputed: cheap for any tenant); audited as one ``admin.stats`` read."""
    with services.auditor.record(request, principal, "admin.stats"):
        stats = services.store.stats(tenant_id=principal.tenant_id)
        activity = tenant_activity(make_sessionmaker(services.store.engine), tenant_id=principal.tenant_id)
        head_seq, head_hash = services.auditor.log.head(tenant_id=principal.tenant_id)
        verified = services.auditor.log.entries(tenant_id=principal.tenant_id, action="audit.verify", limit=1)
    chain = ChainStatus(head_seq=head_seq, head_hash=head_hash, last_verify=verified[0] if verified else None)
    return Overview(stats=stats, activity=activity, chain=chain)


def export_subject(services: Services, request: Request, principal: Principal, *, subject: str) -> dict[str, Any]:
    """Everything held about a subject (memories revealed as the caller's role may see them); ``subject.export``."""
    with services.auditor.record(request, principal, "subject.export", subject=subject) as note:
        data = services.store.export_subject(tenant_id=principal.tenant_id, subject=subject)
        note.memory_ids = [m.id for m in data["memories"]]
        data["memories"] = services.store.reveal(
            tenant_id=principal.tenant_id, records=data["memories"], role=principal.role
        )
    return data


def forget_subject(services: Services, request: Request, principal: Principal, *, subject: str) -> int:
    """Crypto-shred a subject (irreversible); returns how many memories were deleted; ``subject.forget``."""
    chat = getattr(request.app.state, "chat", None)
    try:
        with services.auditor.record(request, principal, "subject.forget", subject=subject) as note:
            removed = services.store.forget_subject(
                tenant_id=principal.tenant_id, subject=subject, actor=note.caller.actor, audit=note.change()
            )
    finally:
        if chat is not None:  # queued write-back stops, and keys/values derived from memories leave RAM
            chat.forget_subject(principal.tenant_id, subject)
    return removed


def list_sessions(
    services: Services, request: Request, principal: Principal, *, subject: str, limit: int | None
) -> list[SessionSummary]:
    """Every session of a subject (all kinds of memory), most recent first; audited as ``session.list``."""
    page_size = services.limits.page_size(limit, default=100)
    with services.auditor.record(request, principal, "session.list", subject=subject) as note:
        sessions = services.store.list_sessions(tenant_id=principal.tenant_id, subject=subject, limit=page_size)
        note.detail = {"count": len(sessions)}
    return sessions


def list_keys(services: Services, request: Request, principal: Principal) -> list[ApiKeyInfo]:
    with services.auditor.record(request, principal, "key.list") as note:
        keys = services.keys.list_keys(tenant_id=principal.tenant_id)
        note.detail = {"count": len(keys)}
    return keys


def create_key(services: Services, request: Request, principal: Principal, *, role: str, name: str) -> IssuedKey:
    """A new API key of the tenant; its secret is in the result only (shown once); ``key.create``."""
    with services.auditor.record(request, principal, "key.create") as note:
        note.detail = {"role": role}
        return services.keys.create(
            tenant_id=principal.tenant_id, role=role, name=name, created_by=principal.key_id, audit=note.change()
        )


def revoke_key(services: Services, request: Request, principal: Principal, *, key_id: str) -> ApiKeyInfo:
    """Revoke a key: its requests, subject tokens and console sessions stop working at once; ``key.revoke``."""
    with services.auditor.record(request, principal, "key.revoke") as note:
        note.detail = {"key_id": key_id}
        info = services.keys.revoke(tenant_id=principal.tenant_id, key_id=key_id, audit=note.change())
    services.console_sessions.end_for_key(tenant_id=principal.tenant_id, key_id=key_id)
    return info


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Filters of an audit read: all optional. ``actor`` is a credential (API key) id; ``after``/``before``
    bound the record time; ``before_seq`` pages (the last seq of the previous page)."""

    action: str | None = None
    subject: str | None = None
    actor: str | None = None
    after: datetime | None = None
    before: datetime | None = None
    before_seq: int | None = None


def parse_audit_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise InvalidInput("cursor: malformed")
    return int(cursor)


def audit_entries(
    services: Services, request: Request, principal: Principal, query: AuditQuery, *, limit: int | None
) -> tuple[list[AuditEntry], str | None]:
    """Audit records of the tenant, newest first, and the cursor of the next page; audited as ``audit.read``."""
    page_size = services.limits.page_size(limit, default=100)
    if query.after is not None and query.before is not None and query.after >= query.before:
        raise InvalidInput("after: must be earlier than before")
    with services.auditor.record(request, principal, "audit.read", subject=query.subject) as note:
        entries = services.auditor.log.entries(
            tenant_id=principal.tenant_id,
            before_seq=query.before_seq,
            limit=page_size,
            action=query.action,
            subject=query.subject,
            credential_id=query.actor,
            after=query.after,
            before=query.before,
        )
        note.detail = {"count": len(entries), **({"action": query.action} if query.action else {})}
    next_cursor = str(entries[-1].seq) if len(entries) == page_size else None
    return entries, next_cursor


def verify_audit(services: Services, request: Request, principal: Principal) -> VerifyReport:
    """Recompute the tenant's audit hash chain (the chain before this read's own record); ``audit.verify``."""
    report = services.auditor.log.verify(tenant_id=principal.tenant_id)
    with services.auditor.record(request, principal, "audit.verify") as note:
        note.detail = {"ok": report.ok, "head_seq": report.head_seq}
        if report.broken_seq is not None:
            note.detail["broken_seq"] = report.broken_seq
    return report
