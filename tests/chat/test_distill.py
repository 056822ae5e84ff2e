"""Rule-based distillation: atomic statements, chit-chat skipped, slots for contradictions."""

from __future__ import annotations

import asyncio

import pytest

from service.chat.distill import (
    LLMDistiller,
    RuleDistiller,
    Slot,
    conflicts,
    parse_json_list,
    slot_of,
    split_statements,
)
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
        ("I'm 34, I live in Berlin and I work at SAP.", ["I'm 34.", "I live in Berlin.", "I work at SAP."]),
        ("I have a cat named Luna and a dog named Rex.", ["I have a cat named Luna.", "I have a dog named Rex."]),
        ("Actually, my dog's name is Rex.", ["My dog's name is Rex."]),
        ("By the way, I moved back to Cork.", ["I moved back to Cork."]),
        ("I'd like it in bullet points.", []),
        ("I need help with my resume. Let me know what you think.", []),
        ("Never mind, found them.", []),
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
        # moves and negated residence
        ("Now I've moved to Tokyo.", Slot("residence", "tokyo")),
        ("We just moved into a new flat in Rotterdam.", Slot("residence", "rotterdam")),
        ("I moved from Rome to Milan.", Slot("residence", "milan")),
        ("I'm living in Dublin these days.", Slot("residence", "dublin")),
        ("I don't live in Madrid anymore.", Slot("residence", "not:madrid")),
        # names
        ("We renamed our cat to Mochi.", Slot("cat.name", "mochi")),
        ("My new boss is called Karen.", Slot("boss.name", "karen")),
        ("My boyfriend is Tom.", Slot("boyfriend.name", "tom")),
        ("My boss is annoying.", None),
        ("Sorry, my son is named Max, not Leo.", Slot("son.name", "max")),
        # work
        ("I got a job at Klarna.", Slot("employer", "klarna")),
        ("I joined Stripe in January.", Slot("employer", "stripe")),
        ("I work as a software engineer at Spotify.", Slot("employer", "spotify")),
        ("I quit my job at Acme.", Slot("employer", "not:acme")),
        ("I'm unemployed.", Slot("employer", "not:*")),
        ("I'm a nurse now.", Slot("occupation", "nurse")),
        ("I got promoted to senior developer.", Slot("occupation", "senior developer")),
        # age, favourites, preferences and habits
        ("I just turned 35.", Slot("age", "35")),
        ("I'm 30 now.", Slot("age", "30")),
        ("Pizza is my favourite food.", Slot("favorite.food", "pizza")),
        ("My favourite colour is blue.", Slot("favorite.color", "blue")),
        ("I can't stand horror movies anymore.", Slot("likes:horror movies", "no")),
        ("These days I actually enjoy running.", Slot("likes:running", "yes")),
        ("I no longer eat meat.", Slot("habit:meat", "no")),
        ("I stopped eating chocolate.", Slot("habit:chocolate", "no")),
        ("I eat a lot of chocolate.", Slot("habit:chocolate", "yes")),
        ("I drink coffee every morning.", Slot("habit:coffee", "yes")),
        ("I'm no longer allergic to peanuts.", Slot("is:allergic to peanuts", "no")),
    ],
)
def test_slots(statement: str, slot: Slot | None) -> None:
    assert slot_of(statement) == slot


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        ("I moved to Porto.", "I live in Lisbon.", True),
        ("I live in Lisbon.", "I live in Lisbon now.", False),  # the same value: a duplicate, not a conflict
        ("I don't live in Madrid anymore.", "I live in Madrid.", True),
        ("I don't live in Madrid anymore.", "I live in Porto.", False),
        ("I live in Madrid again.", "I don't live in Madrid anymore.", True),
        ("I found a job at Siemens.", "I'm unemployed.", True),
        ("I no longer eat meat.", "I eat meat.", True),
        ("I no longer eat meat.", "I love steak.", True),
        ("I'm vegetarian now.", "I love steak and burgers.", True),
        ("I'm vegan now.", "I eat cheese every day.", True),
        ("I drink wine occasionally now.", "I don't drink alcohol.", True),
        ("I eat fish now.", "I'm vegetarian.", True),
        ("I eat fish now.", "I'm not vegetarian anymore.", False),
        ("I don't like coffee.", "I drink coffee every morning.", False),  # different things
        ("I like dogs.", "I like cats.", False),
    ],
)
def test_conflicts(new: str, old: str, expected: bool) -> None:
    a, b = slot_of(new), slot_of(old)
    assert a is not None and b is not None
    assert conflicts(a, b) is expected


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
