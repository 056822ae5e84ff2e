"""KV injection vs prompt injection on a synthetic memory-QA set, with the bundled SmolLM2-135M-Instruct.

    python bench/kv_injection.py [--questions-per-attribute 11] [--threads 1] [--out result.json]

The script generates its data set (seeded): each subject has one fact per attribute (dog's name, city, sister's
name, ...) plus unrelated diary-style filler memories. A question asks for one attribute; the gold fact is
injected among distractor memories, which are ordered by a lexical retriever (word overlap with the question),
the way the chat loop receives memories best-first. Values are unusual names, so the no-memory baseline is
near 0. A reply is correct when it contains the gold value (case-insensitive).

Arms, all with the same token IDs (every piece tokenized separately) and greedy decoding:

* ``prompt``: memories as prompt text (the reference);
* ``kv:contiguous``, ``kv:shared``: memories as precomputed keys/values in each layout, encoded after the
  shared prefix and the default encoding lead (see docs/kv-injection.md);
* ``kv:shared@T``: the shared layout with APE's attention temperature T on memory tokens (``--temperature``);
* ``hybrid``: the top 2 memories as text, the rest as keys/values (``--hybrid-base`` layout);
* ``none``: no memories (the no-memory baseline);
* controls, on every ``--subsample-every``-th question: ``kv:contiguous-nolead`` (no encoding lead: the
  ablation) and ``prompt:top2`` (only the two memories hybrid keeps as text, nothing else: what the KV part
  of hybrid adds on top of them).

Measured in one run: accuracy at k=10 memories; first-token agreement and KL(prompt || arm) on the first
generated token; TTFT at 10, 40 and 80 injected memories. TTFT for kv = assembling the cache from the
per-memory keys/values already in RAM + prefill of the suffix only; for prompt = prefill of the whole prompt.
The one-time memory encoding cost is reported separately, as is the memory cost per token.

Generation stops at end of turn, at a line break, at ``--max-new-tokens`` (12), or as soon as the reply
contains the gold value (which cannot change the contains-gold outcome, and saves time on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

F_NAMES = (
    "Marisol Ingrid Priya Yuki Oksana Beatriz Fenna Leilani Solveig Anouk Zofia Thandiwe Carmela Ilse Noor Rosalind"
)
M_NAMES = "Tobias Dmitri Kenji Rafael Anders Emeka Lorcan Matteo Idris Bastian Cyrus Florian Hamish Jovan Niklas Oswin"
PETS = (
    "Biscuit Pepper Waffles Mochi Pickles Noodle Truffle Ziggy Clementine Nugget Pretzel Marbles Tofu Juniper Sprocket"
)
CITIES = (
    "Lisbon Tallinn Valparaiso Ljubljana Bergen Porto Krakow Halifax Hobart Tromso Graz Ghent Cork Bratislava Trieste"
)
TOWNS = (
    "Millbrook Ashcombe Dunmore Fernhill Oakridge Larkspur Stonehaven Willowby Thornbury Redcliff Elmstead Pinecrest"
)
UNIS = "Uppsala Leiden Coimbra Heidelberg Bologna Salamanca Tartu Groningen Aberdeen Padua Utrecht Freiburg Lund Otago"
BANDS = "Moonfield Starling Ironbloom Paperwolf Glasshouse Copperline Nightjar Hollowtide Bluefern Saltmarsh Emberlane"
BOOKS = "Wanderlight Ashfall Cinderpath Frostvale Gloamwood Harrowmere Lanternrest Mistwater Nettlecombe Ravenhollow"
COMPANIES = "Zentrix Corvana Bluepeak Quantora Lumora Verdix Tessaro Nimbly Orbitek Kalyra Fintari Solvane Brightlane"
HORSES = "Duchess Saffron Bramble Cinnamon Hazel Maple Pippin Rosie Shadow Toffee Velvet Willow Sundance Domino"

# (attribute, memory template, question, value pool). Every question shares a content word with its memory.
ATTRIBUTES: list[tuple[str, str, str, str]] = [
    ("dog", "I adopted a dog from the shelter last spring and named him {v}.", "What is my dog's name?", PETS),
    ("cat", "My cat is a grey tabby called {v} who sleeps on the windowsill.", "What is my cat called?", PETS),
    ("horse", "On weekends I ride a horse named {v} at the stables.", "What is the name of the horse I ride?", HORSES),
    ("city", "I moved to the city of {v} three years ago for a new job.", "Which city did I move to?", CITIES),
    ("hometown", "I grew up in a small town called {v} near the coast.", "What town did I grow up in?", TOWNS),
    ("sister", "My older sister {v} is a marine biologist.", "What is my sister's name?", F_NAMES),
    ("brother", "My younger brother {v} is studying architecture.", "What is my brother's name?", M_NAMES),
    ("daughter", "My daughter {v} loves painting dinosaurs.", "What is my daughter's name?", F_NAMES),
    ("son", "My son {v} just started primary school.", "What is my son's name?", M_NAMES),
    ("manager", "My manager at work is named {v} and she is very strict.", "What is my manager's name?", F_NAMES),
    ("neighbour", "My neighbour {v} waters my plants when I travel.", "What is my neighbour's name?", M_NAMES),
    ("friend", "My best friend since school is called {v}.", "What is my best friend called?", M_NAMES),
    ("partner", "My partner {v} works as a pilot.", "What is my partner's name?", F_NAMES),
    (
        "instrument",
        "I have been learning to play the {v} for two years.",
        "Which instrument am I learning to play?",
        "cello oboe banjo ukulele bassoon harp mandolin accordion clarinet sitar trombone harmonica viola theremin",
    ),
    (
        "language",
        "I am taking evening classes to learn {v}.",
        "Which language am I taking classes to learn?",
        "Finnish Icelandic Swahili Basque Tagalog Welsh Hungarian Estonian Maltese Georgian Amharic Latvian Yoruba",
    ),
    (
        "dish",
        "My favourite dish is {v}, especially on cold evenings.",
        "What is my favourite dish?",
        "ramen moussaka goulash paella pierogi bibimbap shakshuka jambalaya laksa tagine borscht ceviche biryani",
    ),
    (
        "sport",
        "Every Sunday I play {v} with my neighbours.",
        "Which sport do I play every Sunday?",
        "badminton curling lacrosse handball squash volleyball cricket rugby petanque croquet netball fencing",
    ),
    (
        "allergy",
        "I am allergic to {v}, so I always check food labels.",
        "What am I allergic to?",
        "peanuts shellfish sesame kiwi mustard celery walnuts strawberries mango avocado pineapple hazelnuts",
    ),
    ("university", "I studied chemistry at the University of {v}.", "Where did I study chemistry?", UNIS),
    (
        "street",
        "I live on {v} Street in a blue house with a red door.",
        "What street do I live on?",
        "Maple Juniper Harbor Chestnut Willow Beacon Orchard Foxglove Hawthorn Linden Sycamore Bramble Heather Larch",
    ),
    ("band", "My favourite band is {v}; I have seen them live four times.", "What is my favourite band?", BANDS),
    ("book", "The book I am reading at the moment is called {v}.", "What book am I reading?", BOOKS),
    (
        "garden",
        "In my garden I grow {v} in a big wooden planter.",
        "What do I grow in my garden?",
        "lavender rhubarb sunflowers tomatoes dahlias peonies kale zucchini rosemary tulips chillies asparagus",
    ),
    (
        "trip",
        "Next summer I am travelling to {v} with my family.",
        "Where am I travelling next summer?",
        "Madagascar Iceland Patagonia Bhutan Zanzibar Mongolia Sardinia Tasmania Namibia Svalbard Borneo Azores",
    ),
    ("company", "I work as an engineer at a company called {v}.", "What company do I work for?", COMPANIES),
    (
        "collection",
        "I collect vintage {v} and keep them in glass cabinets.",
        "What do I collect?",
        "typewriters cameras stamps postcards teapots compasses maps clocks radios thimbles globes matchboxes",
    ),
    (
        "number",
        "My lucky number is {v} because it was on my first football shirt.",
        "What is my lucky number?",
        "17 23 29 31 37 41 43 47 53 59 61 67 71 73 79 83 89 97",
    ),
    (
        "coffee",
        "Every morning I order a {v} from the cafe near my office.",
        "What do I order every morning at the cafe?",
        "cortado macchiato mocha americano affogato ristretto lungo frappe",
    ),
    (
        "teacher",
        "My piano teacher is an elderly woman named {v}.",
        "What is my piano teacher's name?",
        F_NAMES,
    ),
    ("boat", "I own a small sailing boat that I named {v}.", "What did I name my boat?", HORSES),
]

FILLER_DAYS = ["On Monday", "On Tuesday", "Last Wednesday", "On Thursday", "Last Friday", "On Saturday", "Yesterday"]
FILLER_ACTS = [
    "went for a long walk",
    "had lunch with two colleagues",
    "cleaned out the garage",
    "watched a documentary about volcanoes",
    "baked a loaf of sourdough bread",
    "repaired the chain on my bicycle",
    "wrote a long letter to an old friend",
    "visited a small art gallery",
    "spent the afternoon reading on the balcony",
    "tried a new recipe with lentils",
    "went to the dentist for a check-up",
    "painted the fence in the back yard",
]
FILLER_PLACES = [
    "and it rained the whole time",
    "and felt tired afterwards",
    "before dinner",
    "with my headphones on",
    "and enjoyed it more than expected",
    "while the kids were at school",
]

ARMS = [
    "prompt",
    "kv:contiguous",
    "kv:contiguous-nolead",
    "kv:shared",
    "kv:shared@T",
    "hybrid",
    "prompt:top2",
    "none",
]
SYSTEM_HEAD = "You are a helpful assistant. Facts about the user:\n"
SYSTEM_TAIL = "Answer in one short sentence."
_STOP = "what is my the a an of do i am to in on did who which where for at with and name called"
STOPWORDS = frozenset(_STOP.split())


@dataclass
class Question:
    subject: str
    attribute: str
    question: str
    gold: str
    memories: list[Any]  # MemoryText, best-first
    gold_rank: int


@dataclass
class ArmStats:
    correct: list[bool] = field(default_factory=list)
    first_agree: list[bool] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)  # which questions this arm ran (controls run on a subsample)


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower().replace("'s", "")) if w not in STOPWORDS}


def rank(question: str, memories: list[Any], rng: random.Random) -> list[Any]:
    """Word-overlap retriever: most shared content words first, ties in random order."""
    q = words(question)
    keyed = [(-len(q & words(m.text)), rng.random(), i) for i, m in enumerate(memories)]
    return [memories[i] for _, _, i in sorted(keyed)]


def build_dataset(seed: int, subjects: int) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Profiles: subject -> {attribute: (value, MemoryText)} plus fillers; and all (subject, attribute) pairs."""
    from service.llm.kv import MemoryText

    rng = random.Random(seed)
    profiles: dict[str, dict[str, Any]] = {}
    for s in range(subjects):
        sid = f"subject-{s:03d}"
        used: set[str] = set()
        facts: dict[str, tuple[str, Any]] = {}
        for attr, template, _, pool in ATTRIBUTES:
            choices = [v for v in pool.split() if v not in used]
            value = rng.choice(choices)
            used.add(value)
            text = "- " + template.format(v=value) + "\n"
            facts[attr] = (value, MemoryText(f"{sid}/{attr}", text, "v1"))
        combos = [(d, a, p) for d in FILLER_DAYS for a in FILLER_ACTS for p in FILLER_PLACES]
        rng.shuffle(combos)
        fillers = [
            MemoryText(f"{sid}/filler-{i}", f"- {d} I {a} {p}.\n", "v1") for i, (d, a, p) in enumerate(combos[:80])
        ]
        profiles[sid] = {"facts": facts, "fillers": fillers}
    pairs = [(sid, attr) for sid in profiles for attr, *_ in ATTRIBUTES]
    return profiles, pairs


