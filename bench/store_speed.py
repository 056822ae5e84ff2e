"""Store speed benchmark: batch-add throughput and end-to-end search latency of ``MemoryStore``.

One tenant, exact (flat) FAISS index, real all-MiniLM-L6-v2 embeddings, synthetic but varied short memories
(about 10-25 words) spread over ``--subjects`` subjects. The store is filled in batches up to each size in
``--sizes`` (10k then 100k by default: the 100k store is the 10k store plus 90k more), and at each size it
measures, interleaved query by query so machine noise hits every variant alike:

* ``store_search_e2e``: ``MemoryStore.search(k=10)`` including the query embedding (the number the target is
  about: p50 <= 10 ms at 100k);
* ``query_embed``: the embedder alone on the same query;
* ``store_search_precomputed_embedding``: the same ``MemoryStore.search`` call, but the injected embedder
  answers from a dict of query vectors computed beforehand (a real measurement, no store edits);
* ``faiss_flat_all`` / ``faiss_flat_subject_selector``: ``TenantIndex.search`` over every vector, and
  restricted to the subject's candidate ids with the FAISS ID selector (as the store does);
* ``store_search_instrumented``: the same ``MemoryStore.search`` call with its building blocks wrapped by a
  stage timer (see ``search_targets`` and ``STAGE_LEGEND``): exclusive time per stage (embedding, registry
  catch-up, FAISS, BM25, session neighbours, fusion, SQL, decryption), summing to the call's total. A target
  missing from the code is listed in ``stage_targets_missing``.

The first query of each subject after a fill is reported separately (``first_query_per_subject``): it builds
the subject's BM25 index from decrypted rows. At the largest size the real search path is also profiled with
cProfile (self time per package and cumulative time of the store's building blocks).

Add throughput counts whole ``add_batch`` calls (embedding, encryption, SQL, index catch-up and the periodic
encrypted index save); the embedding and index-save parts are timed separately. With ``--postgres`` the same
data goes into a PostgreSQL started with pgserver; to keep the run short its adds reuse the embeddings computed
for SQLite, so its add rate is store-only (labelled) and an end-to-end estimate is derived.

    python bench/store_speed.py --sizes 10000,100000 --json-out bench/store_speed.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import functools
import gc
import inspect
import json
import os
import platform
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# This checkout's code, not the one the editable install points at (runs from another worktree compare it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
import numpy as np
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Result
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from bench import postgres
from memory_store import (
    Filters,
    FusionConfig,
    MasterKey,
    MemoryStore,
    NewMemory,
    SentenceTransformerEmbedder,
    StoreSettings,
    generate_key,
)
from memory_store.db import make_engine
from memory_store.embedder import Embedder, embedder_from_settings
from memory_store.keys import KeyManager
from memory_store.migrate import upgrade
from memory_store.models import Subject, utcnow
from memory_store.onnx_embedder import OnnxEmbedder
from memory_store.records import candidate_statement, filter_params, filter_shape
from memory_store.sealing import MemorySealer
from memory_store.vector_index import TenantIndex

TARGET_ADD_PER_S = 400.0
TARGET_SEARCH_P50_MS = 10.0
TARGET_SIZE = 100_000
SAVE_LABEL = "index.save"


def log(message: str) -> None:
    print(f"[store_speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- synthetic memories ------------------------------------------------------------------------------

def _words(blob: str) -> list[str]:
    return blob.split()


def _phrases(blob: str) -> list[str]:
    return [p.strip() for p in blob.split(";") if p.strip()]


NAMES = _words(
    "Alice Bob Carmen Dmitri Elena Farid Grace Hiro Ines Jamal Keiko Liam Maya Nikolai Olivia Pedro Quinn "
    "Rosa Samir Tara Umar Valentina Wei Ximena Yusuf Zoe Aaron Bianca Caleb Daria Emil Fatima Gabriel Hannah "
    "Ivan Julia Kofi Lena Marco Nadia Oscar Priya Rafael Sofia Tomas Uma Victor Wanda Xavier Yara Zane Amara "
    "Bruno Chloe Diego Esther Felix Greta Hugo Isla Jonas Kira Leon Mila Noah Orla Pablo Rhea Stefan Talia "
    "Ugo Vera Willem Yvonne Ada Benedikt Cora Dario Eun Florian Gloria Henrik Ilse Joaquin Kamala Lucas "
    "Mirela Nils Odette Paolo Ruth Sven Thea Ulrich Vivian Wendell Ayesha Bastian Cecile Dominik Erin"
)
CITIES = _words(
    "Lisbon Porto Madrid Seville Barcelona Valencia Marseille Lyon Paris Brussels Antwerp Rotterdam Amsterdam "
    "Hamburg Berlin Leipzig Munich Vienna Prague Krakow Warsaw Gdansk Vilnius Riga Tallinn Helsinki Stockholm "
    "Oslo Bergen Copenhagen Aarhus Dublin Galway Edinburgh Glasgow Manchester Leeds Bristol London Cardiff "
    "Zurich Geneva Basel Milan Turin Bologna Florence Rome Naples Palermo Athens Thessaloniki Sofia Bucharest "
    "Belgrade Zagreb Ljubljana Budapest Istanbul Izmir Cairo Casablanca Nairobi Lagos Accra Capetown Toronto "
    "Montreal Vancouver Calgary Seattle Portland Denver Austin Chicago Boston Atlanta Miami Havana Bogota "
    "Lima Santiago Quito Montevideo Tokyo Osaka Kyoto Sapporo Seoul Busan Taipei Manila Hanoi Bangkok "
    "Singapore Jakarta Mumbai Pune Chennai Delhi Kathmandu Dubai Doha Melbourne Sydney Auckland Wellington"
)
COUNTRIES = _words(
    "Japan Portugal Iceland Norway Peru Chile Mexico Morocco Vietnam Thailand Greece Italy Croatia Georgia "
    "Scotland Canada Kenya Tanzania Argentina Colombia Indonesia Nepal Turkey Jordan Egypt Ireland Austria "
    "Slovenia Estonia Finland Korea Taiwan Brazil Ecuador Namibia Bhutan Mongolia Uzbekistan Malta Cyprus"
)
JOBS = _phrases(
    "nurse; data engineer; high school teacher; civil engineer; pharmacist; product designer; accountant; "
    "physiotherapist; sous chef; veterinarian; electrician; journalist; translator; architect; dentist; "
    "marine biologist; paramedic; UX researcher; tax lawyer; project manager; barista; librarian; pilot; "
    "carpenter; radiologist; social worker; game developer; florist; firefighter; statistician; "
    "museum curator; speech therapist; sales manager; mechanic; photographer; research chemist"
)
EMPLOYERS = _words(
    "Northwind Globex Initech Umbrella Hooli Stark Wayne Acme Vandelay Soylent Cyberdyne Tyrell Wonka "
    "Oscorp Gringotts Monarch Pinnacle Bluebird Riverbend Lakeside Evergreen Brightpath Sunforge Ironclad "
    "Meridian Halcyon Quantix Nimbus Solaris Crestview Redwood Aurora Kestrel Copperleaf Larkspur Driftwood"
)
HOBBIES = _phrases(
    "piano; violin; bouldering; salsa dancing; pottery; oil painting; chess; birdwatching; kayaking; "
    "sourdough baking; woodworking; photography; knitting; trail running; surfing; skateboarding; judo; "
    "gardening; calligraphy; beekeeping; astronomy; fencing; cello; karate; sailing; archery; origami; "
    "mountain biking; ice skating; rock climbing; swimming; tennis; badminton; yoga; pilates; drumming; "
    "stand-up comedy; board games; crossword puzzles; fly fishing; cross-country skiing; scuba diving"
)
FOODS = _phrases(
    "ramen; sushi; pad thai; tacos al pastor; lasagna; risotto; pho; bibimbap; falafel; shakshuka; paella; "
    "goulash; pierogi; dumplings; biryani; butter chicken; moussaka; ceviche; empanadas; croissants; "
    "cheesecake; tiramisu; churros; baklava; lentil soup; mushroom pizza; fish and chips; poke bowls; "
    "green curry; carbonara; gnocchi; burritos; arepas; kimchi stew; miso soup; banh mi; tagine; hummus; "
    "grilled halloumi; pumpkin pie; apple strudel; mango sticky rice; lobster rolls; clam chowder"
)
CUISINES = _words(
    "Thai Japanese Korean Ethiopian Lebanese Peruvian Mexican Georgian Sicilian Basque Vietnamese "
    "Turkish Moroccan Indian Nepalese Greek Portuguese Brazilian Cantonese Szechuan Persian Hungarian"
)
DRINKS = _phrases(
    "oat milk latte; green tea; espresso; cold brew; chai; hot chocolate; matcha; rooibos tea; "
    "sparkling water; ginger beer; flat white; yerba mate; kombucha; decaf americano; peppermint tea"
)
ALLERGENS = _words("peanuts shellfish gluten lactose sesame eggs soy walnuts penicillin pollen cats latex kiwi")
SPECIES = _phrases(
    "dog; cat; parrot; rabbit; hamster; tortoise; golden retriever; border collie; tabby cat; "
    "bearded dragon; guinea pig; ferret; corgi; dachshund; siamese cat"
)
PET_NAMES = _words(
    "Biscuit Pepper Mochi Luna Ziggy Nacho Pickles Waffles Olive Bean Juniper Maple Pixel Socks Tofu "
    "Noodle Pumpkin Clover Cosmo Marble Peanut Sushi Basil Rocket Gizmo Hazel Kiwi Mango Pretzel Yoshi"
)
ADJECTIVES = _words(
    "quiet cozy noisy tiny huge cheerful grumpy elderly energetic shy stubborn clever lazy curious old "
    "brand-new vintage rustic modern cramped spacious sunny rainy chilly humid expensive cheap reliable "
    "fragile sturdy colorful gloomy famous hidden popular underrated family-run tiny overpriced"
)
COLORS = _words("red blue green yellow purple orange teal navy maroon beige turquoise lavender mustard olive")
OBJECTS = _phrases(
    "notebooks; scarves; mugs; sneakers; headphones; candles; plants; sweaters; backpacks; umbrellas; "
    "fountain pens; puzzles; vinyl records; board games; water bottles; socks; teapots; lamps; posters"
)
TOPICS = _phrases(
    "remote work; electric cars; school choice; the housing market; climate policy; budgeting; "
    "meal planning; sleep schedules; screen time; retirement savings; learning languages; "
    "moving abroad; public transport; minimalism; volunteering; career changes; home renovation"
)
OPINIONS = _phrases(
    "it is overrated; it saves a lot of money; it needs better planning; it is worth trying once; "
    "the costs keep going up; the kids love it; it is exhausting in winter; it changed their routine; "
    "it should start earlier; the reviews were misleading"
)
CONDITIONS = _phrases(
    "high blood pressure; migraines; asthma; a sprained ankle; lower back pain; insomnia; "
    "high cholesterol; tendonitis; a knee injury; seasonal allergies; iron deficiency; reflux"
)
PROJECTS = _words(
    "Falcon Atlas Orion Phoenix Neptune Sequoia Cobalt Granite Mercury Hydra Aspen Borealis Tundra "
    "Sierra Voyager Pegasus Nova Zephyr Quasar Titan Helix Lynx Osprey Summit Beacon Harbor Catalyst"
)
BOOK_WORDS = _words(
    "Silent Garden River Winter Glass House Forgotten Empire Salt Night Paper Lantern Hollow Crown Ember "
    "Orchard Tide Stone Harbor Shadow Letters Mountain Last Summer Dust Map Iron Bridge Clockwork Sea"
)
SIGHTS = _phrases(
    "the old temples; the northern lights; the coastal trail; the night markets; the wine valleys; "
    "the volcano crater; the hot springs; the glaciers; the old town; the desert dunes; the rice terraces; "
    "the cathedral; the modern art museum; the botanical gardens; the fjords; the cliffs"
)
SERVICES = _words("Netflix Spotify Dropbox GitHub Slack Zoom Duolingo Strava Audible Notion Figma Trello")
PLACES = _phrases(
    "animal shelter; food bank; public library; community garden; youth football club; hospice; "
    "repair cafe; homeless shelter; local museum; refugee center; senior center; beach cleanup group"
)
EVENTS = _phrases(
    "spring fundraiser; weekend book sale; holiday food drive; summer reading program; charity run; "
    "volunteer orientation; neighborhood potluck; toy drive; adoption day"
)
LANGUAGES = _words(
    "Spanish Portuguese Japanese Korean Mandarin Italian German French Dutch Swedish Greek Turkish Arabic "
    "Hindi Polish Czech Vietnamese Swahili Finnish Hebrew"
)
CARS = _phrases(
    "Toyota Corolla; Honda Civic; Volkswagen Golf; Skoda Octavia; Mazda 3; Subaru Outback; Ford Focus; "
    "Tesla Model 3; Kia Niro; Volvo V60; Fiat Panda; Renault Clio; Hyundai Kona; Nissan Leaf"
)
RACES = _phrases("marathon; half marathon; 10k; triathlon; trail ultra; charity 5k; swim relay")
RELATIONS = _words("sister brother mother father cousin aunt uncle daughter son niece nephew grandmother friend")
MONTHS = _words("January February March April May June July August September October November December")
WEEKDAYS = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
KINDS = ("fact", "fact", "fact", "preference", "event", "turn", "note")


@dataclass
class Persona:
    user: str
    people: list[tuple[str, str]]  # (relation, name)
    city: str
    job: str
    employer: str
    hobbies: list[str]
    foods: list[str]
    allergen: str
    pet: tuple[str, str]
    projects: list[str]
    country: str
    language: str
    car: str
    race: str
    place: str
    drink: str
    facts: dict[str, str] = field(default_factory=dict)


def make_persona(rng: random.Random) -> Persona:
    return Persona(
        user=rng.choice(NAMES),
        people=[(rng.choice(RELATIONS), rng.choice(NAMES)) for _ in range(6)],
        city=rng.choice(CITIES),
        job=rng.choice(JOBS),
        employer=rng.choice(EMPLOYERS),
        hobbies=rng.sample(HOBBIES, 3),
        foods=rng.sample(FOODS, 3),
        allergen=rng.choice(ALLERGENS),
        pet=(rng.choice(SPECIES), rng.choice(PET_NAMES)),
        projects=rng.sample(PROJECTS, 3),
        country=rng.choice(COUNTRIES),
        language=rng.choice(LANGUAGES),
        car=rng.choice(CARS),
        race=rng.choice(RACES),
        place=rng.choice(PLACES),
        drink=rng.choice(DRINKS),
    )


class TextFactory:
    """Short first-person-ish memory texts; most slots come from the subject's persona, some are random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _pick(self, own: Sequence[str], pool: Sequence[str], p_own: float = 0.75) -> str:
        return self.rng.choice(own) if self.rng.random() < p_own else self.rng.choice(pool)

    def _person(self, persona: Persona) -> tuple[str, str]:
        if self.rng.random() < 0.8:
            return self.rng.choice(persona.people)
        return self.rng.choice(RELATIONS), self.rng.choice(NAMES)

    def memory(self, p: Persona) -> tuple[str, str]:
        r = self.rng
        rel, person = self._person(p)
        day = r.randint(1, 28)
        month = r.choice(MONTHS)
        n = r.randint(2, 42)
        templates: list[tuple[str, Callable[[], str]]] = [
            ("move", lambda: f"{p.user} said their {rel} {person} is moving to {r.choice(CITIES)} next {month} "
                             f"to start a new job as a {r.choice(JOBS)}."),
            ("allergy", lambda: f"Remember that {p.user} is allergic to {p.allergen} and always avoids "
                                f"{self._pick(p.foods, FOODS)} when eating out."),
            ("pet", lambda: f"{p.user} has a {r.choice(ADJECTIVES)} {p.pet[0]} named {p.pet[1]} who needs "
                            f"medication every {r.choice(WEEKDAYS)} morning."),
            ("birthday", lambda: f"Booked a table at a {r.choice(ADJECTIVES)} {r.choice(CUISINES)} place in "
                                 f"{p.city} for {person}'s birthday on {month} {day}."),
            ("drink", lambda: f"{p.user} prefers {p.drink} over {r.choice(DRINKS)} and usually has one before "
                              f"the {r.choice(WEEKDAYS)} standup."),
            ("deadline", lambda: f"The {self._pick(p.projects, PROJECTS)} project at {p.employer} slipped again; "
                                 f"the new deadline is {r.choice(WEEKDAYS)} {month} {day}."),
            ("book", lambda: f"{p.user} finished reading The {r.choice(BOOK_WORDS)} {r.choice(BOOK_WORDS)} by "
                             f"{r.choice(NAMES)} {r.choice(NAMES)}son and rated it {r.randint(3, 10)} out of ten."),
            ("trip", lambda: f"Planning a {r.randint(4, 21)} day trip to {self._pick([p.country], COUNTRIES, 0.5)} "
                             f"in {month}, mostly to see {r.choice(SIGHTS)} and try {r.choice(FOODS)}."),
            ("lessons", lambda: f"{p.user}'s {rel} {person} started {self._pick(p.hobbies, HOBBIES)} lessons "
                                f"and practices {r.choice(['twice', 'three times', 'once'])} a week."),
            ("doctor", lambda: f"The doctor told {p.user} to cut down on {self._pick(p.foods, FOODS)} because of "
                               f"{r.choice(CONDITIONS)}; follow-up appointment on {month} {day}."),
            ("running", lambda: f"{p.user} ran {n} kilometers on {r.choice(WEEKDAYS)} and is training for the "
                                f"{p.city} {p.race} in {month}."),
            ("restaurant", lambda: f"{person} recommended a {r.choice(ADJECTIVES)} {r.choice(CUISINES)} "
                                   f"restaurant near the {r.choice(CITIES)} station that serves great "
                                   f"{r.choice(FOODS)}."),
            ("opinion", lambda: f"When talking about {r.choice(TOPICS)}, {p.user} said {r.choice(OPINIONS)}."),
            ("car", lambda: f"{p.user} bought a used {p.car} for {r.randint(30, 190) * 100} dollars and "
                            f"named it {r.choice(PET_NAMES)}."),
            ("volunteer", lambda: f"{p.user} volunteers at the {p.place} every {r.choice(WEEKDAYS)} and is "
                                  f"organizing the {r.choice(EVENTS)} this {month}."),
            ("language", lambda: f"{p.user} is learning {p.language} on {r.choice(SERVICES)} and wants to "
                                 f"practice ordering {r.choice(FOODS)} in {p.language} during the trip."),
            ("meeting", lambda: f"The meeting with {person} from {r.choice(EMPLOYERS)} about the "
                                f"{self._pick(p.projects, PROJECTS)} budget moved to {r.randint(8, 17)}:"
                                f"{r.choice(['00', '15', '30', '45'])} on {r.choice(WEEKDAYS)}."),
            ("gift", lambda: f"{p.user} wants gift ideas for {person}, who loves {r.choice(HOBBIES)} and "
                             f"collects {r.choice(COLORS)} {r.choice(OBJECTS)}."),
            ("job", lambda: f"{p.user} works as a {p.job} at {p.employer} in {p.city} and usually finishes "
                            f"around {r.randint(3, 8)} pm on {r.choice(WEEKDAYS)}s."),
            ("hobby", lambda: f"On weekends {p.user} goes {self._pick(p.hobbies, HOBBIES)} with {person} near "
                              f"{p.city} unless the weather is {r.choice(['rainy', 'stormy', 'too hot'])}."),
            ("food", lambda: f"{p.user}'s favorite comfort food is {self._pick(p.foods, FOODS)}, especially the "
                             f"{r.choice(ADJECTIVES)} version from a {r.choice(CUISINES)} cafe."),
            ("subscription", lambda: f"{p.user} cancelled the {r.choice(SERVICES)} subscription in {month} and "
                                     f"switched to a {r.choice(ADJECTIVES)} alternative costing {n} euros."),
        ]
        name, make = r.choice(templates)
        return name, make()

    def queries(self, p: Persona, count: int) -> list[str]:
        r = self.rng
        rel, person = r.choice(p.people)
        pool = [
            f"Where is {person} moving to?",
            f"What is {p.user} allergic to?",
            f"What is the name of {p.user}'s {p.pet[0]}?",
            f"When is {person}'s birthday dinner?",
            f"What does {p.user} like to drink before standup?",
            f"When is the {r.choice(p.projects)} deadline?",
            f"Which book did {p.user} finish reading recently?",
            f"When is the trip to {p.country} planned?",
            f"What lessons did {p.user}'s {rel} start?",
            f"What did the doctor say about {r.choice(p.foods)}?",
            f"Which {p.race} is {p.user} training for?",
            f"Which restaurant did {person} recommend?",
            f"What car did {p.user} buy?",
            f"Where does {p.user} volunteer?",
            f"Which language is {p.user} learning?",
            f"When was the meeting about the {r.choice(p.projects)} budget moved to?",
            f"What gift would {person} like?",
            f"Where does {p.user} work and what is the job?",
            f"What does {p.user} do on weekends with {person}?",
            f"What is {p.user}'s favorite comfort food?",
            f"Which subscription did {p.user} cancel?",
        ]
        return r.sample(pool, min(count, len(pool))) + [r.choice(pool) for _ in range(count - len(pool))]


