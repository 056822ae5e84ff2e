"""docker/entrypoint.sh run directly, as the image runs it: secrets from files, other commands passed to
`sealmem`, a bounded wait for PostgreSQL, and (slow: loads the embedding model) migrate + serve on a fresh
SQLite data directory, answered health probes, the Dockerfile's HEALTHCHECK, and a clean stop on SIGTERM."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    ENTRYPOINT,
    clean_env,
    dockerfile_instructions,
    final_stage,
    free_port,
    http,
    write_secrets,
)


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=clean_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_other_commands_go_to_sealmem() -> None:
    result = run("keygen")
    assert result.returncode == 0, result.stderr
    assert len(base64.b64decode(result.stdout.strip())) == 32


def test_programs_run_with_the_database_password_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "pg_password"
    secret.write_text("s3cret-pw\n", encoding="utf-8")
    result = run("sh", "-c", 'printf "%s|%s" "$PGPASSWORD" "${PGPASSWORD_FILE:-unset}"', PGPASSWORD_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "s3cret-pw|unset"


def test_unreadable_secret_file_fails_at_once(tmp_path: Path) -> None:
    result = run(SEALMEM_MASTER_KEY_FILE=str(tmp_path / "missing"), timeout=30)
    assert result.returncode == 1
    assert "SEALMEM_MASTER_KEY_FILE" in result.stderr and "not readable" in result.stderr


def test_invalid_settings_fail_before_waiting() -> None:
    started = time.monotonic()
    result = run(SEALMEM_VECTOR_BACKEND="bogus", SEALMEM_DATABASE_URL="postgresql+psycopg://x@127.0.0.1:1/x")
    assert result.returncode != 0
    assert "invalid settings" in result.stderr and "vector_backend" in result.stderr
    assert time.monotonic() - started < 30


def test_gives_up_on_an_unreachable_database() -> None:
    started = time.monotonic()
    result = run(
        SEALMEM_DATABASE_URL=f"postgresql+psycopg://sealmem@127.0.0.1:{free_port()}/sealmem",
        DB_WAIT_SECONDS="3",
    )
    assert result.returncode != 0
    assert "waiting for the database" in result.stderr and "database not reachable" in result.stderr
    assert 3 <= time.monotonic() - started < 60


def healthcheck_argv() -> list[str]:
    """The HEALTHCHECK CMD of the image, as Docker runs it inside the container."""
    health = next(args for word, args in final_stage(dockerfile_instructions()) if word == "HEALTHCHECK")
    return [str(part) for part in json.loads(health[health.index("CMD") + 3 :].strip())]


@pytest.mark.slow
def test_migrates_then_serves_and_stops_cleanly(tmp_path: Path, start_server, preconverted_llm_cache: Path) -> None:
    """As the image starts: its settings (the LLM cache converted at build time included), secrets as files."""
    port = free_port()
    data = tmp_path / "data"
    env = clean_env(
        SEALMEM_DATA_DIR=str(data),
        SEALMEM_HOST="127.0.0.1",
        SEALMEM_PORT=str(port),
        SEALMEM_LLM_CACHE_DIR=str(preconverted_llm_cache),
        **write_secrets(tmp_path / "secrets"),
    )
    server = start_server([str(ENTRYPOINT)], env, port)
    server.wait_ready()

    assert (data / "sealmem.db").is_file(), "migrated the embedded database"
    assert not (data / "master.key").exists(), "used the key file it was given, created none"
    assert "database schema at revision" in server.log_text()
    assert "dequantizing" not in server.log_text(), "the LLM came from the build-time cache, not a conversion"
    status, body = http("GET", f"{server.url}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = http("GET", f"{server.url}/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"

    # exec: the process the entrypoint started IS the server (so `docker stop` signals uvicorn, not a shell).
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert any(part.endswith(b"sealmem") for part in cmdline) and b"serve" in cmdline

    probe = subprocess.run(healthcheck_argv(), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode == 0, probe.stderr

    # uvicorn finishes the lifespan (persists indexes, closes the store), then re-raises SIGTERM: exit 143 in Docker.
    assert server.stop() in (0, -signal.SIGTERM), server.log_text()[-4000:]
    assert "Application shutdown complete" in server.log_text()
    probe = subprocess.run(healthcheck_argv(), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode != 0, "the healthcheck fails when nothing answers"
