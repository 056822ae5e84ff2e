"""`sealmem serve` with several worker processes on the embedded default (SQLite + FAISS files shared by the
workers): every write acknowledged by one worker is found by a search that any worker answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import bearer

pytestmark = pytest.mark.slow

COMMAND = [sys.executable, "-c", "from service.cli import main; main()"]


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _workers(pid: int) -> set[int]:
    """Worker processes of the uvicorn supervisor (its multiprocessing resource tracker excluded)."""
    return {child for child in _children(pid) if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()}


def _serve_two_workers(tmp_path: Path, port: int, **settings: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``sealmem serve`` with two workers on ``port`` and a tenant: (the server, its admin key, its log), once both
    workers are ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update({"SEALMEM_DATA_DIR": str(tmp_path / "data"), "SEALMEM_WORKERS": "2", "SEALMEM_CHAT_ENABLED": "false"})
    env.update({f"SEALMEM_{name.upper()}": value for name, value in settings.items()})
    created = subprocess.run(
        [*COMMAND, "tenant", "create", "acme"], env=env, capture_output=True, text=True, timeout=300
    )
    assert created.returncode == 0, created.stderr
    admin = json.loads(created.stdout.strip().splitlines()[-1])["admin_key"]
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while log_path.read_text().count("sealmem ready") < 2:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"workers did not become ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    return server, admin, log_path


def test_two_workers_share_one_store_and_stop_together(tmp_path: Path, unused_tcp_port: int):
    server, admin, log_path = _serve_two_workers(tmp_path, unused_tcp_port)
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        workers = _workers(server.pid)
        assert len(workers) == 2
        words = [f"zorbex{i}" for i in range(24)]
        for word in words:  # a new connection per request: the kernel spreads them over both workers
            added = httpx.post(
                f"{base}/v1/memories",
                json={"subject": "alice", "text": f"My code word is {word}."},
                headers=bearer(admin),
            )
            assert added.status_code == 201
            for _ in range(2):
                found = httpx.post(
                    f"{base}/v1/memories/search",
                    json={"subject": "alice", "query": word, "k": 1},
                    headers=bearer(admin),
                )
                assert found.json()["results"][0]["text"] == f"My code word is {word}."
        stats = httpx.get(f"{base}/v1/admin/stats", headers=bearer(admin)).json()
        assert stats["memories"] == len(words)
        assert httpx.get(f"{base}/v1/admin/audit/verify", headers=bearer(admin)).json()["ok"] is True
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) in (0, -signal.SIGTERM)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # no worker outlives the supervisor
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    served_by = {line["pid"] for line in lines if line.get("logger") == "sealmem.access" and "pid" in line}
    assert served_by == workers


def _connections_held(workers: list[int], port: int) -> list[int]:
    """Established client connections to ``port`` that each worker holds (from /proc), in ``workers`` order."""
    established: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(int(fields[9]))
    held = []
    for pid in workers:
        sockets = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    sockets.add(int(target[8:-1]))
        held.append(len(sockets & established))
    return held


def test_connections_piled_on_one_worker_are_spread_over_both(tmp_path: Path, unused_tcp_port: int) -> None:
    """Sixteen keep-alive clients connect while one worker is stopped (SIGSTOP), so the other accepts them all;
    under load the busy worker answers some requests with ``Connection: close``, the clients reconnect, and the
    connections end up shared. Without the rebalancing the split stays 16/0 for as long as the clients live."""
    server, admin, _ = _serve_two_workers(
        tmp_path, unused_tcp_port, rate_limit_token_per_minute="0", rate_limit_key_per_minute="0"
    )
    base = f"http://127.0.0.1:{unused_tcp_port}"
    clients = [httpx.Client(base_url=base, headers=bearer(admin), timeout=60) for _ in range(16)]
    try:
        workers = sorted(_workers(server.pid))
        added = httpx.post(  # on a connection of its own, closed before the clients connect
            f"{base}/v1/memories",
            json={"subject": "alice", "text": "I play the cello on Sundays."},
            headers=bearer(admin),
        )
        assert added.status_code == 201
        os.kill(workers[1], signal.SIGSTOP)
        try:
            for client in clients:  # briefly: the supervisor replaces a worker silent for 5 s
                assert client.get("/healthz").status_code == 200
            held = _connections_held(workers, unused_tcp_port)
            assert held == [16, 0], held
        finally:
            os.kill(workers[1], signal.SIGCONT)
        stop = threading.Event()
        closed: list[int] = []
        failures: list[str] = []

        def search(client: httpx.Client) -> None:
            while not stop.is_set():
                found = client.post("/v1/memories/search", json={"subject": "alice", "query": "cello", "k": 3})
                if found.status_code != 200:
                    failures.append(found.text)
                    return
                if found.headers.get("connection") == "close":
                    closed.append(1)

        threads = [threading.Thread(target=search, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 90
            while min(held := _connections_held(workers, unused_tcp_port)) < 6 and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not failures, failures[:3]
        assert min(held) >= 6 and sum(held) == 16, held
        assert closed  # the clients were asked to reconnect
    finally:
        for client in clients:
            client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) in (0, -signal.SIGTERM)
