"""Exceptions: one class per error ``code`` of the API (``not_found`` -> :class:`NotFound`), all under
:class:`SealmemError`.

The server answers every error with ``{"error": {"code", "message", "request_id"}}``. :func:`error_from` turns
that into the class of its code; a code this client does not know becomes the class of its HTTP status
(``429`` -> :class:`RateLimited`), or else :class:`ClientError` (4xx) or :class:`ServerError` (5xx), with
``.code`` still the server's::

    SealmemError                      .code .status .message .request_id .retry_after
    ├── APIConnectionError            no answer (connection refused, reset, DNS); status 0
    │   └── APITimeoutError           the request timed out
    ├── StreamError                   a streamed answer ended without its final event
    ├── ClientError                   4xx
    │   ├── BadRequest                400 bad_request
    │   │   └── MalformedJson         400 malformed_json
    │   ├── Unauthorized              401 unauthorized
    │   │   └── CredentialRevoked     401 credential_revoked
    │   ├── Forbidden                 403 forbidden
    │   ├── NotFound                  404 not_found
    │   ├── MethodNotAllowed          405 method_not_allowed
    │   ├── Conflict                  409 conflict
    │   │   └── SubjectForgotten      409 subject_forgotten
    │   ├── PayloadTooLarge           413 payload_too_large
    │   ├── UnsupportedMediaType      415 unsupported_media_type
    │   ├── InvalidInput              422 invalid_input
    │   │   ├── SensitiveDataRejected 422 sensitive_data_rejected
    │   │   └── MessageTooLong        422 message_too_long
    │   └── RateLimited               429 rate_limited            (retried; Retry-After in .retry_after)
    │       └── LlmBusy               429 llm_busy                (retried)
    └── ServerError                   5xx
        ├── InternalError             500 internal_error
        ├── NotImplementedByServer    501 not_implemented         (e.g. an injection mode this server lacks)
        ├── LlmError                  502 llm_error
        │   ├── LlmUnavailable        502 llm_unavailable
        │   └── LlmBadResponse        502 llm_bad_response
        ├── Unavailable               503 unavailable             (retried)
        │   ├── NotReady              503 not_ready               (retried)
        │   └── LlmNotReady           503 llm_not_ready           (retried)
        └── LlmTimeout                504 llm_timeout
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "BadRequest",
    "ClientError",
    "Conflict",
    "CredentialRevoked",
    "Forbidden",
    "InternalError",
    "InvalidInput",
    "LlmBadResponse",
    "LlmBusy",
    "LlmError",
    "LlmNotReady",
    "LlmTimeout",
    "LlmUnavailable",
    "MalformedJson",
    "MessageTooLong",
    "MethodNotAllowed",
    "NotFound",
    "NotImplementedByServer",
    "NotReady",
    "PayloadTooLarge",
    "RateLimited",
    "SealmemError",
    "SensitiveDataRejected",
    "ServerError",
    "StreamError",
    "SubjectForgotten",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_from",
    "parse_retry_after",
]


class SealmemError(Exception):
    """An error answer of the server (or no answer at all, for :class:`APIConnectionError`)."""

    default_status: ClassVar[int] = 0
    default_code: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = self.default_status if status is None else status
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        where = f", request_id={self.request_id}" if self.request_id else ""
        return f"{self.message} ({self.status} {self.code}{where})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status!r})"


class APIConnectionError(SealmemError):
    default_code = "connection_error"


class APITimeoutError(APIConnectionError):
    default_code = "timeout"


class StreamError(SealmemError):
    default_code = "stream_error"


class ClientError(SealmemError):
    default_status = 400
    default_code = "client_error"


class ServerError(SealmemError):
    default_status = 500
    default_code = "server_error"


class BadRequest(ClientError):
    default_status, default_code = 400, "bad_request"


class MalformedJson(BadRequest):
    default_code = "malformed_json"


class Unauthorized(ClientError):
    default_status, default_code = 401, "unauthorized"


class CredentialRevoked(Unauthorized):
    default_code = "credential_revoked"


class Forbidden(ClientError):
    default_status, default_code = 403, "forbidden"


class NotFound(ClientError):
    default_status, default_code = 404, "not_found"


class MethodNotAllowed(ClientError):
    default_status, default_code = 405, "method_not_allowed"


class Conflict(ClientError):
    default_status, default_code = 409, "conflict"


class SubjectForgotten(Conflict):
    default_code = "subject_forgotten"


class PayloadTooLarge(ClientError):
    default_status, default_code = 413, "payload_too_large"


class UnsupportedMediaType(ClientError):
    default_status, default_code = 415, "unsupported_media_type"


class InvalidInput(ClientError):
    default_status, default_code = 422, "invalid_input"


class SensitiveDataRejected(InvalidInput):
    default_code = "sensitive_data_rejected"


class MessageTooLong(InvalidInput):
    default_code = "message_too_long"


class RateLimited(ClientError):
    default_status, default_code = 429, "rate_limited"


class LlmBusy(RateLimited):
    default_code = "llm_busy"


class InternalError(ServerError):
    default_status, default_code = 500, "internal_error"


class NotImplementedByServer(ServerError):
    default_status, default_code = 501, "not_implemented"


class LlmError(ServerError):
    default_status, default_code = 502, "llm_error"


class LlmUnavailable(LlmError):
    default_code = "llm_unavailable"


class LlmBadResponse(LlmError):
    default_code = "llm_bad_response"


class Unavailable(ServerError):
    default_status, default_code = 503, "unavailable"


class NotReady(Unavailable):
    default_code = "not_ready"


class LlmNotReady(Unavailable):
    default_code = "llm_not_ready"


class LlmTimeout(ServerError):
    default_status, default_code = 504, "llm_timeout"


_HTTP_CLASSES: tuple[type[SealmemError], ...] = (
    BadRequest, MalformedJson, Unauthorized, CredentialRevoked, Forbidden, NotFound, MethodNotAllowed, Conflict,
    SubjectForgotten, PayloadTooLarge, UnsupportedMediaType, InvalidInput, SensitiveDataRejected, MessageTooLong,
    RateLimited, LlmBusy, InternalError, NotImplementedByServer, LlmError, LlmUnavailable, LlmBadResponse,
    Unavailable, NotReady, LlmNotReady, LlmTimeout,
)  # fmt: skip
BY_CODE: dict[str, type[SealmemError]] = {cls.default_code: cls for cls in _HTTP_CLASSES}
# The class of an answer whose code this client does not know, by status (502 and 504 are the LLM's codes
# only: another 502, from a proxy, is a plain ServerError).
BY_STATUS: dict[int, type[SealmemError]] = {
    cls.default_status: cls
    for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict, PayloadTooLarge,
        UnsupportedMediaType, InvalidInput, RateLimited, InternalError, NotImplementedByServer, Unavailable,
    )
}  # fmt: skip


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_class(status: int, code: str | None) -> type[SealmemError]:
    if code is not None and code in BY_CODE:
        return BY_CODE[code]
    if status in BY_STATUS:
        return BY_STATUS[status]
    return ServerError if status >= 500 else ClientError


def error_from(status: int, headers: Mapping[str, str], content: bytes) -> SealmemError:
    """The exception for an error answer: the class of its ``error.code`` (or of its status)."""
    body: Any = None
    code: str | None = None
    message: str | None = None
    request_id = headers.get("x-request-id")
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if isinstance(error.get("request_id"), str):
            request_id = error["request_id"]
    if message is None:
        text = content[:200].decode("utf-8", "replace").strip() if content else ""
        message = text or f"HTTP {status}"
    cls = error_class(status, code)
    return cls(
        message,
        code=code,
        status=status,
        request_id=request_id,
        retry_after=parse_retry_after(headers.get("retry-after")),
        body=body,
    )


def error_from_event(data: Mapping[str, Any], status: int = 200) -> SealmemError:
    """The exception for a streamed ``error`` event (its data is the usual error body)."""
    error = data.get("error")
    error = error if isinstance(error, Mapping) else {}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    cls = error_class(0, code) if code in BY_CODE else StreamError
    return cls(
        str(error.get("message") or "the stream ended with an error"),
        code=code,
        status=cls.default_status if cls is not StreamError else status,
        request_id=error.get("request_id") if isinstance(error.get("request_id"), str) else None,
        body=dict(data),
    )
