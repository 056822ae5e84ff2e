"""Load test of a real ``sealmem serve`` process: N concurrent httpx clients over a mixed workload for a fixed
duration, JSON on stdout.

    python bench/load.py [--clients 64] [--duration 300] [--mix search=0.6,add=0.3,chat=0.1]
                         [--real-llm-duration 30] [--real-llm-clients 4] [--embedder minilm|hashing]
                         [--set SETTING=VALUE ...] [--out result.json]
    python bench/load.py --driver wrk [--duration 30] [--variants onnx:0,torch:1] [--search-share 0.7]

``--driver wrk`` drives the server with ``wrk`` (Debian package ``wrk``; a C load generator that takes almost no
CPU from the server) and ``bench/wrk_mix.lua``: for each variant ``runtime:workers`` in ``--variants`` (embedding
runtime and ``SEALMEM_WORKERS``, optionally ``:SETTING=VALUE+...`` for other ``SEALMEM_*`` settings; the first
is the one measured, the others its baselines in the same run; the
default compares today's defaults, ONNX Runtime with one worker per core, with a single torch process), a fresh
server is seeded and measured three times --
the search/add mix, search only and add only -- each reporting req/s, p50/p90/p99 and errors; chat is off.

Phase ``fake_llm``: the server's chat uses its ``openai`` backend pointed at ``bench/fake_openai.py`` (started
here as its own process), so chat runs the whole real path — auth, retrieval, prompt, HTTP to the LLM,
streaming, turns stored, background distillation — with generation costing nothing. Phase ``real_llm``
(shorter, fewer clients; ``--real-llm-duration 0`` skips it): the server restarted on the same data with the
bundled SmolLM2 in process (``local`` backend; converted weights cached in ``--llm-cache``).

Before each phase the store is seeded (``--subjects`` x ``--memories``) and warmed up for ``--warmup`` s. Reported
per phase: requests/s (all, and search+add), p50/p95/p99 latency per operation in ms, errors (non-2xx or
transport errors, by kind), the server's RSS after warm-up and at the end (growth in %), and the targets of
issue 7 (64 clients, >= 200 req/s on search+add, p99 <= 250 ms, 0 errors, RSS growth < 10 % over a 5-minute
soak) with pass/fail. The load generator runs on the same machine and takes CPU from the server: the
``load_generator_cpu_s`` field says how much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import postgres  # noqa: E402

WORDS = [
    "dog",
    "cat",
    "Lisbon",
    "Porto",
    "jazz",
    "chess",
    "sushi",
    "hiking",
    "poetry",
    "tennis",
    "baking",
    "cycling",
    "opera",
    "pottery",
    "nurse",
    "teacher",
    "garden",
    "river",
    "mountain",
    "coffee",
    "tea",
    "bicycle",
    "guitar",
    "piano",
    "sister",
    "brother",
    "friend",
    "birthday",
    "holiday",
    "winter",
    "summer",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_of(pid: int) -> int:
    """Resident memory of a process and all its descendants (the worker processes of `sealmem serve`)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):  # ended meanwhile
                total += rss_of(int(child))
    return total


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of a process and all its descendants, ended ones included, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime, stime, and cutime, cstime: the children it has waited for (PostgreSQL's postmaster reaps a backend
    # when its connection closes, and the backend's time moves there)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):  # ended meanwhile
                total += cpu_seconds_of(int(child))
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def sentence(rng: random.Random) -> str:
    return f"I like {rng.choice(WORDS)} and {rng.choice(WORDS)}; my {rng.choice(WORDS)} is {rng.choice(WORDS)}."


class Server:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.command, "serve", "--port", str(self.port)], env=self.env, stdout=out, stderr=out, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"sealmem serve exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        raise SystemExit("sealmem serve did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()

    @property
    def rss(self) -> int:
        assert self.process is not None
        return rss_of(self.process.pid)

    @property
    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds_of(self.process.pid)


