"""`sealmem serve` as a real process with the real embedding model: first start, the curl flow, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import bearer

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_first_start_serves_the_full_flow_and_stops_cleanly(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update({"SEALMEM_DATA_DIR": str(tmp_path / "data"), "SEALMEM_LOG_LEVEL": "INFO"})
    command = [sys.executable, "-c", "from service.cli import main; main()"]
    created = subprocess.run(
        [*command, "tenant", "create", "acme"], env=env, capture_output=True, text=True, timeout=180
    )
    assert created.returncode == 0, created.stderr
    admin = json.loads(created.stdout.strip().splitlines()[-1])["admin_key"]
    assert "created a new master key" in created.stderr

    port = _free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*command, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=30) as client:
            memories = {
                "memories": [
                    {"subject": "user-42", "text": "My dog is named Biscuit and I live in Lisbon."},
                    {"subject": "user-42", "text": "I work as a nurse at the city hospital."},
                    {"subject": "user-42", "text": "My favourite food is grilled sardines."},
                ]
            }
            assert client.post("/v1/memories", json=memories, headers=bearer(admin)).status_code == 201
            token = client.post("/v1/tokens", json={"subject": "user-42"}, headers=bearer(admin)).json()["token"]
            results = client.post(
                "/v1/memories/search", json={"query": "What is my dog's name?"}, headers=bearer(token)
            )
            assert results.json()["results"][0]["text"].startswith("My dog is named Biscuit")
            gone = client.delete("/v1/admin/subjects/user-42", headers=bearer(admin))
            assert gone.json()["memories_deleted"] == 3
            assert client.get("/v1/admin/audit/verify", headers=bearer(admin)).json()["ok"] is True
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so supervisors see how it ended.
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("logger") == "sealmem.access" and line.get("request_id") for line in lines)
    assert any(line.get("message") == "Application shutdown complete." for line in lines)
    text = log_path.read_text()
    assert "Biscuit" not in text and admin not in text and token not in text
