"""A tiny, fast OpenAI-compatible chat server for benchmarks: ``python bench/fake_openai.py --port 8099``.

It answers ``POST /v1/chat/completions`` (JSON or SSE chunks) with a short reply that names the last line of
the system message's fact list, after an optional fixed delay, and ``GET /v1/models``. Sealmem's ``openai``
backend is pointed at it (``SEALMEM_LLM_BACKEND=openai``, ``SEALMEM_OPENAI_BASE_URL=http://127.0.0.1:8099/v1``),
so the whole chat path of a real server runs — retrieval, prompt, HTTP to the LLM, streaming, write-back —
while generation itself costs (almost) nothing. No production code knows about it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def make_app(model: str, delay_s: float) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "bench"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        system = next((m.get("content") or "" for m in body["messages"] if m["role"] == "system"), "")
        facts = [line[2:] for line in str(system).splitlines() if line.startswith("- ")]
        reply = f"You told me: {facts[0]}" if facts else "I don't know."
        words = reply.split(" ")[: int(body.get("max_tokens") or 64)]
        if delay_s:
            await asyncio.sleep(delay_s)
        created = int(time.time())
        if not body.get("stream"):
            return {
                "id": "cmpl-bench",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": len(words), "total_tokens": 50 + len(words)},
            }

        async def chunks() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                payload = {
                    "id": "cmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-fake")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="Fixed latency added to every completion.")
    args = parser.parse_args()
    uvicorn.run(make_app(args.model, args.delay_ms / 1000), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
