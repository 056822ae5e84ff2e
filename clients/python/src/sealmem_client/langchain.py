"""LangChain adapter (``pip install "sealmem-client[langchain]"``, on ``langchain-core``).

- :class:`SealmemRetriever`: a ``BaseRetriever`` over ``memories.search``; each ``Document`` is a memory, with
  ``id``, ``score``, ``kind`` (and subject, session, timestamps, the memory's own metadata) in its metadata.
- :class:`SealmemChatMessageHistory`: a ``BaseChatMessageHistory`` kept as the subject's memories of kind
  ``turn`` in one ``session_id``: the same form ``POST /v1/chat`` stores its turns in (metadata ``role``,
  ``message_id``, ``seq``), so ``client.sessions.get(session_id)`` shows a LangChain conversation, and Sealmem's
  own chat reads it as working memory. Messages come back in the order they were added (stored time, then
  position in their ``add_messages`` call); what LangChain holds beside the text (ids, tool calls, names,
  ``additional_kwargs``) is kept in the turn's encrypted metadata, so messages round-trip. A message without
  plain text (tool calls only, or content parts) is stored with a readable rendering as its text.
  ``clear()`` deletes the session's turns one by one (it needs the ``write`` scope; the memories API works
  whether or not chat is enabled on the server).

Both take a :class:`~sealmem_client.Sealmem` (``client``) and/or an :class:`~sealmem_client.AsyncSealmem`
(``async_client``); without an async client, the async methods run the sync ones in a thread (LangChain's
default), and vice versa a history or retriever with only an async client supports only the async methods.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, model_validator

from sealmem_client.client import AsyncSealmem, Sealmem
from sealmem_client.errors import NotFound
from sealmem_client.models import Memory, NewMemory, SearchFilters, SearchResult

__all__ = ["SealmemChatMessageHistory", "SealmemRetriever", "memories_to_messages", "messages_to_memories"]

TURN_KIND = "turn"

# ---- retriever ----------------------------------------------------------------------------------------------


class SealmemRetriever(BaseRetriever):
    """Documents from a subject's memories, best first::

        retriever = SealmemRetriever(client=Sealmem(), subject="user-42", k=4)
        retriever.invoke("where does the user live?")  # [Document(page_content=..., metadata={"id", "score", ...})]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Sealmem | None = None
    async_client: AsyncSealmem | None = None
    subject: str | None = None
    """Required with an API key; with a subject token, the token's own subject."""
    k: int = 4
    filters: SearchFilters | dict[str, Any] | None = None
    """``memories.search`` filters, e.g. ``{"kinds": ["fact", "preference"]}``."""
    min_score: float | None = None
    """Leave out results scoring below this."""

    @model_validator(mode="after")
    def _one_client(self) -> SealmemRetriever:
        if self.client is None and self.async_client is None:
            raise ValueError("SealmemRetriever needs a client (Sealmem) or an async_client (AsyncSealmem)")
        return self

    def _documents(self, results: Sequence[SearchResult]) -> list[Document]:
        return [
            result_to_document(r) for r in results if self.min_score is None or r.score >= self.min_score
        ]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if self.client is None:
            raise RuntimeError("this SealmemRetriever has only an async_client: use ainvoke")
        return self._documents(self.client.memories.search(query, subject=self.subject, k=self.k, filters=self.filters))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.async_client is None:
            return await super()._aget_relevant_documents(query, run_manager=run_manager)
        results = await self.async_client.memories.search(query, subject=self.subject, k=self.k, filters=self.filters)
        return self._documents(results)


def result_to_document(result: SearchResult) -> Document:
    metadata: dict[str, Any] = {
        "id": result.id,
        "score": result.score,
        "dense_score": result.dense_score,
        "lexical_score": result.lexical_score,
        "kind": result.kind,
        "subject": result.subject,
        "session_id": result.session_id,
        "agent_id": result.agent_id,
        "created_at": result.created_at.isoformat(),
        "occurred_at": result.occurred_at.isoformat() if result.occurred_at else None,
        "metadata": result.metadata,
    }
    return Document(page_content=result.text, metadata=metadata, id=result.id)


# ---- chat message history -----------------------------------------------------------------------------------

_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function"}
_TYPE_OF_ROLE = {"user": "human", "assistant": "ai", "system": "system", "tool": "tool", "function": "function"}
_EMPTY = "(no text)"


