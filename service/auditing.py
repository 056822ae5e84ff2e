"""Audit records for HTTP requests: one per read or write of memory content, whatever the outcome."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from memory_store.audit import AuditEvent, AuditLog
from memory_store.errors import NotFoundError, StoreError
from memory_store.errors import ValidationError as StoreValidationError
from service.auth import Principal
from service.errors import ApiError, request_id_of

log = logging.getLogger("sealmem.audit")


@dataclass
class AuditNote:
    """Filled in by the route while it works: which memories were touched, and safe extra detail."""

    memory_ids: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, NotFoundError) or (isinstance(exc, ApiError) and exc.status == 404):
        return "not_found"
    if isinstance(exc, StoreValidationError) or (isinstance(exc, ApiError) and exc.status < 500):
        return "rejected"
    if isinstance(exc, StoreError):
        return "failed"
    return "error"


class Auditor:
    def __init__(self, log: AuditLog) -> None:
        self.log = log

    @contextmanager
    def record(
        self,
        request: Request,
        principal: Principal,
        action: str,
        *,
        subject: str | None = None,
        memory_ids: Sequence[str] = (),
    ) -> Iterator[AuditNote]:
        """Append an audit record when the block ends: outcome ``ok``, or the failure's kind (then re-raise).

        On success the record is written before the response, and a failed append fails the request: content
        is not handed out unaudited."""
        note = AuditNote(memory_ids=list(memory_ids), subject=subject)
        try:
            yield note
        except Exception as exc:
            try:
                self._append(request, principal, action, note, outcome_of(exc))
            except Exception:
                log.exception("could not append an audit record for a failed %s", action)
            raise
        self._append(request, principal, action, note, "ok")

    def _append(self, request: Request, principal: Principal, action: str, note: AuditNote, outcome: str) -> None:
        self.log.append(
            tenant_id=principal.tenant_id,
            event=AuditEvent(
                credential_id=principal.key_id,
                role=principal.role,
                token_id=principal.token_id,
                subject=note.subject,
                action=action,
                memory_ids=note.memory_ids,
                detail=note.detail,
                request_id=request_id_of(request) or None,
                outcome=outcome,
            ),
        )
