"""The LangChain adapter with langchain-core's real classes, against the real server."""

from __future__ import annotations

import asyncio
import uuid

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from sealmem_client_live import Live

from sealmem_client import AsyncSealmem, Sealmem
from sealmem_client.langchain import SealmemChatMessageHistory, SealmemRetriever


def test_retriever_returns_documents(live: Live, app: Sealmem) -> None:
    subject = f"lc-{uuid.uuid4().hex[:8]}"
    cello = app.memories.add("Plays the cello in an orchestra.", subject=subject, kind="fact")
    app.memories.add("Prefers tea over coffee.", subject=subject, kind="preference")

    retriever = SealmemRetriever(client=app, subject=subject, k=2)
    docs = retriever.invoke("which instrument does the user play?")
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 2
    assert docs[0].page_content == cello.text and docs[0].id == cello.id
    assert docs[0].metadata["id"] == cello.id and docs[0].metadata["kind"] == "fact"
    assert docs[0].metadata["score"] >= docs[1].metadata["score"]
    only = SealmemRetriever(client=app, subject=subject, filters={"kinds": ["preference"]}).invoke("drinks")
    assert [d.metadata["kind"] for d in only] == ["preference"]

    # In a chain (LCEL), and through the async client.
    chain = retriever | RunnableLambda(lambda ds: "\n".join(d.page_content for d in ds))
    assert "cello" in chain.invoke("music")

    async def scenario() -> list[Document]:
        async with AsyncSealmem(live.url, live.app_key) as client:
            return await SealmemRetriever(async_client=client, subject=subject, k=1).ainvoke("who plays the cello?")

    assert [d.id for d in asyncio.run(scenario())] == [cello.id]


def test_chat_message_history_round_trips(live: Live, app: Sealmem) -> None:
    subject, session = f"hist-{uuid.uuid4().hex[:8]}", "lc-session"
    history = SealmemChatMessageHistory(session, client=app, subject=subject)
    assert history.messages == []
    first = [
        SystemMessage("You are terse."),
        HumanMessage("Hi, I'm Ana.", id="m1"),
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"who": {"name": "Ana"}}, "id": "call-1"}]),
        ToolMessage("Ana: nurse in Porto", tool_call_id="call-1"),
    ]
    history.add_messages(first)
    history.add_messages([AIMessage("Hello Ana!"), HumanMessage("What do I do?")])
    got = history.messages
    assert [type(m) for m in got] == [SystemMessage, HumanMessage, AIMessage, ToolMessage, AIMessage, HumanMessage]
    assert [m.content for m in got] == ["You are terse.", "Hi, I'm Ana.", "", "Ana: nurse in Porto", "Hello Ana!",
                                        "What do I do?"]  # fmt: skip
    assert got[1].id == "m1"
    assert isinstance(got[2], AIMessage) and got[2].tool_calls[0]["args"] == {"who": {"name": "Ana"}}
    assert isinstance(got[3], ToolMessage) and got[3].tool_call_id == "call-1"

    # The same turns Sealmem's own chat stores: visible as a session, with roles.
    turns = app.sessions.get(session, subject=subject).turns
    assert [t.role for t in turns] == ["system", "user", "assistant", "tool", "assistant", "user"]

    # Another history object (another process) sees the same conversation; the async side too.
    async def scenario() -> None:
        async with AsyncSealmem(live.url, live.app_key) as client:
            other = SealmemChatMessageHistory(session, async_client=client, subject=subject)
            assert [m.content for m in await other.aget_messages()] == [m.content for m in got]
            await other.aadd_messages([AIMessage("You are a nurse.")])
            assert (await other.aget_messages())[-1].content == "You are a nurse."

    asyncio.run(scenario())
    assert len(history.messages) == 7

    history.clear()
    assert history.messages == []
    assert SealmemChatMessageHistory("another", client=app, subject=subject).messages == []


def test_history_reads_sealmem_chat_turns(app: Sealmem) -> None:
    subject = f"interop-{uuid.uuid4().hex[:8]}"
    app.memories.add("My cat is called Miso.", subject=subject)
    reply = app.chat.send("What is my cat called?", subject=subject, session_id="web-1").reply
    history = SealmemChatMessageHistory("web-1", client=app, subject=subject)
    got = history.messages
    assert [type(m) for m in got] == [HumanMessage, AIMessage]
    assert got[0].content == "What is my cat called?" and got[1].content == reply