@dataclass
class Corpus:
    subjects: list[str]
    personas: list[Persona]
    texts: list[str]
    topics: list[str]
    subject_of: list[int]
    session_of: list[str]
    kinds: list[str]
    queries: dict[int, list[str]]

    def memory(self, i: int) -> NewMemory:
        """Memory ``i`` as the benches add it."""
        return NewMemory(
            subject=self.subjects[self.subject_of[i]],
            text=self.texts[i],
            kind=self.kinds[i],
            metadata={"topic": self.topics[i], "seq": i},
            source="chat",
            agent_id="assistant",
            session_id=self.session_of[i],
        )


def build_corpus(total: int, n_subjects: int, queries_per_subject: int, seed: int) -> Corpus:
    rng = random.Random(seed)
    personas = [make_persona(rng) for _ in range(n_subjects)]
    factory = TextFactory(rng)
    subject_of = [rng.randrange(n_subjects) for _ in range(total)]
    texts: list[str] = []
    topics: list[str] = []
    for s in subject_of:
        topic, body = factory.memory(personas[s])
        texts.append(body)
        topics.append(topic)
    kinds = [rng.choice(KINDS) for _ in range(total)]
    per_subject = [0] * n_subjects
    session_of = []
    for s in subject_of:  # a conversation session holds ~20 consecutive memories of one subject
        session_of.append(f"user-{s:04d}-s{per_subject[s] // 20}")
        per_subject[s] += 1
    queries = {s: factory.queries(personas[s], queries_per_subject) for s in range(n_subjects)}
    return Corpus(
        subjects=[f"user-{i:04d}" for i in range(n_subjects)],
        personas=personas, texts=texts, topics=topics, subject_of=subject_of, session_of=session_of,
        kinds=kinds, queries=queries,
    )


