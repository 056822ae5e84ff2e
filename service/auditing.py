"""The one audit path of the service: who a request's caller is, and the audit records of what it did.

:class:`Caller` is the single builder of :class:`~memory_store.audit.AuditEvent` (routes, chat, write-back and
the CLI all use it) and of the :class:`~memory_store.types.WriteGuard` delayed writes carry. A change is
audited inside its own transaction: the route hands the store ``audit=note.change()`` and the store appends
the record (one per subject touched) with the change, or neither commits. A read, which changes nothing, is
audited by :meth:`Auditor.record` when its block ends, before the response: content is not handed out
unaudited. A request that fails is recorded with its outcome (``rejected``, ``not_found``, ``failed``,
``error``) in a transaction of its own; nothing it tried to change was committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_store.audit import AuditEvent, AuditLog
from memory_store.errors import NotFoundError, StoreError
from memory_store.models import utcnow
from memory_store.types import MemoryRecord, WriteGuard
from service.auth import Principal
from service.errors import DEFAULT_MESSAGES, ApiError, error_response, request_id_of, store_error_parts

log = logging.getLogger("sealmem.audit")
OPERATOR = "cli"


def actor_of(principal: Principal) -> str:
    """How the store's memory history names who made a change (ids only, never secrets)."""
    if principal.is_subject_token:
        return f"subject-token:{principal.token_id}"
    return f"{principal.role}-key:{principal.key_id}"


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who makes a request and when it began.

    ``credential_id`` is an API key id (for a subject token, the key that minted it; ``api_key`` False for
    the CLI operator). ``request_id`` is the server's id of the request, unique per request;
    ``client_request_id`` the ``X-Request-ID`` the client sent, kept as a correlation field only.
    """

    credential_id: str
    role: str
    actor: str
    token_id: str | None = None
    request_id: str | None = None
    client_request_id: str | None = None
    begun_at: datetime = field(default_factory=utcnow)
    api_key: bool = True

    @classmethod
    def of(cls, principal: Principal, request: Request) -> Caller:
        begun_at = getattr(request.state, "begun_at", None)
        return cls(
            credential_id=principal.key_id,
            role=principal.role,
            actor=actor_of(principal),
            token_id=principal.token_id,
            request_id=request_id_of(request) or None,
            client_request_id=getattr(request.state, "client_request_id", None),
            begun_at=begun_at if isinstance(begun_at, datetime) else utcnow(),
        )

    @classmethod
    def operator(cls, actor: str = "cli") -> Caller:
        """The operator running a CLI command on the server."""
        return cls(credential_id=OPERATOR, role="operator", actor=actor, api_key=False)

    def event(
        self,
        action: str,
        *,
        subject: str | None = None,
        memory_ids: Sequence[str] = (),
        detail: dict[str, Any] | None = None,
        outcome: str = "ok",
    ) -> AuditEvent:
        """The audit event of ``action`` by this caller (the one place events are built)."""
        full = dict(detail or {})
        if self.client_request_id:
            full["client_request_id"] = self.client_request_id
        return AuditEvent(
            credential_id=self.credential_id,
            role=self.role,
            token_id=self.token_id,
            subject=subject,
            action=action,
            memory_ids=list(memory_ids),
            detail=full,
            request_id=self.request_id,
            outcome=outcome,
        )

    def guard(self, *, delayed: bool = False) -> WriteGuard:
        """What a write re-checks in its transaction: that no subject it touches was forgotten since the request
        began and, for a ``delayed`` write (after a generation, in write-back), that the API key still works."""
        return WriteGuard(
            begun_at=self.begun_at, credential_id=self.credential_id if delayed and self.api_key else None
        )


@dataclass
class AuditNote:
    """Filled in by the route while it works: which memories were touched, and safe extra detail."""

    caller: Caller
    action: str
    memory_ids: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None
    by_subject: dict[str, list[str]] | None = None
    recorded: bool = False

    def change(self) -> AuditEvent:
        """The record of a change, for the store to append inside the change's transaction (the store fills in
        subject and memory ids); the block then appends no second record when it succeeds."""
        self.recorded = True
        return self.event("ok")

    def touch(self, records: Iterable[MemoryRecord]) -> None:
        """Memories a read hands out; spread over several subjects, they get one record per subject."""
        self.by_subject = {}
        for record in records:
            self.by_subject.setdefault(record.subject, []).append(record.id)
        self.memory_ids = [mid for ids in self.by_subject.values() for mid in ids]
        if len(self.by_subject) == 1:
            self.subject = next(iter(self.by_subject))

    def event(self, outcome: str) -> AuditEvent:
        return self.caller.event(
            self.action, subject=self.subject, memory_ids=self.memory_ids, detail=self.detail, outcome=outcome
        )

    def events(self, outcome: str) -> list[AuditEvent]:
        if outcome != "ok" or not self.by_subject or len(self.by_subject) < 2:
            return [self.event(outcome)]
        return [
            self.caller.event(self.action, subject=subject, memory_ids=ids, detail=self.detail, outcome=outcome)
            for subject, ids in self.by_subject.items()
        ]


def outcome_of(exc: BaseException) -> str:
    """``not_found``, ``rejected`` (any other 4xx: bad input, a conflict, a forgotten subject, a revoked key),
    ``failed`` (a storage error) or ``error``."""
    if isinstance(exc, NotFoundError) or (isinstance(exc, ApiError) and exc.status == 404):
        return "not_found"
    if isinstance(exc, ApiError) and exc.status < 500:
        return "rejected"
    if isinstance(exc, StoreError):
        return "rejected" if store_error_parts(exc)[0] < 500 else "failed"
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
        """Audit the block: a change through ``note.change()`` (in its transaction), anything else with an
        ``ok`` record when the block ends; a failure with its kind (then re-raise).

        A failed ``ok`` append fails the request: content is not handed out unaudited. Under the
        :class:`AuditBarrier` the block's thread does not wait for that commit: the barrier holds the response
        until it is done (and answers 500 instead if it failed)."""
        note = AuditNote(
            caller=Caller.of(principal, request), action=action, memory_ids=list(memory_ids), subject=subject
        )
        try:
            yield note
        except Exception as exc:
            self.failed(principal.tenant_id, note.event(outcome_of(exc)))
            raise
        if not note.recorded:
            committed = self.log.submit(tenant_id=principal.tenant_id, events=note.events("ok"))
            held: list[Future[Any]] | None = request.scope.get("state", {}).get(AUDIT_WAITS)
            if held is None:  # no barrier holds this request's response: wait here
                committed.result()
            else:
                held.append(committed)

    def failed(self, tenant_id: str, event: AuditEvent) -> None:
        """Record a failed request; a failure to record it is logged (the request's own error goes out)."""
        try:
            self.log.append(tenant_id=tenant_id, event=event)
        except Exception:
            log.exception("could not append an audit record for a failed %s", event.action)


AUDIT_WAITS = "sealmem_audit_waits"


class AuditBarrier:
    """Pure ASGI middleware: a request's read records commit off its thread, and its response waits for them.

    :meth:`Auditor.record` hands a read's ``ok`` records to the audit writer and, inside this middleware, puts
    the pending commit in the request's scope instead of waiting for it. The request thread (one per worker
    by default) then serves the next request while the writer commits several requests' records in one
    transaction. Nothing is sent before every commit the request is waiting on is done: if one failed, the
    client gets the standard 500 error body instead of the content; if the response had already started (a
    stream whose later part was audited), the connection is broken off rather than the rest sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Future[Any]] = []
        scope.setdefault("state", {})[AUDIT_WAITS] = held
        replaced = started = False

        async def send_when_audited(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return  # the app's own response was replaced by the error below
            while held:
                try:
                    await asyncio.wrap_future(held.pop(0))
                except Exception as exc:
                    request_id = str(scope["state"].get("request_id") or "")
                    log.error("read audit records not committed (%s) on request %s", type(exc).__name__, request_id)
                    if started:
                        raise
                    replaced = True
                    await error_response(request_id, 500, DEFAULT_MESSAGES[500])(scope, receive, send)
                    return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receive, send_when_audited)
