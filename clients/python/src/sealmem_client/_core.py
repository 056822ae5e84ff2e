"""The sans-I/O core shared by the sync and the async client.

Every API operation is written once, in :mod:`sealmem_client.resources`, as a method that *builds* a
:class:`Call` (method, path, body, and how to parse the answer) and does no I/O. Three descriptors turn those
builders into the client's methods: :func:`op` (one request), :func:`paged` (a :class:`Call` whose parsed
answer is a :class:`Page` naming the next call: an iterator over every item) and :func:`streamed` (a chat
stream). The descriptors hand the built call to the resource's :class:`Runner`: :class:`SyncRunner` or
:class:`AsyncRunner` (in :mod:`sealmem_client._transport`), the only places that touch the network. What
those runners decide (retry or not, how long to wait, what a Server-Sent Event means, what the next page is)
is decided here, in plain functions and classes they both call.

Typing: a resource is ``Resource[SyncMode]`` or ``Resource[AsyncMode]``; each descriptor's ``__get__`` is
overloaded on that, so ``Sealmem().memories.get`` is typed ``(memory_id: str) -> Memory`` and
``AsyncSealmem().memories.get`` ``(memory_id: str) -> Awaitable[Memory]``, from the one definition.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Concatenate, Final, Generic, ParamSpec, TypeVar, final, overload
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from sealmem_client.errors import (
    APIConnectionError,
    APITimeoutError,
    SealmemError,
    StreamError,
    error_from_event,
)
from sealmem_client.models import ChatResponse

if TYPE_CHECKING:
    from sealmem_client.streams import AsyncChatStream, ChatStream

__version__ = "0.1.0"

T = TypeVar("T")
P = ParamSpec("P")
DEFAULT_BASE_URL: Final = "http://localhost:8080"
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_CHAT_TIMEOUT: Final = 300.0


# ---- "not given", distinct from None (PATCH: null clears a field) -----------------------------------------


@final
class NotGiven:
    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()


def jsonable(value: Any) -> Any:
    """Request values as JSON: models by their set fields, datetimes as ISO 8601."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the given fields; ``None`` and NOT_GIVEN mean "leave it to the server"."""
    return {name: jsonable(value) for name, value in fields.items() if value is not None and value is not NOT_GIVEN}


def patch_body(**fields: Any) -> dict[str, Any]:
    """A PATCH body: NOT_GIVEN leaves a field alone, ``None`` is sent (as null)."""
    return {name: jsonable(value) for name, value in fields.items() if value is not NOT_GIVEN}


def segment(value: str) -> str:
    """One path segment (a subject may hold ``/``)."""
    return quote(value, safe="")


# ---- calls, pages, streams --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its successful answer (``parse`` gets the decoded JSON, None when the body
    is empty, or the text with ``text=True``)."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    # Safe to send again when it may have reached the server without an answer (a read timeout). Rejections
    # (429, 503) and connection failures are retried for every call: nothing was applied.
    idempotent: bool = True
    long: bool = False  # waits for a generation: the chat timeout applies
    text: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page's items and the call for the next page (None on the last)."""

    items: Sequence[T]
    next: Call[Page[T]] | None


@dataclass(frozen=True)
class StreamCall:
    """A streamed chat call: the request, and the state machine that reads its events."""

    call: Call[None]


def params(**values: Any) -> dict[str, Any]:
    return {k: jsonable(v) for k, v in values.items() if v is not None}


def model_parser(model: type[T]) -> Callable[[Any], T]:
    validate = model.model_validate  # type: ignore[attr-defined]
    return functools.partial(_validate, validate)


def _validate(validate: Callable[[Any], T], data: Any) -> T:
    return validate(data)


