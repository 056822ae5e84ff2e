"""Run ``sealmem`` as real processes: provision with ``tenant create``, serve, SIGKILL, restart."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from memory_store.crypto import encode_key, generate_key, write_secret_file

HASHING = [sys.executable, "-m", "tests.proofs.sealmem_hashing"]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def secret_env(folder: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """An environment with the master key and token secret in files (mode 0600) outside the data dir."""
    folder.mkdir(parents=True, exist_ok=True)
    master, token = folder / "master.key", folder / "token.secret"
    if not master.exists():
        write_secret_file(master, encode_key(generate_key()))
        write_secret_file(token, secrets.token_urlsafe(48))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update(
        {
            "SEALMEM_DATA_DIR": str(data_dir),
            "SEALMEM_MASTER_KEY_FILE": str(master),
            "SEALMEM_TOKEN_SECRET_FILE": str(token),
            "SEALMEM_LOG_LEVEL": "INFO",
            "SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE": "0",
            "SEALMEM_RATE_LIMIT_KEY_PER_MINUTE": "0",
            "SEALMEM_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE": "0",
            "SEALMEM_CHAT_ENABLED": "false",
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    env.update(extra)
    return env


def create_tenant(env: dict[str, str], name: str, command: list[str] = HASHING) -> dict[str, str]:
    done = subprocess.run(
        [*command, "tenant", "create", name], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rss_of(pid: int) -> int:
    """Resident set size of a process in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """One ``sealmem serve`` process; its stdout and stderr go to ``log_path`` (appended across restarts)."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] = HASHING) -> None:
        self.env = env
        self.log_path = log_path
        self.command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 180) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.command, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"sealmem serve exited ({self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sealmem serve was not ready in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait (a clean shutdown persists indexes); returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=30)

    def rss_bytes(self) -> int:
        assert self.process is not None
        return rss_of(self.process.pid)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)
