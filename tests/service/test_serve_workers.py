"""`sealmem serve` with several worker processes on the embedded default (SQLite + FAISS files shared by the
workers): every write acknowledged by one worker is found by a search that any worker answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
    return {
        child
        for child in _children(pid)
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def test_two_workers_share_one_store_and_stop_together(tmp_path: Path, unused_tcp_port: int):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update(
        {
            "SEALMEM_DATA_DIR": str(tmp_path / "data"),
            "SEALMEM_WORKERS": "2",
            "SEALMEM_CHAT_ENABLED": "false",
        }
    )
    created = subprocess.run(
        [*COMMAND, "tenant", "create", "acme"], env=env, capture_output=True, text=True, timeout=300
    )
    assert created.returncode == 0, created.stderr
    admin = json.loads(created.stdout.strip().splitlines()[-1])["admin_key"]
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(unused_tcp_port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        deadline = time.monotonic() + 300
        while log_path.read_text().count("sealmem ready") < 2:
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "workers did not become ready"
            time.sleep(0.5)
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
