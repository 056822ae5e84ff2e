"""``/v1/tokens``: subject tokens, so an end-user client can reach its own memories directly."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import Minter, ServicesDep
from service.errors import ERROR_RESPONSES, InvalidInput
from service.schemas import TokenRequest, TokenResponse

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=201,
    response_model=TokenResponse,
    summary="Mint a subject token",
    description="An admin or app key mints a signed, short-lived token bound to one subject of its tenant "
    "and to scopes (`read`, `write`, `chat`). Revoking the minting key invalidates the token.",
)
def mint_token(body: TokenRequest, principal: Minter, services: ServicesDep, request: Request) -> TokenResponse:
    settings = services.settings
    ttl = body.ttl_seconds or settings.token_default_ttl_seconds
    if ttl > settings.token_max_ttl_seconds:
        raise InvalidInput(f"ttl_seconds: at most {settings.token_max_ttl_seconds}")
    scopes = sorted(set(body.scopes))
    with services.auditor.record(request, principal, "token.mint", subject=body.subject) as note:
        token, claims = services.signer.mint(
            tenant_id=principal.tenant_id,
            subject=body.subject,
            scopes=scopes,
            key_id=principal.key_id,
            ttl_seconds=ttl,
        )
        note.detail = {"token_id": claims.token_id, "scopes": scopes, "ttl_seconds": ttl}
    return TokenResponse(
        token=token,
        token_id=claims.token_id,
        subject=claims.subject,
        scopes=scopes,
        expires_at=claims.expires_at,
    )
