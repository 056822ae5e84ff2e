"""Two ``sealmem serve`` replicas on one PostgreSQL under the wrk 70/30 search/add mix: throughput of each and of
both together, and cross-replica staleness (how long after a write is acknowledged by one replica it is found by a
search on the other). JSON on stdout.

    python bench/replicas.py [--backend faiss|pgvector] [--duration 30] [--connections 32]
                             [--subjects 50] [--memories 40] [--out result.json]

One PostgreSQL 16 + pgvector (pgserver, started here) holds the data; a tenant and an app key are provisioned and
``--subjects`` x ``--memories`` memories seeded (as ``bench/load.py --driver wrk`` does). Two servers (one worker
each, rate limits off, their own data directory for index files, the same master key) run on that database with
``SEALMEM_VECTOR_BACKEND`` from ``--backend``: ``faiss`` (each replica keeps its own FAISS index and follows the
``vector_changes`` log) or ``pgvector`` (vectors in PostgreSQL).

After a warm-up of both replicas, the staleness probe runs alone (``--idle-probe`` s, the baseline), then under
load: one ``wrk`` per replica (``--connections`` each, ``bench/wrk_mix.lua``) for ``--duration`` s. The probe starts
one write every ``--probe-interval`` s (at most ``--probe-inflight`` at a time; a tick finding none free is
counted as skipped): it adds a memory with a unique text (``probe <hex> zebra-quartz``) for its own subject through
one replica (alternately A and B), notes when the add was acknowledged, then searches for that text on the OTHER
replica (k=5) every ``--probe-poll`` s (after each answer) until the new memory's id is among the results or
``--probe-timeout`` s pass. Staleness = time the successful search answered - time the add was acknowledged, so it
includes that search's own latency on the loaded replica (``first_poll_share`` says how often the first search
already found it: then the write was visible as soon as it was acknowledged).

Targets (issue 16): both replicas together >= 100 req/s with p99 <= 500 ms (the higher of the two replicas' p99s)
and 0 errors; staleness p99 under load <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import postgres  # noqa: E402
from bench.load import Server, _postgres, app_key, percentile, provision, seed, wrk_run  # noqa: E402

PROBE_SUBJECT = "replica-probe"


def stats_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p95_ms": round(percentile(values, 95) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


class Probe:
    """Writes through one replica, searches through the other until found; see the module docstring."""

    def __init__(self, urls: tuple[str, str], key: str, args: argparse.Namespace) -> None:
        limits = httpx.Limits(max_connections=args.probe_inflight + 2, max_keepalive_connections=args.probe_inflight)
        headers = {"Authorization": f"Bearer {key}"}
        self.clients = [httpx.Client(base_url=url, headers=headers, timeout=60, limits=limits) for url in urls]
        self.interval, self.poll, self.timeout = args.probe_interval, args.probe_poll, args.probe_timeout
        self.inflight = args.probe_inflight
        self.stop = threading.Event()
        self.n = 0

    def close(self) -> None:
        self.stop.set()
        for client in self.clients:
            client.close()

    def _one(self, n: int, out: dict[str, Any]) -> None:
        writer, reader = (self.clients[0], self.clients[1]) if n % 2 == 0 else (self.clients[1], self.clients[0])
        text = f"probe {uuid.uuid4().hex} zebra-quartz"
        try:
            response = writer.post("/v1/memories", json={"subject": PROBE_SUBJECT, "text": text})
        except httpx.HTTPError as exc:
            out["errors"].append(f"add {type(exc).__name__}")
            return
        ack = time.perf_counter()
        if not response.is_success:
            out["errors"].append(f"add {response.status_code}")
            return
        out["add_s"].append(ack - out["sent"].pop(n))
        memory_id = response.json()["id"]
        polls = 0
        while not self.stop.is_set():
            polls += 1
            sent = time.perf_counter()
            try:
                found = reader.post("/v1/memories/search", json={"subject": PROBE_SUBJECT, "query": text, "k": 5})
                ok = found.is_success
                if not ok:
                    out["errors"].append(f"search {found.status_code}")
            except httpx.HTTPError as exc:
                ok = False
                out["errors"].append(f"search {type(exc).__name__}")
            answered = time.perf_counter()
            if ok and memory_id in {hit["id"] for hit in found.json()["results"]}:
                out["staleness_s"].append(answered - ack)
                out["before_s"].append(sent - ack)
                out["polls"].append(polls)
                out["direction"]["a_to_b" if n % 2 == 0 else "b_to_a"].append(answered - ack)
                return
            if answered - ack >= self.timeout:
                out["timeouts"] += 1
                return
            time.sleep(self.poll)

    def run(self, duration: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "staleness_s": [],
            "before_s": [],
            "polls": [],
            "add_s": [],
            "errors": [],
            "timeouts": 0,
            "skipped": 0,
            "sent": {},
            "direction": {"a_to_b": [], "b_to_a": []},
        }
        free = threading.BoundedSemaphore(self.inflight)

        def task(n: int) -> None:
            try:
                self._one(n, out)
            finally:
                free.release()

        started = time.perf_counter()
        ticks = 0
        with concurrent.futures.ThreadPoolExecutor(self.inflight, thread_name_prefix="probe") as pool:
            futures = []
            while not self.stop.is_set():
                due = started + ticks * self.interval
                if due - started >= duration:
                    break
                time.sleep(max(0.0, due - time.perf_counter()))
                ticks += 1
                if not free.acquire(blocking=False):
                    out["skipped"] += 1
                    continue
                n, self.n = self.n, self.n + 1
                out["sent"][n] = time.perf_counter()
                futures.append(pool.submit(task, n))
            for future in futures:
                future.result()
        staleness, polls = out["staleness_s"], out["polls"]
        return {
            "seconds": round(time.perf_counter() - started, 1),
            "probes": ticks - out["skipped"],
            "found": len(staleness),
            "timeouts": out["timeouts"],
            "skipped_ticks": out["skipped"],
            "errors": len(out["errors"]),
            "errors_by_kind": {kind: out["errors"].count(kind) for kind in sorted(set(out["errors"]))},
            "staleness": stats_ms(staleness),
            "staleness_by_direction": {
                way: {"count": len(values), **stats_ms(values)} for way, values in out["direction"].items()
            },
            # ack -> sending the search that found it (0 when the first search did): staleness less that
            # search's own latency.
            "ack_to_finding_search_sent": stats_ms(out["before_s"]),
            "first_poll_share": round(sum(1 for p in polls if p == 1) / len(polls), 3) if polls else None,
            "max_polls": max(polls) if polls else None,
            "probe_add_latency": stats_ms(out["add_s"]),
        }


def log_warnings(log: Path) -> dict[str, int]:
    """WARNING and ERROR lines of a server's JSON log, counted by message (FAISS rebuilds, lexical failures...)."""
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            message = f"{entry['level']} {entry.get('logger')}: {str(entry.get('message'))[:160]}"
            found[message] = found.get(message, 0) + 1
    return found


