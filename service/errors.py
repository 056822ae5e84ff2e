"""The one error contract of the API, and the handlers that make every failure follow it.

Every error response, whoever raises it (a route, validation, routing, the body-size guard or an unexpected
exception), has the body ``{"error": {"code", "message", "request_id"}}`` and an ``X-Request-ID`` header.
Messages never contain request bodies, memory content, keys or tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from memory_store.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreError,
    ValidationError,
)

log = logging.getLogger("sealmem.errors")
REQUEST_ID_HEADER = "X-Request-ID"

DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
DEFAULT_MESSAGES: dict[int, str] = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    500: "internal server error",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code.", examples=["not_found"])
    message: str = Field(description="Human-readable explanation.", examples=["memory not found"])
    request_id: str = Field(description="Also sent as the X-Request-ID header.", examples=["5f0c3a9e..."])


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error with its HTTP status, code and safe message; raised by routes and dependencies."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_response(
    request_id: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "code": code or DEFAULT_CODES.get(status, "error"),
            "message": message,
            "request_id": request_id,
        }
    }
    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: request_id})


def _store_status(exc: StoreError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ValidationError):
        return 422
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, ConfigurationError):
        return 503
    return 500


def _location(loc: tuple[Any, ...]) -> str:
    # Drop the tagged-union branch names pydantic puts into locations ("single"/"batch").
    parts = [str(p) for p in loc if p not in ("single", "batch")]
    return ".".join(parts) or "request"


def validation_message(errors: list[Any]) -> tuple[int, str, str]:
    """Status, code and message for FastAPI's validation errors, built from locations and messages only
    (pydantic's ``input`` may hold memory content and is never used)."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", "")) or "invalid JSON"
        return 400, "malformed_json", f"request body is not valid JSON: {detail}"
    shown = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "invalid_input", "; ".join(shown) + more


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(request_id_of(request), exc.status, exc.message, code=exc.code, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) and status < 500 else None
        message = detail or DEFAULT_MESSAGES.get(status) or "error"
        return error_response(request_id_of(request), status, message, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        status, code, message = validation_message(list(exc.errors()))
        return error_response(request_id_of(request), status, message, code=code)

    async def store_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreError)
        status = _store_status(exc)
        if status >= 500:
            # DecryptionError and friends: the caller learns nothing; operators get the type in the log.
            log.error("storage error %s on request %s", type(exc).__name__, request_id_of(request))
            message = "storage unavailable" if status == 503 else DEFAULT_MESSAGES[500]
            return error_response(request_id_of(request), status, message)
        return error_response(request_id_of(request), status, str(exc), code=exc.code)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled %s on request %s", type(exc).__name__, request_id_of(request), exc_info=exc)
        return error_response(request_id_of(request), 500, DEFAULT_MESSAGES[500])

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(Exception, unexpected)


def _error_response_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error_response_doc("Malformed JSON."),
    401: _error_response_doc("No credential, or one that is unknown, revoked, expired or tampered with."),
    403: _error_response_doc("A valid credential without the role or scope this operation needs."),
    404: _error_response_doc("Not found, or outside what the credential may see."),
    413: _error_response_doc("Request body larger than the configured limit."),
    422: _error_response_doc("Invalid input; nothing was changed."),
    429: _error_response_doc("Rate limit of this credential exceeded; see Retry-After."),
    500: _error_response_doc("Unexpected server error."),
}
"""OpenAPI documentation of the error responses every authenticated operation may return."""

__all__ = [
    "ERROR_RESPONSES",
    "REQUEST_ID_HEADER",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "error_response",
    "install_error_handlers",
    "request_id_of",
]
