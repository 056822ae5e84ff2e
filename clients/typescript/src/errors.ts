/**
 * Errors of the Sealmem API.
 *
 * Every error response has the body `{"error": {"code", "message", "request_id"}}`. The client throws a
 * {@link SealmemError} for each: a subclass per error code (`NotFoundError` for `not_found`, ...), so callers
 * can use `instanceof`, or switch on the `code` discriminant. A code this client does not know yet is still a
 * `SealmemError`, with that code.
 */

/** The error codes the server documents (docs/api.md "Errors", plus the chat endpoints' own). */
export type KnownErrorCode =
  | "malformed_json"
  | "bad_request"
  | "unauthorized"
  | "credential_revoked"
  | "forbidden"
  | "not_found"
  | "method_not_allowed"
  | "conflict"
  | "subject_forgotten"
  | "payload_too_large"
  | "unsupported_media_type"
  | "invalid_input"
  | "message_too_long"
  | "sensitive_data_rejected"
  | "rate_limited"
  | "llm_busy"
  | "internal_error"
  | "not_implemented"
  | "llm_error"
  | "llm_unavailable"
  | "llm_bad_response"
  | "llm_timeout"
  | "unavailable"
  | "not_ready"
  | "llm_not_ready"
  /** No HTTP answer at all: the connection failed or was aborted (status 0). */
  | "connection_error";

/** `KnownErrorCode`, or any code a newer server may send. */
export type ErrorCode = KnownErrorCode | (string & {});

/** The `error` object of an error body. */
export interface ErrorDetail {
  code: string;
  message: string;
  request_id: string;
}

export interface SealmemErrorInit {
  status: number;
  code: ErrorCode;
  message: string;
  requestId?: string | null;
  /** Seconds from the `Retry-After` header (429, 503), when the server sent one. */
  retryAfter?: number | null;
  /** The whole response body, parsed (or its text when it was not JSON). */
  body?: unknown;
  headers?: Headers;
  cause?: unknown;
}

/** Base class of every error the client throws for an HTTP error answer (or a failed connection). */
export class SealmemError extends Error {
  /** HTTP status (0 when no answer came back). */
  readonly status: number;
  /** Stable machine-readable code, e.g. `not_found`: the discriminant. */
  readonly code: ErrorCode;
  /** The server's request id (`X-Request-ID`); quote it when reporting a problem. */
  readonly requestId: string | null;
  /** Seconds the server asked to wait before retrying (`Retry-After`), or null. */
  readonly retryAfter: number | null;
  readonly body: unknown;
  readonly headers: Headers | undefined;

  constructor(init: SealmemErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status;
    this.code = init.code;
    this.requestId = init.requestId ?? null;
    this.retryAfter = init.retryAfter ?? null;
    this.body = init.body;
    this.headers = init.headers;
  }
}

/** 400 `malformed_json` / `bad_request`: the body is not JSON or not UTF-8. */
export class BadRequestError extends SealmemError {}
/** 400 `malformed_json`. */
export class MalformedJsonError extends BadRequestError {}
/** 401 `unauthorized`: missing, unknown, revoked, expired or tampered credential. */
export class UnauthorizedError extends SealmemError {}
/** 401 `credential_revoked`: a delayed write whose API key was revoked meanwhile; nothing was written. */
export class CredentialRevokedError extends UnauthorizedError {}
/** 403 `forbidden`: a valid credential without the role or scope. */
export class ForbiddenError extends SealmemError {}
/** 404 `not_found`: no such thing, or outside what the credential may see. */
export class NotFoundError extends SealmemError {}
/** 405 `method_not_allowed`. */
export class MethodNotAllowedError extends SealmemError {}
/** 409 `conflict`: a uniqueness rule. */
export class ConflictError extends SealmemError {}
/** 409 `subject_forgotten`: the subject was forgotten while the request ran; nothing was written. */
export class SubjectForgottenError extends ConflictError {}
/** 413 `payload_too_large`. */
export class PayloadTooLargeError extends SealmemError {}
/** 415 `unsupported_media_type`. */
export class UnsupportedMediaTypeError extends SealmemError {}
/** 422 `invalid_input`: validation failed; nothing was changed. */
export class InvalidInputError extends SealmemError {}
/** 422 `message_too_long` (chat). */
export class MessageTooLongError extends InvalidInputError {}
/** 422 `sensitive_data_rejected`: the tenant's desensitisation policy rejects a type of value in the text. */
export class SensitiveDataRejectedError extends InvalidInputError {}
/** 429 `rate_limited` (see `retryAfter`). */
export class RateLimitedError extends SealmemError {}
/** 429 `llm_busy`: the generation queue is full (see `retryAfter`). */
export class LlmBusyError extends RateLimitedError {}
/** 500 `internal_error`. */
export class InternalServerError extends SealmemError {}
/** 501 `not_implemented`: the requested injection mode is not available. */
export class NotImplementedError extends SealmemError {}
/** 502/504 `llm_*`: the LLM server failed, cannot be reached, answered nonsense or timed out. */
export class LlmError extends SealmemError {}
/** 503 `unavailable` / `not_ready` / `llm_not_ready`. */
export class UnavailableError extends SealmemError {}
/** No HTTP answer: connection refused, reset, DNS, or aborted. `status` is 0. */
export class ConnectionError extends SealmemError {}

