"""A small OpenAI-compatible server for tests: real HTTP, scripted failures, recorded requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.llm.backend import ChatMessage
from tests.chat.fakes import FakeBackend


@dataclass
class Script:
    """What the next requests get: ``fail_next`` 500s first, then answers after ``delay_s``."""

    fail_next: int = 0
    fail_status: int = 500
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    echo: bool = False  # reply with the last user message instead of the fake's answer
    chunk_chars: int = 0  # stream the reply in pieces of this many characters (0: word by word)
    reply: Callable[[dict[str, Any]], str] | None = None  # the answer to a request body, sent whole (not word-capped)


def fake_openai_app(script: Script, *, model: str = "tiny-remote") -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        script.requests.append(body)
        script.headers.append(dict(request.headers))
        if script.fail_next > 0:
            script.fail_next -= 1
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=script.fail_status)
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        messages = [ChatMessage(m["role"], m["content"]) for m in body["messages"]]
        reply = "Echo: " + messages[-1].content if script.echo else FakeBackend.reply_for(messages)
        if script.reply is not None:
            reply = script.reply(body)
        words = reply.split(" ")[: body.get("max_tokens") or 1000] if script.reply is None else reply.split(" ")
        created = int(time.time())
        if not body.get("stream"):
            return {
                "id": "cmpl-1", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)},
            }

        async def chunks() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                payload = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            if script.chunk_chars:
                text = " ".join(words)
                for at in range(0, len(text), script.chunk_chars):
                    yield chunk({"content": text[at : at + script.chunk_chars]})
            for i, word in enumerate(words if not script.chunk_chars else []):
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app
