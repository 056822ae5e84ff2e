"""The prompt builder: separable pieces, real-token budgeting, what is dropped first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.llm.backend import ChatMessage
from service.llm.prompt import MemoryItem, PromptBuilder, PromptStyle, PromptTooLongError
from tests.chat.fakes import WordCounter

DAY = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def _memories(n: int) -> list[MemoryItem]:
    return [MemoryItem(f"m{i}", f"fact number {i} about the user", score=1.0 - i / 100, date=DAY) for i in range(n)]


def test_system_message_is_prefix_lines_suffix() -> None:
    built = PromptBuilder(WordCounter()).build(
        message="What is my dog's name?",
        memories=[MemoryItem("a", "My dog is named  Biscuit.", 0.4, DAY), MemoryItem("b", "I live in Lisbon.", 0.9)],
        history=[ChatMessage("user", "hi"), ChatMessage("assistant", "hello")],
        budget_tokens=1000,
        working_memory_tokens=100,
    )
    assert built.prefix == "Facts about the user:\n"
    assert [m.line for m in built.memory_lines] == [
        "- I live in Lisbon.\n", "- My dog is named Biscuit. (2025-03-14)\n",
    ]
    assert built.suffix == "Answer in one short sentence."
    messages = built.messages()
    assert messages[0] == ChatMessage("system", built.system_text)
    assert built.system_text == built.prefix + "".join(m.line for m in built.memory_lines) + built.suffix
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert built.prompt_tokens == WordCounter().count_messages(messages)
    assert built.messages(with_memories=False)[0].content == "Answer in one short sentence."


def test_no_memories_no_facts_header_and_custom_style() -> None:
    style = PromptStyle(system_prompt="You are Sealmem.", answer_instruction="Be brief.")
    built = PromptBuilder(WordCounter(), style).build(
        message="hi", memories=[], history=[], budget_tokens=100, working_memory_tokens=10, extra_system="Be kind."
    )
    assert built.system_text == "You are Sealmem.\nBe kind.\nBe brief."


def test_lowest_scoring_memories_are_dropped_first_and_budget_holds() -> None:
    counter = WordCounter()
    memories = _memories(30)
    for budget in (60, 80, 120, 200):
        built = PromptBuilder(counter).build(
            message="tell me everything", memories=memories[::-1], history=[], budget_tokens=budget,
            working_memory_tokens=0,
        )
        kept = [m.memory_id for m in built.memory_lines]
        assert kept == [f"m{i}" for i in range(len(kept))]  # a prefix of the ranking
        assert set(built.dropped_memory_ids) == {m.memory_id for m in memories} - set(kept)
        assert counter.count_messages(built.messages()) == built.prompt_tokens <= budget
    assert 0 < len(kept) < 30


def test_memory_token_cap() -> None:
    built = PromptBuilder(WordCounter()).build(
        message="q", memories=_memories(10), history=[], budget_tokens=1000, working_memory_tokens=0,
        memory_tokens=30,
    )
    assert sum(m.tokens for m in built.memory_lines) <= 30 and len(built.memory_lines) == 3


def test_working_memory_keeps_the_newest_turns_within_its_budget() -> None:
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i} " + "w " * 8) for i in range(20)]
    built = PromptBuilder(WordCounter()).build(
        message="next", memories=[], history=history, budget_tokens=2000, working_memory_tokens=60
    )
    assert built.history == tuple(history[-4:])  # 14 tokens each (10 words + 4 overhead)
    assert built.dropped_turns == 16


def test_turns_come_before_memories_in_a_tight_context() -> None:
    history = [ChatMessage("user", "a b c d e")] * 3
    built = PromptBuilder(WordCounter()).build(
        message="q", memories=_memories(10), history=history, budget_tokens=60, working_memory_tokens=30
    )
    assert len(built.history) == 3 and built.prompt_tokens <= 60 and len(built.memory_lines) < 10


def test_a_message_that_cannot_fit_is_refused() -> None:
    with pytest.raises(PromptTooLongError):
        PromptBuilder(WordCounter()).build(
            message="w " * 500, memories=[], history=[], budget_tokens=100, working_memory_tokens=10
        )