# ---- embedder wrapper -------------------------------------------------------------------------------

class BenchEmbedder:
    """Wraps the real embedder: times it, records vectors, and can replay recorded vectors by text."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.cache: dict[str, np.ndarray] = {}
        self.record = False
        self.replay = False
        self.seconds = 0.0
        self.texts = 0
        self.replay_misses = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.replay:
            try:
                return np.stack([self.cache[t] for t in texts]).astype(np.float32, copy=False)
            except KeyError:
                self.replay_misses += 1
        start = time.perf_counter()
        vectors = self.inner.embed(texts)
        self.seconds += time.perf_counter() - start
        self.texts += len(texts)
        if self.record:
            for t, v in zip(texts, vectors, strict=True):
                self.cache[t] = v
        return vectors

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        self.replay = True
        try:
            yield
        finally:
            self.replay = False


class StageTimer:
    """Exclusive wall time per stage of the real store code, by wrapping its building blocks at runtime.

    Each wrapped callable adds its own time minus that of wrapped callables it calls, so the stages of one
    call sum to its total. Wrappers are installed on classes/modules for the duration of the ``with`` block
    and cost ~0.2 us when disabled. Targets not found in the code are skipped and listed in ``missing``.
    """

    def __init__(self, targets: Sequence[tuple[Any, str, str]]) -> None:
        self.targets = targets
        self.enabled = False
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.missing: list[str] = []
        self._stack: list[list[Any]] = []  # [base label, time spent in wrapped children]
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        timer = self
        clock = time.perf_counter
        attributed = label.startswith("sql.")  # SQL is also named after its wrapped caller

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not timer.enabled:
                return fn(*args, **kwargs)
            stack = timer._stack
            parent = stack[-1][0] if stack else "-"
            key = f"{label}@{parent}" if attributed else label
            frame: list[Any] = [label, 0.0]
            stack.append(frame)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - start
                stack.pop()
                timer.totals[key] = timer.totals.get(key, 0.0) + elapsed - frame[1]
                timer.calls[key] = timer.calls.get(key, 0) + 1
                if stack:
                    stack[-1][1] += elapsed

        return functools.wraps(fn)(wrapper)

    def __enter__(self) -> StageTimer:
        for owner, attr, label in self.targets:
            raw = inspect.getattr_static(owner, attr, None)
            if raw is None:
                self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
                continue
            self._saved.append((owner, attr, raw))
            if isinstance(raw, staticmethod):
                setattr(owner, attr, staticmethod(self._wrap(raw.__func__, label)))
            elif isinstance(raw, classmethod):
                setattr(owner, attr, classmethod(self._wrap(raw.__func__, label)))
            else:
                setattr(owner, attr, self._wrap(raw, label))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, raw in reversed(self._saved):
            setattr(owner, attr, raw)
        self._saved.clear()

    @contextlib.contextmanager
    def measuring(self) -> Iterator[dict[str, float]]:
        """Enable timing; yields the dict of this block's exclusive seconds per stage (filled on exit)."""
        before = dict(self.totals)
        out: dict[str, float] = {}
        self.enabled = True
        try:
            yield out
        finally:
            self.enabled = False
            for label, value in self.totals.items():
                delta = value - before.get(label, 0.0)
                if delta:
                    out[label] = delta