def start(server: Server, timeout: float = 300) -> None:
    """Start ``server``; if it is not ready in time, show where it hangs (py-spy, when installed) before failing."""
    try:
        server.start(timeout=timeout)
    except SystemExit:
        if server.process is not None and server.process.poll() is None and shutil.which("py-spy"):
            subprocess.run(["py-spy", "dump", "--pid", str(server.process.pid)], check=False, timeout=60)
        raise


def load_both(servers: list[Server], key: str, probe: Probe, args: argparse.Namespace) -> dict[str, Any]:
    """wrk on both replicas at once for ``--duration`` s, the probe running meanwhile."""
    wrk_args = argparse.Namespace(clients=args.connections, subjects=args.subjects)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        runs = [
            pool.submit(wrk_run, s.url, key, wrk_args, share=args.search_share, duration=args.duration) for s in servers
        ]
        time.sleep(min(1.0, args.duration / 10))  # connections open first
        staleness = pool.submit(probe.run, max(1.0, args.duration - 2 * min(1.0, args.duration / 10)))
        a, b = (run.result() for run in runs)
        under_load = staleness.result()
    rps = a["rps"] + b["rps"]
    return {
        "replica_a": a,
        "replica_b": b,
        "combined": {
            "requests": a["requests"] + b["requests"],
            "rps": round(rps, 1),
            "p50_ms_max": max(a["p50_ms"], b["p50_ms"]),
            "p99_ms_max": max(a["p99_ms"], b["p99_ms"]),
            "errors": a["errors"] + b["errors"],
        },
        "staleness_under_load": under_load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["faiss", "pgvector"], default="faiss")
    postgres.add_argument(parser)
    parser.add_argument("--duration", type=float, default=30, help="Seconds of load (both replicas at once).")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections per replica.")
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--memories", type=int, default=40, help="Seeded memories per subject.")
    parser.add_argument("--search-share", type=float, default=0.7)
    parser.add_argument("--warmup", type=float, default=5, help="Seconds of wrk on both replicas before measuring.")
    parser.add_argument("--idle-probe", type=float, default=10, help="Seconds of the probe alone (baseline).")
    parser.add_argument("--probe-interval", type=float, default=0.2)
    parser.add_argument("--probe-poll", type=float, default=0.02)
    parser.add_argument("--probe-timeout", type=float, default=10)
    parser.add_argument("--probe-inflight", type=int, default=16)
    parser.add_argument("--runtime", default="onnx", help="SEALMEM_EMBEDDING_RUNTIME of both replicas.")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A further setting of both replicas, e.g. request_threads=1 (SEALMEM_REQUEST_THREADS); repeatable.",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    extra = {}
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            parser.error(f"--set takes NAME=VALUE, not {setting!r}")
        extra[f"SEALMEM_{name.upper()}"] = value
    if shutil.which("wrk") is None:
        raise SystemExit("needs the wrk load generator (Debian: apt-get install wrk)")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run the cleanup below

    signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="sealmem-replicas-"))
    servers: list[Server] = []
    probe: Probe | None = None
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "python": platform.python_version()},
    }
    try:
        from memory_store.crypto import encode_key, generate_key, write_secret_file

        secrets_dir = work / "secrets"
        secrets_dir.mkdir()
        write_secret_file(secrets_dir / "master.key", encode_key(generate_key()))
        write_secret_file(secrets_dir / "token.secret", secrets.token_urlsafe(48))
        databases, _ = _postgres(work, args.pg_shared_buffers)
        database_url = databases("replicas")
        base = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
        base.update(
            {
                "SEALMEM_DATABASE_URL": database_url,
                "SEALMEM_VECTOR_BACKEND": args.backend,
                "SEALMEM_MASTER_KEY_FILE": str(secrets_dir / "master.key"),
                "SEALMEM_TOKEN_SECRET_FILE": str(secrets_dir / "token.secret"),
                "SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE": "0",
                "SEALMEM_RATE_LIMIT_KEY_PER_MINUTE": "0",
                "SEALMEM_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE": "0",
                "SEALMEM_LOG_LEVEL": args.log_level,
                "SEALMEM_EMBEDDING_THREADS": "1",
                "SEALMEM_EMBEDDING_RUNTIME": args.runtime,
                "SEALMEM_WORKERS": "1",
                "SEALMEM_CHAT_ENABLED": "false",
                "PYTHONPATH": str(ROOT),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                **extra,
            }
        )
        report["settings"] = extra
        command = [sys.executable, "-c", "from service.cli import main; main()"]
        for name in ("a", "b"):
            folder = work / name
            (folder / "data").mkdir(parents=True, mode=0o700)
            servers.append(Server(command, {**base, "SEALMEM_DATA_DIR": str(folder / "data")}, folder / "serve.log"))
        admin = provision(command, servers[0].env)
        for n, server in enumerate(servers):  # one after the other: the second finds the schema in place
            if n:  # the ONNX export of the first, so the second does not export it again
                models = Path(server.env["SEALMEM_DATA_DIR"]) / "models"
                shutil.copytree(Path(servers[0].env["SEALMEM_DATA_DIR"]) / "models", models, dirs_exist_ok=True)
            start(server)
        key = app_key(servers[0].url, admin)
        asyncio.run(
            seed(servers[0].url, key, [f"user-{i}" for i in range(args.subjects)], args.memories, random.Random(0))
        )
        if args.warmup > 0:
            wrk_args = argparse.Namespace(clients=args.connections, subjects=args.subjects)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                for done in [
                    pool.submit(wrk_run, s.url, key, wrk_args, share=args.search_share, duration=args.warmup)
                    for s in servers
                ]:
                    done.result()
        probe = Probe((servers[0].url, servers[1].url), key, args)
        idle = probe.run(args.idle_probe)
        measured = load_both(servers, key, probe, args)
        report["config"] = {
            "backend": args.backend,
            "database": "postgresql 16 (pgserver) + pgvector, on this machine",
            "replicas": 2,
            "workers_per_replica": 1,
            "connections_per_replica": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "search_share": args.search_share,
            "seeded": {"subjects": args.subjects, "memories_per_subject": args.memories},
            "embedding_runtime": args.runtime,
            "probe": {
                "interval_s": args.probe_interval,
                "poll_s": args.probe_poll,
                "timeout_s": args.probe_timeout,
                "max_inflight": args.probe_inflight,
                "k": 5,
                "idle_seconds": args.idle_probe,
            },
        }
        report["load"] = {k: v for k, v in measured.items() if k != "staleness_under_load"}
        report["staleness"] = {"idle": idle, "under_load": measured["staleness_under_load"]}
        report["server_rss_mb"] = {name: round(s.rss / 2**20, 1) for name, s in zip("ab", servers, strict=True)}
        report["server_log_warnings"] = {name: log_warnings(s.log) for name, s in zip("ab", servers, strict=True)}
        combined, loaded = measured["combined"], measured["staleness_under_load"]
        report["targets"] = {
            "connections_64": 2 * args.connections >= 64,
            "combined_100_per_s": combined["rps"] >= 100,
            "p99_500_ms": combined["p99_ms_max"] <= 500,
            "zero_errors": combined["errors"] == 0 and loaded["errors"] == 0,
            "staleness_p99_1_s": loaded["found"] > 0
            and loaded["timeouts"] == 0
            and (loaded["staleness"]["p99_ms"] or 0) <= 1000,
        }
    except BaseException:
        print(f"failed; logs and data kept in {work}", file=sys.stderr)
        raise
    finally:
        if probe is not None:
            probe.close()
        for server in servers:
            server.stop()
        from pgserver.postgres_server import PostgresServer

        pg_server = PostgresServer._instances.get((work / "pg").resolve())
        if pg_server is not None:  # stopped at exit anyway (cleanup_mode "stop"); now, before the report
            pg_server.cleanup()
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
