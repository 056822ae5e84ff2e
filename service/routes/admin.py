"""``/v1/admin``: tenant administration, for admin keys only and always within the key's tenant."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from service import admin_actions as actions
from service import memory_actions
from service.deps import Admin, ServicesDep
from service.errors import ERROR_RESPONSES, InvalidInput
from service.routes.common import CursorQuery, LimitQuery, ListParams, list_params
from service.schemas import (
    IDENTIFIER_PATTERN,
    AuditEntryOut,
    AuditPage,
    AuditVerifyOut,
    DesensitisationOut,
    DesensitisationUpdate,
    ForgetResult,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    MemoryOut,
    MemoryPage,
    ReindexResult,
    StatsOut,
    SubjectExport,
    SubjectOut,
    SubjectPage,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERROR_RESPONSES)
SubjectPath = Annotated[str, Path(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)]


@router.get("/memories", response_model=MemoryPage, summary="Inspect memories across subjects (decrypted)")
def inspect_memories(
    params: Annotated[ListParams, Depends(list_params)],
    principal: Admin,
    services: ServicesDep,
    request: Request,
) -> MemoryPage:
    page = memory_actions.list_memories(
        services,
        request,
        principal,
        subject=params.subject,
        filters=params.filters(),
        cursor=params.cursor,
        limit=params.limit,
        across_subjects=True,
    )
    return MemoryPage(items=[MemoryOut.of(m) for m in page.items], next_cursor=page.next_cursor)


@router.get("/subjects", response_model=SubjectPage, summary="Subjects with memory counts and last activity")
def list_subjects(
    principal: Admin,
    services: ServicesDep,
    request: Request,
    limit: LimitQuery = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> SubjectPage:
    infos, next_offset = actions.list_subjects(services, request, principal, limit=limit, offset=offset)
    return SubjectPage(subjects=[SubjectOut.of(i) for i in infos], next_offset=next_offset)


@router.get("/stats", response_model=StatsOut, summary="Counts and index statistics of the tenant")
async def stats(principal: Admin, services: ServicesDep, request: Request) -> StatsOut:
    # Operations over a whole tenant or subject run on the I/O threads, not the request threads, so the short
    # requests queued behind them are not held up (see the ``request_threads`` setting).
    return StatsOut.of(await asyncio.to_thread(actions.tenant_stats, services, request, principal))


@router.get(
    "/subjects/{subject:path}/export",
    response_model=SubjectExport,
    summary="Everything held about a subject (data portability)",
)
async def export_subject(
    subject: SubjectPath, principal: Admin, services: ServicesDep, request: Request
) -> SubjectExport:
    found = await asyncio.to_thread(actions.export_subject, services, request, principal, subject=subject)
    return SubjectExport.of(found)


@router.delete(
    "/subjects/{subject:path}",
    response_model=ForgetResult,
    summary="Forget a subject (crypto-shred)",
    description="Destroys the subject's data key, deletes its memories, vectors and history. Irreversible.",
)
def forget_subject(subject: SubjectPath, principal: Admin, services: ServicesDep, request: Request) -> ForgetResult:
    removed = actions.forget_subject(services, request, principal, subject=subject)
    return ForgetResult(subject=subject, memories_deleted=removed)


@router.post("/reindex", response_model=ReindexResult, summary="Rebuild the tenant's vector index from SQL")
async def reindex(principal: Admin, services: ServicesDep, request: Request) -> ReindexResult:
    def rebuild() -> int:
        with services.auditor.record(request, principal, "index.rebuild") as note:
            vectors = services.store.reindex_tenant(tenant_id=principal.tenant_id)
            note.detail = {"vectors": vectors}
        return vectors

    return ReindexResult(vectors=await asyncio.to_thread(rebuild))


@router.get("/keys", response_model=KeyList, summary="API keys of the tenant (never their secrets)")
def list_keys(principal: Admin, services: ServicesDep, request: Request) -> KeyList:
    keys = actions.list_keys(services, request, principal)
    return KeyList(keys=[KeyOut.of(k) for k in keys])


@router.post("/keys", status_code=201, response_model=KeyCreated, summary="Create an API key (shown once)")
def create_key(body: KeyCreate, principal: Admin, services: ServicesDep, request: Request) -> KeyCreated:
    issued = actions.create_key(services, request, principal, role=body.role, name=body.name)
    return KeyCreated(**KeyOut.of(issued.info).model_dump(), key=issued.secret)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key and the tokens it minted")
def revoke_key(
    key_id: Annotated[str, Path(min_length=1, max_length=64)],
    principal: Admin,
    services: ServicesDep,
    request: Request,
) -> KeyOut:
    return KeyOut.of(actions.revoke_key(services, request, principal, key_id=key_id))


@router.get("/audit", response_model=AuditPage, summary="Audit records, newest first")
def audit_records(
    principal: Admin,
    services: ServicesDep,
    request: Request,
    action: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    subject: Annotated[str | None, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = None,
) -> AuditPage:
    query = actions.AuditQuery(action=action, subject=subject, before_seq=actions.parse_audit_cursor(cursor))
    entries, next_cursor = actions.audit_entries(services, request, principal, query, limit=limit)
    return AuditPage(items=[AuditEntryOut.of(e) for e in entries], next_cursor=next_cursor)


@router.get("/audit/verify", response_model=AuditVerifyOut, summary="Recompute the audit hash chain")
async def verify_audit(principal: Admin, services: ServicesDep, request: Request) -> AuditVerifyOut:
    return AuditVerifyOut.of(await asyncio.to_thread(actions.verify_audit, services, request, principal))


@router.get(
    "/desensitisation",
    response_model=DesensitisationOut,
    summary="The tenant's desensitisation policy",
    description="What writes do with sensitive values (emails, phone numbers, cards, IBANs, IP addresses, "
    "national ids, crypto addresses, API keys, private keys, passwords, JWTs), and which roles see "
    "pseudonymised originals. Names and places are not detected.",
)
def get_desensitisation(principal: Admin, services: ServicesDep, request: Request) -> DesensitisationOut:
    with services.auditor.record(request, principal, "policy.read"):
        policy = services.store.sensitive_policy(principal.tenant_id)
    return DesensitisationOut.of(policy)


@router.patch(
    "/desensitisation",
    response_model=DesensitisationOut,
    summary="Change the tenant's desensitisation policy",
    description="Applies to writes from now on (a write in flight is screened again under the new policy); "
    "memories already stored keep the text they were stored with.",
)
def set_desensitisation(
    body: DesensitisationUpdate, principal: Admin, services: ServicesDep, request: Request
) -> DesensitisationOut:
    if body.actions is None and body.reveal_roles is None:
        raise InvalidInput("nothing to change: send actions, reveal_roles or both")
    with services.auditor.record(request, principal, "policy.update") as note:
        policy = services.store.set_sensitive_policy(
            tenant_id=principal.tenant_id,
            actions=body.actions,
            reveal_roles=body.reveal_roles,
            audit=note.change(),
        )
    return DesensitisationOut.of(policy)