STAGE_LEGEND = {
    "store.search": "MemoryStore.search itself: validation, access-time touch",
    "searcher": "HybridSearcher.search itself: numpy on candidate arrays, row iteration, ORM objects",
    "embed": "the embedder's embed (MiniLM on CPU: ONNX Runtime, or torch with --runtime torch)",
    "keys.subject_key": "KeyManager.subject_key (LRU-cached unwrap of the subject data key)",
    "dense": "HybridSearcher._dense_search and the vector backend's search (python part; FAISS is faiss.search, "
             "pgvector's SQL is sql.*@dense)",
    "index.registry_get": "IndexRegistry.get: lock + tenant change_seq check / change-log catch-up (python part)",
    "faiss.search": "TenantIndex.search: FAISS flat search with the IDSelectorBatch of the candidates",
    "faiss.upsert": "TenantIndex.upsert (remove + add_with_ids)",
    "index.save": "TenantIndex.save: serialize, AES-GCM encrypt, write, fsync (periodic, whole index)",
    "bm25.lexical_index": "HybridSearcher._lexical_index: cache lookup, and on a miss the row decryption loop",
    "bm25.build_index": "LexicalIndex.build (tokenize + postings of a subject's documents, cold subjects only)",
    "bm25.score": "LexicalIndex.scores / LexicalScores.of (query tokenize + BM25 scores)",
    "neighbours": "SessionLinks.neighbours: previous/next candidate in the session (cached order, no SQL)",
    "timestamps": "HybridSearcher._timestamps (python part)",
    "fusion": "score_fusion / reciprocal_rank_fusion",
    "decode": "records.decode of the hits (python part; AES-GCM is 'decrypt')",
    "decrypt": "MemorySealer.open_text / open_metadata (AES-GCM)",
    "encrypt": "MemorySealer.seal_* (AES-GCM)",
    "store.add_batch": "MemoryStore.add_batch itself: validation, ORM objects, records",
    "sql.*@X": "SQLAlchemy Session.scalar/scalars/execute (statement build + execute), Result.all (row fetch), "
               "Session.flush/commit/close, attributed to the wrapped caller X",
    "(total)": "wall time of the whole instrumented call",
}


