"""The admin console's pages (``/admin``), server-rendered with Jinja2 (autoescaped), enhanced by htmx.

Every page acts through :mod:`service.admin_actions` and :mod:`service.memory_actions`, the functions the
``/v1/admin`` and ``/v1/memories`` routes call: the session's API key is admitted by the same
:func:`service.deps.permit` rule as an admin request (checked, with the key still active, on every request),
reads and changes leave the same audit records, and errors are the same errors, shown on the page with their
status. Routes are left out of the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response

from memory_store.credentials import ROLES
from memory_store.errors import StoreError
from memory_store.types import KINDS, Filters, SearchHit
from service import admin_actions as actions
from service import memory_actions
from service.auth import Principal
from service.console import security
from service.console.charts import writes_chart
from service.deps import Permission, services_of
from service.errors import ApiError, InvalidInput, request_id_of, store_error_parts, validation_message
from service.routes.common import CursorQuery, IdentifierQuery, KindQuery
from service.schemas import IDENTIFIER_PATTERN, SearchFilters, SubjectExport
from service.services import Services

log = logging.getLogger("sealmem.console")
STATIC_DIR = Path(__file__).parent / "static"
_ADMIN_ONLY = Permission(roles=frozenset({"admin"}))
_TARGET = re.compile(r"[a-z][a-z0-9-]{0,31}")
STATUSES = ("active", "superseded")

SubjectParam = Annotated[str, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)]
OptionalSubject = Annotated[str | None, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)]
CsrfField = Annotated[str | None, Form(max_length=128)]


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


templates = Environment(
    loader=PackageLoader("service.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["score"] = lambda v: "—" if v is None else f"{v:.4f}"
templates.filters["compact_json"] = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False)


class SignInRequired(Exception):
    """No live console session (none, expired, idle, signed out, or its key revoked): go to the sign-in page."""


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("nav", "")
    context.setdefault("caller", getattr(request.state, "console", None))
    return HTMLResponse(templates.get_template(name).render(request=request, **context), status_code=status)


def _error_parts(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, StoreError):
        status, _, message = store_error_parts(exc)
        return status, message
    if isinstance(exc, RequestValidationError):
        status, _, message = validation_message(list(exc.errors()))
        return status, message
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail)
    return 500, "internal server error"


def error_page(request: Request, exc: Exception) -> HTMLResponse:
    status, message = _error_parts(exc)
    target = request.headers.get("hx-target", "")
    response = render(
        request,
        "error.html",
        status=status,
        status_code=status,
        message=message,
        target=target if _TARGET.fullmatch(target) else "error",
    )
    response.headers["Vary"] = "HX-Request, HX-Target"
    return response


def to_sign_in(request: Request) -> Response:
    services = services_of(request)
    response: Response
    if request.headers.get("hx-request") == "true":
        response = Response(status_code=200, headers={"HX-Redirect": "/admin/login"})
    else:
        response = RedirectResponse("/admin/login", status_code=303)
    security.clear_cookie(services, request, response, security.SESSION_COOKIE)
    return response


class ConsoleRoute(APIRoute):
    """A console route: its errors become HTML pages with the error's status (the API's JSON handlers are not
    used here), a request without a session goes to the sign-in page, and every response gets the console's
    security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            _drop_blank_query_values(request)
            try:
                response = await original(request)
            except SignInRequired:
                response = to_sign_in(request)
            except (ApiError, StoreError, RequestValidationError, StarletteHTTPException) as exc:
                if isinstance(exc, StoreError) and store_error_parts(exc)[0] >= 500:
                    log.error("console: storage error %s on request %s", type(exc).__name__, request_id_of(request))
                response = error_page(request, exc)
            except Exception as exc:  # a plain 500 page, with the console's headers; details go to the log only
                name, request_id = type(exc).__name__, request_id_of(request)
                log.error("console: unhandled %s on request %s", name, request_id, exc_info=exc)
                response = error_page(request, exc)
            return security.apply_headers(response)

        return handler


def _drop_blank_query_values(request: Request) -> None:
    """A GET form sends its empty fields too (``?kind=&source=``): on a console page an empty field means "no
    filter", so blank values are taken out of the query before the parameters are validated."""
    items = request.query_params.multi_items()
    if any(value == "" for _, value in items):
        request.scope["query_string"] = urlencode([(k, v) for k, v in items if v != ""]).encode("latin-1")
        request.__dict__.pop("_query_params", None)


router = APIRouter(
    prefix="/admin",
    include_in_schema=False,
    route_class=ConsoleRoute,
    generate_unique_id_function=lambda route: f"console_{route.name}",
)