# ---- retries ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a call again, and after how long.

    - 429 (``rate_limited``, ``llm_busy``) and 503 (``unavailable``, ``not_ready``, ``llm_not_ready``): the server
      refused the request before acting on it, so every call is retried, adds included; the wait is the
      answer's ``Retry-After`` when it has one, else exponential backoff with jitter.
    - A connection that could not be made (refused, connect timeout): nothing was sent; retried.
    - A failure after the request may have arrived (read timeout, connection reset): retried only for calls
      that are safe to repeat (reads, search, delete, token minting); never for adds, updates, chat.
    - Anything else (4xx, 500, 502, 504): raised at once.

    ``max_retries`` retries at most (0: none); a ``Retry-After`` above ``max_retry_wait`` seconds is not
    waited for: the error is raised with ``.retry_after`` set, for the caller to decide.
    """

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_wait: float = 60.0

    def delay(self, attempt: int, error: SealmemError, call: Call[Any]) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None to raise ``error``."""
        if attempt >= self.max_retries:
            return None
        if isinstance(error, APIConnectionError):
            if getattr(error, "sent", True) and not call.idempotent:
                return None
        elif error.status not in (429, 503):
            return None
        if error.retry_after is not None:
            wait = error.retry_after
        else:
            wait = min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)
        return None if wait > self.max_retry_wait else wait


def connection_error(exc: httpx.HTTPError) -> APIConnectionError:
    """The exception for a request without an answer; ``.sent`` is False when it surely never left."""
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    error = cls(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    error.sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)  # type: ignore[attr-defined]
    error.__cause__ = exc
    return error


# ---- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    chat_timeout: httpx.Timeout
    retry: RetryPolicy
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        chat_timeout: float | httpx.Timeout = DEFAULT_CHAT_TIMEOUT,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_wait: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> Config:
        url = base_url or os.environ.get("SEALMEM_URL") or DEFAULT_BASE_URL
        return cls(
            base_url=url.rstrip("/"),
            api_key=api_key if api_key is not None else (os.environ.get("SEALMEM_API_KEY") or None),
            timeout=_timeout(timeout),
            chat_timeout=_timeout(chat_timeout),
            retry=RetryPolicy(max(0, max_retries), backoff_base, backoff_max, max_retry_wait),
            headers=dict(headers or {}),
        )

    def with_api_key(self, api_key: str | None) -> Config:
        return replace(self, api_key=api_key)

    def request_args(self, call: Call[Any], *, stream: bool = False) -> dict[str, Any]:
        """The arguments of ``httpx.Client.build_request`` for ``call``."""
        headers = {"User-Agent": f"sealmem-client-python/{__version__}", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        args: dict[str, Any] = {
            "method": call.method,
            "url": self.base_url + call.path,
            "headers": headers,
            "timeout": self.chat_timeout if call.long else self.timeout,
        }
        if call.params:
            args["params"] = call.params
        if call.json is not None:
            args["json"] = call.json
        return args


def _timeout(value: float | httpx.Timeout) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value, connect=min(10.0, value))


def parse_body(call: Call[T], content: bytes, text: str) -> T:
    if call.text:
        return call.parse(text)
    return call.parse(json.loads(content) if content else None)


# ---- Server-Sent Events of /v1/chat -------------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