def search_targets() -> list[tuple[Any, str, str]]:
    """What a search is made of (label per building block); anything unwrapped counts to its caller."""
    from memory_store import search as search_mod
    from memory_store.index_registry import IndexRegistry
    from memory_store.lexical import LexicalIndex, LexicalScores, SessionLinks
    from memory_store.search import HybridSearcher

    return [
        (MemoryStore, "search", "store.search"),
        (HybridSearcher, "search", "searcher"),
        (SentenceTransformerEmbedder, "embed", "embed"),
        (OnnxEmbedder, "embed", "embed"),
        (KeyManager, "subject_key", "keys.subject_key"),
        (HybridSearcher, "_dense_search", "dense"),
        (IndexRegistry, "get", "index.registry_get"),
        (TenantIndex, "search", "faiss.search"),
        (HybridSearcher, "_lexical_index", "bm25.lexical_index"),
        (LexicalIndex, "build", "bm25.build_index"),
        (LexicalIndex, "scores", "bm25.score"),
        (LexicalScores, "of", "bm25.score"),
        (SessionLinks, "neighbours", "neighbours"),
        (HybridSearcher, "_timestamps", "timestamps"),
        (search_mod, "score_fusion", "fusion"),
        (search_mod, "reciprocal_rank_fusion", "fusion"),
        (search_mod, "decode", "decode"),
        (MemorySealer, "open_text", "decrypt"),
        (MemorySealer, "open_metadata", "decrypt"),
        (Session, "execute", "sql.execute"),
        (Session, "scalar", "sql.scalar"),
        (Session, "scalars", "sql.scalars"),
        (Result, "all", "sql.fetch_all"),
        (Session, "close", "sql.close"),
    ]


def add_targets() -> list[tuple[Any, str, str]]:
    from memory_store.index_registry import IndexRegistry

    return [
        (MemoryStore, "add_batch", "store.add_batch"),
        (SentenceTransformerEmbedder, "embed", "embed"),
        (OnnxEmbedder, "embed", "embed"),
        (MemorySealer, "seal_text", "encrypt"),
        (MemorySealer, "seal_metadata", "encrypt"),
        (MemorySealer, "seal_embedding", "encrypt"),
        (KeyManager, "subject_key", "keys.subject_key"),
        (Session, "execute", "sql.execute"),
        (Session, "scalar", "sql.scalar"),
        (Result, "all", "sql.fetch_all"),
        (Session, "flush", "sql.flush"),
        (SessionTransaction, "commit", "sql.commit"),
        (IndexRegistry, "get", "index.registry_get"),
        (TenantIndex, "upsert", "faiss.upsert"),
        (TenantIndex, "save", SAVE_LABEL),
    ]


# ---- stats helpers ------------------------------------------------------------------------------------

def dist_ms(samples_s: Sequence[float]) -> dict[str, float]:
    if not samples_s:
        return {}
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": len(a), "p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
        "mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3), "max": round(float(a.max()), 3),
    }


def git_state() -> dict[str, Any]:
    """Commit of the code under test and any uncommitted changes to it (the store is edited concurrently)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip("\n")

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "memory_store").splitlines()]
    return {"git_commit": git("rev-parse", "--short", "HEAD"), "memory_store_uncommitted": dirty}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---- the store under test ----------------------------------------------------------------------------

@dataclass
class Bench:
    backend: str
    store: MemoryStore
    tenant_id: str
    master: MasterKey
    embedder: BenchEmbedder
    sessions: sessionmaker[Session]
    filled: int = 0


STATE_FILE = "bench_state.json"


def open_store(
    backend: str, work: Path, url: str | None, embedder: BenchEmbedder, *, corpus_key: dict[str, int], reuse: bool
) -> Bench:
    """A fresh store with one tenant, or with ``reuse`` the one a previous run left in ``work``.

    The state file holds the benchmark's throw-away master key in plain text: benchmark data only.
    """
    # No query-vector cache: each query recurs once per variant and repeat, and a cached vector would take the
    # query embedding out of `store_search_e2e`, the figure the target is set for (a query not seen before).
    settings = StoreSettings(
        data_dir=work / backend,
        database_url=url,
        vector_backend="pgvector" if backend == "pgvector" else "faiss",
        query_cache_size=0,
    )
    engine = make_engine(settings)
    if engine.dialect.name == "postgresql":
        with contextlib.suppress(Exception), engine.connect() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            conn.commit()
    upgrade(engine)
    state_path = work / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    saved = state.get(backend)
    if reuse and saved is not None:
        if saved["corpus"] != corpus_key:
            raise SystemExit(f"--reuse: {work} holds a corpus made with {saved['corpus']}, not {corpus_key}")
        master = MasterKey(base64.b64decode(saved["master_key"]))
        store = MemoryStore(engine=engine, master_key=master, embedder=embedder, settings=settings)
        tenant_id = saved["tenant_id"]
        filled = store.stats(tenant_id=tenant_id).memories  # adds commit in order: a prefix of the corpus
        log(f"{backend}: reusing tenant {tenant_id} with {filled} memories")
    else:
        material = generate_key()
        master = MasterKey(material)
        store = MemoryStore(engine=engine, master_key=master, embedder=embedder, settings=settings)
        tenant_id = store.create_tenant(name=f"bench-{backend}").id
        filled = 0
        state[backend] = {
            "master_key": base64.b64encode(material).decode(), "tenant_id": tenant_id, "corpus": corpus_key,
        }
        state_path.write_text(json.dumps(state, indent=2))
        state_path.chmod(0o600)
    return Bench(
        backend=backend, store=store, tenant_id=tenant_id, master=master, embedder=embedder,
        sessions=sessionmaker(engine, expire_on_commit=False), filled=filled,
    )


def fill(bench: Bench, corpus: Corpus, target: int, batch_size: int, *, replay: bool) -> dict[str, Any]:
    """Add memories ``bench.filled .. target`` in batches; returns the segment's throughput numbers."""
    emb = bench.embedder
    emb.record = not replay
    embed_s0, texts0 = emb.seconds, emb.texts
    batch_times: list[float] = []
    start_n = bench.filled
    wall = 0.0
    last_log = time.perf_counter()
    timer = StageTimer(add_targets())
    with timer, timer.measuring() as stages, (emb.replaying() if replay else contextlib.nullcontext()):
        for lo in range(start_n, target, batch_size):
            hi = min(lo + batch_size, target)
            items = [corpus.memory(i) for i in range(lo, hi)]
            t0 = time.perf_counter()
            bench.store.add_batch(tenant_id=bench.tenant_id, items=items)
            dt = time.perf_counter() - t0
            wall += dt
            batch_times.append(dt)
            bench.filled = hi
            if time.perf_counter() - last_log > 20:
                last_log = time.perf_counter()
                done = hi - start_n
                rate = done / wall
                log(f"{bench.backend}: {hi}/{target} memories, {rate:.0f}/s, "
                    f"eta {(target - hi) / rate:.0f}s, load {loadavg()}")
    emb.record = False
    n = target - start_n
    embed_s = emb.seconds - embed_s0
    embedded = emb.texts - texts0
    store_s = wall - embed_s
    out: dict[str, Any] = {
        "from": start_n, "to": target, "memories": n, "batch_size": batch_size, "wall_s": round(wall, 2),
        "memories_per_s": round(n / wall, 1) if wall else None,
        "embedding_s": round(embed_s, 2),
        "embedding_per_s": round(embedded / embed_s, 1) if embed_s > 0 else None,
        "store_only_s": round(store_s, 2),
        "store_only_per_s": round(n / store_s, 1) if store_s > 0 else None,
        "index_saves": timer.calls.get(SAVE_LABEL, 0), "index_save_s": round(stages.get(SAVE_LABEL, 0.0), 2),
        "batch_ms": dist_ms(batch_times),
        # Exclusive time per stage, in microseconds per memory (sums to the add wall time).
        "stage_us_per_memory": {
            label: round(v / n * 1e6, 1) for label, v in sorted(stages.items(), key=lambda kv: -kv[1])
        },
        "stage_targets_missing": timer.missing,
        "embeddings": "precomputed (replayed from the SQLite run)" if replay else "real, inside add_batch",
    }
    log(f"{bench.backend}: filled to {target}: {out['memories_per_s']}/s "
        f"(embedding {out['embedding_per_s']}/s, store-only {out['store_only_per_s']}/s, "
        f"{out['index_saves']} index saves {out['index_save_s']}s)")
    return out


