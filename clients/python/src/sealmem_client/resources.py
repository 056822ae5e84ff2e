"""Every operation of the API, written once for both clients (see :mod:`sealmem_client._core`).

Each method builds a :class:`Call`; the decorator (:func:`op`, :func:`paged`, :func:`streamed`) makes it a
method that sends it through the client's runner. The comment after each names the API's ``operationId``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sealmem_client._core import (
    NOT_GIVEN,
    Call,
    M,
    NotGiven,
    Page,
    Resource,
    Runner,
    StreamCall,
    body,
    model_parser,
    op,
    paged,
    params,
    patch_body,
    segment,
    streamed,
)
from sealmem_client.models import (
    AuditEntry,
    AuditPage,
    AuditVerification,
    ChatResponse,
    Desensitisation,
    ForgetResult,
    Health,
    IngestJob,
    IngestResult,
    Key,
    KeyCreated,
    Memory,
    MemoryHistory,
    MemoryPage,
    NewMemory,
    ReindexResult,
    SearchFilters,
    SearchResult,
    Session,
    SessionDetail,
    Stats,
    Subject,
    SubjectExport,
    SubjectPage,
    Token,
)

Scope = Literal["read", "write", "chat"]
Role = Literal["admin", "app", "reader"]
Injection = Literal["prompt", "none", "kv"]
When = datetime | str


def _none(_: Any) -> None:
    return None


def _memory_pages(path: str, query: dict[str, Any]) -> Call[Page[Memory]]:
    def parse(data: Any) -> Page[Memory]:
        page = MemoryPage.model_validate(data)
        more = _memory_pages(path, {**query, "cursor": page.next_cursor}) if page.next_cursor else None
        return Page(page.items, more)

    return Call("GET", path, parse, params=query)


# ---- memories ---------------------------------------------------------------------------------------------


class Memories(Resource[M]):
    """A subject's memories (``/v1/memories``). With an API key every call names the ``subject``; with a
    subject token it may be left out (it is the token's)."""

    @op
    def add(
        self,
        text: str,
        *,
        subject: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        kind: str | None = None,
        importance: float | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        source_ref: str | None = None,
        occurred_at: When | None = None,
        expires_at: When | None = None,
    ) -> Call[Memory]:
        """Store one memory (``memories_add``)."""
        fields = body(
            subject=subject, text=text, metadata=metadata, kind=kind, importance=importance, agent_id=agent_id,
            session_id=session_id, source_ref=source_ref, occurred_at=occurred_at, expires_at=expires_at,
        )  # fmt: skip
        return Call("POST", "/v1/memories", model_parser(Memory), json=fields, idempotent=False)

    @op
    def add_batch(
        self, memories: Iterable[NewMemory | Mapping[str, Any]], *, subject: str | None = None
    ) -> Call[builtins.list[Memory]]:
        """Store several memories atomically: all or none (``memories_add_batch``). ``subject`` is the default
        of items that name none."""
        items = [NewMemory.model_validate(m) if not isinstance(m, NewMemory) else m for m in memories]
        if subject is not None:
            items = [m if m.subject is not None else m.model_copy(update={"subject": subject}) for m in items]

        def parse(data: Any) -> builtins.list[Memory]:
            return [Memory.model_validate(m) for m in data["memories"]]

        return Call("POST", "/v1/memories/batch", parse, json=body(memories=items), idempotent=False)

    @op
    def search(
        self,
        query: str,
        *,
        subject: str | None = None,
        k: int | None = None,
        filters: SearchFilters | Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> Call[builtins.list[SearchResult]]:
        """Hybrid (vector + keyword) search, best first (``memories_search``). ``filters``: ``agent_id``,
        ``session_id``, ``kinds``, ``created_after/before``, ``occurred_after/before``, ``metadata`` (exact
        top-level matches), ``include_superseded``, ``include_assistant`` (the assistant's chat replies, left
        out by default). ``min_score``: leave out results whose ``relevance`` (estimated probability of being
        relevant, comparable across queries) is below it, e.g. 0.01."""
        if filters is not None and not isinstance(filters, SearchFilters):
            filters = SearchFilters.model_validate(filters)

        def parse(data: Any) -> builtins.list[SearchResult]:
            return [SearchResult.model_validate(r) for r in data["results"]]

        return Call(
            "POST",
            "/v1/memories/search",
            parse,
            json=body(subject=subject, query=query, k=k, filters=filters, min_score=min_score),
        )

    @op
    def list(
        self,
        *,
        subject: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Call[MemoryPage]:
        """One page of memories, newest first (``memories_list``); ``next_cursor`` is the next page's
        ``cursor``. See :meth:`iter` for all of them."""
        query = params(subject=subject, agent_id=agent_id, session_id=session_id, kind=kind, cursor=cursor, limit=limit)
        return Call("GET", "/v1/memories", model_parser(MemoryPage), params=query)

    @paged
    def iter(
        self,
        *,
        subject: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        kind: str | None = None,
        page_size: int | None = None,
    ) -> Call[Page[Memory]]:
        """Every memory, newest first, fetched page by page (``memories_list``)."""
        query = params(subject=subject, agent_id=agent_id, session_id=session_id, kind=kind, limit=page_size)
        return _memory_pages("/v1/memories", query)

    @op
    def ingest(
        self,
        messages: Iterable[Mapping[str, str]],
        *,
        subject: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call[IngestResult]:
        """Distil a conversation (``[{"role": "user", "content": ...}, ...]``) into memories and reconcile them with
        the subject's: one event per statement, ``ADD`` / ``UPDATE`` / ``SUPERSEDE`` / ``NOOP``
        (``memories_ingest``)."""
        fields = body(
            subject=subject, messages=[dict(m) for m in messages], session_id=session_id, agent_id=agent_id,
            metadata=metadata,
        )  # fmt: skip
        return Call("POST", "/v1/memories/ingest", model_parser(IngestResult), json=fields, idempotent=False, long=True)

    @op
    def ingest_async(
        self,
        messages: Iterable[Mapping[str, str]],
        *,
        subject: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call[IngestJob]:
        """:meth:`ingest` in the background: the queued job at once (``memories_ingest`` with ``async: true``);
        follow it with :meth:`ingest_status`."""
        fields = body(
            subject=subject, messages=[dict(m) for m in messages], session_id=session_id, agent_id=agent_id,
            metadata=metadata,
        )  # fmt: skip
        fields["async"] = True
        return Call("POST", "/v1/memories/ingest", model_parser(IngestJob), json=fields, idempotent=False)

    @op
    def ingest_status(self, job_id: str) -> Call[IngestJob]:
        """An ingestion job's state and, once done, its events (``memories_ingest_status``)."""
        return Call("GET", f"/v1/memories/ingest/{segment(job_id)}", model_parser(IngestJob))

    @op
    def get(self, memory_id: str) -> Call[Memory]:
        """One memory (``memories_get``)."""
        return Call("GET", f"/v1/memories/{segment(memory_id)}", model_parser(Memory))

    @op
    def update(
        self,
        memory_id: str,
        *,
        text: str | NotGiven = NOT_GIVEN,
        metadata: Mapping[str, Any] | NotGiven = NOT_GIVEN,
        kind: str | NotGiven = NOT_GIVEN,
        importance: float | NotGiven = NOT_GIVEN,
        expires_at: When | NotGiven | None = NOT_GIVEN,
    ) -> Call[Memory]:
        """Change some fields; the history keeps the previous text (``memories_update``).
        ``expires_at=None`` clears an expiry."""
        fields = patch_body(text=text, metadata=metadata, kind=kind, importance=importance, expires_at=expires_at)
        return Call("PATCH", f"/v1/memories/{segment(memory_id)}", model_parser(Memory), json=fields, idempotent=False)

    @op
    def delete(self, memory_id: str) -> Call[None]:
        """Delete a memory (``memories_delete``)."""
        return Call("DELETE", f"/v1/memories/{segment(memory_id)}", _none)

    @op
    def history(self, memory_id: str) -> Call[MemoryHistory]:
        """What happened to a memory: added, changed, superseded, ... (``memories_history``)."""
        return Call("GET", f"/v1/memories/{segment(memory_id)}/history", model_parser(MemoryHistory))


# ---- subject tokens ---------------------------------------------------------------------------------------


class Tokens(Resource[M]):
    @op
    def create(
        self, subject: str, scopes: Sequence[Scope] = ("read",), ttl_seconds: int | None = None
    ) -> Call[Token]:
        """Mint a subject token (``tokens_create``, with an app or admin key): a short-lived credential for one
        subject and some of ``read``, ``write``, ``chat``, to hand to that user's browser or device. Use it
        with ``client.with_api_key(token.token)`` or a new client's ``api_key``."""
        fields = body(subject=subject, scopes=list(scopes), ttl_seconds=ttl_seconds)
        return Call("POST", "/v1/tokens", model_parser(Token), json=fields)


# ---- chat and sessions ------------------------------------------------------------------------------------


def _chat_body(
    message: str,
    subject: str | None,
    session_id: str | None,
    injection: Injection | None,
    k: int | None,
    write_back: bool | None,
    max_tokens: int | None,
    temperature: float | None,
    agent_id: str | None,
    stream: bool,
) -> dict[str, Any]:
    return body(
        subject=subject, session_id=session_id, message=message, injection=injection, k=k, write_back=write_back,
        max_tokens=max_tokens, temperature=temperature, agent_id=agent_id, stream=stream or None,
    )  # fmt: skip


class Chat(Resource[M]):
    """``POST /v1/chat``: the subject's memories are retrieved and injected, the reply generated, the turn
    stored and facts distilled from it in the background."""

    @op
    def send(
        self,
        message: str,
        *,
        subject: str | None = None,
        session_id: str | None = None,
        injection: Injection | None = None,
        k: int | None = None,
        write_back: bool | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        agent_id: str | None = None,
    ) -> Call[ChatResponse]:
        """One chat turn, answered whole (``chat``)."""
        fields = _chat_body(
            message, subject, session_id, injection, k, write_back, max_tokens, temperature, agent_id, False
        )
        return Call("POST", "/v1/chat", model_parser(ChatResponse), json=fields, idempotent=False, long=True)

    @streamed
    def stream(
        self,
        message: str,
        *,
        subject: str | None = None,
        session_id: str | None = None,
        injection: Injection | None = None,
        k: int | None = None,
        write_back: bool | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        agent_id: str | None = None,
    ) -> StreamCall:
        """One chat turn, streamed (``chat`` with ``stream: true``): iterate the result for text deltas, then
        read its ``.response`` (the same :class:`ChatResponse` :meth:`send` returns)."""
        fields = _chat_body(
            message, subject, session_id, injection, k, write_back, max_tokens, temperature, agent_id, True
        )
        return StreamCall(Call("POST", "/v1/chat", _none, json=fields, idempotent=False, long=True))


class Sessions(Resource[M]):
    """A subject's chat sessions: the turns ``/v1/chat`` stored (needs chat enabled on the server)."""

    @op
    def list(self, *, subject: str | None = None, limit: int | None = None) -> Call[builtins.list[Session]]:
        """Sessions, most recently active first (``sessions_list``)."""

        def parse(data: Any) -> builtins.list[Session]:
            return [Session.model_validate(s) for s in data["sessions"]]

        return Call("GET", "/v1/sessions", parse, params=params(subject=subject, limit=limit))

    @op
    def get(self, session_id: str, *, subject: str | None = None, limit: int | None = None) -> Call[SessionDetail]:
        """A session's turns, oldest first (``sessions_get``)."""
        query = params(subject=subject, limit=limit)
        return Call("GET", f"/v1/sessions/{segment(session_id)}", model_parser(SessionDetail), params=query)

    @op
    def delete(self, session_id: str, *, subject: str | None = None, include_derived: bool = False) -> Call[None]:
        """Delete a session's turns, and with ``include_derived`` the facts distilled from it
        (``sessions_delete``)."""
        query = params(subject=subject, include_derived="true" if include_derived else None)
        return Call("DELETE", f"/v1/sessions/{segment(session_id)}", _none, params=query)


# ---- admin --------------------------------------------------------------------------------------------------


class AdminMemories(Resource[M]):
    @op
    def list(
        self,
        *,
        subject: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Call[MemoryPage]:
        """Memories across subjects, decrypted for inspection (``admin_memories_list``)."""
        query = params(subject=subject, agent_id=agent_id, session_id=session_id, kind=kind, cursor=cursor, limit=limit)
        return Call("GET", "/v1/admin/memories", model_parser(MemoryPage), params=query)

    @paged
    def iter(
        self,
        *,
        subject: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        kind: str | None = None,
        page_size: int | None = None,
    ) -> Call[Page[Memory]]:
        query = params(subject=subject, agent_id=agent_id, session_id=session_id, kind=kind, limit=page_size)
        return _memory_pages("/v1/admin/memories", query)


def _subject_pages(query: dict[str, Any]) -> Call[Page[Subject]]:
    def parse(data: Any) -> Page[Subject]:
        page = SubjectPage.model_validate(data)
        more = _subject_pages({**query, "offset": page.next_offset}) if page.next_offset is not None else None
        return Page(page.subjects, more)

    return Call("GET", "/v1/admin/subjects", parse, params=query)


class AdminSubjects(Resource[M]):
    @op
    def list(self, *, limit: int | None = None, offset: int | None = None) -> Call[SubjectPage]:
        """Subjects with memory counts (``admin_subjects_list``); ``next_offset`` is the next page's."""
        return Call("GET", "/v1/admin/subjects", model_parser(SubjectPage), params=params(limit=limit, offset=offset))

    @paged
    def iter(self, *, page_size: int | None = None) -> Call[Page[Subject]]:
        """Every subject, page by page (``admin_subjects_list``)."""
        return _subject_pages(params(limit=page_size))

    @op
    def export(self, subject: str) -> Call[SubjectExport]:
        """Everything held about a subject (``admin_subjects_export``)."""
        return Call("GET", f"/v1/admin/subjects/{segment(subject)}/export", model_parser(SubjectExport))

    @op
    def forget(self, subject: str) -> Call[ForgetResult]:
        """Crypto-shred a subject: its memories and key are gone for good (``admin_subjects_forget``)."""
        return Call("DELETE", f"/v1/admin/subjects/{segment(subject)}", model_parser(ForgetResult))


class AdminKeys(Resource[M]):
    @op
    def create(self, role: Role, name: str) -> Call[KeyCreated]:
        """A new API key; ``.key`` is the secret, shown only now (``admin_keys_create``)."""
        fields = body(role=role, name=name)
        return Call("POST", "/v1/admin/keys", model_parser(KeyCreated), json=fields, idempotent=False)

    @op
    def list(self) -> Call[builtins.list[Key]]:
        """The tenant's keys, never their secrets (``admin_keys_list``)."""

        def parse(data: Any) -> builtins.list[Key]:
            return [Key.model_validate(k) for k in data["keys"]]

        return Call("GET", "/v1/admin/keys", parse)

    @op
    def revoke(self, key_id: str) -> Call[Key]:
        """Revoke a key and every subject token it minted (``admin_keys_revoke``)."""
        return Call("DELETE", f"/v1/admin/keys/{segment(key_id)}", model_parser(Key))


def _audit_pages(query: dict[str, Any]) -> Call[Page[AuditEntry]]:
    def parse(data: Any) -> Page[AuditEntry]:
        page = AuditPage.model_validate(data)
        more = _audit_pages({**query, "cursor": page.next_cursor}) if page.next_cursor else None
        return Page(page.items, more)

    return Call("GET", "/v1/admin/audit", parse, params=query)


class AdminAudit(Resource[M]):
    @op
    def list(
        self,
        *,
        action: str | None = None,
        subject: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Call[AuditPage]:
        """Audit records, newest first (``admin_audit_list``)."""
        query = params(action=action, subject=subject, cursor=cursor, limit=limit)
        return Call("GET", "/v1/admin/audit", model_parser(AuditPage), params=query)

    @paged
    def iter(
        self, *, action: str | None = None, subject: str | None = None, page_size: int | None = None
    ) -> Call[Page[AuditEntry]]:
        """Every audit record, newest first, page by page (``admin_audit_list``)."""
        return _audit_pages(params(action=action, subject=subject, limit=page_size))

    @op
    def verify(self) -> Call[AuditVerification]:
        """Recompute the hash chain (``admin_audit_verify``); keep ``head_hash`` somewhere else."""
        return Call("GET", "/v1/admin/audit/verify", model_parser(AuditVerification))


class AdminDesensitisation(Resource[M]):
    @op
    def get(self) -> Call[Desensitisation]:
        """The tenant's sensitive-data policy (``admin_desensitisation_get``)."""
        return Call("GET", "/v1/admin/desensitisation", model_parser(Desensitisation))

    @op
    def update(
        self,
        *,
        actions: Mapping[str, Literal["keep", "mask", "pseudonymise", "reject"]] | None = None,
        reveal_roles: Sequence[Literal["admin", "app", "reader", "subject"]] | None = None,
    ) -> Call[Desensitisation]:
        """Change some types' actions and/or the roles that see originals (``admin_desensitisation_update``)."""
        fields = body(actions=actions, reveal_roles=None if reveal_roles is None else list(reveal_roles))
        return Call("PATCH", "/v1/admin/desensitisation", model_parser(Desensitisation), json=fields)


class Admin(Resource[M]):
    """The tenant's administration (an admin key)."""

    def __init__(self, runner: Runner[M]) -> None:
        super().__init__(runner)
        self.memories = AdminMemories(runner)
        self.subjects = AdminSubjects(runner)
        self.keys = AdminKeys(runner)
        self.audit = AdminAudit(runner)
        self.desensitisation = AdminDesensitisation(runner)

    @op
    def stats(self) -> Call[Stats]:
        """Counts by kind and subject, index size (``admin_stats``)."""
        return Call("GET", "/v1/admin/stats", model_parser(Stats))

    @op
    def reindex(self) -> Call[ReindexResult]:
        """Rebuild the tenant's vector index from the database (``admin_reindex``)."""
        return Call("POST", "/v1/admin/reindex", model_parser(ReindexResult))


class HealthChecks(Resource[M]):
    """Probes that need no credential."""

    @op
    def live(self) -> Call[Health]:
        """``health_live``: the process answers."""
        return Call("GET", "/healthz", model_parser(Health))

    @op
    def ready(self) -> Call[Health]:
        """``health_ready``: database, index and embedder ready (else :class:`NotReady`, retried first)."""
        return Call("GET", "/readyz", model_parser(Health))

    @op
    def metrics(self) -> Call[str]:
        """``health_metrics``: the Prometheus text."""
        return Call("GET", "/metrics", str, text=True)


class Raw(Resource[M]):
    @op
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Call[Any]:
        """Any endpoint, for operations this client does not wrap yet: the decoded JSON answer (None for an
        empty body), with the same auth, errors and retries. ``idempotent`` defaults to True for GET, HEAD,
        DELETE."""
        method = method.upper()
        safe = method in ("GET", "HEAD", "DELETE") if idempotent is None else idempotent
        return Call(method, "/" + path.lstrip("/"), _passthrough, params=params, json=json, idempotent=safe)


def _passthrough(data: Any) -> Any:
    return data