def make_question(profiles: dict[str, dict[str, Any]], sid: str, attr: str, k: int, rng: random.Random) -> Question:
    facts = profiles[sid]["facts"]
    question = next(q for a, _, q, _ in ATTRIBUTES if a == attr)
    gold_value, gold_mem = facts[attr]
    others = [m for a, (_, m) in facts.items() if a != attr]
    rng.shuffle(others)
    pool = others[: k - 1]
    if len(pool) < k - 1:
        pool += profiles[sid]["fillers"][: k - 1 - len(pool)]
    mems = rank(question, [gold_mem, *pool], rng)
    return Question(sid, attr, question, gold_value, mems, mems.index(gold_mem))


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def kl(p_logits: Any, q_logits: Any) -> float:
    import torch

    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return max(0.0, float((lp.exp() * (lp - lq)).sum()))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=10, help="subjects; questions = subjects x 30 attributes")
    ap.add_argument("--k", type=int, default=10, help="memories injected per accuracy question")
    ap.add_argument("--ttft-sizes", default="10,40,80")
    ap.add_argument("--ttft-questions", type=int, default=12, help="questions timed per size")
    ap.add_argument("--ttft-subjects", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--temperature", type=float, default=0.8, help="APE attention temperature of kv:shared@T")
    ap.add_argument("--hybrid-base", choices=["contiguous", "shared"], default="contiguous")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cache-dir", default="/tmp/sealmem-llm-cache")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--subsample-arms", default="prompt:top2,kv:contiguous-nolead", help="control/ablation arms")
    ap.add_argument("--subsample-every", type=int, default=4, help="run the subsampled arms on every n-th question")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import torch

    from service.llm.kv import KVEngine, KVRequest, KVSettings, Layout, split_chat_prompt
    from service.llm.loader import load_model

    t_start = time.perf_counter()
    loaded = load_model(cache_dir=Path(args.cache_dir), device="auto", torch_threads=args.threads)
    if loaded.device == "cpu":
        torch.set_num_threads(args.threads)

    def settings(**kw: Any) -> KVSettings:
        base: dict[str, Any] = dict(
            ram_max_bytes=4 * 1024**3, hybrid_text_memories=2, hybrid_kv_layout=args.hybrid_base, shared_temperature=1.0
        )
        return KVSettings(**{**base, **kw})  # kv:shared is plain (T = 1); kv:shared@T sets --temperature

    main_engine = KVEngine(loaded, settings())
    # The temperature arm shares the encoded memories (T is applied at assembly, never stored); the no-lead
    # ablation encodes differently, so it keeps its own cache (the store holds one encoding per memory).
    cache = main_engine.cache
    engines = {
        "kv:contiguous": main_engine,
        "kv:shared": main_engine,
        "hybrid": main_engine,
        "kv:contiguous-nolead": KVEngine(loaded, settings(encode_lead="")),
        "kv:shared@T": KVEngine(loaded, settings(shared_temperature=args.temperature), cache),
    }
    arms = args.arms.split(",")

    profiles, pairs = build_dataset(args.seed, args.subjects)
    rng = random.Random(args.seed + 1)
    questions = [make_question(profiles, sid, attr, args.k, rng) for sid, attr in pairs]
    ttft_sizes = [int(x) for x in args.ttft_sizes.split(",")]
    ttft_subjects = sorted(profiles)[: args.ttft_subjects]
    ttft_pairs = [p for p in pairs if p[0] in ttft_subjects]
    random.Random(args.seed + 2).shuffle(ttft_pairs)
    ttft_pairs = ttft_pairs[: args.ttft_questions]
    ttft_sets = {
        k: [
            make_question(profiles, sid, attr, k, random.Random(f"{args.seed}/{k}/{sid}/{attr}"))
            for sid, attr in ttft_pairs
        ]
        for k in ttft_sizes
    }

    def request(q: Question) -> Any:
        prefix, suffix = split_chat_prompt(
            loaded.tokenizer, system_head=SYSTEM_HEAD, system_tail=SYSTEM_TAIL, turns=[], user_message=q.question
        )
        return KVRequest("bench", q.subject, prefix, q.memories, suffix)

    # --- one-time encoding (batched), reported separately from TTFT --------------------------------------------
    unique: dict[str, Any] = {}
    for q in questions + [q for qs in ttft_sets.values() for q in qs]:
        for m in q.memories:
            unique.setdefault(m.id, (q, m))
    by_subject: dict[str, list[Any]] = {}
    for q, m in unique.values():
        by_subject.setdefault(q.subject, []).append(m)
    log(f"encoding {len(unique)} memories for {len(by_subject)} subjects")
    enc_tokens = sum(len(main_engine.tokenize(m.text)) for _, m in unique.values())
    t0 = time.perf_counter()
    prefix, suffix = split_chat_prompt(
        loaded.tokenizer, system_head=SYSTEM_HEAD, system_tail=SYSTEM_TAIL, turns=[], user_message="?"
    )
    for sid, mems in by_subject.items():
        main_engine.warm(KVRequest("bench", sid, prefix, mems, suffix))
    encode_s = time.perf_counter() - t0
    if "kv:contiguous-nolead" in arms:  # the ablation arm needs its own encodings (accuracy questions only)
        for sid in by_subject:
            mems = list({m.id: m for q in questions if q.subject == sid for m in q.memories}.values())
            engines["kv:contiguous-nolead"].warm(KVRequest("bench", sid, prefix, mems, suffix))
    # single-memory latency (the write path: encode one memory right after it is stored)
    probe = main_engine.prefix_kv(request(questions[0]).prefix)
    singles = []
    for q in questions[:10]:
        t1 = time.perf_counter()
        main_engine.encode_texts(probe, [q.memories[0].text])
        singles.append(time.perf_counter() - t1)
    log(f"encoded in {encode_s:.1f} s; RAM cache {cache.bytes_used / 1e6:.0f} MB")

    def run(arm: str, q: Question, max_new: int) -> Any:
        req = request(q)

        def stop(text: str, gold: str = q.gold.lower()) -> bool:
            return gold in text.lower() or "\n" in text.strip()

        kw: dict[str, Any] = dict(max_new_tokens=max_new, should_stop=stop, return_first_logits=True)
        if arm == "prompt":
            return main_engine.generate(req, injection="prompt", **kw)
        if arm == "none":
            return main_engine.generate(req, injection="none", **kw)
        if arm == "prompt:top2":  # control: only the two memories hybrid keeps as text, nothing else
            top2 = KVRequest(req.tenant_id, req.subject, req.prefix, list(req.memories)[:2], req.suffix)
            return main_engine.generate(top2, injection="prompt", **kw)
        layout: Layout = "hybrid" if arm == "hybrid" else "shared" if arm.startswith("kv:shared") else "contiguous"
        return engines[arm].generate(req, layout=layout, **kw)

    # --- accuracy at k ----------------------------------------------------------------------------------------
    acc: dict[str, ArmStats] = {a: ArmStats() for a in arms}
    log(f"accuracy: {len(questions)} questions x {len(arms)} arms, k={args.k}")
    t_acc = time.perf_counter()
    subsampled = set(args.subsample_arms.split(",")) if args.subsample_arms else set()
    for i, q in enumerate(questions):
        ref = None
        for arm in arms:
            if arm in subsampled and i % args.subsample_every:
                continue
            res = run(arm, q, args.max_new_tokens)
            assert res.encoded_memories == 0, f"memories must be pre-encoded ({arm})"
            st = acc[arm]
            st.index.append(i)
            st.correct.append(q.gold.lower() in res.text.lower())
            st.replies.append(res.text)
            if arm == "prompt":
                ref = res.first_logits
            if ref is not None and res.first_logits is not None:
                st.kl.append(kl(ref, res.first_logits))
                st.first_agree.append(int(ref.argmax()) == int(res.first_logits.argmax()))
        if (i + 1) % 30 == 0:
            summary = ", ".join(f"{a}={sum(s.correct) / len(s.correct):.2f}" for a, s in acc.items())
            log(f"{i + 1}/{len(questions)} {summary} ({time.perf_counter() - t_acc:.0f} s)")

    # --- TTFT at 10 / 40 / 80 memories (first token only; arms interleaved per question) ---------------------
    ttft_arms = [a for a in arms if a not in ("none", "prompt:top2", "kv:contiguous-nolead")]
    ttft: dict[int, dict[str, ArmStats]] = {}
    mem_tokens: dict[int, list[int]] = {}
    for k in ttft_sizes:
        ttft[k] = {a: ArmStats() for a in ttft_arms}
        mem_tokens[k] = []
        log(f"TTFT at {k} memories: {len(ttft_sets[k])} questions")
        for q in ttft_sets[k]:
            ref = None
            for arm in ttft_arms:
                res = run(arm, q, 1)
                assert res.encoded_memories == 0
                st = ttft[k][arm]
                st.ttft.append(res.timings.ttft_s)
                if arm == "prompt":
                    ref = res.first_logits
                    mem_tokens[k].append(res.memory_tokens)
                if ref is not None and res.first_logits is not None:
                    st.kl.append(kl(ref, res.first_logits))
                    st.first_agree.append(int(ref.argmax()) == int(res.first_logits.argmax()))

    # --- report -----------------------------------------------------------------------------------------------
    n = len(questions)
    accuracy = {}
    for arm, st in acc.items():
        c, m = sum(st.correct), len(st.correct)
        same = [acc["prompt"].correct[i] for i in st.index] if "prompt" in acc else []
        prompt_same = sum(same) / len(same) if same else None
        accuracy[arm] = {
            "questions": m,
            "accuracy": round(c / m, 4),
            "ci95": wilson(c, m),
            "vs_prompt": round((c / m) / prompt_same, 3) if prompt_same else None,
            "first_token_agreement": round(sum(st.first_agree) / len(st.first_agree), 4) if st.first_agree else None,
            "kl_mean": round(statistics.fmean(st.kl), 5) if st.kl else None,
            "kl_median": round(statistics.median(st.kl), 5) if st.kl else None,
        }
    ttft_report: dict[str, Any] = {}
    for k in ttft_sizes:
        prompt_med = statistics.median(ttft[k]["prompt"].ttft) if "prompt" in ttft[k] else None
        row: dict[str, Any] = {"memory_tokens_mean": round(statistics.fmean(mem_tokens[k]), 1)}
        for arm, st in ttft[k].items():
            med = statistics.median(st.ttft)
            row[arm] = {
                "ttft_ms_median": round(med * 1000, 1),
                "ttft_ms_min": round(min(st.ttft) * 1000, 1),
                "speedup_vs_prompt": round(prompt_med / med, 2) if prompt_med else None,
                "first_token_agreement": round(sum(st.first_agree) / len(st.first_agree), 3)
                if st.first_agree
                else None,
                "kl_mean": round(statistics.fmean(st.kl), 5) if st.kl else None,
            }
        ttft_report[str(k)] = row
    gold_ranks = [q.gold_rank for q in questions]
    examples = {arm: st.replies[:3] for arm, st in acc.items()}
    report = {
        "model": loaded.name,
        "device": loaded.device,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "questions": n,
        "memories_per_question": args.k,
        "max_new_tokens": args.max_new_tokens,
        "shared_temperature": args.temperature,
        "hybrid": f"top 2 memories as text, rest as KV ({args.hybrid_base})",
        "encode_lead": main_engine.settings.encode_lead,
        "gold_in_top2_rate": round(sum(r < 2 for r in gold_ranks) / n, 4),
        "gold_rank_mean": round(statistics.fmean(gold_ranks), 2),
        "accuracy": accuracy,
        "ttft": ttft_report,
        "encoding": {
            "memories": len(unique),
            "tokens": enc_tokens,
            "batched_total_s": round(encode_s, 2),
            "batched_ms_per_memory": round(encode_s / len(unique) * 1000, 2),
            "single_memory_ms_median": round(statistics.median(singles) * 1000, 1),
        },
        "memory_cost": {
            "bytes_per_token_stored": main_engine.bytes_per_token,
            "bytes_per_token_bf16": main_engine.bytes_per_token
            * 2
            // torch.tensor([], dtype=main_engine.storage_dtype).element_size(),
            "ram_cache_bytes": cache.bytes_used,
            "ram_cache_memories": len(cache),
        },
        "examples": examples,
        "runtime_s": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