@dataclass(frozen=True, kw_only=True)
class ConsoleCaller:
    """The signed-in operator of a request: the principal of the session's API key, and the form CSRF token."""

    principal: Principal
    services: Services
    csrf: str
    token: str
    key_prefix: str


def console_caller(request: Request) -> ConsoleCaller:
    """Resolve the session cookie; the session's key must still be an active admin key of its tenant (looked up
    through the same credential code as API requests). Unsafe methods must pass the cross-origin check."""
    services = services_of(request)
    token = request.cookies.get(security.SESSION_COOKIE)
    info = services.console_sessions.resolve(token)
    if info is None or token is None:
        raise SignInRequired()
    try:
        principal = _ADMIN_ONLY.check(services.auth.for_session(tenant_id=info.tenant_id, key_id=info.key_id))
    except ApiError as exc:
        if exc.status in (401, 403):
            services.console_sessions.end_digest(info.digest)
            raise SignInRequired() from None
        raise
    request.state.credential_id = principal.key_id
    request.state.tenant_id = principal.tenant_id
    security.check_origin(request)
    key = services.keys.get(tenant_id=principal.tenant_id, key_id=principal.key_id)
    caller = ConsoleCaller(
        principal=principal,
        services=services,
        csrf=security.csrf_token(services, token),
        token=token,
        key_prefix=key.prefix,
    )
    request.state.console = caller
    return caller


Caller = Annotated[ConsoleCaller, Depends(console_caller)]


def checked(caller: ConsoleCaller, offered: str | None) -> ConsoleCaller:
    """The caller of a state-changing form, once its CSRF token matched the session's."""
    security.check_csrf(caller.services, caller.token, offered)
    return caller


# ---- sign-in and sign-out ---------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request, status=200, message=None)


def _login_page(request: Request, *, status: int, message: str | None) -> Response:
    services = services_of(request)
    nonce = security.new_login_nonce()
    response = render(
        request,
        "login.html",
        status=status,
        message=message,
        csrf=security.login_csrf_token(services, nonce),
        caller=None,
    )
    security.set_cookie(services, request, response, security.LOGIN_COOKIE, nonce, security.LOGIN_NONCE_SECONDS)
    return response


@router.post("/login")
def login(
    request: Request,
    api_key: Annotated[str, Form(max_length=256)] = "",
    csrf_token: CsrfField = None,
) -> Response:
    """Exchange an admin API key for a session; the key is checked by the same code as a bearer key."""
    services = services_of(request)
    security.check_origin(request)
    security.check_login_csrf(services, request.cookies.get(security.LOGIN_COOKIE), csrf_token)
    client = request.client.host if request.client is not None else None
    try:
        principal = _ADMIN_ONLY.check(services.auth.authenticate(api_key.strip(), client=client))
    except ApiError as exc:
        if exc.status == 401:
            return _login_page(request, status=401, message="That API key is not valid (unknown or revoked).")
        if exc.status == 403:
            return _login_page(request, status=403, message="The console needs an admin key of the tenant.")
        raise
    # A new session, never one the browser already holds (no fixation): a session it still had ends here.
    services.console_sessions.end(request.cookies.get(security.SESSION_COOKIE))
    token, _ = services.console_sessions.create(tenant_id=principal.tenant_id, key_id=principal.key_id)
    response = RedirectResponse("/admin", status_code=303)
    security.set_cookie(
        services, request, response, security.SESSION_COOKIE, token, services.settings.console_session_lifetime_seconds
    )
    security.clear_cookie(services, request, response, security.LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, caller: Caller, csrf_token: CsrfField = None) -> Response:
    checked(caller, csrf_token)
    caller.services.console_sessions.end(caller.token)
    response = RedirectResponse("/admin/login", status_code=303)
    security.clear_cookie(caller.services, request, response, security.SESSION_COOKIE)
    return response


# ---- pages ------------------------------------------------------------------------------------------------


@router.get("")
async def overview(request: Request, caller: Caller) -> Response:
    """Counts, writes per day and the audit chain's head with the last verification (cheap: the chain is only
    recomputed by "Verify now", a POST to ``/admin/audit/verify``). Tenant-wide work: on the I/O threads, as
    the API's long admin operations."""
    found = await asyncio.to_thread(actions.tenant_overview, caller.services, request, caller.principal)
    return render(
        request,
        "overview.html",
        nav="overview",
        stats=found.stats,
        activity=found.activity,
        chart=writes_chart(found.activity.writes_per_day),
        chain=found.chain,
    )