class SseParser:
    """Lines in, events out (the WHATWG event-stream format, as far as Sealmem uses it)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def end(self) -> SseEvent | None:
        return self._dispatch()

    def _dispatch(self) -> SseEvent | None:
        if not self._data and not self._event:
            return None
        event = SseEvent(self._event or "message", "\n".join(self._data))
        self._event, self._data = "", []
        return event


class ChatStreamState:
    """What a ``/v1/chat`` stream has said: ``delta`` events (``{"text"}``), then one ``done`` event carrying
    the whole :class:`ChatResponse`, or one ``error`` event carrying the usual error body."""

    def __init__(self) -> None:
        self.parser = SseParser()
        self.parts: list[str] = []
        self.response: ChatResponse | None = None

    def feed(self, line: str) -> str | None:
        """One line of the stream; returns the text delta it completes, if any. Raises the error event's
        exception."""
        event = self.parser.feed(line)
        return None if event is None else self._on(event)

    def end(self) -> str | None:
        event = self.parser.end()
        return None if event is None else self._on(event)

    def _on(self, event: SseEvent) -> str | None:
        try:
            data = json.loads(event.data) if event.data else {}
        except ValueError:
            raise StreamError(f"unreadable {event.event!r} event in the chat stream") from None
        if event.event == "delta":
            text = str(data.get("text", ""))
            self.parts.append(text)
            return text
        if event.event == "done":
            self.response = ChatResponse.model_validate(data)
        elif event.event == "error":
            raise error_from_event(data if isinstance(data, dict) else {})
        return None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def final(self) -> ChatResponse:
        if self.response is None:
            raise StreamError("the chat stream ended before its 'done' event")
        return self.response


# ---- modes, runners and the descriptors -----------------------------------------------------------------------


@final
class SyncMode:
    """Marker: resources of :class:`~sealmem_client.Sealmem` (methods return results)."""


@final
class AsyncMode:
    """Marker: resources of :class:`~sealmem_client.AsyncSealmem` (methods return awaitables)."""


M = TypeVar("M")


class Runner(Generic[M]):
    """Sends calls: implemented once with ``httpx.Client`` and once with ``httpx.AsyncClient``."""

    config: Config

    def execute(self, call: Call[T]) -> Any:  # T, or Awaitable[T]
        raise NotImplementedError

    def paginate(self, call: Call[Page[T]]) -> Any:  # Iterator[T], or AsyncIterator[T]
        raise NotImplementedError

    def stream(self, call: StreamCall) -> Any:  # ChatStream, or AsyncChatStream
        raise NotImplementedError


class Resource(Generic[M]):
    """A group of operations (``client.memories``, ``client.admin.keys``, ...) bound to a runner."""

    def __init__(self, runner: Runner[M]) -> None:
        self._runner = runner


R = TypeVar("R")


class _Descriptor(Generic[P, R]):
    def __init__(self, build: Callable[..., Any], run: str) -> None:
        self._build = build
        self._run = run
        functools.update_wrapper(self, build)  # type: ignore[arg-type]

    def _bind(self, obj: Resource[Any]) -> Callable[..., Any]:
        build, runner = self._build, obj._runner
        run = getattr(runner, self._run)

        def bound(*args: Any, **kwargs: Any) -> Any:
            return run(build(obj, *args, **kwargs))

        functools.update_wrapper(bound, build)
        signature = inspect.signature(build)
        bound.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:], return_annotation=inspect.Signature.empty
        )
        return bound


class Op(_Descriptor[P, R]):
    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Op[P, R]: ...
    @overload
    def __get__(self, obj: Resource[SyncMode], owner: type[Any]) -> Callable[P, R]: ...
    @overload
    def __get__(self, obj: Resource[AsyncMode], owner: type[Any]) -> Callable[P, Awaitable[R]]: ...
    def __get__(self, obj: Resource[Any] | None, owner: type[Any]) -> Any:
        return self if obj is None else self._bind(obj)


class PagedOp(_Descriptor[P, R]):
    @overload
    def __get__(self, obj: None, owner: type[Any]) -> PagedOp[P, R]: ...
    @overload
    def __get__(self, obj: Resource[SyncMode], owner: type[Any]) -> Callable[P, Iterator[R]]: ...
    @overload
    def __get__(self, obj: Resource[AsyncMode], owner: type[Any]) -> Callable[P, AsyncIterator[R]]: ...
    def __get__(self, obj: Resource[Any] | None, owner: type[Any]) -> Any:
        return self if obj is None else self._bind(obj)


class StreamOp(_Descriptor[P, None]):
    @overload
    def __get__(self, obj: None, owner: type[Any]) -> StreamOp[P]: ...
    @overload
    def __get__(self, obj: Resource[SyncMode], owner: type[Any]) -> Callable[P, ChatStream]: ...
    @overload
    def __get__(self, obj: Resource[AsyncMode], owner: type[Any]) -> Callable[P, AsyncChatStream]: ...
    def __get__(self, obj: Resource[Any] | None, owner: type[Any]) -> Any:
        return self if obj is None else self._bind(obj)


def op(build: Callable[Concatenate[Any, P], Call[R]]) -> Op[P, R]:
    """One request: the method returns the parsed answer (sync) or an awaitable of it (async)."""
    return Op(build, "execute")


def paged(build: Callable[Concatenate[Any, P], Call[Page[R]]]) -> PagedOp[P, R]:
    """Every item of every page, fetched page by page as the iteration goes."""
    return PagedOp(build, "paginate")


def streamed(build: Callable[Concatenate[Any, P], StreamCall]) -> StreamOp[P]:
    """A chat stream: iterate it for text deltas; its final response comes after."""
    return StreamOp(build, "stream")
