"""Request context (pure ASGI): request id and start time, body-size limit, access log and request metrics.

Logs and metrics use the route *template* (``/v1/memories/{memory_id}``), never the raw path or query, which
can carry subject names.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_store.models import utcnow
from service.errors import REQUEST_ID_HEADER, error_response
from service.metrics import Metrics

access_log = logging.getLogger("sealmem.access")
CLIENT_REQUEST_ID_HEADER = "X-Client-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class BodyTooLarge(HTTPException):
    """413 from inside ``receive``: a Starlette ``HTTPException`` (not a :mod:`service.errors` class), because
    FastAPI turns any other exception raised while it reads a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # Every request gets a fresh server id (the audit record's request_id, unique per request); a well-formed
        # client id is kept beside it for correlation (logs, the audit detail, the X-Client-Request-ID header).
        offered = headers.get(REQUEST_ID_HEADER, "")
        client_request_id = offered if _CLIENT_REQUEST_ID.match(offered) else None
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = client_request_id
        state["begun_at"] = utcnow()
        state["arrived"] = time.monotonic()  # one clock for every process of the machine (service.admission)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in response_headers:
                    response_headers[REQUEST_ID_HEADER] = request_id
                if client_request_id is not None:
                    response_headers[CLIENT_REQUEST_ID_HEADER] = client_request_id
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        try:
            declared = int(headers.get("content-length", "0") or "0")
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body_bytes:
                response = error_response(request_id, 413, f"request body larger than {self.max_body_bytes} bytes")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_limited, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(method=scope["method"], route=route, status=status, seconds=elapsed)
            access_log.info(
                "%s %s %d",
                scope["method"],
                route,
                status,
                extra={
                    "request_id": request_id,
                    "client_request_id": client_request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "credential_id": state.get("credential_id"),
                    "tenant_id": state.get("tenant_id"),
                },
            )
