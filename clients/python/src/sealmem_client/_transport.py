"""The two runners: the only code that does I/O. Each is the same short loop around ``httpx``; every decision
in it (retry, wait, parse, next page, event meaning) is a call into :mod:`sealmem_client._core`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
import httpx

from sealmem_client._core import (
    AsyncMode,
    Call,
    Config,
    Page,
    Runner,
    StreamCall,
    SyncMode,
    connection_error,
    parse_body,
)
from sealmem_client.errors import SealmemError, error_from
from sealmem_client.streams import AsyncChatStream, ChatStream

T = TypeVar("T")


class SyncRunner(Runner[SyncMode]):
    def __init__(self, config: Config, http: httpx.Client | None = None) -> None:
        self.config = config
        self.owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=config.timeout)

    def send(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        """``call``'s successful response, after the retries the policy allows; else its exception."""
        attempt = 0
        while True:
            request = self.http.build_request(**self.config.request_args(call, stream=stream))
            error: SealmemError
            try:
                response = self.http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = connection_error(exc)
            else:
                if response.is_success:
                    return response
                if stream:
                    response.read()
                    response.close()
                error = error_from(response.status_code, response.headers, response.content)
            delay = self.config.retry.delay(attempt, error, call)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def execute(self, call: Call[T]) -> T:
        response = self.send(call)
        return parse_body(call, response.content, response.text)

    def paginate(self, call: Call[Page[T]]) -> Iterator[T]:
        following: Call[Page[T]] | None = call
        while following is not None:
            page = self.execute(following)
            yield from page.items
            following = page.next

    def stream(self, call: StreamCall) -> ChatStream:
        def lines() -> Iterator[str]:
            response = self.send(call.call, stream=True)
            try:
                yield from response.iter_lines()
            except httpx.HTTPError as exc:
                raise connection_error(exc) from exc
            finally:
                response.close()

        return ChatStream(lines)

    def close(self) -> None:
        if self.owns_http:
            self.http.close()


class AsyncRunner(Runner[AsyncMode]):
    def __init__(self, config: Config, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.owns_http = http is None
        self.http = http if http is not None else httpx.AsyncClient(timeout=config.timeout)

    async def send(self, call: Call[Any], *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            request = self.http.build_request(**self.config.request_args(call, stream=stream))
            error: SealmemError
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = connection_error(exc)
            else:
                if response.is_success:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                error = error_from(response.status_code, response.headers, response.content)
            delay = self.config.retry.delay(attempt, error, call)
            if delay is None:
                raise error
            await anyio.sleep(delay)
            attempt += 1

    async def execute(self, call: Call[T]) -> T:
        response = await self.send(call)
        return parse_body(call, response.content, response.text)

    async def paginate(self, call: Call[Page[T]]) -> AsyncIterator[T]:
        following: Call[Page[T]] | None = call
        while following is not None:
            page = await self.execute(following)
            for item in page.items:
                yield item
            following = page.next

    def stream(self, call: StreamCall) -> AsyncChatStream:
        async def lines() -> AsyncIterator[str]:
            response = await self.send(call.call, stream=True)
            try:
                async for line in response.aiter_lines():
                    yield line
            except httpx.HTTPError as exc:
                raise connection_error(exc) from exc
            finally:
                await response.aclose()

        return AsyncChatStream(lines)

    async def aclose(self) -> None:
        if self.owns_http:
            await self.http.aclose()