def messages_to_memories(
    messages: Sequence[BaseMessage], *, session_id: str, subject: str | None = None, agent_id: str | None = None
) -> list[NewMemory]:
    """The turns that store ``messages`` (one ``add_messages`` call: one message id, ``seq`` in order)."""
    message_id = "lc_" + uuid.uuid4().hex
    out: list[NewMemory] = []
    for seq, message in enumerate(messages):
        data = dict(message_to_dict(message)["data"])
        content = data.pop("content", "")
        data.pop("type", None)
        extra = {k: v for k, v in data.items() if v not in (None, {}, [], False, "")}
        if isinstance(content, str) and content.strip():
            text = content
        else:
            extra["content"] = content
            text = json.dumps(content, ensure_ascii=False) if content and not isinstance(content, str) else _EMPTY
        role = _ROLE_OF_TYPE.get(message.type) or str(getattr(message, "role", message.type))
        metadata: dict[str, Any] = {"role": role, "message_id": message_id, "seq": seq, "lc_type": message.type}
        if extra:
            metadata["lc"] = json.dumps(extra, ensure_ascii=False, default=str)  # a string: no metadata depth limit
        out.append(
            NewMemory(
                text=text, subject=subject, kind=TURN_KIND, session_id=session_id, agent_id=agent_id,
                source_ref=message_id, metadata=metadata,
            )
        )  # fmt: skip
    return out


def _order(memory: Memory) -> tuple[datetime, int]:
    seq = memory.metadata.get("seq", 0)
    return (memory.created_at, seq if isinstance(seq, int) else 0)


def memories_to_messages(memories: Sequence[Memory]) -> list[BaseMessage]:
    """Stored turns (any order) as LangChain messages, oldest first. Turns ``/v1/chat`` stored (roles ``user`` and
    ``assistant``, no LangChain data) become human and AI messages."""
    dicts: list[dict[str, Any]] = []
    for memory in sorted(memories, key=_order):
        role = memory.metadata.get("role")
        kind = memory.metadata.get("lc_type")
        if not isinstance(kind, str):
            kind = _TYPE_OF_ROLE.get(role if isinstance(role, str) else "user", "chat")
        data: dict[str, Any] = {}
        raw = memory.metadata.get("lc")
        if isinstance(raw, str):
            try:
                loaded = json.loads(raw)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                data = loaded
        data.setdefault("content", memory.text)
        if kind == "chat":
            data.setdefault("role", role if isinstance(role, str) else "user")
        dicts.append({"type": kind, "data": data})
    return messages_from_dict(dicts)


class SealmemChatMessageHistory(BaseChatMessageHistory):
    """A conversation kept in Sealmem, for ``RunnableWithMessageHistory`` and friends::

        history = SealmemChatMessageHistory("session-1", client=Sealmem(), subject="user-42")
        history.add_messages([HumanMessage("Hi, I'm Ana."), AIMessage("Hello Ana!")])
        history.messages  # both, in order
    """

    def __init__(
        self,
        session_id: str,
        *,
        client: Sealmem | None = None,
        async_client: AsyncSealmem | None = None,
        subject: str | None = None,
        agent_id: str | None = None,
        page_size: int = 200,
    ) -> None:
        if client is None and async_client is None:
            raise ValueError("SealmemChatMessageHistory needs a client (Sealmem) or an async_client (AsyncSealmem)")
        self.session_id = session_id
        self.client = client
        self.async_client = async_client
        self.subject = subject
        self.agent_id = agent_id
        self.page_size = page_size

    def _sync(self) -> Sealmem:
        if self.client is None:
            raise RuntimeError("this history has only an async_client: use aget_messages, aadd_messages, aclear")
        return self.client

    def _query(self) -> dict[str, Any]:
        return {"subject": self.subject, "session_id": self.session_id, "kind": TURN_KIND, "page_size": self.page_size}

    def _new(self, messages: Sequence[BaseMessage]) -> list[NewMemory]:
        return messages_to_memories(messages, session_id=self.session_id, subject=self.subject, agent_id=self.agent_id)

    def _turns(self) -> list[Memory]:
        try:
            return list(self._sync().memories.iter(**self._query()))
        except NotFound:  # a subject without any memory yet
            return []

    async def _aturns(self, client: AsyncSealmem) -> list[Memory]:
        try:
            return [m async for m in client.memories.iter(**self._query())]
        except NotFound:
            return []

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return memories_to_messages(self._turns())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        if messages:
            self._sync().memories.add_batch(self._new(messages))

    def clear(self) -> None:
        client = self._sync()
        for memory in self._turns():
            with contextlib.suppress(NotFound):  # deleted meanwhile
                client.memories.delete(memory.id)

    async def aget_messages(self) -> list[BaseMessage]:
        if self.async_client is None:
            return await super().aget_messages()
        return memories_to_messages(await self._aturns(self.async_client))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        if self.async_client is None:
            await super().aadd_messages(messages)
        elif messages:
            await self.async_client.memories.add_batch(self._new(messages))

    async def aclear(self) -> None:
        if self.async_client is None:
            await super().aclear()
            return
        for memory in await self._aturns(self.async_client):
            with contextlib.suppress(NotFound):
                await self.async_client.memories.delete(memory.id)
