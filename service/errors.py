"""The one error contract of the API, the service's exception tree, and the handlers that apply them.

Every error response, whoever raises it (a route, validation, routing, the body-size guard or an unexpected
exception), has the body ``{"error": {"code", "message", "request_id"}}`` and an ``X-Request-ID`` header.
Messages never contain request bodies, memory content, keys or tokens.

The exception tree. An :class:`ApiError` is answered with its ``status``, ``code``, ``message`` and
``headers`` by one handler; a :class:`ServiceError` subclass declares ``status`` and ``code`` as class
attributes (an instance may override them) and is raised with a message only::

    Exception
    ├── ApiError                      any status, given where raised: ApiError(422, "k: at most 100")
    │   └── ServiceError              status and code declared by the class: NotFound("model not found")
    │       ├── Unauthorized          401 unauthorized       WWW-Authenticate: Bearer
    │       │   └── InvalidToken      401 unauthorized       + reason, for logs and metrics  (service.tokens)
    │       ├── Forbidden             403 forbidden
    │       ├── NotFound              404 not_found
    │       ├── InvalidInput          422 invalid_input
    │       │   └── MessageTooLong    422 message_too_long
    │       │       ├── PromptTooLongError        the prompt builder's budget     (service.llm.prompt)
    │       │       └── KVContextTooLongError     the model's positions, KV path  (service.llm.kv.engine)
    │       ├── RateLimited           429 rate_limited       Retry-After
    │       ├── InjectionUnavailable  501 not_implemented    an injection mode this server lacks  (service.chat.service)
    │       ├── Unavailable           503 unavailable
    │       │   └── NotReady          503 not_ready          readiness probe
    │       └── LLMError              502 llm_error          generation failed               (service.llm.backend)
    │           ├── LLMUnavailableError   502 llm_unavailable    LLM server unreachable
    │           ├── LLMUpstreamError      502 llm_bad_response   LLM server error or bad body
    │           ├── LLMTimeoutError       504 llm_timeout
    │           ├── LLMBusyError          429 llm_busy           Retry-After: 2; the tenant's share of the queue is full
    │           └── LLMNotReadyError      503 llm_not_ready      the model is loading
    ├── InternalError                 never an HTTP answer of its own: handled where raised (else a plain 500)
    │   ├── ModelLoadError            the configured model cannot be loaded  (service.llm.loader)
    │   └── UnsupportedModelError     a RoPE variant KV injection cannot handle  (service.llm.kv.rotary)
    ├── memory_store.errors.StoreError    the store's own tree (it imports no web code), mapped by a handler:
    │   NotFoundError 404, ValidationError 422, ConflictError 409 (SubjectForgottenError: subject_forgotten),
    │   CredentialRevokedError 401 (with the store's code and message),
    │   ConfigurationError 503 "storage unavailable", any other 500 (logged, nothing said)
    ├── starlette HTTPException       routing's 404/405 and the body-size guard's BodyTooLarge 413
    │                                 (service.middleware; FastAPI lets only this type through body reading)
    └── fastapi RequestValidationError    400 malformed_json or 422 invalid_input, from locations and messages

While a response streams (Server-Sent Events), an :class:`ApiError` becomes an error event with the same
``error`` object (:func:`error_body`) instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from memory_store.errors import (
    ConfigurationError,
    ConflictError,
    CredentialRevokedError,
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


# ---- the exception tree (drawn in the module docstring) ---------------------------------------------------


class ApiError(Exception):
    """An error answered with its HTTP ``status``, ``code``, safe ``message`` and extra ``headers``.

    Raised as ``ApiError(status, message)`` where the status is chosen at the raise site (the code then
    defaults to the status' usual code); the subclasses below fix status and code in the class.
    """

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})


class ServiceError(ApiError):
    """An :class:`ApiError` whose ``status``, ``code``, default message and headers are class attributes.

    ``status=``, ``code=`` and ``headers=`` override them for one instance.
    """

    default_message: ClassVar[str] = "internal server error"
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            self.status if status is None else status,
            message or self.default_message,
            code=code or self.code,
            headers=self.default_headers if headers is None else headers,
        )


class Unauthorized(ServiceError):
    """No credential, or one that is unknown, revoked, expired or tampered with."""

    status = 401
    code = "unauthorized"
    default_message = "missing or invalid credential"
    default_headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A valid credential without the role or scope an operation needs."""

    status = 403
    code = "forbidden"
    default_message = "this credential lacks a role allowed here"


class NotFound(ServiceError):
    """Not found, or outside what the credential may see (the two are answered alike)."""

    status = 404
    code = "not_found"
    default_message = "not found"


class InvalidInput(ServiceError):
    """A request the service refuses to act on; nothing was changed."""

    status = 422
    code = "invalid_input"
    default_message = "invalid input"


class MessageTooLong(InvalidInput):
    """The message (with instructions, or with injected memories) does not fit the model's context."""

    code = "message_too_long"
    default_message = "the message does not fit the model's context"


class RateLimited(ServiceError):
    """The credential's rate limit is exhausted; raise it with a ``Retry-After`` header."""

    status = 429
    code = "rate_limited"
    default_message = "rate limit exceeded for this credential"


class Unavailable(ServiceError):
    """A part of the service is switched off or cannot serve now."""

    status = 503
    code = "unavailable"
    default_message = "service unavailable"


class NotReady(Unavailable):
    """The readiness probe's answer while a dependency is missing."""

    code = "not_ready"
    default_message = "not ready"


class InternalError(Exception):
    """A failure inside the service that is never answered as such: the code that calls the raiser handles it
    (falls back, refuses to start, ...). One that escapes anyway is a plain 500 like any unexpected error."""


# ---- responses ----------------------------------------------------------------------------------------------


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_body(request_id: str, code: str, message: str) -> dict[str, Any]:
    """The ``{"error": {...}}`` object of an error response, or of an error event in a stream."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_response(
    request_id: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_body(request_id, code or DEFAULT_CODES.get(status, "error"), message)
    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: request_id})


def _store_status(exc: StoreError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ValidationError):
        return 422
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, CredentialRevokedError):
        return 401
    if isinstance(exc, ConfigurationError):
        return 503
    return 500


def store_error_parts(exc: StoreError) -> tuple[int, str, str]:
    """Status, code and message a store error is answered with: its own code and message below 500; at 500
    and above the caller learns nothing but "storage unavailable" or "internal error"."""
    status = _store_status(exc)
    if status >= 500:
        return (
            status,
            DEFAULT_CODES.get(status, "error"),
            "storage unavailable" if status == 503 else DEFAULT_MESSAGES[500],
        )
    return status, exc.code, str(exc)


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
    """The app's only exception handlers: the :class:`ApiError` tree, Starlette's HTTP errors, validation,
    the store's errors, and everything else (500)."""

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
        status, code, message = store_error_parts(exc)
        if status >= 500:
            # DecryptionError and friends: the caller learns nothing; operators get the type in the log.
            log.error("storage error %s on request %s", type(exc).__name__, request_id_of(request))
        return error_response(request_id_of(request), status, message, code=code)

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
    429: _error_response_doc(
        "Rate limit exceeded (of the subject, the API key, or failed authentications from this address); "
        "see Retry-After."
    ),
    500: _error_response_doc("Unexpected server error."),
}
"""OpenAPI documentation of the error responses every authenticated operation may return."""

__all__ = [
    "ERROR_RESPONSES",
    "REQUEST_ID_HEADER",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "Forbidden",
    "InternalError",
    "InvalidInput",
    "MessageTooLong",
    "NotFound",
    "NotReady",
    "RateLimited",
    "ServiceError",
    "Unauthorized",
    "Unavailable",
    "error_body",
    "error_response",
    "install_error_handlers",
    "request_id_of",
]