# ---- search measurements ----------------------------------------------------------------------------

def subject_candidates(bench: Bench, subject: str) -> np.ndarray:
    """The ids the store's candidate query returns for ``subject`` with default filters."""
    with bench.sessions() as session:
        owner = session.scalar(
            select(Subject).where(Subject.tenant_id == bench.tenant_id, Subject.external_id == subject)
        )
        assert owner is not None
        rows = session.execute(
            candidate_statement(filter_shape(Filters())),
            {"tenant_id": bench.tenant_id, "subject_id": owner.id, **filter_params(Filters(), utcnow())},
        ).all()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def measure_size(bench: Bench, corpus: Corpus, *, k: int, repeats: int, seed: int) -> dict[str, Any]:
    store, emb = bench.store, bench.embedder
    tenant = bench.tenant_id
    index = store.indexes.get(tenant)
    rng = random.Random(seed + bench.filled)
    pairs = [(s, q) for s, qs in corpus.queries.items() for q in qs]
    rng.shuffle(pairs)
    all_queries = sorted({q for _, q in pairs})
    qvec = dict(zip(all_queries, emb.inner.embed(all_queries), strict=True))
    emb.cache.update(qvec)  # replayed by the precomputed-embedding variant
    candidates = {s: subject_candidates(bench, corpus.subjects[s]) for s in corpus.queries}
    sizes = [len(c) for c in candidates.values()]
    fetch = max(4 * k, int(getattr(FusionConfig(), "pool", 50)))  # the store's dense fetch size

    def search(s: int, q: str) -> Any:
        return store.search(tenant_id=tenant, subject=corpus.subjects[s], query=q, k=k)

    gc.collect()
    # Cold: the first search of a subject after writes builds its BM25 index from decrypted rows.
    first_of: dict[int, str] = {}
    for s, q in pairs:
        first_of.setdefault(s, q)
    cold: list[float] = []
    with StageTimer(search_targets()) as timer:
        cold_stages: dict[str, list[float]] = {}
        for s, q in first_of.items():
            with timer.measuring() as stages:
                t = time.perf_counter()
                search(s, q)
                cold.append(time.perf_counter() - t)
            for label, value in stages.items():
                cold_stages.setdefault(label, []).append(value)
        for s, q in pairs[: min(50, len(pairs))]:  # warm-up of every measured path
            search(s, q)
            index.search(qvec[q], fetch, None)

        variants: dict[str, Callable[[int, str], object]] = {
            "query_embed": lambda s, q: emb.inner.embed([q]),
            "store_search_e2e": search,
            "store_search_precomputed_embedding": lambda s, q: _replayed(emb, search, s, q),
            "store_search_e2e_faiss_1_thread": lambda s, q: _with_threads(1, search, s, q),
            "faiss_flat_all": lambda s, q: index.search(qvec[q], fetch, None),
            "faiss_flat_subject_selector": lambda s, q: index.search(qvec[q], fetch, candidates[s]),
            "faiss_flat_subject_selector_1_thread": lambda s, q: _with_threads(
                1, index.search, qvec[q], fetch, candidates[s]
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in [*variants, "store_search_instrumented"]}
        pass_p50: dict[str, list[float]] = {name: [] for name in samples}
        stage_samples: dict[str, list[float]] = {}
        # The full scan streams the whole index (150 MB at 100k) through the CPU caches, which would slow
        # whatever runs next: it is timed in a loop of its own after the interleaved ones.
        names = [name for name in samples if name != "faiss_flat_all"]
        t_start = time.perf_counter()
        for _ in range(repeats):
            before = {name: len(v) for name, v in samples.items()}
            for s, q in pairs:
                order = names[:]
                rng.shuffle(order)  # a fresh order per query: no variant always runs first or after another
                for name in order:
                    if name == "store_search_instrumented":
                        with timer.measuring() as stages:
                            t = time.perf_counter()
                            search(s, q)
                            elapsed = time.perf_counter() - t
                        for label, value in stages.items():
                            stage_samples.setdefault(label, []).append(value)
                        stage_samples.setdefault("(total)", []).append(elapsed)
                    else:
                        t = time.perf_counter()
                        variants[name](s, q)
                        elapsed = time.perf_counter() - t
                    samples[name].append(elapsed)
            for s, q in pairs:
                t = time.perf_counter()
                variants["faiss_flat_all"](s, q)
                samples["faiss_flat_all"].append(time.perf_counter() - t)
            for name, values in samples.items():
                pass_p50[name].append(round(float(np.median(values[before[name]:])) * 1000, 3))
        measured_s = time.perf_counter() - t_start
        missing = list(timer.missing)
    for q in all_queries:
        emb.cache.pop(q, None)

    n_instr = len(stage_samples.get("(total)", [])) or 1
    result: dict[str, Any] = {
        "memories": bench.filled,
        "subjects": len(corpus.queries),
        "memories_per_subject": {"min": min(sizes), "median": int(np.median(sizes)), "max": max(sizes)},
        "index_kind": index.kind, "index_vectors": index.ntotal, "k": k, "faiss_fetch": fetch,
        "faiss_omp_threads_default": faiss.omp_get_max_threads(),
        "queries": len(pairs), "repeats": repeats, "measure_s": round(measured_s, 1),
        "latency_ms": {name: dist_ms(v) for name, v in samples.items()},
        "per_pass_p50_ms": pass_p50,
        "first_query_per_subject_ms": dist_ms(cold),
        "first_query_per_subject_stage_mean_ms": _stage_means(cold_stages, len(cold)),
        # Stage means sum to the instrumented total's mean (exclusive times); p50s do not add up.
        "stage_mean_ms": _stage_means(stage_samples, n_instr),
        "stage_p50_ms": {
            label: round(float(np.median(v)) * 1000, 3)
            for label, v in sorted(stage_samples.items(), key=lambda kv: -sum(kv[1]))
        },
        "stage_targets_missing": missing,
        "load_avg": loadavg(),
    }
    lat = result["latency_ms"]
    result["store_search_minus_query_embed_p50_ms"] = round(
        lat["store_search_e2e"]["p50"] - lat["query_embed"]["p50"], 3
    )
    log(f"{bench.backend} @ {bench.filled}: e2e p50 {lat['store_search_e2e']['p50']} ms "
        f"(faiss 1 thread {lat['store_search_e2e_faiss_1_thread']['p50']}), "
        f"embed p50 {lat['query_embed']['p50']} ms, "
        f"precomputed p50 {lat['store_search_precomputed_embedding']['p50']} ms, "
        f"faiss all {lat['faiss_flat_all']['p50']} ms, selector {lat['faiss_flat_subject_selector']['p50']} ms "
        f"(1 thread {lat['faiss_flat_subject_selector_1_thread']['p50']}), load {loadavg()}")
    return result


def _stage_means(stage_samples: dict[str, list[float]], n: int) -> dict[str, float]:
    """Mean ms per search of each stage (a stage absent from a search counts as 0 there)."""
    return {
        label: round(sum(v) / n * 1000, 3)
        for label, v in sorted(stage_samples.items(), key=lambda kv: -sum(kv[1]))
    }


def _replayed(emb: BenchEmbedder, fn: Callable[..., object], *args: Any) -> object:
    with emb.replaying():
        return fn(*args)


def _with_threads(n: int, fn: Callable[..., object], *args: Any) -> object:
    with faiss_threads(n):
        return fn(*args)

# ---- profiling ----------------------------------------------------------------------------------------

_PACKAGES = [  # first match wins; matched against "file:function" of each profiled function
    ("embedding (torch/transformers/tokenizers)", ("torch", "transformers", "tokenizers", "safetensors")),
    ("faiss", ("faiss",)),
    ("bm25 (bm25s/Stemmer/scipy)", ("bm25s", "Stemmer", "scipy")),
    ("crypto (AES-GCM)", ("cryptography", "memory_store/crypto.py", "memory_store/sealing.py", "AESGCM")),
    ("sql driver (sqlite3/psycopg)", ("sqlite3", "psycopg")),
    ("sqlalchemy", ("sqlalchemy",)),
    ("numpy", ("numpy",)),
    ("memory_store (other)", ("memory_store/",)),
]

_COMPONENTS = [  # (label, file suffix, function name): cumulative time inside the store's building blocks
    ("embedder.embed (query embedding)", "memory_store/embedder.py", "embed"),
    ("IndexRegistry.get (tenant seq check/catch-up)", "memory_store/index_registry.py", "get"),
    ("TenantIndex.search (FAISS + selector)", "memory_store/vector_index.py", "search"),
    ("LexicalIndex.scores (BM25 incl. query tokenize)", "memory_store/lexical.py", "scores"),
    ("HybridSearcher._lexical_index (BM25 cache/build)", "memory_store/search.py", "_lexical_index"),
    ("HybridSearcher._dense_search (vector backend search)", "memory_store/search.py", "_dense_search"),
    ("SessionLinks.neighbours (session neighbours, cached order)", "memory_store/lexical.py", "neighbours"),
    ("score_fusion", "memory_store/fusion.py", "score_fusion"),
    ("reciprocal_rank_fusion", "memory_store/fusion.py", "reciprocal_rank_fusion"),
    ("records.decode (hit decryption)", "memory_store/records.py", "decode"),
    ("crypto.open_sealed (all AES-GCM opens)", "memory_store/crypto.py", "open_sealed"),
    ("Session.execute", "sqlalchemy/orm/session.py", "execute"),
    ("Session.scalar", "sqlalchemy/orm/session.py", "scalar"),
    ("Session.scalars", "sqlalchemy/orm/session.py", "scalars"),
    ("Result.all (row fetch)", "sqlalchemy/engine/result.py", "all"),
    ("Session.close", "sqlalchemy/orm/session.py", "close"),
    ("HybridSearcher.search", "memory_store/search.py", "search"),
    ("MemoryStore.search", "memory_store/store.py", "search"),
]


def profile_search(bench: Bench, corpus: Corpus, *, k: int, count: int, out_dir: Path | None) -> dict[str, Any]:
    pairs = [(s, q) for s, qs in corpus.queries.items() for q in qs][:count]
    for s, q in pairs[:20]:
        bench.store.search(tenant_id=bench.tenant_id, subject=corpus.subjects[s], query=q, k=k)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for s, q in pairs:
        bench.store.search(tenant_id=bench.tenant_id, subject=corpus.subjects[s], query=q, k=k)
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    if out_dir is not None:
        stats.dump_stats(str(out_dir / f"store_search_{bench.backend}_{bench.filled}.prof"))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    n = len(pairs)
    total_tt = sum(v[2] for v in raw.values())
    by_pkg: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        key = f"{filename}:{func}"
        label = next((lbl for lbl, pats in _PACKAGES if any(p in key for p in pats)), "other (python/stdlib)")
        by_pkg[label] = by_pkg.get(label, 0.0) + tt
    components: dict[str, float] = {}
    for label, suffix, name in _COMPONENTS:
        ct = sum(v[3] for (f, _l, fn), v in raw.items() if f.endswith(suffix) and fn == name)
        components[label] = round(ct / n * 1000, 3)
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    return {
        "queries": n,
        "profiled_wall_ms_per_search": round(wall / n * 1000, 3),
        "note": "cProfile inflates Python-heavy code (SQLAlchemy) relative to C code (torch, FAISS, AES)",
        "self_time_by_package_ms_per_search": {
            lbl: round(v / n * 1000, 3) for lbl, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])
        },
        "self_time_share": {lbl: round(v / total_tt, 3) for lbl, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])},
        "cumulative_ms_per_search": components,
        "top_self_time": [
            {"function": f"{Path(f).name}:{line}:{fn}", "calls_per_search": round(v[1] / n, 2),
             "self_ms_per_search": round(v[2] / n * 1000, 4)}
            for (f, line, fn), v in top
        ],
    }