type ErrorClass = new (init: SealmemErrorInit) => SealmemError;

const BY_CODE: Record<KnownErrorCode, ErrorClass> = {
  malformed_json: MalformedJsonError,
  bad_request: BadRequestError,
  unauthorized: UnauthorizedError,
  credential_revoked: CredentialRevokedError,
  forbidden: ForbiddenError,
  not_found: NotFoundError,
  method_not_allowed: MethodNotAllowedError,
  conflict: ConflictError,
  subject_forgotten: SubjectForgottenError,
  payload_too_large: PayloadTooLargeError,
  unsupported_media_type: UnsupportedMediaTypeError,
  invalid_input: InvalidInputError,
  message_too_long: MessageTooLongError,
  sensitive_data_rejected: SensitiveDataRejectedError,
  rate_limited: RateLimitedError,
  llm_busy: LlmBusyError,
  internal_error: InternalServerError,
  not_implemented: NotImplementedError,
  llm_error: LlmError,
  llm_unavailable: LlmError,
  llm_bad_response: LlmError,
  llm_timeout: LlmError,
  unavailable: UnavailableError,
  not_ready: UnavailableError,
  llm_not_ready: UnavailableError,
  connection_error: ConnectionError,
};

/** The status each code is answered with: used for errors that arrive inside a stream (HTTP status 200). */
const STATUS_OF: Record<string, number> = {
  malformed_json: 400,
  bad_request: 400,
  unauthorized: 401,
  credential_revoked: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  subject_forgotten: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  invalid_input: 422,
  message_too_long: 422,
  sensitive_data_rejected: 422,
  rate_limited: 429,
  llm_busy: 429,
  internal_error: 500,
  not_implemented: 501,
  llm_error: 502,
  llm_unavailable: 502,
  llm_bad_response: 502,
  llm_timeout: 504,
  unavailable: 503,
  not_ready: 503,
  llm_not_ready: 503,
};

/** Fallback class by status, for a code this client does not know. */
function classForStatus(status: number): ErrorClass {
  if (status === 400) return BadRequestError;
  if (status === 401) return UnauthorizedError;
  if (status === 403) return ForbiddenError;
  if (status === 404) return NotFoundError;
  if (status === 409) return ConflictError;
  if (status === 422) return InvalidInputError;
  if (status === 429) return RateLimitedError;
  if (status === 502 || status === 504) return LlmError;
  if (status === 503) return UnavailableError;
  if (status >= 500) return InternalServerError;
  return SealmemError;
}

/** `Retry-After` in seconds: a number of seconds or an HTTP date; null when absent or unreadable. */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | null {
  if (value == null || value.trim() === "") return null;
  const seconds = Number(value.trim());
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(value);
  if (Number.isNaN(at)) return null;
  return Math.max(0, (at - now) / 1000);
}

function errorDetail(body: unknown): ErrorDetail | null {
  if (body && typeof body === "object" && "error" in body) {
    const error = (body as { error: unknown }).error;
    if (error && typeof error === "object" && typeof (error as ErrorDetail).code === "string") {
      const detail = error as Partial<ErrorDetail>;
      return {
        code: String(detail.code),
        message: typeof detail.message === "string" ? detail.message : "",
        request_id: typeof detail.request_id === "string" ? detail.request_id : "",
      };
    }
  }
  return null;
}

/** Build the error for an error body (`status` 0 or a stream's 200: derived from the code). */
export function errorFromBody(
  body: unknown,
  { status, headers, cause }: { status?: number; headers?: Headers; cause?: unknown } = {},
): SealmemError {
  const detail = errorDetail(body);
  const httpStatus = status && status >= 400 ? status : detail ? (STATUS_OF[detail.code] ?? 0) : (status ?? 0);
  const code = detail?.code ?? (httpStatus ? `http_${httpStatus}` : "error");
  const Class = (BY_CODE as Record<string, ErrorClass>)[code] ?? classForStatus(httpStatus);
  const message =
    detail?.message || (typeof body === "string" && body ? body.slice(0, 500) : `HTTP ${httpStatus || "error"}`);
  return new Class({
    status: httpStatus,
    code,
    message,
    requestId: detail?.request_id || headers?.get("x-request-id") || null,
    retryAfter: parseRetryAfter(headers?.get("retry-after")),
    body,
    headers,
    cause,
  });
}

/** Build the error for an HTTP error response whose body was already read (`body`: parsed JSON or text). */
export function errorFromResponse(response: Response, body: unknown): SealmemError {
  return errorFromBody(body, { status: response.status, headers: response.headers });
}

/** Build the error of a failed connection (no answer). */
export function connectionError(cause: unknown): ConnectionError {
  const message = cause instanceof Error ? cause.message : String(cause);
  return new ConnectionError({ status: 0, code: "connection_error", message, cause });
}