@router.get("/subjects")
def subjects(
    request: Request,
    caller: Caller,
    q: Annotated[str | None, Query(max_length=256)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    """Subjects with memory counts and last activity; ``q`` keeps those whose id starts with it (case-sensitive),
    in the store's query: one query and one ``admin.subjects`` record per page."""
    size = 50
    infos, next_offset = actions.list_subjects(
        caller.services, request, caller.principal, limit=size, offset=offset, prefix=q or None
    )
    return render(
        request,
        "subjects.html",
        nav="subjects",
        subjects=infos,
        q=q or "",
        offset=offset,
        next_offset=next_offset,
        prev_offset=max(0, offset - size) if offset else None,
    )


@router.get("/subject")
def subject_page(
    request: Request,
    caller: Caller,
    id: SubjectParam,
    kind: KindQuery = None,
    status: Annotated[str | None, Query(pattern="^(active|superseded)$")] = None,
    source: Annotated[str | None, Query(min_length=1, max_length=32, pattern=IDENTIFIER_PATTERN)] = None,
    session: IdentifierQuery = None,
    cursor: CursorQuery = None,
) -> Response:
    """One subject's memories, filtered by kind, status, source and session in the store's query."""
    filters = Filters(session_id=session, kinds=(kind,) if kind else None, include_superseded=True)
    page = memory_actions.list_memories(
        caller.services,
        request,
        caller.principal,
        subject=id,
        filters=filters,
        cursor=cursor,
        limit=50,
        status=status,
        source=source,
        across_subjects=True,
    )
    return render(
        request,
        "subject.html",
        nav="subjects",
        subject=id,
        memories=page.items,
        next_cursor=page.next_cursor,
        filters={"kind": kind or "", "status": status or "", "source": source or "", "session": session or ""},
        kinds=KINDS,
        statuses=STATUSES,
    )


@router.get("/memory")
def memory_page(
    request: Request,
    caller: Caller,
    subject: SubjectParam,
    id: Annotated[str, Query(min_length=1, max_length=64)],
) -> Response:
    """A memory's history as a timeline, and its supersede chain (what it replaced, what replaced it), from the
    store's history and lineage lookups; one ``memory.history`` record, as the API's history read."""
    timeline = memory_actions.history(
        caller.services, request, caller.principal, memory_id=id, subject=subject, lineage=True
    )
    return render(
        request,
        "memory.html",
        nav="subjects",
        subject=subject,
        memory=timeline.memory(id),
        memory_id=id,
        events=timeline.events,
        chain=timeline.lineage if len(timeline.lineage) > 1 else [],
    )


@router.get("/subject/export")
async def export(request: Request, caller: Caller, id: SubjectParam) -> Response:
    """The subject's export (the JSON ``GET /v1/admin/subjects/{subject}/export`` answers), as a download; on
    the I/O threads, as the API's."""
    data = await asyncio.to_thread(actions.export_subject, caller.services, request, caller.principal, subject=id)
    body = SubjectExport.of(data).model_dump_json(indent=2)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", id)[:80] or "subject"
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="sealmem-export-{name}.json"'},
    )


@router.post("/subject/forget")
def forget(
    request: Request,
    caller: Caller,
    subject: Annotated[str, Form(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)],
    confirm: Annotated[str, Form(max_length=256)] = "",
    csrf_token: CsrfField = None,
) -> Response:
    """Forget a subject once the operator typed its id into the confirmation field."""
    checked(caller, csrf_token)
    if confirm != subject:
        raise InvalidInput("confirmation does not match: type the subject id exactly to forget it")
    removed = actions.forget_subject(caller.services, request, caller.principal, subject=subject)
    return render(request, "forgotten.html", nav="subjects", subject=subject, removed=removed)


def _search_page(request: Request, *, hits: list[SearchHit] | None, form: dict[str, Any]) -> Response:
    return render(request, "search.html", nav="search", hits=hits, kinds=KINDS, **form)


@router.get("/search")
def search_form(request: Request, caller: Caller, subject: OptionalSubject = None) -> Response:
    form = {"subject": subject or "", "query": "", "k": 10, "min_score": 0.0, "kind": ""}
    return _search_page(request, hits=None, form=form | {"include_assistant": False, "include_superseded": False})


@router.post("/search")
def search(
    request: Request,
    caller: Caller,
    subject: Annotated[str, Form(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)],
    query: Annotated[str, Form(min_length=1, max_length=20_000)],
    k: Annotated[int, Form(ge=1, le=1000)] = 10,
    min_score: Annotated[float, Form(ge=-1.0, le=1.0)] = 0.0,
    kind: Annotated[str | None, Form(pattern=r"^([a-z][a-z0-9_]{0,31})?$")] = None,
    include_assistant: Annotated[bool, Form()] = False,
    include_superseded: Annotated[bool, Form()] = False,
    csrf_token: CsrfField = None,
) -> Response:
    """Search a subject (a POST, so the query stays out of URLs and access logs) through the function
    ``POST /v1/memories/search`` calls, with its ``k``, ``min_score`` and filters (kind, ``include_assistant``,
    ``include_superseded``); fused, dense and lexical scores and the calibrated relevance per result."""
    checked(caller, csrf_token)
    filters = SearchFilters(
        kinds=[kind] if kind else None,
        include_assistant=include_assistant,
        include_superseded=include_superseded,
    )
    hits = memory_actions.search(
        caller.services,
        request,
        caller.principal,
        subject=subject,
        query=query,
        k=k,
        filters=filters,
        min_score=min_score,
    )
    form = {
        "subject": subject,
        "query": query,
        "k": k,
        "min_score": min_score,
        "kind": kind or "",
        "include_assistant": include_assistant,
        "include_superseded": include_superseded,
    }
    return _search_page(request, hits=hits, form=form)


@router.get("/sessions")
def sessions(request: Request, caller: Caller, subject: OptionalSubject = None) -> Response:
    found = None
    if subject:
        found = actions.list_sessions(caller.services, request, caller.principal, subject=subject, limit=200)
    return render(request, "sessions.html", nav="sessions", subject=subject or "", sessions=found)


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name}: not a date or time (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/audit")
def audit(
    request: Request,
    caller: Caller,
    action: Annotated[str | None, Query(max_length=32)] = None,
    subject: Annotated[str | None, Query(max_length=256)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=32)] = None,
    before: Annotated[str | None, Query(max_length=32)] = None,
    cursor: CursorQuery = None,
) -> Response:
    """Audit records, newest first, filtered by action, subject, actor (API key id) and time (UTC)."""
    query = actions.AuditQuery(
        action=action or None,
        subject=subject or None,
        actor=actor or None,
        after=_parse_time(after, "after"),
        before=_parse_time(before, "before"),
        before_seq=actions.parse_audit_cursor(cursor),
    )
    if query.subject is not None and not re.fullmatch(IDENTIFIER_PATTERN, query.subject):
        raise InvalidInput("subject: not a valid subject id")
    entries, next_cursor = actions.audit_entries(caller.services, request, caller.principal, query, limit=50)
    filters = {
        "action": action or "",
        "subject": subject or "",
        "actor": actor or "",
        "after": after or "",
        "before": before or "",
    }
    return render(
        request, "audit.html", nav="audit", entries=entries, next_cursor=next_cursor, filters=filters, report=None
    )


