"""Streamed chat answers: iterate for text deltas, then read the final :class:`ChatResponse`.

Both classes only adapt the iteration protocol; what each event means is
:class:`sealmem_client._core.ChatStreamState`'s, shared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Self

from sealmem_client._core import ChatStreamState
from sealmem_client.models import ChatResponse

__all__ = ["AsyncChatStream", "ChatStream"]


class ChatStream:
    """``for delta in client.chat.stream(...)``; afterwards ``.response`` (or ``final_response()``, which
    reads what is left first). Nothing is sent before the iteration starts; use it as a context manager, or
    iterate to the end, so the connection is released."""

    def __init__(self, open_lines: Callable[[], Iterator[str]]) -> None:
        self._open = open_lines
        self._state = ChatStreamState()
        self._deltas: Iterator[str] | None = None
        self._lines: Iterator[str] | None = None

    def _generate(self) -> Iterator[str]:
        self._lines = lines = self._open()
        for line in lines:
            delta = self._state.feed(line)
            if delta:
                yield delta
        delta = self._state.end()
        if delta:
            yield delta
        self._state.final()  # a stream cut before its 'done' event raises StreamError here

    def __iter__(self) -> Iterator[str]:
        if self._deltas is None:
            self._deltas = self._generate()
        return self._deltas

    def final_response(self) -> ChatResponse:
        for _ in self:
            pass
        return self._state.final()

    @property
    def response(self) -> ChatResponse | None:
        """The final response once the stream has ended (None before)."""
        return self._state.response

    @property
    def text(self) -> str:
        """The reply so far."""
        return self._state.text

    def close(self) -> None:
        if self._deltas is not None:
            close = getattr(self._deltas, "close", None)
            if close is not None:
                close()
        if self._lines is not None:
            close = getattr(self._lines, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncChatStream:
    """``async for delta in client.chat.stream(...)``; afterwards ``.response`` (or
    ``await final_response()``)."""

    def __init__(self, open_lines: Callable[[], AsyncIterator[str]]) -> None:
        self._open = open_lines
        self._state = ChatStreamState()
        self._deltas: AsyncIterator[str] | None = None
        self._lines: AsyncIterator[str] | None = None

    async def _generate(self) -> AsyncIterator[str]:
        self._lines = lines = self._open()
        async for line in lines:
            delta = self._state.feed(line)
            if delta:
                yield delta
        delta = self._state.end()
        if delta:
            yield delta
        self._state.final()

    def __aiter__(self) -> AsyncIterator[str]:
        if self._deltas is None:
            self._deltas = self._generate()
        return self._deltas

    async def final_response(self) -> ChatResponse:
        async for _ in self:
            pass
        return self._state.final()

    @property
    def response(self) -> ChatResponse | None:
        return self._state.response

    @property
    def text(self) -> str:
        return self._state.text

    async def aclose(self) -> None:
        for it in (self._deltas, self._lines):
            close = getattr(it, "aclose", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
