"""Turning a user's message into atomic, durable statements about the user, without an LLM.

``RuleDistiller`` splits a message into sentences and then into clauses that start a new first-person
statement ("My dog is named Biscuit and I live in Lisbon." gives two), and drops chit-chat: greetings,
thanks, acknowledgements, questions, requests to the assistant, passing moods and clauses that say nothing
about the user. ``slot_of`` names what a statement is about (where the user lives, a pet's name, whether
they like something) so a later statement about the same slot with another value can supersede it.

``LLMDistiller`` asks the configured LLM for the statements instead (meant for a capable remote model) and
falls back to the rules when the answer is unusable.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.llm.backend import ChatMessage, GenerationParams, LLMBackend

log = logging.getLogger("sealmem.chat")


@dataclass(frozen=True)
class Statement:
    text: str
    kind: str = "fact"
    importance: float = 0.5


class Distiller(Protocol):
    async def distill(self, message: str) -> list[Statement]: ...


_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|im|my|mine|me|we|we're|our|ours|us)\b", re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:,\s*(?:and|but)\s+|;\s*|\s+(?:and|but|also)\s+|,\s+)(?=(?:i|i'm|i've|my|we|we're|our)\b)",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_CHIT_CHAT = re.compile(
    r"^(?:hi|hello|hey|yo|hiya|good (?:morning|afternoon|evening|night)|bye|goodbye|see you|thanks?|thank you"
    r"|thx|ok|okay|k|sure|cool|great|nice|awesome|lol|haha|yes|yeah|yep|no|nope|nah|alright|fine|hmm+|oh"
    r"|wow|right|indeed|exactly|of course|please|sorry|welcome|cheers)\b[\s\w,!.']{0,24}$",
    re.IGNORECASE,
)
_REQUEST = re.compile(
    r"^(?:please|can you|could you|would you|will you|tell me|show me|help me|give me|let's|lets|remind me"
    r"|explain|write|summari[sz]e|translate|list|describe|find|make|create|draft|what|who|where|when|why"
    r"|how|which|do you|are you|is it|is there|did you|have you)\b",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"^(?:i'?m|i am) (?:just |so |really |very |a bit |kind of )*(?:fine|good|ok|okay|great|well|tired|bored"
    r"|busy|back|here|sure|sorry|glad|happy to|not sure|doing \w+|feeling \w+|thinking|wondering|curious"
    r"|confused|lost|done|ready)\b"
    r"|^i (?:think|guess|suppose|see|agree|understand|know|mean|hope|wonder|was wondering)\b"
    r"|^(?:i'?ll|i will|i'?d|i would) (?:like to|love to|try|be|go|check|think|let)\b",
    re.IGNORECASE,
)


def _tidy(clause: str) -> str:
    clause = " ".join(clause.strip().split()).strip(" ,;:-")
    if not clause:
        return ""
    clause = clause[0].upper() + clause[1:]
    if clause[-1] not in ".!":
        clause += "."
    return clause.rstrip("!") + ("" if clause.endswith(".") else ".")


def split_statements(message: str) -> list[str]:
    """Sentences, then clauses that begin a new first-person statement; tidied (capital, final period)."""
    out: list[str] = []
    for sentence in _SENTENCE_SPLIT.split(message.strip()):
        sentence = sentence.strip()
        if not sentence:
            continue
        if sentence.endswith("?"):
            out.append(sentence)  # kept whole so the chit-chat filter sees the question mark
            continue
        for clause in _CLAUSE_SPLIT.split(sentence):
            tidy = _tidy(clause)
            if tidy:
                out.append(tidy)
    return out


def is_chit_chat(statement: str) -> bool:
    bare = statement.strip().rstrip(".!").strip()
    words = bare.split()
    if statement.strip().endswith("?") or len(words) < 3:
        return True
    if _CHIT_CHAT.match(bare) or _REQUEST.match(bare) or _TRANSIENT.match(bare):
        return True
    return not _FIRST_PERSON.search(bare)


# ---- slots -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """What a statement is about (``key``) and what it says (``value``); same key + other value = conflict."""

    key: str
    value: str


_NEG = r"(?P<neg>don'?t |do not |no longer |never |not |dont )?"
_SINGLE_VALUED = (
    "name|birthday|email|email address|phone|phone number|address|age|job|occupation|employer|hometown"
    "|nationality|timezone|time zone|pronouns|wife|husband|partner|boyfriend|girlfriend|boss|doctor|dentist"
    "|favorite \\w+|favourite \\w+|first language|native language|blood type|zodiac sign|salary|company"
)
_SLOT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (key, re.compile(pattern, re.IGNORECASE))
    for key, pattern in (
        ("residence", r"^i (?:now |currently |still )?(?:live|reside|am living|'m living|am based|'m based"
                      r"|stay|am staying|'m staying) in (?P<v>.+)$"),
        ("residence", r"^i (?:have |just |recently |finally )*(?:moved|relocated) (?:to|into) (?P<v>.+)$"),
        ("residence", r"^(?:my (?:home|house|apartment|flat) is|home is) in (?P<v>.+)$"),
        ("name", r"^(?:my name is|i am called|i'm called|call me|people call me) (?P<v>.+)$"),
        ("{k}.name", r"^my (?P<k>[a-z][a-z' ]{0,30}?)(?:'s name is| is named| is called| name is) (?P<v>.+)$"),
        ("{k}.name", r"^i have an? (?P<k>[a-z][a-z ]{0,30}?) (?:named|called) (?P<v>.+)$"),
        ("employer", r"^i (?:now |currently )?work (?:at|for) (?P<v>.+)$"),
        ("employer", r"^i(?: am|'m) (?:employed|working) (?:at|by|for) (?P<v>.+)$"),
        ("occupation", r"^i (?:now )?work as an? (?P<v>.+)$"),
        ("age", r"^i(?: am|'m) (?P<v>\d{1,3})(?: years old| years| yo)?$"),
        ("favorite.{k}", r"^my favou?rite (?P<k>[a-z][a-z ]{0,30}?) is (?P<v>.+)$"),
        ("my.{k}", rf"^my (?P<k>{_SINGLE_VALUED}) is (?P<v>.+)$"),
        ("likes:{v}", rf"^i {_NEG}(?P<verb>like|love|enjoy|hate|dislike|prefer) (?P<v>.+)$"),
        ("is:{v}", rf"^i(?: am|'m) {_NEG}(?P<v>.+)$"),
    )
)
_TRAILING = re.compile(
    r"(?:,? (?:now|these days|nowadays|anymore|any more|recently|currently|lately|last (?:year|month|week)"
    r"|this (?:year|month|week)|a lot|very much|so much))+$",
    re.IGNORECASE,
)


def _norm(value: str) -> str:
    value = value.strip().rstrip(".!").strip().lower()
    value = _TRAILING.sub("", value).strip(" ,")
    return re.sub(r"^(?:the|a|an) ", "", value)


def slot_of(statement: str) -> Slot | None:
    """The slot a statement fills, or None (most statements are additive: no conflict possible)."""
    bare = " ".join(statement.strip().rstrip(".!").split())
    for key, pattern in _SLOT_RULES:
        match = pattern.match(bare)
        if match is None:
            continue
        groups = match.groupdict()
        value = _norm(groups["v"])
        if not value:
            continue
        if key == "likes:{v}":
            negative = bool(groups.get("neg")) != (groups["verb"].lower() in ("hate", "dislike"))
            return Slot(f"likes:{value}", "no" if negative else "yes")
        if key == "is:{v}":
            return Slot(f"is:{value}", "no" if groups.get("neg") else "yes")
        if "{k}" in key:
            key = key.replace("{k}", _norm(groups["k"]).replace(" ", "_"))
        return Slot(key, value)
    return None


def _kind_of(statement: str) -> tuple[str, float]:
    slot = slot_of(statement)
    if slot is not None and slot.key.startswith(("likes:", "favorite.")):
        return "preference", 0.6
    if slot is not None and (slot.key in ("name", "residence") or slot.key.endswith(".name")):
        return "fact", 0.7
    return "fact", 0.5


class RuleDistiller:
    """The default extractor: deterministic, fast, no model."""

    async def distill(self, message: str) -> list[Statement]:
        return self.distill_sync(message)

    def distill_sync(self, message: str) -> list[Statement]:
        out: list[Statement] = []
        seen: set[str] = set()
        for statement in split_statements(message):
            if is_chit_chat(statement) or statement.lower() in seen:
                continue
            seen.add(statement.lower())
            kind, importance = _kind_of(statement)
            out.append(Statement(statement, kind, importance))
        return out


_LLM_INSTRUCTIONS = (
    "Extract durable facts about the user from the user's message. Write each as a short first-person "
    "statement (e.g. \"I live in Lisbon.\"). Skip greetings, questions, requests and passing moods. Answer "
    "with only a JSON array of strings; answer [] when there is nothing to keep."
)


class LLMDistiller:
    """Statements from an LLM (one call per message, in the background worker); rules as the fallback."""

    def __init__(self, backend: LLMBackend, *, max_new_tokens: int = 256) -> None:
        self._backend = backend
        self._params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self._fallback = RuleDistiller()

    async def distill(self, message: str) -> list[Statement]:
        messages: Sequence[ChatMessage] = (
            ChatMessage("system", _LLM_INSTRUCTIONS),
            ChatMessage("user", message),
        )
        try:
            reply = (await self._backend.generate(messages, self._params)).text
            items = parse_json_list(reply)
        except Exception as exc:  # any failure of the model or its answer: use the rules
            log.warning("LLM distillation failed (%s); using the rules", type(exc).__name__)
            return self._fallback.distill_sync(message)
        out: list[Statement] = []
        for item in items:
            tidy = _tidy(item)
            if tidy and not tidy.endswith("?") and len(tidy.split()) >= 2:
                kind, importance = _kind_of(tidy)
                out.append(Statement(tidy, kind, importance))
        return out


def parse_json_list(reply: str) -> list[str]:
    start, end = reply.find("["), reply.rfind("]")
    if start < 0 or end < start:
        raise ValueError("no JSON array in the reply")
    data = json.loads(reply[start : end + 1])
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ValueError("the reply is not a list of strings")
    return [x for x in data if x.strip()]