@router.post("/audit/verify")
async def audit_verify(request: Request, caller: Caller, csrf_token: CsrfField = None) -> Response:
    """Recompute the audit hash chain and say where it breaks (a POST: it appends its own audit record); on the
    I/O threads, as the API's."""
    checked(caller, csrf_token)
    report = await asyncio.to_thread(actions.verify_audit, caller.services, request, caller.principal)
    filters = {"action": "", "subject": "", "actor": "", "after": "", "before": ""}
    return render(request, "audit.html", nav="audit", entries=None, next_cursor=None, filters=filters, report=report)


@router.get("/keys")
def keys(request: Request, caller: Caller) -> Response:
    return _keys_page(request, caller, created=None)


def _keys_page(request: Request, caller: Caller, *, created: Any, status: int = 200) -> Response:
    listed = actions.list_keys(caller.services, request, caller.principal)
    return render(request, "keys.html", status=status, nav="keys", keys=listed, roles=ROLES, created=created)


@router.post("/keys")
def create_key(
    request: Request,
    caller: Caller,
    role: Annotated[str, Form(max_length=16)],
    name: Annotated[str, Form(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN)],
    csrf_token: CsrfField = None,
) -> Response:
    """Create a key; its secret is on this response only."""
    checked(caller, csrf_token)
    issued = actions.create_key(caller.services, request, caller.principal, role=role, name=name)
    return _keys_page(request, caller, created=issued, status=201)


@router.post("/keys/revoke")
def revoke_key(
    request: Request,
    caller: Caller,
    key_id: Annotated[str, Form(min_length=1, max_length=64)],
    csrf_token: CsrfField = None,
) -> Response:
    checked(caller, csrf_token)
    actions.revoke_key(caller.services, request, caller.principal, key_id=key_id)
    return RedirectResponse("/admin/keys", status_code=303)
