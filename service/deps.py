"""FastAPI dependencies as ``Annotated`` aliases: the services, and a caller with the rights a route needs."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal, unauthorized
from service.errors import ApiError
from service.services import Services

bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`smk_...`) or a subject token from `POST /v1/tokens`.",
)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def current_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        services.metrics.auth_failures.labels(reason="missing").inc()
        raise unauthorized()
    principal = services.auth.authenticate(credentials.credentials)
    request.state.credential_id = principal.key_id
    request.state.tenant_id = principal.tenant_id
    return principal


def permit(*, roles: frozenset[str], scope: str | None) -> Callable[[Principal], Principal]:
    """A dependency admitting API keys with one of ``roles`` and subject tokens holding ``scope``."""

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(roles=roles, scope=scope):
            what = f"the '{scope}' scope" if principal.is_subject_token and scope else "a role allowed here"
            raise ApiError(403, f"this credential lacks {what}")
        return principal

    return dependency


_ANY_KEY = frozenset({"admin", "app", "reader"})
_WRITERS = frozenset({"admin", "app"})

Reader = Annotated[Principal, Depends(permit(roles=_ANY_KEY, scope="read"))]
"""Any API key, or a subject token with the ``read`` scope."""
Writer = Annotated[Principal, Depends(permit(roles=_WRITERS, scope="write"))]
"""An admin or app key, or a subject token with the ``write`` scope."""
Minter = Annotated[Principal, Depends(permit(roles=_WRITERS, scope=None))]
"""An admin or app key (subject tokens cannot mint tokens)."""
Admin = Annotated[Principal, Depends(permit(roles=frozenset({"admin"}), scope=None))]
"""An admin key of the tenant."""


_declared_queries: dict[int, tuple[frozenset[str], frozenset[str]]] = {}


def _query_names(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """All query parameter names of the route, and those that take several values (lists)."""
    names = _declared_queries.get(id(route))
    if names is None:
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
        names = _declared_queries[id(route)] = (frozenset(found), frozenset(repeatable))
    return names


def _is_sequence(annotation: object) -> bool:
    origins = {typing.get_origin(annotation), *(typing.get_origin(a) for a in typing.get_args(annotation))}
    return bool(origins & {list, tuple, set, frozenset})


def reject_unknown_query(request: Request) -> None:
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
        raise ApiError(422, f"unknown query parameter(s): {shown}")
    repeated = sorted({key for key in keys if keys.count(key) > 1} - repeatable)
    if repeated:
        raise ApiError(422, f"query parameter {repeated[0]!r} given more than once")
