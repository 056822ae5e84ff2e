"""Write-back quality on the real ``POST /v1/memories/ingest``: the scripted conversations of
``bench/writeback_quality.py`` (all of them: the state each should leave, share right >= 0.90), the move that
splits a compound memory, negations, and the LLM distiller's structured output against the scripted
OpenAI-compatible server (the schema sent, the answer applied, an unusable answer falling back to the rules)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from service.chat.distill import EXTRACTION_SCHEMA, LLMDistiller, RuleDistiller
from service.llm.backend import ChatMessage, GenerationParams, LLMUpstreamError
from service.llm.openai_backend import OpenAIBackend
from tests.chat.fakes import serve
from tests.chat.openai_server import Script, fake_openai_app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import writeback_quality as bench


@pytest.fixture
def run(tmp_path: Path, migrated_db: Path) -> Iterator[bench.Run]:
    with bench.started_app(tmp_path, migrated=migrated_db) as started:
        yield started


def ingest(run: bench.Run, subject: str, *texts: str) -> list[dict[str, Any]]:
    body = {"subject": subject, "messages": [{"role": "user", "content": t} for t in texts]}
    response = run.post("/v1/memories/ingest", body)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_the_scripted_conversations_leave_the_right_state(run: bench.Run) -> None:
    conversations = bench.load()
    assert len(conversations) >= 60
    summary = bench.summarise(bench.run_all(run, conversations))
    failing = json.dumps(summary["failing"], indent=1)
    assert summary["share_right"] >= bench.TARGET, failing


def test_a_move_splits_a_compound_memory(run: bench.Run) -> None:
    compound = run.post("/v1/memories", {"subject": "ana", "text": "My dog is named Biscuit and I live in Lisbon."})
    assert compound.status_code == 201
    compound_id = compound.json()["id"]
    events = ingest(run, "ana", "I just moved to Porto.")
    assert [(e["event"], e["text"]) for e in events] == [
        ("ADD", "I just moved to Porto."),
        ("UPDATE", "My dog is named Biscuit."),
    ]
    assert events[1]["memory_id"] == compound_id
    assert events[1]["previous_text"] == "My dog is named Biscuit and I live in Lisbon."
    assert bench.active_texts(run, "ana") == ["I just moved to Porto.", "My dog is named Biscuit."]
    # the kept clause is still the dog's name: a rename supersedes it whole
    events = ingest(run, "ana", "Actually, my dog's name is Rex.")
    assert [(e["event"], e["replaces"]) for e in events] == [("SUPERSEDE", [compound_id])]
    assert bench.active_texts(run, "ana") == ["I just moved to Porto.", "My dog's name is Rex."]
    # a statement the compound memory already makes changes nothing
    run.post("/v1/memories", {"subject": "bo", "text": "I'm 41 and I live in Nairobi."})
    (event,) = ingest(run, "bo", "I live in Nairobi.")
    assert event["event"] == "NOOP" and event["text"] == "I'm 41 and I live in Nairobi."


@pytest.mark.parametrize(
    ("before", "after", "left"),
    [
        ("I eat meat.", "I no longer eat meat.", "I no longer eat meat."),
        ("I love steak.", "I no longer eat meat.", "I no longer eat meat."),
        ("I love coffee.", "I don't like coffee anymore.", "I don't like coffee anymore."),
        ("I live in Madrid.", "I don't live in Madrid any more.", "I don't live in Madrid any more."),
        ("I don't like tea.", "I like tea now.", "I like tea now."),
        ("I'm vegetarian.", "I'm not vegetarian anymore.", "I'm not vegetarian anymore."),
    ],
)
def test_negations_and_changed_preferences_supersede(run: bench.Run, before: str, after: str, left: str) -> None:
    (first,) = ingest(run, "cy", before)
    (second,) = ingest(run, "cy", after)
    assert second["event"] == "SUPERSEDE" and second["replaces"] == [first["memory_id"]]
    assert bench.active_texts(run, "cy") == [left]


def test_a_negation_leaves_other_values_alone(run: bench.Run) -> None:
    ingest(run, "di", "I live in Porto.", "I like cats.")
    (event,) = ingest(run, "di", "I don't live in Lisbon anymore.")
    assert event["event"] == "ADD"
    (event,) = ingest(run, "di", "I like dogs.")
    assert event["event"] == "ADD"
    assert len(bench.active_texts(run, "di")) == 4


# ---- the LLM distiller with structured output ----------------------------------------------------------


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def llm_run(tmp_path: Path, migrated_db: Path, script: Script) -> Iterator[tuple[bench.Run, LLMDistiller]]:
    with ExitStack() as stack:
        url = stack.enter_context(serve(fake_openai_app(script)))
        distiller = LLMDistiller(OpenAIBackend(base_url=url + "/v1", model="tiny-remote", retry_wait_s=0.01))
        started = stack.enter_context(bench.started_app(tmp_path, migrated=migrated_db, distiller=distiller))
        yield started, distiller


def test_llm_extraction_sends_the_schema_and_applies_the_answer(
    llm_run: tuple[bench.Run, LLMDistiller], script: Script
) -> None:
    run, distiller = llm_run
    answer = {"statements": [{"text": "I live in Porto", "kind": "fact"},
                             {"text": "I like green tea.", "kind": "preference"}]}
    script.reply = lambda body: json.dumps(answer)
    run.post("/v1/memories", {"subject": "ana", "text": "My dog is named Biscuit and I live in Lisbon."})
    events = ingest(run, "ana", "so yeah, porto it is now. and green tea, always")
    (request,) = script.requests
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "memory_extraction", "schema": EXTRACTION_SCHEMA, "strict": True},
    }
    assert not request.get("stream")
    assert "porto it is now" in request["messages"][-1]["content"]
    # the model's statements, not what the rules would make of the message (nothing), reconciled as usual
    assert [(e["event"], e["text"]) for e in events] == [
        ("ADD", "I live in Porto."), ("UPDATE", "My dog is named Biscuit."), ("ADD", "I like green tea."),
    ]
    assert distiller.stats == {"structured": 1, "free_text": 0, "fallbacks": 0}
    assert RuleDistiller().distill_sync("so yeah, porto it is now. and green tea, always") == []


@pytest.mark.parametrize(
    "reply",
    ["not json at all", '{"statements": "none"}', '{"statements": [{"text": "I live in Porto."}], "extra": 1}',
     '["I live in Porto."]', '{"statements": [{"text": "", "kind": "fact"}]}'],
)
def test_an_unusable_answer_falls_back_to_the_rules(
    llm_run: tuple[bench.Run, LLMDistiller], script: Script, reply: str
) -> None:
    run, distiller = llm_run
    script.reply = lambda body: reply
    events = ingest(run, "bo", "I live in Lisbon. Thanks!")
    assert [(e["event"], e["text"]) for e in events] == [("ADD", "I live in Lisbon.")]
    assert distiller.stats["fallbacks"] == 1 and distiller.stats["structured"] == 0


def test_structured_calls_are_retried_and_errors_mapped(script: Script) -> None:
    script.reply = lambda body: '{"ok": true}'
    messages = [ChatMessage("user", "hi")]

    async def calls(url: str) -> None:
        backend = OpenAIBackend(base_url=url + "/v1", model="tiny-remote", max_retries=2, retry_wait_s=0.01)
        try:
            script.fail_next = 2  # 500s are retried
            out = await backend.structured(messages, GenerationParams(), name="n", schema={"type": "object"})
            assert out == '{"ok": true}' and len(script.requests) == 3
            script.fail_next, script.fail_status = 1, 400  # not retried
            with pytest.raises(LLMUpstreamError):
                await backend.structured(messages, GenerationParams(), name="n", schema={"type": "object"})
            assert len(script.requests) == 4
            script.reply = lambda body: ""
            with pytest.raises(LLMUpstreamError):
                await backend.structured(messages, GenerationParams(), name="n", schema={"type": "object"})
        finally:
            await backend.aclose()

    with serve(fake_openai_app(script)) as url:
        asyncio.run(calls(url))
