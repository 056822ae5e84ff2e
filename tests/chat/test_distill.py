"""Rule-based distillation: atomic statements, chit-chat skipped, slots for contradictions."""

from __future__ import annotations

import asyncio

import pytest

from service.chat.distill import LLMDistiller, RuleDistiller, Slot, parse_json_list, slot_of, split_statements
from service.llm.backend import ChatMessage
from tests.chat.fakes import FakeBackend


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("My dog is named Biscuit and I live in Lisbon.", ["My dog is named Biscuit.", "I live in Lisbon."]),
        ("Hi there! I work at Acme, but I want to quit.", ["I work at Acme.", "I want to quit."]),
        ("My favourite colour is green; my sister lives in Paris.",
         ["My favourite colour is green.", "My sister lives in Paris."]),
        ("I love tea and biscuits.", ["I love tea and biscuits."]),  # one statement: 'and' joins objects
        ("Hello!", []),
        ("Thanks, that helps a lot.", []),
        ("What is my dog's name?", []),
        ("Can you remind me to call mom?", []),
        ("I'm tired today.", []),
        ("I think so.", []),
        ("The weather is nice.", []),
        ("ok", []),
    ],
)
def test_rule_distiller(message: str, expected: list[str]) -> None:
    assert [s.text for s in RuleDistiller().distill_sync(message)] == expected


def test_split_keeps_questions_whole() -> None:
    assert split_statements("I live in Lisbon. Where do you live and what do I do?") == [
        "I live in Lisbon.", "Where do you live and what do I do?",
    ]


@pytest.mark.parametrize(
    ("statement", "slot"),
    [
        ("I live in Lisbon.", Slot("residence", "lisbon")),
        ("I moved to Porto.", Slot("residence", "porto")),
        ("I recently relocated to the Netherlands now.", Slot("residence", "netherlands")),
        ("My dog is named Biscuit.", Slot("dog.name", "biscuit")),
        ("My dog's name is Biscuit.", Slot("dog.name", "biscuit")),
        ("I have a dog called Rex.", Slot("dog.name", "rex")),
        ("My name is Ana.", Slot("name", "ana")),
        ("I work at Acme Corp.", Slot("employer", "acme corp")),
        ("I'm 34 years old.", Slot("age", "34")),
        ("My favorite color is green.", Slot("favorite.color", "green")),
        ("My birthday is May 3.", Slot("my.birthday", "may 3")),
        ("I love coffee.", Slot("likes:coffee", "yes")),
        ("I don't like coffee anymore.", Slot("likes:coffee", "no")),
        ("I hate coffee.", Slot("likes:coffee", "no")),
        ("I am vegetarian.", Slot("is:vegetarian", "yes")),
        ("I'm not vegetarian.", Slot("is:vegetarian", "no")),
        ("My sister lives in Paris.", None),
        ("My dog is very cute.", None),
    ],
)
def test_slots(statement: str, slot: Slot | None) -> None:
    assert slot_of(statement) == slot


def test_kinds_and_importance() -> None:
    out = {s.text: (s.kind, s.importance) for s in RuleDistiller().distill_sync("I love jazz. I live in Rome.")}
    assert out == {"I love jazz.": ("preference", 0.6), "I live in Rome.": ("fact", 0.7)}


def test_llm_distiller_parses_the_models_json_and_falls_back_to_rules() -> None:
    backend = FakeBackend()
    backend.reply_for = lambda messages: 'Sure: ["I live in Lisbon", "My dog is named Biscuit."]'  # type: ignore[method-assign]
    out = asyncio.run(LLMDistiller(backend).distill("..."))
    assert [s.text for s in out] == ["I live in Lisbon.", "My dog is named Biscuit."]
    assert backend.calls[0][0] == ChatMessage("system", backend.calls[0][0].content)
    backend.reply_for = lambda messages: "I cannot do that."  # type: ignore[method-assign]
    out = asyncio.run(LLMDistiller(backend).distill("I live in Rome."))
    assert [s.text for s in out] == ["I live in Rome."]
    with pytest.raises(ValueError):
        parse_json_list('[1, 2]')