# ---- driver -------------------------------------------------------------------------------------------

def run_backend(
    backend: str, corpus: Corpus, embedder: BenchEmbedder, args: argparse.Namespace, work: Path,
    url: str | None, profile_dir: Path | None,
) -> dict[str, Any]:
    replay = backend != "sqlite"
    corpus_key = {"seed": args.seed, "subjects": args.subjects, "max_size": max(args.sizes)}
    bench = open_store(backend, work, url, embedder, corpus_key=corpus_key, reuse=args.reuse)
    out: dict[str, Any] = {"database": bench.store.engine.dialect.name, "add": [], "search": {}}
    try:
        for size in args.sizes:
            if size < bench.filled:
                log(f"{backend}: skipping size {size}: the reused store already holds {bench.filled}")
                continue
            if size > bench.filled:
                out["add"].append(fill(bench, corpus, size, args.batch_size, replay=replay))
            out["search"][str(size)] = measure_size(bench, corpus, k=args.k, repeats=args.repeats, seed=args.seed)
            if size == max(args.sizes) and args.profile_queries > 0 and (backend == "sqlite" or args.profile_all):
                log(f"{backend}: profiling {args.profile_queries} searches at {size}")
                out["profile"] = {str(size): profile_search(
                    bench, corpus, k=args.k, count=args.profile_queries, out_dir=profile_dir
                )}
        total_n = sum(seg["memories"] for seg in out["add"])
        total_wall = sum(seg["wall_s"] for seg in out["add"])
        total_embed = sum(seg["embedding_s"] for seg in out["add"])
        total_store = sum(seg["store_only_s"] for seg in out["add"])
        out["add_overall"] = {
            "memories": total_n,
            "memories_per_s": round(total_n / total_wall, 1) if total_wall > 0 else None,
            "store_only_per_s": round(total_n / total_store, 1) if total_store > 0 else None,
            "embedding_per_s": round(total_n / total_embed, 1) if total_embed > 0 else None,
            "index_saves": sum(seg["index_saves"] for seg in out["add"]),
            "index_save_s": round(sum(seg["index_save_s"] for seg in out["add"]), 2),
        }
    finally:
        bench.store.close()
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated store sizes (ascending)")
    parser.add_argument("--subjects", type=int, default=100, help="subjects the memories are spread over")
    parser.add_argument("--queries", type=int, default=3, help="queries per subject at each size")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the query set at each size")
    parser.add_argument("--batch-size", type=int, default=256, help="memories per add_batch call")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--runtime", choices=["onnx", "onnx-int8", "torch"], default="onnx",
        help="embedding runtime, as SEALMEM_EMBEDDING_RUNTIME (default: the service's default, onnx)",
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="the embedder's intra-op threads")
    parser.add_argument("--embed-batch-size", type=int, default=64, help="the embedder's batch size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--postgres", action="store_true", help="also run on PostgreSQL (pgserver): FAISS and pgvector backends"
    )
    parser.add_argument(
        "--profile-queries", type=int, default=300, help="searches profiled at the largest size (0: none)"
    )
    postgres.add_argument(parser)
    parser.add_argument("--profile-all", action="store_true", help="profile every backend, not only SQLite")
    parser.add_argument("--profile-out", type=Path, default=None, help="folder for the .prof files")
    parser.add_argument("--data-dir", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temp work folder")
    parser.add_argument(
        "--reuse", action="store_true",
        help="with --data-dir: reopen the stores a previous run left there (same --seed, --subjects and largest "
             "size) and only add what is missing, e.g. to re-measure search at 100k without re-embedding",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.sizes = sorted(int(x) for x in str(args.sizes).split(",") if x.strip())
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    corpus = build_corpus(max(args.sizes), args.subjects, args.queries, args.seed)
    words = [len(t.split()) for t in corpus.texts]
    vocab = len({w.lower().strip(".,;:?'") for t in corpus.texts[:20000] for w in t.split()})
    if args.reuse and args.data_dir is None:
        raise SystemExit("--reuse needs --data-dir")
    work = args.data_dir or Path(tempfile.mkdtemp(prefix="sealmem-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # The service's embedder for this runtime (the ONNX export cached in the work folder), without coalescing:
    # the bench's calls are sequential.
    real = embedder_from_settings(
        StoreSettings(
            data_dir=work,
            embedding_runtime=args.runtime,
            embedding_threads=args.torch_threads,
            embedding_batch_size=args.embed_batch_size,
            embedding_coalesce_max=1,
        )
    )
    embedder = BenchEmbedder(real)
    real.embed(["warm up the model"])
    result: dict[str, Any] = {
        "benchmark": "sealmem store_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "sizes": args.sizes, "subjects": args.subjects, "queries_per_subject": args.queries,
            "repeats": args.repeats, "batch_size": args.batch_size, "k": args.k, "seed": args.seed,
            "embedder": f"{type(real).__name__}(all-MiniLM-L6-v2, runtime={args.runtime}, "
                        f"threads={args.torch_threads}, batch_size={args.embed_batch_size}, "
                        f"parallel_passes={getattr(real, 'parallel', 1)})",
            "index": "flat (IndexIDMap2(IndexFlatIP)), exact_max=200000 default",
            "memory_words": {"min": min(words), "median": int(np.median(words)), "max": max(words)},
            "distinct_words_in_first_20k_memories": vocab,
        },
        "env": {
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "cpus": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "load_avg_start": loadavg(), **git_state(),
        },
        "targets": {"add_memories_per_s": TARGET_ADD_PER_S, "search_p50_ms_at_100k": TARGET_SEARCH_P50_MS},
        "stage_legend": STAGE_LEGEND,
    }
    if args.profile_out:
        args.profile_out.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        log(f"sqlite run in {work}: sizes {args.sizes}, {args.subjects} subjects")
        result["sqlite"] = run_backend("sqlite", corpus, embedder, args, work, None, args.profile_out)
        if args.postgres:
            server, url = postgres.start(work / "pg", args.pg_shared_buffers)
            log("postgres run (adds replay the SQLite run's embeddings)")
            result["postgres"] = run_backend("postgres", corpus, embedder, args, work, url, args.profile_out)
            log("pgvector run (PostgreSQL metadata + pgvector HNSW vectors, same replayed embeddings)")
            admin = create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:  # its own database: a database is bound to one master key
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = 'bench_pgvector'")).first()
                state_path = work / STATE_FILE
                saved = json.loads(state_path.read_text()) if state_path.exists() else {}
                if not (args.reuse and exists and "pgvector" in saved):  # --reuse keeps what a run filled
                    conn.execute(text("DROP DATABASE IF EXISTS bench_pgvector"))
                    conn.execute(text("CREATE DATABASE bench_pgvector"))
            admin.dispose()
            pgv_url = url.replace("/postgres?", "/bench_pgvector?", 1)
            result["pgvector"] = run_backend("pgvector", corpus, embedder, args, work, pgv_url, args.profile_out)
            sq = result["sqlite"]["add_overall"]
            for name in ("postgres", "pgvector"):
                pg = result[name]["add_overall"]
                if sq["embedding_per_s"] and pg["store_only_per_s"]:
                    pg["estimated_memories_per_s_with_real_embedding"] = round(
                        1.0 / (1.0 / sq["embedding_per_s"] + 1.0 / pg["store_only_per_s"]), 1
                    )
                if embedder.replay_misses:
                    pg["replay_misses"] = embedder.replay_misses
    finally:
        if server is not None:
            server.cleanup()
        if not args.keep and args.data_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    result["summary"] = summarize(result, args)
    result["env"]["load_avg_end"] = loadavg()
    result["env"]["total_run_s"] = round(time.perf_counter() - started, 1)
    output = json.dumps(result, indent=2)
    print(output)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(output + "\n")
    return 0


def summarize(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for backend in ("sqlite", "postgres", "pgvector"):
        if backend not in result:
            continue
        data = result[backend]
        row: dict[str, Any] = {
            "add_memories_per_s": data["add_overall"]["memories_per_s"],
            "add_store_only_per_s": data["add_overall"]["store_only_per_s"],
        }
        for size, s in data["search"].items():
            lat = s["latency_ms"]
            row[f"search_e2e_ms@{size}"] = {key: lat["store_search_e2e"][key] for key in ("p50", "p95", "p99")}
            row[f"query_embed_p50_ms@{size}"] = lat["query_embed"]["p50"]
            row[f"search_precomputed_embedding_p50_ms@{size}"] = lat["store_search_precomputed_embedding"]["p50"]
            row[f"faiss_all_p50_ms@{size}"] = lat["faiss_flat_all"]["p50"]
            row[f"faiss_selector_p50_ms@{size}"] = lat["faiss_flat_subject_selector"]["p50"]
            row[f"first_query_per_subject_p50_ms@{size}"] = s["first_query_per_subject_ms"]["p50"]
            row[f"search_e2e_faiss_1_thread_p50_ms@{size}"] = lat["store_search_e2e_faiss_1_thread"]["p50"]
        largest = str(max(args.sizes))
        add = data["add_overall"]
        rate = add["memories_per_s"] if backend == "sqlite" else add.get("estimated_memories_per_s_with_real_embedding")
        row["meets_add_target"] = None if rate is None else rate >= TARGET_ADD_PER_S
        if largest in data["search"]:
            row[f"top_stages_mean_ms@{largest}"] = dict(list(data["search"][largest]["stage_mean_ms"].items())[:8])
        if int(largest) >= TARGET_SIZE and largest in data["search"]:
            row["meets_search_target_at_100k"] = (
                data["search"][largest]["latency_ms"]["store_search_e2e"]["p50"] <= TARGET_SEARCH_P50_MS
            )
        summary[backend] = row
    return summary


if __name__ == "__main__":
    sys.exit(main())
