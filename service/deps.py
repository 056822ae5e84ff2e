"""FastAPI dependencies as ``Annotated`` aliases: the services, and a caller with the rights a route needs.

Every route, memory and chat alike, admits callers through :func:`permit`: API keys by role, subject tokens by
scope.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal
from service.errors import Forbidden, InvalidInput, Unauthorized
from service.services import Services

bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`smk_...`) or a subject token from `POST /v1/tokens`.",
)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# Dependencies that neither block nor wait are ``async def``: FastAPI runs a plain ``def`` dependency in the
# thread pool, and each such hop (a worker thread woken, the GIL handed over and back, the loop woken again)
# cost more CPU than the dependency itself: six hops per request before, three now.


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


def current_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        services.metrics.auth_failures.labels(reason="missing").inc()
        raise Unauthorized()
    # The ASGI client address: behind a proxy, the proxy's unless uvicorn trusts its forwarding headers.
    client = request.client.host if request.client is not None else None
    principal = services.auth.authenticate(credentials.credentials, client=client)
    request.state.credential_id = principal.key_id
    request.state.tenant_id = principal.tenant_id
    return principal


@dataclass(frozen=True)
class Permission:
    """Admits API keys with one of ``roles`` and subject tokens holding any of ``scopes`` (no scopes: no subject
    token). A refused token is told which scopes it lacks (names in quotes with ``quote_scopes``); a refused key,
    or a token where no scope would do, that it lacks a role allowed here."""

    roles: frozenset[str]
    scopes: frozenset[str] = frozenset()
    quote_scopes: bool = False

    def check(self, principal: Principal) -> Principal:
        if not principal.allows(roles=self.roles, scopes=self.scopes):
            names = " or ".join(f"'{s}'" if self.quote_scopes else s for s in sorted(self.scopes))
            what = f"the {names} scope" if principal.is_subject_token and self.scopes else "a role allowed here"
            raise Forbidden(f"this credential lacks {what}")
        return principal


def permit(
    *, roles: frozenset[str], scopes: frozenset[str] = frozenset(), quote_scopes: bool = False
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting the callers :class:`Permission` admits."""
    permission = Permission(roles=roles, scopes=scopes, quote_scopes=quote_scopes)

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        return permission.check(principal)

    return dependency


_ANY_KEY = frozenset({"admin", "app", "reader"})
_WRITERS = frozenset({"admin", "app"})
_NO_TOKEN: frozenset[str] = frozenset()

AnyCaller = Annotated[Principal, Depends(current_principal)]
"""Any valid credential."""
Reader = Annotated[Principal, Depends(permit(roles=_ANY_KEY, scopes=frozenset({"read"}), quote_scopes=True))]
"""Any API key, or a subject token with the ``read`` scope."""
Writer = Annotated[Principal, Depends(permit(roles=_WRITERS, scopes=frozenset({"write"}), quote_scopes=True))]
"""An admin or app key, or a subject token with the ``write`` scope."""
Minter = Annotated[Principal, Depends(permit(roles=_WRITERS, scopes=_NO_TOKEN))]
"""An admin or app key (subject tokens cannot mint tokens)."""
Admin = Annotated[Principal, Depends(permit(roles=frozenset({"admin"}), scopes=_NO_TOKEN))]
"""An admin key of the tenant."""
Chatter = Annotated[Principal, Depends(permit(roles=_WRITERS, scopes=frozenset({"chat"})))]
"""An admin or app key, or a subject token with the ``chat`` scope."""
SessionReader = Annotated[Principal, Depends(permit(roles=_ANY_KEY, scopes=frozenset({"read", "chat"})))]
"""Any API key, or a subject token with the ``read`` or the ``chat`` scope."""
SessionWriter = Annotated[Principal, Depends(permit(roles=_WRITERS, scopes=frozenset({"write", "chat"})))]
"""An admin or app key, or a subject token with the ``write`` or the ``chat`` scope."""


_QUERY_NAMES = "_sealmem_query_names"  # the attribute caching a route's query parameter names on the route


def _query_names(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """All query parameter names of the route, and those that take several values (lists); collected once
    per route object and kept on it."""
    cached: tuple[frozenset[str], frozenset[str]] | None = getattr(route, _QUERY_NAMES, None)
    if cached is not None:
        return cached
    found: set[str] = set()
    repeatable: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        for param in dependant.query_params:
            found.add(param.alias)
            if _is_sequence(param.field_info.annotation):
                repeatable.add(param.alias)
        pending.extend(dependant.dependencies)
    names = (frozenset(found), frozenset(repeatable))
    setattr(route, _QUERY_NAMES, names)
    return names


def _is_sequence(annotation: object) -> bool:
    origins = {typing.get_origin(annotation), *(typing.get_origin(a) for a in typing.get_args(annotation))}
    return bool(origins & {list, tuple, set, frozenset})


async def reject_unknown_query(request: Request) -> None:
    """Query parameters an operation does not declare are a 422, as unknown body fields are: a misspelt
    filter (``/v1/admin/memories?subjet=...``) must fail, not silently widen the result. So is a single-valued
    parameter given twice (``?action=a&action=b``), which would otherwise silently mean the last one."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared, repeatable = _query_names(route)
    keys = [key for key, _ in request.query_params.multi_items()]
    unknown = sorted(set(keys) - declared)
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise InvalidInput(f"unknown query parameter(s): {shown}")
    repeated = sorted({key for key in keys if keys.count(key) > 1} - repeatable)
    if repeated:
        raise InvalidInput(f"query parameter {repeated[0]!r} given more than once")
