"""A deterministic fake LLM behind the backend interface, and helpers to serve apps over real HTTP."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

from service.chat.distill import RuleDistiller, Statement
from service.chat.service import InjectionRequest as InjectionRequest  # for tests that write an injector
from service.errors import ApiError
from service.llm.backend import (
    ChatMessage,
    GenerationParams,
    GenerationStats,
    LLMBackend,
    LLMError,
)

_WORD = re.compile(r"[a-z0-9']+")
_STOP = {"what", "is", "my", "the", "a", "do", "i", "where", "who", "you", "me", "of", "in", "s", "and"}


def _stems(text: str) -> set[str]:
    words = (w.removesuffix("'s") for w in _WORD.findall(text.lower()))
    return {w[:4] for w in words if w not in _STOP}


class ChatError(ApiError):
    """What a test's plug-in injector raises: an :class:`ApiError` with the status and code the test picks,
    ``ChatError(422, "kv_context_too_long", "...")``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message, code=code)


class WordCounter:
    """Counts whitespace-separated words: a stand-in tokenizer with predictable numbers."""

    per_message = 4

    def count_text(self, text: str) -> int:
        return len(text.split())

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        return sum(self.count_text(m.content) + self.per_message for m in messages) + 2


class FakeBackend(LLMBackend):
    """Answers with the injected fact that shares most words with the question ("I don't know." if none).

    Records every prompt it receives; streams word by word, optionally slowly, and can be made to fail.
    """

    kind = "fake"

    def __init__(self, *, context_tokens: int = 2048, delay_s: float = 0.0, model: str = "fake-llm") -> None:
        self._context = context_tokens
        self._model = model
        self.delay_s = delay_s
        self.fail: LLMError | None = None
        self.calls: list[list[ChatMessage]] = []
        self._counter = WordCounter()

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def context_tokens(self) -> int:
        return self._context

    @property
    def counter(self) -> WordCounter:
        return self._counter

    @staticmethod
    def reply_for(messages: Sequence[ChatMessage]) -> str:
        system = next((m.content for m in messages if m.role == "system"), "")
        facts = [line[2:].strip() for line in system.splitlines() if line.startswith("- ")]
        question = _stems(messages[-1].content)
        best, best_overlap = None, 0
        for fact in facts:
            overlap = len(question & _stems(fact))
            if overlap > best_overlap:
                best, best_overlap = fact, overlap
        return f"You told me: {best}" if best else "I don't know."

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[str]:
        self.calls.append(list(messages))
        if self.fail is not None:
            raise self.fail
        stats.prompt_tokens = self._counter.count_messages(messages)
        words = self.reply_for(messages).split(" ")
        for i, word in enumerate(words[: params.max_new_tokens]):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if cancel is not None and cancel.is_set():
                stats.finish_reason = "cancelled"
                break
            stats.mark_first_token()
            stats.completion_tokens += 1
            yield word if i == 0 else " " + word
        else:
            stats.finish_reason = "length" if len(words) > params.max_new_tokens else "stop"
        stats.mark_finished()


class SlowDistiller:
    """The rule distiller, after a pause: proves requests do not wait for distillation."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()
        self.finished = threading.Event()

    async def distill(self, message: str) -> list[Statement]:
        self.started.set()
        await asyncio.sleep(self.seconds)
        out = RuleDistiller().distill_sync(message)
        self.finished.set()
        return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any, *, port: int | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on 127.0.0.1; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
