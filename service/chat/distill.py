"""Turning a user's message into atomic, durable statements about the user, without an LLM.

``RuleDistiller`` splits a message into sentences and then into clauses that start a new first-person
statement ("My dog is named Biscuit and I live in Lisbon." gives two; "I have a cat named Luna and a dog named
Rex." too), strips leading discourse markers ("Actually, ", "By the way, ") and drops chit-chat: greetings,
thanks, acknowledgements, questions, requests to the assistant, passing moods and clauses that say nothing
about the user. ``slot_of`` names what a statement is about (where the user lives, a pet's or a person's name,
the employer, the occupation, the age, whether they like or do something) and what it says, negations
included ("I don't live in Madrid anymore", "I no longer eat meat"), so that :func:`conflicts` can tell when a
later statement replaces an earlier one: the same slot with another value, a negation of the same value, or a
change of diet against a food it rules out ("I'm vegetarian now" after "I love steak").

``LLMDistiller`` asks the configured LLM for the statements instead (meant for a capable remote model): with a
backend that offers structured output (the ``openai`` backend: ``response_format`` with a JSON schema, which
vLLM enforces with guided decoding) the answer is validated with pydantic; otherwise a JSON list is parsed
from free text. An unusable answer falls back to the rules (logged and counted in ``LLMDistiller.stats``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.llm.backend import ChatMessage, GenerationParams, LLMBackend

log = logging.getLogger("sealmem.chat")


@dataclass(frozen=True)
class Statement:
    text: str
    kind: str = "fact"
    importance: float = 0.5


class Distiller(Protocol):
    async def distill(self, message: str) -> list[Statement]: ...


_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|im|my|mine|me|we|we're|we've|our|ours|us)\b", re.IGNORECASE)
_STARTS_FIRST_PERSON = r"(?:i|i'm|i've|i'd|my|we|we're|we've|our)\b"
_CLAUSE_SPLIT = re.compile(
    rf"\s*(?:,\s*(?:and|but)\s+|;\s*|\s+(?:and|but|also)\s+|,\s+)(?={_STARTS_FIRST_PERSON})"
    # a coordinated object with a name of its own: "I have a cat named Luna and a dog named Rex"
    r"|\s*,?\s+and\s+(?=(?:a|an|another|one)\s+[a-z]+(?:\s+[a-z]+)?\s+(?:named|called)\s)",
    re.IGNORECASE,
)
_OWNS = re.compile(r"^(i (?:have|had|own|got|adopted)|i've got|we (?:have|had|own|got|adopted)) ", re.IGNORECASE)
_ELLIPTIC = re.compile(r"^(?:a|an|another|one) [a-z]+(?: [a-z]+)? (?:named|called) ", re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_DISCOURSE = re.compile(
    r"^(?:(?:actually|oh|well|so|anyway|anyways|btw|by the way|fyi|just so you know|also|and|but|sorry|ok|okay"
    r"|update|correction|hey|hi|hello|just a reminder|reminder|as i said|like i said)\b\s*[,:;!-]?\s+)+"
    rf"(?={_STARTS_FIRST_PERSON})",
    re.IGNORECASE,
)
_CHIT_CHAT = re.compile(
    r"^(?:hi|hello|hey|yo|hiya|good (?:morning|afternoon|evening|night)|bye|goodbye|see you|thanks?|thank you"
    r"|thx|ok|okay|k|sure|cool|great|nice|awesome|lol|haha|yes|yeah|yep|no|nope|nah|alright|fine|hmm+|oh"
    r"|wow|right|indeed|exactly|of course|please|sorry|welcome|cheers|never mind|nevermind)\b[\s\w,!.']{0,24}$",
    re.IGNORECASE,
)
_REQUEST = re.compile(
    r"^(?:please|can you|could you|would you|will you|tell me|show me|help me|give me|let's|lets|let me"
    r"|remind me|explain|write|summari[sz]e|translate|list|describe|find|make|create|draft|what|who|where|when"
    r"|why|how|which|do you|are you|is it|is there|did you|have you"
    r"|i (?:need|want|would like|'d like) (?:you|help|some help|advice|a hand|to know|to ask)"
    r"|i'?d (?:like|love|prefer|want) (?:it|this|that|them|you|to|one|some|a|an|the|more|less)"
    r"|i would (?:like|love|prefer|want) (?:it|this|that|them|you|to|one|some|a|an|the|more|less)"
    r"|i'?m (?:looking for|trying to|asking|wondering)|i have a question)\b",
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
    clause = _DISCOURSE.sub("", clause)
    if not clause:
        return ""
    clause = clause[0].upper() + clause[1:]
    if clause[-1] not in ".!":
        clause += "."
    return clause.rstrip("!") + ("" if clause.endswith(".") else ".")


def _clauses(sentence: str) -> list[str]:
    parts = [p for p in _CLAUSE_SPLIT.split(sentence) if p and p.strip()]
    out: list[str] = []
    for part in parts:
        owner = _OWNS.match(out[-1]) if out else None
        if owner is not None and _ELLIPTIC.match(part.strip()):
            part = owner.group(0) + part.strip()  # "... and a dog named Rex" -> "I have a dog named Rex"
        out.append(part)
    return out


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
        for clause in _clauses(sentence):
            tidy = _tidy(clause)
            if tidy:
                out.append(tidy)
    return out


def is_chit_chat(statement: str) -> bool:
    bare = statement.strip().rstrip(".!").strip()
    words = bare.split()
    if statement.strip().endswith("?"):
        return True
    if _CHIT_CHAT.match(bare) or _REQUEST.match(bare) or _TRANSIENT.match(bare):
        return True
    if len(words) < 3 and slot_of(bare) is None:  # "I'm 34." says something; "I see." does not
        return True
    return not _FIRST_PERSON.search(bare)


# ---- slots -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """What a statement is about (``key``) and what it says (``value``); same key + other value = conflict.

    A value ``not:X`` denies X ("I don't live in Madrid anymore"): it replaces X and nothing else; ``not:*``
    denies every value ("I'm unemployed"). Yes/no slots (``likes:coffee``, ``habit:meat``, ``is:vegetarian``)
    hold ``yes`` or ``no``."""

    key: str
    value: str


_SINGLE_VALUED = (
    "name|birthday|email|email address|phone|phone number|address|age|job title|occupation|employer|hometown"
    "|nationality|timezone|time zone|pronouns|first language|native language|blood type|zodiac sign|salary"
    "|company|height|weight"
)
_RELATIONS = (
    "wife|husband|partner|spouse|boyfriend|girlfriend|fianc[eé]e?|boss|manager|doctor|dentist|therapist"
    "|best friend|landlord|roommate|flatmate|son|daughter|mother|father|mom|mum|dad|brother|sister"
)


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_OCCUPATIONS = _wordset(
    "engineer developer programmer designer manager analyst scientist researcher teacher professor lecturer"
    " student nurse midwife doctor physician surgeon dentist lawyer attorney accountant architect consultant"
    " chef cook baker waiter waitress bartender barista pilot driver mechanic electrician plumber carpenter"
    " farmer writer author journalist editor photographer artist musician actor actress pharmacist therapist"
    " psychologist paramedic firefighter officer soldier librarian cashier clerk secretary receptionist"
    " salesperson entrepreneur founder freelancer ceo cto cfo coo intern translator economist veterinarian vet"
    " coach trainer tutor technician administrator director executive banker broker realtor contractor"
    " caregiver cleaner tailor hairdresser designer illustrator animator producer marketer recruiter"
    " scientist statistician mathematician physicist chemist biologist geologist radiologist optician"
    " electrician welder builder courier postman retiree"
)
_ADVERBS = (
    r"(?:now|currently|still|just|recently|finally|actually|really|also|already|officially|truly|absolutely"
    r"|totally|definitely|honestly|genuinely|even|sometimes|usually|mostly|generally|kind of|kinda|pretty much"
    r"|basically|always|newly|happily|so|very much)"
)
_LEADING = re.compile(
    r"^(?:(?:actually|now|these days|nowadays|today|yesterday|recently|lately|finally|so|well|oh|anyway|also"
    r"|last (?:week|month|year|night|weekend)|this (?:week|month|year)|as of (?:today|now)|since (?:then|last \w+)"
    r"|a (?:few|couple of) (?:days|weeks|months) ago|in \d{4}|good news|big news|update|correction|sorry"
    r"|by the way|btw|fyi|just so you know|just a reminder|reminder)\b\s*[,:;!-]?\s+)+",
    re.IGNORECASE,
)
_CONTRACTIONS = (
    (re.compile(r"^(?:i'm|im|i am)\b", re.I), "i am"),
    (re.compile(r"^(?:i've|i have)\b", re.I), "i have"),
    (re.compile(r"^(?:i'd|i would)\b", re.I), "i would"),
    (re.compile(r"^(?:we're|we are)\b", re.I), "i am"),
    (re.compile(r"^(?:we've|we have)\b", re.I), "i have"),
    (re.compile(r"^we\b", re.I), "i"),
    (re.compile(r"^our\b", re.I), "my"),
)
_STRIP_ADVERBS = re.compile(rf"^(i(?: am| have| do| did)?) (?:{_ADVERBS} )+", re.IGNORECASE)
_NEG = (
    r"(?P<neg>(?:do not|don't|dont|does not|doesn't|no longer|never|not|am not|am no longer|can no longer"
    r"|won't|will not) )?"
)
_VERB_LIKE = (
    r"(?P<verb>like|love|enjoy|adore|hate|dislike|detest|loathe|can't stand|cannot stand|can not stand|prefer"
    r"|(?:am )?(?:a )?(?:big |huge )?fan of|(?:am )?into)"
)
_NEGATIVE_VERBS = ("hate", "dislike", "detest", "loathe", "can't stand", "cannot stand", "can not stand")
_VERB_HABIT = (
    r"(?P<verb>eat|drink|smoke|vape|play|practi[cs]e|watch|read|cook|bake|ride|drive|own|speak|study|collect"
    r"|climb|swim|surf|ski|knit|paint|garden|meditate)"
)
_GERUND = (
    r"(?:(?:eating|drinking|smoking|vaping|playing|practi[cs]ing|watching|reading|cooking|baking|riding|driving"
    r"|using|speaking|studying|collecting|doing) )?"
)
_NAME_KEY = r"(?P<k>[a-z][\w'-]*(?: [a-z][\w'-]*){0,2}?)"

# (key template, pattern, value treatment): tried in order on the statement's core (see ``_core``).
_SLOT_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (key, re.compile(pattern, re.IGNORECASE), how)
    for key, pattern, how in (
        # where the user lives
        (
            "residence",
            rf"i {_NEG}(?:am )?(?:live|living|reside|residing|based|staying|stay|settled)"
            r" (?:now )?in (?P<v>.+)",
            "place",
        ),
        (
            "residence",
            r"i (?:have |had )?(?:moved|relocated|emigrated|immigrated|settled)(?: back| over| away| out)?"
            r"(?: from .+?)? (?:to|into|in) (?P<v>.+)",
            "place",
        ),
        ("residence", r"my (?:home|house|apartment|flat|place) is (?:now )?in (?P<v>.+)", "place"),
        ("residence", r"(?:my )?home is (?:now )?(?:in )?(?P<v>.+)", "place"),
        # names
        (
            "name",
            r"(?:my name is|my name's|i am called|call me|people call me|everyone calls me|i go by)"
            r" (?P<v>.+)",
            "",
        ),
        (
            "{k}.name",
            rf"my {_NAME_KEY}(?:'s name is|'s name's| is named| is called| is now called| is now named"
            r"| name is| goes by) (?P<v>.+)",
            "",
        ),
        (
            "{k}.name",
            rf"i (?:have|had|own|got|adopted) (?:an?|another|one) {_NAME_KEY} (?:named|called)"
            r" (?P<v>.+)",
            "",
        ),
        ("{k}.name", rf"i (?:have |had )?renamed my {_NAME_KEY} (?:to )?(?P<v>.+)", ""),
        ("{k}.name", rf"my (?P<k>(?:new |current )?(?:{_RELATIONS})) is (?P<v>[A-Z<][^,]*)", "proper"),
        # work
        (
            "employer",
            r"i (?:have |had )?(?:quit|left|lost|resigned from) my (?:job|position|role|work)"
            r"(?: (?:at|with) (?P<v>.+))?",
            "deny",
        ),
        (
            "employer",
            r"i (?:am|got|was|have been) (?:now )?(?:unemployed|laid off|fired|between jobs|out of work"
            r"|jobless)(?: (?:from|at|by) (?P<v>.+))?",
            "deny",
        ),
        ("employer", rf"i {_NEG}(?:am )?(?:work|works|working|employed)(?: as an? .+?)? (?:at|for|by) (?P<v>.+)", ""),
        (
            "employer",
            r"i (?:have |had )?(?:joined|(?:got|found|landed|accepted|took|started|began|have|started at)"
            r" (?:a |my |the )?(?:new )?(?:job|position|role|work|gig)(?: as an? .+?)? (?:at|with|for)"
            r"|started (?:working )?(?:at|for)|began (?:working )?(?:at|for)|switched (?:jobs )?to)"
            r" (?P<v>.+)",
            "",
        ),
        ("employer", r"my (?:new |current )?employer is (?P<v>.+)", ""),
        ("employer", r"my (?:new |current )?job is (?:at|with) (?P<v>.+)", ""),
        ("employer", r"i am (?:now )?an? (?P<role>.+?) (?:at|for) (?P<v>.+)", "role"),
        ("occupation", r"i (?:now )?work as an? (?P<v>.+)", ""),
        (
            "occupation",
            r"i (?:(?P<neg>am not|am no longer) |am |became |have become |got promoted to |was promoted"
            r" to )(?:an? )?(?P<v>.+)",
            "role",
        ),
        # age and birthday
        ("age", r"i am (?P<v>\d{1,3})(?: years old| years| yrs| yo| year old)?", ""),
        ("age", r"i (?:have |had )?turned (?P<v>\d{1,3})(?: years old)?", ""),
        ("my.birthday", r"my (?:birthday|bday|date of birth|birth date) is (?:on )?(?P<v>.+)", ""),
        ("my.birthday", r"i was born on (?P<v>.+)", ""),
        ("birth_year", r"i was born in (?P<v>\d{4})", ""),
        ("birthplace", r"i was born in (?P<v>.+)", "place"),
        # favourites and other single-valued things
        ("favorite.{k}", rf"my (?:favou?rite|fave) {_NAME_KEY} is (?P<v>.+)", ""),
        ("favorite.{k}", rf"(?P<v>.+?) is my (?:favou?rite|fave) {_NAME_KEY}", ""),
        (
            "relationship",
            r"i am (?:now )?(?P<v>single|married|divorced|engaged|widowed|separated"
            r"|in a relationship)",
            "",
        ),
        ("my.{k}", rf"my (?P<k>{_SINGLE_VALUED}) is (?P<v>.+)", ""),
        # likes and habits: yes/no
        ("likes:{v}", rf"i {_NEG}{_VERB_LIKE} (?P<v>.+)", "like"),
        (
            "habit:{v}",
            r"i (?:have |had )?(?:stopped|quit|gave up|give up|cut out|am off|kicked)"
            rf" {_GERUND}(?P<v>.+)",
            "stop",
        ),
        ("habit:{v}", rf"i (?:have |had )?(?:started|began|took up|picked up) {_GERUND}(?P<v>.+)", "start"),
        ("habit:{v}", rf"i {_NEG}{_VERB_HABIT} (?P<v>.+)", "yes/no"),
        ("is:{v}", r"i am (?P<neg>not |no longer |never )?(?P<v>.+)", "yes/no"),
    )
)
_TRAILING = re.compile(
    r"(?:,? (?:now|these days|nowadays|anymore|any more|again|recently|currently|lately|already|still|too|as well"
    r"|occasionally|sometimes|often|regularly|daily|weekly|every (?:single )?(?:day|morning|evening|night|week"
    r"|weekend|month|year)|on weekends|at weekends|at night|in the mornings?|in the evenings?|a lot|very much"
    r"|so much|last (?:year|month|week|night|weekend)|this (?:year|month|week)|yesterday|today|since \w+"
    r"|(?:back )?in (?:january|february|march|april|may|june|july|august|september|october|november|december)"
    r"(?: \d{4})?|(?:back )?in \d{4}|for (?:\d+|a few|many|some) (?:years?|months?|weeks?)"
    r"|(?:a few|two|three|\d+) (?:days|weeks|months|years) ago|though|actually|honestly|for a living))+$",
    re.IGNORECASE,
)
_CORRECTION = re.compile(r",? (?:not|rather than|instead of|and not) .+$", re.IGNORECASE)
_QUANTITY = re.compile(
    r"^(?:a lot of|lots of|plenty of|loads of|tons of|too much|the|an|a|some|much|many|my)\s+", re.IGNORECASE
)
_PLACE = re.compile(
    r"^(?:(?:a|an|the|my|our) )?(?:new |nice |small |big |little )*(?:flat|apartment|house|place|home"
    r"|condo|studio|room) (?:in|at) ",
    re.IGNORECASE,
)
_SPELLING = {
    "colour": "color",
    "flavour": "flavor",
    "favourite": "favorite",
    "neighbour": "neighbor",
    "programme": "program",
    "theatre": "theater",
    "mum": "mom",
    "fiancee": "fiance",
    "fiancée": "fiance",
    "fiancé": "fiance",
}


def _norm(value: str) -> str:
    value = value.strip().rstrip(".!").strip().lower()
    for _ in range(3):
        before = value
        value = _TRAILING.sub("", value).strip(" ,")
        value = _QUANTITY.sub("", value)
        if value == before:
            break
    return value


def _norm_key(key: str) -> str:
    words = [_SPELLING.get(w, w) for w in _norm(key).replace("'s", "").split() if w not in ("new", "current")]
    return "_".join(words)


def _core(statement: str) -> str:
    """The statement reduced for slot matching: no final stop, no leading discourse or time phrase, the subject
    as "i"/"i am"/"i have" ("we" counts as the user), no adverbs between the subject and the verb."""
    bare = " ".join(statement.replace("\u2019", "'").strip().rstrip(".!").split())
    bare = _LEADING.sub("", bare)
    for pattern, repl in _CONTRACTIONS:
        bare, n = pattern.subn(repl, bare, count=1)
        if n:
            break
    bare = re.sub(r"\bour\b", "my", bare, flags=re.IGNORECASE)
    for _ in range(2):
        bare = _STRIP_ADVERBS.sub(r"\1 ", bare)
    return _TRAILING.sub("", bare).strip(" ,")


def slot_of(statement: str) -> Slot | None:
    """The slot a statement fills, or None (most statements are additive: no conflict possible)."""
    core = _core(statement)
    for key, pattern, how in _SLOT_RULES:
        match = pattern.fullmatch(core)
        if match is None:
            continue
        groups = match.groupdict()
        raw = groups.get("v")
        if how == "deny":
            return Slot(key, "not:" + (_norm(_CORRECTION.sub("", raw)) if raw else "*"))
        if raw is None:
            continue
        if how == "proper" and not (raw[:1].isupper() or raw.startswith("<")):
            continue  # "my boss is Linda" names the boss; "my boss is annoying" does not
        value = _norm(_CORRECTION.sub("", raw))
        if how == "place":
            value = _norm(_PLACE.sub("", value))
        if how == "role":
            role = _norm(groups.get("role") or value)
            if not role or role.split()[-1] not in _OCCUPATIONS:
                continue
        if not value:
            continue
        negated = bool(groups.get("neg"))
        if key == "likes:{v}":
            negative = negated != (groups["verb"].lower() in _NEGATIVE_VERBS)
            return Slot(f"likes:{value}", "no" if negative else "yes")
        if key in ("habit:{v}", "is:{v}"):
            yes = {"stop": False, "start": True}.get(how, not negated)
            return Slot(key.replace("{v}", value), "yes" if yes else "no")
        if "{k}" in key:
            key = key.replace("{k}", _norm_key(groups["k"]))
        return Slot(key, "not:" + value if negated else value)
    return None


# ---- contradictions beyond the same slot: diets and food or drink categories -----------------------

_CATEGORIES: dict[str, frozenset[str]] = {
    name: _wordset(members)
    for name, members in {
        "meat": "meat steak steaks beef pork bacon ham chicken lamb veal mutton turkey duck venison burger burgers"
        " hamburger hamburgers sausage sausages salami pepperoni meatballs ribs brisket chorizo prosciutto"
        " jerky",
        "fish": "fish salmon tuna cod sardines trout seafood shrimp prawns lobster crab mussels oysters anchovies",
        "dairy": "dairy cheese milk butter yogurt yoghurt cream",
        "eggs": "eggs egg omelette omelettes",
        "alcohol": "alcohol wine beer beers whisky whiskey vodka gin rum tequila cocktails champagne cider sake"
        " booze liquor spirits prosecco",
    }.items()
}
_DIETS = {
    "vegetarian": ("meat", "fish"),
    "vegan": ("meat", "fish", "dairy", "eggs"),
    "pescatarian": ("meat",),
    "pescetarian": ("meat",),
    "teetotal": ("alcohol",),
    "teetotaler": ("alcohol",),
    "sober": ("alcohol",),
}


def _stances(slot: Slot) -> list[tuple[str, bool, bool]]:
    """(term, for it?, from a diet?) for the food or drink terms a yes/no slot takes a side on."""
    kind, _, topic = slot.key.partition(":")
    if kind == "is" and slot.value == "yes" and topic in _DIETS:
        return [(category, False, True) for category in _DIETS[topic]]
    if kind in ("likes", "habit") and slot.value in ("yes", "no"):
        return [(word, slot.value == "yes", False) for word in re.findall(r"[a-z]+", topic)]
    return []


def _within(term: str, category: str) -> bool:
    return term in _CATEGORIES.get(category, ())


def conflicts(new: Slot, old: Slot) -> bool:
    """Whether a statement of slot ``new`` makes one of slot ``old`` no longer true."""
    if new.key == old.key:
        if new.value == old.value:
            return False
        if new.value.startswith("not:"):
            denied = new.value[4:]
            return (denied == "*" and not old.value.startswith("not:")) or old.value == denied
        return True  # another value, or the value it denied earlier, or a denial of every value
    for term, side, diet in _stances(new):
        for other, other_side, other_diet in _stances(old):
            if side == other_side:
                continue
            related = _within(term, other) or _within(other, term)
            if related or ((diet or other_diet) and term == other):
                return True
    return False


def is_duplicate_slot(new: Slot, old: Slot) -> bool:
    return new.key == old.key and new.value == old.value


_SLOT_HINTS = {
    "residence": "live in moved to based home",
    "employer": "work at for job joined employer company",
    "occupation": "work as job am a",
    "age": "years old age turned",
    "my.birthday": "birthday born on",
    "relationship": "married single divorced engaged",
}


def slot_query(slot: Slot) -> str:
    """A search query that finds memories about ``slot`` whatever their wording (compound ones included)."""
    key = slot.key
    words = re.sub(r"[._:]", " ", key.removeprefix("my.").removeprefix("favorite."))
    hint = _SLOT_HINTS.get(key, "")
    if key.endswith(".name"):
        hint = "name named called"
    elif key.startswith(("likes:", "habit:", "is:")):
        topic = key.partition(":")[2]
        extra = (
            " ".join(c for c in _DIETS.get(topic, ()))
            + " "
            + " ".join(c for c, members in _CATEGORIES.items() if any(w in members for w in topic.split()))
        )
        words, hint = topic, extra
    return " ".join(f"{words} {hint}".split())


def _kind_of(statement: str) -> tuple[str, float]:
    slot = slot_of(statement)
    if slot is not None and slot.key.startswith(("likes:", "habit:", "favorite.")):
        return "preference", 0.6
    if slot is not None and (slot.key in ("name", "residence", "employer") or slot.key.endswith(".name")):
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


# ---- the LLM -------------------------------------------------------------------------------------------

_LLM_INSTRUCTIONS = (
    "Extract durable facts about the user from the user's message. Write each as a short first-person "
    'statement (e.g. "I live in Lisbon."). Skip greetings, questions, requests and passing moods. Answer '
    "with only a JSON array of strings; answer [] when there is nothing to keep."
)
_STRUCTURED_INSTRUCTIONS = (
    "Extract durable facts about the user from the user's messages (one message per line). Write each fact as "
    'one short, self-contained first-person statement in the user\'s words: "I live in Lisbon.", "My dog is '
    'named Biscuit.", one fact per statement (split "I\'m 34 and I work at SAP" in two). Keep changes and '
    'negations as the user states them ("I moved to Porto.", "I no longer eat meat.", "I don\'t like coffee '
    'anymore."). Skip greetings, thanks, questions, requests to the assistant and passing moods. kind is '
    "'preference' for likes, dislikes and habits, 'event' for something that happened, else 'fact'. Answer "
    "with an empty list when there is nothing to keep."
)


class ExtractedStatement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=500)
    kind: Literal["fact", "preference", "event"] = "fact"


class Extraction(BaseModel):
    """The answer the LLM must give (and, through ``response_format``, is made to give) for extraction."""

    model_config = ConfigDict(extra="forbid")

    statements: list[ExtractedStatement] = Field(max_length=64)


EXTRACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "statements": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "One first-person statement about the user."},
                    "kind": {"type": "string", "enum": ["fact", "preference", "event"]},
                },
                "required": ["text", "kind"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["statements"],
    "additionalProperties": False,
}


@runtime_checkable
class StructuredBackend(Protocol):
    """A backend that can answer in JSON following a schema (``OpenAIBackend.structured``)."""

    async def structured(
        self, messages: Sequence[ChatMessage], params: GenerationParams, *, name: str, schema: dict[str, Any]
    ) -> str: ...


class LLMDistiller:
    """Statements from an LLM (one call per message, in the background worker); rules as the fallback.

    ``stats`` counts the answers used (``structured``: validated against :class:`Extraction`; ``free_text``: a
    JSON list parsed out of a plain answer) and the ``fallbacks`` to the rules."""

    def __init__(self, backend: LLMBackend, *, max_new_tokens: int = 512) -> None:
        self._backend = backend
        self._params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self._fallback = RuleDistiller()
        self.stats = {"structured": 0, "free_text": 0, "fallbacks": 0}

    @property
    def structured_output(self) -> bool:
        return isinstance(self._backend, StructuredBackend)

    async def distill(self, message: str) -> list[Statement]:
        try:
            if isinstance(self._backend, StructuredBackend):
                items = await self._structured(self._backend, message)
                counter = "structured"
            else:
                items = await self._free_text(message)
                counter = "free_text"
        except Exception as exc:  # any failure of the model or its answer: use the rules
            self.stats["fallbacks"] += 1
            log.warning("LLM distillation failed (%s); using the rules", type(exc).__name__)
            return self._fallback.distill_sync(message)
        self.stats[counter] += 1
        out: list[Statement] = []
        seen: set[str] = set()
        for text, kind in items:
            tidy = _tidy(text)
            if not tidy or tidy.endswith("?") or len(tidy.split()) < 2 or tidy.lower() in seen:
                continue
            seen.add(tidy.lower())
            rule_kind, importance = _kind_of(tidy)
            out.append(Statement(tidy, kind or rule_kind, importance))
        return out

    async def _structured(self, backend: StructuredBackend, message: str) -> list[tuple[str, str | None]]:
        messages = (ChatMessage("system", _STRUCTURED_INSTRUCTIONS), ChatMessage("user", message))
        reply = await backend.structured(messages, self._params, name="memory_extraction", schema=EXTRACTION_SCHEMA)
        answer = Extraction.model_validate_json(reply)  # ValidationError (a ValueError) when unusable
        return [(s.text, s.kind) for s in answer.statements if s.text.strip()]

    async def _free_text(self, message: str) -> list[tuple[str, str | None]]:
        messages = (ChatMessage("system", _LLM_INSTRUCTIONS), ChatMessage("user", message))
        reply = (await self._backend.generate(messages, self._params)).text
        return [(text, None) for text in parse_json_list(reply)]


def parse_json_list(reply: str) -> list[str]:
    start, end = reply.find("["), reply.rfind("]")
    if start < 0 or end < start:
        raise ValueError("no JSON array in the reply")
    data = json.loads(reply[start : end + 1])
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ValueError("the reply is not a list of strings")
    return [x for x in data if x.strip()]


__all__ = [
    "EXTRACTION_SCHEMA",
    "Distiller",
    "Extraction",
    "LLMDistiller",
    "RuleDistiller",
    "Slot",
    "Statement",
    "StructuredBackend",
    "ValidationError",
    "conflicts",
    "is_chit_chat",
    "parse_json_list",
    "slot_of",
    "slot_query",
    "split_statements",
]
