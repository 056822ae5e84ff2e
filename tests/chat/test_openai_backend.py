"""The ``openai`` backend against a real OpenAI-compatible HTTP server started in the test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("openai")

from service.chat.runtime import backend_from_settings
from service.llm.backend import (
    ChatMessage,
    GenerationParams,
    GenerationStats,
    LLMTimeoutError,
    LLMUnavailableError,
    LLMUpstreamError,
)
from service.llm.openai_backend import OpenAIBackend
from tests.chat.conftest import chat_settings
from tests.chat.fakes import free_port, serve
from tests.chat.openai_server import Script, fake_openai_app
from tests.harness import Harness, bearer

MESSAGES = [
    ChatMessage("system", "Facts about the user:\n- My dog is named Biscuit.\nAnswer in one short sentence."),
    ChatMessage("user", "What is my dog's name?"),
]


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def server(script: Script) -> Iterator[str]:
    with serve(fake_openai_app(script)) as url:
        yield url + "/v1"


def backend(url: str, **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("retry_wait_s", 0.01)
    return OpenAIBackend(base_url=url, model="tiny-remote", api_key="remote-secret", **kwargs)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_generate_and_stream(server: str, script: Script) -> None:
    async def scenario() -> tuple[Any, list[str], GenerationStats]:
        llm = backend(server)
        try:
            whole = await llm.generate(MESSAGES, GenerationParams(max_new_tokens=50, temperature=0.2))
            stats = GenerationStats()
            parts = [d async for d in llm.stream(MESSAGES, GenerationParams(max_new_tokens=50), stats)]
            return whole, parts, stats
        finally:
            await llm.aclose()

    whole, parts, stats = run(scenario())
    assert whole.text == "You told me: My dog is named Biscuit."
    assert len(parts) > 3 and "".join(parts) == whole.text
    assert stats.completion_tokens == len(parts) and stats.first_token_s is not None
    assert stats.finish_reason == "stop"
    sent = script.requests[0]
    assert sent["model"] == "tiny-remote" and sent["max_tokens"] == 50 and sent["temperature"] == 0.2
    assert sent["messages"][1] == {"role": "user", "content": "What is my dog's name?"}
    assert script.headers[0]["authorization"] == "Bearer remote-secret"


def test_server_errors_are_retried(server: str, script: Script) -> None:
    script.fail_next = 2
    out = run(backend(server, max_retries=2).generate(MESSAGES, GenerationParams()))
    assert out.text.startswith("You told me") and len(script.requests) == 3
    script.fail_next = 5
    with pytest.raises(LLMUpstreamError, match="HTTP 500"):
        run(backend(server, max_retries=1).generate(MESSAGES, GenerationParams()))
    script.fail_next, script.fail_status = 1, 400
    before = len(script.requests)
    with pytest.raises(LLMUpstreamError, match="HTTP 400"):
        run(backend(server, max_retries=3).generate(MESSAGES, GenerationParams()))
    assert len(script.requests) == before + 1  # a 4xx is not retried


def test_a_server_that_is_down_is_unavailable() -> None:
    llm = backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, connect_timeout_s=1.0)
    with pytest.raises(LLMUnavailableError):
        run(llm.generate(MESSAGES, GenerationParams()))


def test_a_slow_server_times_out(server: str, script: Script) -> None:
    script.delay_s = 1.5
    with pytest.raises(LLMTimeoutError):
        run(backend(server, timeout_s=0.5, max_retries=0).generate(MESSAGES, GenerationParams()))


def test_settings_build_the_openai_backend(server: str, script: Script) -> None:
    settings = chat_settings(
        llm_backend="openai", openai_base_url=server, openai_model="tiny-remote",
        openai_api_key="from-settings", openai_timeout_seconds=7,
    )
    llm = backend_from_settings(settings)
    assert isinstance(llm, OpenAIBackend) and llm.model_name == "tiny-remote"
    assert llm.context_tokens == 8192
    run(llm.generate(MESSAGES, GenerationParams()))
    assert script.headers[-1]["authorization"] == "Bearer from-settings"
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        chat_settings(llm_backend="openai")


def test_chat_through_the_openai_backend(
    make_chat: Callable[..., Harness], server: str, script: Script
) -> None:
    harness = make_chat(llm=backend(server, timeout_s=1.0, max_retries=0))
    keys = harness.tenant()
    harness.add(keys.app, "ana", "My dog is named Biscuit.")
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="What is my dog's name?")
    assert out["reply"].startswith("You told me: My dog is named Biscuit.") and out["model"] == "tiny-remote"
    assert "- My dog is named Biscuit." in script.requests[-1]["messages"][0]["content"]
    script.delay_s = 1.5
    response = harness.client.post("/v1/chat", json={"subject": "ana", "message": "hi there"},
                                   headers=bearer(keys.app))
    assert response.status_code == 504 and response.json()["error"]["code"] == "llm_timeout"
    script.delay_s, script.fail_next = 0.0, 1
    response = harness.client.post("/v1/chat", json={"subject": "ana", "message": "hi there", "stream": True},
                                   headers=bearer(keys.app))
    assert response.status_code == 502 and response.json()["error"]["code"] == "llm_bad_response"


def test_chat_when_the_llm_server_is_down(make_chat: Callable[..., Harness]) -> None:
    harness = make_chat(llm=backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=0))
    keys = harness.tenant()
    response = harness.client.post("/v1/chat", json={"subject": "ana", "message": "hi there"},
                                   headers=bearer(keys.app))
    assert response.status_code == 502
    assert response.json()["error"] == {
        "code": "llm_unavailable", "message": "the LLM server cannot be reached",
        "request_id": response.headers["X-Request-ID"],
    }
