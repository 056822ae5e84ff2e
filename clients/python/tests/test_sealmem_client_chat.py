"""Chat through the client: whole answers, Server-Sent Event streams (sync and async), sessions."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sealmem_client_live import Live

from sealmem_client import AsyncSealmem, ChatResponse, ChatStream, NotFound, Sealmem, StreamError
from sealmem_client._core import ChatStreamState


def test_chat_send_and_stream(app: Sealmem) -> None:
    subject = f"chat-{uuid.uuid4().hex[:8]}"
    dog = app.memories.add("My dog is named Biscuit.", subject=subject)

    whole = app.chat.send("What is my dog's name?", subject=subject, session_id="s1")
    assert isinstance(whole, ChatResponse) and "Biscuit" in whole.reply
    assert [m.id for m in whole.memories_used] == [dog.id]

    stream = app.chat.stream("What is my dog's name?", subject=subject, session_id="s1")
    assert isinstance(stream, ChatStream) and stream.response is None
    with stream:
        deltas = list(stream)
    response = stream.response
    assert response is not None and len(deltas) > 1  # word by word
    assert "".join(deltas).strip() == response.reply and "Biscuit" in response.reply
    assert response.session_id == "s1" and [m.id for m in response.memories_used] == [dog.id]
    assert stream.final_response() is response

    sessions = app.sessions.list(subject=subject)
    assert [s.session_id for s in sessions] == ["s1"] and sessions[0].turns == 4
    turns = app.sessions.get("s1", subject=subject).turns
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[-1].text == response.reply
    app.sessions.delete("s1", subject=subject)
    with pytest.raises(NotFound):
        app.sessions.get("s1", subject=subject)


def test_async_chat_stream(live: Live) -> None:
    async def scenario() -> None:
        subject = f"achat-{uuid.uuid4().hex[:8]}"
        async with AsyncSealmem(live.url, live.app_key) as client:
            await client.memories.add("I live in Lisbon.", subject=subject)
            token = await client.tokens.create(subject, ["chat"])
            user = client.with_api_key(token.token)  # a chat-only subject token: its own subject implied
            stream = user.chat.stream("Where do I live?", write_back=False)
            deltas = [delta async for delta in stream]
            final = await stream.final_response()
            assert "".join(deltas).strip() == final.reply and "Lisbon" in final.reply
            assert final.write_back is not None and final.write_back.status == "disabled"

    asyncio.run(scenario())


def test_stream_events_are_read_as_the_server_writes_them() -> None:
    state = ChatStreamState()
    lines = [
        "event: delta", 'data: {"text":"Hel"}', "",
        "event: delta", 'data: {"text":"lo"}', "",
        ": a comment", "",
    ]  # fmt: skip
    assert [d for line in lines if (d := state.feed(line)) is not None] == ["Hel", "lo"]
    with pytest.raises(StreamError):
        state.final()  # ended before 'done'
    broken = ChatStreamState()
    broken.feed("event: error")
    broken.feed('data: {"error":{"code":"subject_forgotten","message":"gone","request_id":"r9"}}')
    with pytest.raises(Exception) as caught:
        broken.feed("")
    assert type(caught.value).__name__ == "SubjectForgotten" and caught.value.request_id == "r9"  # type: ignore[attr-defined]