async def seed(url: str, key: str, subjects: list[str], per_subject: int, rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        for subject in subjects:
            items = [{"subject": subject, "text": sentence(rng)} for _ in range(per_subject)]
            for start in range(0, len(items), 100):
                response = await client.post("/v1/memories", json={"memories": items[start : start + 100]})
                response.raise_for_status()


async def run_phase(
    url: str, key: str, *, clients: int, duration: float, mix: dict[str, float], subjects: list[str], seed_: int
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    ops, weights = list(mix), list(mix.values())
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def one_client(n: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(seed_ * 1000 + n)
        session = f"bench-{n}"
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            subject = rng.choice(subjects)
            if op == "search":
                request = ("POST", "/v1/memories/search", {"subject": subject, "query": sentence(rng), "k": 10})
            elif op == "add":
                request = ("POST", "/v1/memories", {"subject": subject, "text": sentence(rng)})
            else:
                body = {"subject": subject, "session_id": session, "message": sentence(rng), "k": 5}
                request = ("POST", "/v1/chat", body)
            started = time.perf_counter()
            try:
                response = await client.request(request[0], request[1], json=request[2])
                ok = response.is_success
                kind = f"{op} {response.status_code}"
            except httpx.HTTPError as exc:
                ok, kind = False, f"{op} {type(exc).__name__}"
            if ok:
                latencies[op].append((time.perf_counter() - started) * 1000)
            else:
                errors[kind] += 1

    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        await asyncio.gather(*(one_client(n, client) for n in range(clients)))
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    per_op = {
        op: {
            "count": len(values),
            "per_s": round(len(values) / elapsed, 1),
            "p50_ms": round(percentile(values, 50), 1),
            "p95_ms": round(percentile(values, 95), 1),
            "p99_ms": round(percentile(values, 99), 1),
        }
        for op, values in sorted(latencies.items())
    }
    total = sum(len(v) for v in latencies.values())
    search_add = [v for op in ("search", "add") for v in latencies.get(op, [])]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "search_add_per_s": round(len(search_add) / elapsed, 1),
        "search_add_p99_ms": round(percentile(search_add, 99), 1),
        "operations": per_op,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "load_generator_cpu_s": round(
            (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime), 1
        ),
    }


def provision(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [*command, "tenant", "create", "bench"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    admin: str = json.loads(done.stdout.strip().splitlines()[-1])["admin_key"]
    return admin


def app_key(url: str, admin: str) -> str:
    response = httpx.post(
        url + "/v1/admin/keys", json={"role": "app", "name": "bench"}, headers={"Authorization": f"Bearer {admin}"}
    )
    response.raise_for_status()
    return str(response.json()["key"])


def phase(
    server: Server, key: str, args: argparse.Namespace, *, clients: int, duration: float, mix: dict[str, float]
) -> dict[str, Any]:
    subjects = [f"user-{i}" for i in range(args.subjects)]
    asyncio.run(run_phase(server.url, key, clients=clients, duration=args.warmup, mix=mix, subjects=subjects, seed_=1))
    rss_before = server.rss
    result = asyncio.run(
        run_phase(server.url, key, clients=clients, duration=duration, mix=mix, subjects=subjects, seed_=2)
    )
    rss_after = server.rss
    result["server_rss_mb_before"] = round(rss_before / 2**20, 1)
    result["server_rss_mb_after"] = round(rss_after / 2**20, 1)
    result["server_rss_growth_pct"] = round(100 * (rss_after - rss_before) / rss_before, 2)
    result["mix"] = mix
    return result


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in ("search", "add", "chat"):
            raise SystemExit(f"unknown operation {name!r} in --mix")
        mix[name] = float(weight)
    return mix


def worker_connections(server: Server) -> list[int]:
    """Client connections each worker process of the server holds now, most first (the kernel hands a new
    connection to whichever worker accepts it first; a worker keeps it for as long as the client does)."""
    import psutil

    assert server.process is not None
    held = []
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.Error):
            connections = child.net_connections(kind="tcp")
            held.append(sum(1 for c in connections if c.laddr.port == server.port and c.status == "ESTABLISHED"))
    return sorted((n for n in held if n), reverse=True)


def server_side(log: Path, start: float, end: float) -> dict[str, Any]:
    """Latency as the server measured it (its access log, ``duration_ms``) for requests that ended between
    ``start`` and ``end``: per route, and per worker process (the mean shows how unevenly loaded they were)."""
    by_route: dict[str, list[float]] = defaultdict(list)
    by_worker: dict[int, list[float]] = defaultdict(list)
    with contextlib.suppress(FileNotFoundError), log.open() as lines:
        for line in lines:
            if '"duration_ms"' not in line:
                continue
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["ts"]).timestamp()
            if start <= at <= end and entry["route"] in ("/v1/memories", "/v1/memories/search"):
                by_route[entry["route"]].append(entry["duration_ms"])
                by_worker[entry["pid"]].append(entry["duration_ms"])

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "requests": len(values),
            "mean_ms": round(sum(values) / len(values), 1),
            "p50_ms": round(percentile(values, 50), 1),
            "p99_ms": round(percentile(values, 99), 1),
        }

    return {
        "by_route": {route: summary(values) for route, values in sorted(by_route.items())},
        "by_worker": sorted((summary(values) for values in by_worker.values()), key=lambda s: -s["requests"]),
    }


def wrk_run(url: str, key: str, args: argparse.Namespace, *, share: float, duration: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "SM_KEY": key,
        "SM_PREFIX": "user-",
        "SM_SUBJECTS": str(args.subjects),
        "SM_SEARCH_SHARE": str(share),
    }
    command = [
        "wrk",
        "-t2",
        f"-c{args.clients}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "-s",
        str(ROOT / "bench" / "wrk_mix.lua"),
        url,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 120, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["errors"] = result["non2xx"] + result["socket_errors"]
    return result


def profiler(
    server: Server, args: argparse.Namespace, folder: Path, phase: str, duration: float
) -> subprocess.Popen[bytes] | None:
    """With ``--profile``: py-spy samples the server and its workers through the mix phase (collapsed stacks)."""
    if not args.profile or phase != "mix":
        return None
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    assert server.process is not None
    command = ["py-spy", "record", "--pid", str(server.process.pid), "--subprocesses", "--format", "raw"]
    command += ["--rate", "200", "--duration", str(max(1, round(duration) - 2)), "--nonblocking"]
    command += ["--output", str(folder / f"{phase}.collapsed")]
    command += {"gil": ["--gil"], "idle": ["--idle", "--threads"]}.get(args.profile, [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


PROFILE_BUCKETS = (
    # (bucket, a substring of a frame); a sample goes to the first bucket that any of its frames matches
    ("embedding", "onnxruntime"),
    ("embedding", "embedder.py"),
    ("tokenizer", "tokenizers"),
    ("presidio", "presidio"),
    ("spacy", "spacy"),
    ("audit", "audit.py"),
    ("crypto", "crypto.py"),
    ("lexical", "lexical"),
    ("faiss", "faiss"),
    ("sqlalchemy", "sqlalchemy"),
    ("pydantic", "pydantic"),
    ("http", "h11"),
    ("http", "uvicorn"),
    ("http", "starlette"),
    ("fastapi", "fastapi"),
)


IDLE_LEAVES = ("select (selectors.py", "epoll", "_worker (concurrent", "wait (threading")


def collapsed_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, root first; sample count) of each line of py-spy's raw (collapsed) output."""
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit():
            yield stack.split(";"), int(count_text)


# Threads by name (py-spy --threads), the first prefix that matches; the rest are "other".
THREAD_ROLES = (
    ("request threads", "AnyIO worker thread"),
    ("audit writer", "sealmem-audit-writer"),
    ("ahead (embedding)", "sealmem-ahead"),
    ("main threads (event loops, supervisor)", "MainThread"),
)
OWN_CODE = ("(memory_store/", "(service/")


def summarise_waits(path: Path, top: int = 8) -> dict[str, Any]:
    """``--profile idle``: every sample of every thread, sleeping or not, by the thread's role. Per role: its
    threads, its samples, and where they were (the leaf function and the nearest frame of Sealmem's own code in
    another file, so a wait for a lock shows the statement that waits), as shares of the role's samples."""
    samples: Counter[str] = Counter()
    threads: dict[str, set[str]] = {}
    where: dict[str, Counter[str]] = {}
    if not path.exists():
        return {"error": "no profile written"}
    for frames, count in collapsed_stacks(path):
        label = next((f for f in frames if f.startswith("thread (")), "")  # after the process frames
        thread_id, _, thread_name = label.partition("): ")
        role = next((r for r, prefix in THREAD_ROLES if thread_name.startswith(prefix)), "other")
        samples[role] += count
        threads.setdefault(role, set()).add(thread_id)
        leaf = frames[-1]
        leaf_file = leaf.rpartition("(")[2].partition(":")[0]
        own = next(
            (f for f in reversed(frames[:-1]) if any(m in f for m in OWN_CODE) and f"({leaf_file}:" not in f), ""
        )
        spot = f"{leaf} <- {own}" if own else leaf
        where.setdefault(role, Counter())[spot] += count
    return {
        "mode": "idle: all samples of every thread, by thread role",
        "collapsed_stacks": str(path),
        "roles": {
            role: {
                "threads": len(threads[role]),
                "samples": n,
                "where": [[spot, round(k / n, 3)] for spot, k in where[role].most_common(top)],
            }
            for role, n in samples.most_common()
        },
    }


def summarise_profile(path: Path) -> dict[str, Any]:
    """Share of busy samples per bucket (first match wins, leaf first) and the top 15 leaf functions."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"error": "no profile written"}
    for frames, count in collapsed_stacks(path):
        if any(idle in frames[-1] for idle in IDLE_LEAVES):
            continue
        total += count
        leaves[frames[-1]] += count
        for frame in reversed(frames):
            bucket = next((name for name, needle in PROFILE_BUCKETS if needle in frame), None)
            if bucket is not None:
                buckets[bucket] += count
                break
        else:
            buckets["other"] += count
    return {
        "busy_samples": total,
        "collapsed_stacks": str(path),
        "share": {name: round(n / max(total, 1), 3) for name, n in buckets.most_common()},
        "top_leaves": [[frame, round(n / max(total, 1), 3)] for frame, n in leaves.most_common(15)],
    }


def embedding_calls_per_pass(url: str) -> float | None:
    """Small embedding calls per forward pass since start, from /metrics of the worker process that answers
    (each worker counts its own): 1.0 means no call was merged with another. None without coalescing."""
    counts: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("sealmem_embedding_calls_total", "sealmem_embedding_passes_total"):
            counts[name] = float(value)
    passes = counts.get("sealmem_embedding_passes_total")
    return round(counts["sealmem_embedding_calls_total"] / passes, 2) if passes else None


def _postgres(work: Path, shared_buffers: str = postgres.SHARED_BUFFERS) -> tuple[Callable[[str], str], int]:
    """A PostgreSQL 16 + pgvector server (:mod:`bench.postgres`) for this run; returns a function that creates a
    fresh database and gives its SQLAlchemy URL, and the server's postmaster pid (for its CPU time)."""
    server, base = postgres.start(work / "pg", shared_buffers)
    return (lambda name: postgres.database(base, f"bench_{name}")), postgres.postmaster_pid(server)


def wrk_mode(args: argparse.Namespace, base_env: dict[str, str], command: list[str], work: Path) -> dict[str, Any]:
    """Each variant on a fresh, seeded server: warm-up, then the mix, search only and add only."""
    if shutil.which("wrk") is None:
        raise SystemExit("--driver wrk needs the wrk load generator (Debian: apt-get install wrk)")
    report: dict[str, Any] = {"database": args.database}
    variants = args.variants.split(",")
    databases, postmaster = _postgres(work, args.pg_shared_buffers) if args.database != "sqlite" else (None, None)
    for number, variant in enumerate(variants, start=1):
        runtime, _, rest = variant.partition(":")
        workers, _, extra = rest.partition(":")
        folder = work / f"{number}-{re.sub(r'[^A-Za-z0-9_.-]', '-', variant)}"
        env = {
            **base_env,
            "SEALMEM_DATA_DIR": str(folder / "data"),
            "SEALMEM_EMBEDDING_RUNTIME": runtime,
            "SEALMEM_WORKERS": workers or "0",
            "SEALMEM_CHAT_ENABLED": "false",
        }
        env.update(setting_env(filter(None, extra.split("+"))))
        if databases is not None:
            env["SEALMEM_DATABASE_URL"] = databases(f"{number}_{variant.replace(':', '_')}")
            env["SEALMEM_VECTOR_BACKEND"] = "pgvector" if args.database == "pgvector" else "faiss"
        folder.mkdir()
        server = Server(command, env, folder / "serve.log")
        try:
            admin = provision(command, env)
            server.start()
            key = app_key(server.url, admin)
            subjects = [f"user-{i}" for i in range(args.subjects)]
            asyncio.run(seed(server.url, key, subjects, args.memories, random.Random(0)))
            wrk_run(server.url, key, args, share=args.search_share, duration=args.warmup)
            phases: dict[str, Any] = {}
            windows: dict[str, tuple[float, float]] = {}
            for phase, share, duration in (
                ("mix", args.search_share, args.duration),
                ("search", 1.0, args.duration / 2),
                ("add", 0.0, args.duration / 2),
            ):
                cpu_before = server.cpu_seconds
                database_cpu_before = cpu_seconds_of(postmaster) if postmaster is not None else 0.0
                spy = profiler(server, args, folder, phase, duration)
                held: list[list[int]] = []
                sampler = threading.Timer(duration / 2, lambda: held.append(worker_connections(server)))  # noqa: B023 (joined below)
                sampler.start()
                started = time.time()
                phases[phase] = wrk_run(server.url, key, args, share=share, duration=duration)
                windows[phase] = (started, time.time())
                sampler.join()
                phases[phase]["connections_per_worker"] = held[0] if held else None
                if spy is not None:
                    spy.wait(timeout=120)
                    summarise = summarise_waits if args.profile == "idle" else summarise_profile
                    phases[phase]["profile"] = summarise(folder / f"{phase}.collapsed")
                # The server's own CPU per request: steadier than req/s when other jobs share the machine.
                phases[phase]["server_cpu_ms_per_request"] = round(
                    (server.cpu_seconds - cpu_before) * 1000 / max(phases[phase]["requests"], 1), 2
                )
                if postmaster is not None:  # PostgreSQL's own processes (backends, WAL writer, checkpointer)
                    phases[phase]["database_cpu_ms_per_request"] = round(
                        (cpu_seconds_of(postmaster) - database_cpu_before) * 1000 / max(phases[phase]["requests"], 1),
                        2,
                    )
            runs = sum(1 for seen in variants[: number - 1] if seen == variant)
            name = variant if runs == 0 else f"{variant} (run {runs + 1})"
            report[name] = {
                **phases,
                "server_rss_mb": round(server.rss / 2**20, 1),
                "embedding_calls_per_pass": embedding_calls_per_pass(server.url),
            }
        finally:
            server.stop()
        for phase, (start, end) in windows.items():
            report[name][phase]["server_side"] = server_side(folder / "serve.log", start, end)
    measured, *baselines = variants
    for baseline in dict.fromkeys(b for b in baselines if b != measured):  # repeats: the first run
        report[f"{measured}_vs_{baseline}_mix_rps"] = round(
            report[measured]["mix"]["rps"] / max(report[baseline]["mix"]["rps"], 1e-9), 2
        )
        report[f"{measured}_vs_{baseline}_mix_cpu_per_request"] = round(
            report[measured]["mix"]["server_cpu_ms_per_request"]
            / max(report[baseline]["mix"]["server_cpu_ms_per_request"], 1e-9),
            2,
        )
    mix = report[measured]["mix"]
    report["targets"] = {
        "clients_64": args.clients >= 64,
        "mix_200_per_s": mix["rps"] >= 200,
        "p99_250_ms": mix["p99_ms"] <= 250,
        "zero_errors": all(report[v][p]["errors"] == 0 for v in variants for p in ("mix", "search", "add")),
    }
    return report


def setting_env(settings: Iterable[str]) -> dict[str, str]:
    """``name=value`` settings (without ``SEALMEM_``) as the server's environment variables."""
    env: dict[str, str] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        env[f"SEALMEM_{name.upper()}"] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["httpx", "wrk"], default="httpx")
    parser.add_argument(
        "--variants",
        default="onnx:0,torch:1",
        help="wrk driver: runtime:workers[:SETTING=VALUE+...] per server (SETTING without SEALMEM_, e.g. "
        "onnx:1:embedding_coalesce_max=1), the first one measured, the others its baselines.",
    )
    parser.add_argument("--search-share", type=float, default=0.7, help="wrk driver: share of searches in the mix.")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300, help="Seconds of the measured fake-LLM phase.")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--mix", default="search=0.6,add=0.3,chat=0.1")
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--memories", type=int, default=40, help="Seeded memories per subject.")
    parser.add_argument(
        "--embedder",
        choices=["minilm", "hashing"],
        default="minilm",
        help="minilm: the bundled model (as deployed); hashing: isolates the service's own cost.",
    )
    parser.add_argument("--real-llm-duration", type=float, default=30, help="0 skips the SmolLM2 phase.")
    parser.add_argument("--real-llm-clients", type=int, default=4)
    parser.add_argument("--real-llm-mix", default="search=0.5,add=0.3,chat=0.2")
    parser.add_argument("--llm-cache", default=os.environ.get("SEALMEM_TEST_LLM_CACHE", "/tmp/sealmem-llm-cache"))
    parser.add_argument("--torch-threads", type=int, default=1, help="Embedder intra-op threads.")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="httpx driver: a setting of the server (SETTING without SEALMEM_, e.g. prepare_niceness=0); repeatable. "
        "The wrk driver takes settings per variant instead (--variants).",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres", "pgvector"],
        default="sqlite",
        help="wrk driver: SQLite + FAISS (default), or a PostgreSQL started with pgserver, with FAISS or pgvector.",
    )
    postgres.add_argument(parser)
    parser.add_argument(
        "--profile",
        choices=["busy", "gil", "idle"],
        help="wrk driver: py-spy samples the server through each variant's mix phase, every busy thread (busy) or "
        "only the one holding the GIL (gil: where the Python-bound time goes); the report gives the share of "
        "samples per part (embedding, SQL, audit, HTTP, ...) and keeps the collapsed stacks. idle: every thread, "
        "sleeping or not, by role (request threads, audit writer, embedding, main threads), with where each role's "
        "time goes: the waits (for a lock, a commit, the interpreter) that the busy profile leaves out.",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sealmem-load-"))
    data_dir, secrets_dir = work / "data", work / "secrets"
    secrets_dir.mkdir()
    from memory_store.crypto import encode_key, generate_key, write_secret_file

    write_secret_file(secrets_dir / "master.key", encode_key(generate_key()))
    write_secret_file(secrets_dir / "token.secret", secrets.token_urlsafe(48))
    llm_port = free_port()
    llm = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_openai.py"), "--port", str(llm_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update(
        {
            "SEALMEM_DATA_DIR": str(data_dir),
            "SEALMEM_MASTER_KEY_FILE": str(secrets_dir / "master.key"),
            "SEALMEM_TOKEN_SECRET_FILE": str(secrets_dir / "token.secret"),
            "SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE": "0",
            "SEALMEM_RATE_LIMIT_KEY_PER_MINUTE": "0",
            "SEALMEM_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE": "0",
            "SEALMEM_LOG_LEVEL": args.log_level,
            "SEALMEM_EMBEDDING_THREADS": str(args.torch_threads),
            "SEALMEM_LLM_BACKEND": "openai",
            "SEALMEM_OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "SEALMEM_OPENAI_MODEL": "bench-fake",
            "SEALMEM_LLM_CONCURRENCY": "16",
            "SEALMEM_LLM_MAX_NEW_TOKENS": "32",
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    env.update(setting_env(args.set))
    command = (
        [sys.executable, "-m", "tests.proofs.sealmem_hashing"]
        if args.embedder == "hashing"
        else [sys.executable, "-c", "from service.cli import main; main()"]
    )
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "python": platform.python_version()},
        "embedder": args.embedder,
        "seeded": {"subjects": args.subjects, "memories_per_subject": args.memories},
        "settings": args.set,
    }
    if args.driver == "wrk":
        llm.terminate()
        llm.wait(timeout=30)
        report["wrk"] = wrk_mode(args, env, command, work)
        report["machine"]["load_avg_at_end"] = os.getloadavg()
        print(json.dumps(report, indent=2))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    server = Server(command, env, work / "serve.log")
    try:
        admin = provision(command, env)
        server.start()
        key = app_key(server.url, admin)
        asyncio.run(seed(server.url, key, [f"user-{i}" for i in range(args.subjects)], args.memories, random.Random(0)))
        fake = phase(server, key, args, clients=args.clients, duration=args.duration, mix=parse_mix(args.mix))
        report["fake_llm"] = fake
        report["targets"] = {
            "clients_64": args.clients >= 64,
            "search_add_200_per_s": fake["search_add_per_s"] >= 200,
            "p99_250_ms": all(op["p99_ms"] <= 250 for op in fake["operations"].values()),
            "zero_errors": fake["errors"] == 0,
            "rss_growth_under_10_pct": fake["server_rss_growth_pct"] < 10,
            "soak_5_min": args.duration >= 300,
        }
        if args.real_llm_duration > 0:
            server.stop()
            server.env = {
                **env,
                "SEALMEM_LLM_BACKEND": "local",
                "SEALMEM_LLM_CACHE_DIR": args.llm_cache,
                "SEALMEM_LLM_CONCURRENCY": "1",
                "SEALMEM_LLM_MAX_NEW_TOKENS": "16",
            }
            Path(args.llm_cache).mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            server.start()
            report["real_llm_start_s"] = round(time.monotonic() - started, 1)
            report["real_llm"] = phase(
                server,
                key,
                args,
                clients=args.real_llm_clients,
                duration=args.real_llm_duration,
                mix=parse_mix(args.real_llm_mix),
            )
    finally:
        server.stop()
        llm.terminate()
        llm.wait(timeout=30)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
