"""The two clients: :class:`Sealmem` (blocking) and :class:`AsyncSealmem` (``await``). Both are the same
:class:`BaseClient` with a different runner; their methods come from :mod:`sealmem_client.resources`."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self, TypedDict, Unpack

import httpx

from sealmem_client._core import AsyncMode, Config, M, Runner, SyncMode
from sealmem_client._transport import AsyncRunner, SyncRunner
from sealmem_client.resources import Admin, Chat, HealthChecks, Memories, Raw, Sessions, Tokens

__all__ = ["AsyncSealmem", "ClientOptions", "Sealmem"]


class ClientOptions(TypedDict, total=False):
    timeout: float | httpx.Timeout
    """Seconds (or an ``httpx.Timeout``) for every call but chat; default 60."""
    chat_timeout: float | httpx.Timeout
    """For chat calls, which wait for a generation; default 300."""
    max_retries: int
    """Retries of 429/503 answers and connection failures (see ``RetryPolicy``); default 2, 0 disables."""
    backoff_base: float
    """First backoff in seconds when an answer has no Retry-After; doubles each retry (with jitter)."""
    backoff_max: float
    max_retry_wait: float
    """A Retry-After longer than this (seconds, default 60) is not waited for: the error is raised."""
    headers: Mapping[str, str]
    """Extra headers for every request (e.g. ``X-Request-ID``)."""


class BaseClient(Raw[M]):
    memories: Memories[M]
    tokens: Tokens[M]
    chat: Chat[M]
    sessions: Sessions[M]
    admin: Admin[M]
    health: HealthChecks[M]

    def __init__(self, runner: Runner[M]) -> None:
        super().__init__(runner)
        self.memories = Memories(runner)
        self.tokens = Tokens(runner)
        self.chat = Chat(runner)
        self.sessions = Sessions(runner)
        self.admin = Admin(runner)
        self.health = HealthChecks(runner)

    @property
    def base_url(self) -> str:
        return self._runner.config.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class Sealmem(BaseClient[SyncMode]):
    """The blocking client::

        with Sealmem("http://localhost:8080", api_key="smk_...") as client:
            client.memories.add("Prefers window seats.", subject="user-42")
            for hit in client.memories.search("where to sit?", subject="user-42"):
                print(hit.score, hit.text)

    ``base_url`` and ``api_key`` default to ``SEALMEM_URL`` and ``SEALMEM_API_KEY``. ``http_client``: your own
    ``httpx.Client`` (proxies, certificates, event hooks); it is then yours to close.
    """

    _runner: SyncRunner

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(SyncRunner(Config.build(base_url, api_key, **options), http_client))

    def with_api_key(self, api_key: str) -> Sealmem:
        """A client with another credential (e.g. a minted subject token), sharing this one's connections and
        settings; close this one last."""
        clone = Sealmem.__new__(Sealmem)
        BaseClient.__init__(clone, SyncRunner(self._runner.config.with_api_key(api_key), self._runner.http))
        return clone

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncSealmem(BaseClient[AsyncMode]):
    """The async client (asyncio): the same methods as :class:`Sealmem`, awaited::

        async with AsyncSealmem() as client:
            memory = await client.memories.add("Prefers window seats.", subject="user-42")
            async for m in client.memories.iter(subject="user-42"):
                ...
    """

    _runner: AsyncRunner

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(AsyncRunner(Config.build(base_url, api_key, **options), http_client))

    def with_api_key(self, api_key: str) -> AsyncSealmem:
        """A client with another credential, sharing this one's connections and settings; close this one last."""
        clone = AsyncSealmem.__new__(AsyncSealmem)
        BaseClient.__init__(clone, AsyncRunner(self._runner.config.with_api_key(api_key), self._runner.http))
        return clone

    async def aclose(self) -> None:
        await self._runner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
