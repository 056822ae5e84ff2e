"""The TypeScript client (``clients/typescript``) against a real ``sealmem serve`` (issue 13, items 3, 5 and 8).

One server process (hashing embedder; its LLM a scripted OpenAI-compatible server in a thread, so streaming chat
is real HTTP end to end; a small per-subject rate limit for subject tokens, so a real 429 with Retry-After comes
quickly) serves:

- the check that ``clients/typescript/openapi.json``, from which the client's types are generated, is what the
  server serves (a route or model change without ``npm run schema`` fails here; the same check against the
  in-process app runs even without node);
- the client's own tests: ``npm test`` (node's test runner on the compiled TypeScript), given the server's URL and
  an admin key in ``SEALMEM_URL`` / ``SEALMEM_ADMIN_KEY``;
- ``examples/typescript_quickstart.mjs``.

The node tests skip, saying why, when node/npm or ``clients/typescript/node_modules`` (``npm ci`` there) are
missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proofs.process import REPO, ServerProcess, create_tenant, secret_env

CLIENT = REPO / "clients" / "typescript"
EXAMPLE = REPO / "examples" / "typescript_quickstart.mjs"
NODE, NPM = shutil.which("node"), shutil.which("npm")

NEEDS_NODE = [
    pytest.mark.skipif(
        NODE is None or NPM is None, reason="node and npm are not installed (the TypeScript client needs Node >= 20)"
    ),
    pytest.mark.skipif(
        not (CLIENT / "node_modules").is_dir(),
        reason="clients/typescript/node_modules is missing: run `npm ci` in clients/typescript (.ci/setup does)",
    ),
]


def needs_node(test: Any) -> Any:
    for mark in NEEDS_NODE:
        test = mark(test)
    return test


# The subject-token limit the retry test meets: 60 a minute is one a second (Retry-After: 1) once a burst of 10
# is spent. Other subjects have their own buckets, so the rest of the suite is not slowed down.
RATE_ENV = {"SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE": "60", "SEALMEM_RATE_LIMIT_TOKEN_BURST": "10"}


def _run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    done = subprocess.run(command, cwd=CLIENT, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{output[-12000:]}"
    return output


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[str]:
    from tests.chat.fakes import serve
    from tests.chat.openai_server import Script, fake_openai_app

    with serve(fake_openai_app(Script(), model="tiny-remote")) as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_llm: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ts-client")
    # Compile the client and its tests (tsc) while the server starts; ``built`` waits for it.
    build_log = (root / "build.log").open("w")
    build = subprocess.Popen([NPM or "npm", "run", "build"], cwd=CLIENT, stdout=build_log, stderr=subprocess.STDOUT)
    env = secret_env(
        root / "secrets",
        root / "data",
        SEALMEM_CHAT_ENABLED="true",
        SEALMEM_LLM_BACKEND="openai",
        SEALMEM_OPENAI_BASE_URL=f"{fake_llm}/v1",
        SEALMEM_OPENAI_MODEL="tiny-remote",
        SEALMEM_OPENAI_MAX_RETRIES="0",
        **RATE_ENV,
    )
    try:
        admin_key = create_tenant(env, "ts-client")["admin_key"]
        process = ServerProcess(env, root / "server.log").start(timeout=120)
        try:
            yield {"url": process.url, "admin_key": admin_key, "build": build, "build_log": root / "build.log"}
        finally:
            process.stop()
    finally:
        if build.poll() is None:
            build.kill()
        build.wait(timeout=30)
        build_log.close()


@pytest.fixture(scope="module")
def built(server: dict[str, Any]) -> None:
    """The client and its tests compiled (``npm run build``, started by ``server``)."""
    build: subprocess.Popen[bytes] = server["build"]
    code = build.wait(timeout=300)
    assert code == 0, f"npm run build failed ({code}):\n{server['build_log'].read_text()[-12000:]}"


def _node_env(server: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update({"SEALMEM_URL": server["url"], "SEALMEM_ADMIN_KEY": server["admin_key"], "NO_COLOR": "1"})
    return env


def _dump_module() -> Any:
    spec = importlib.util.spec_from_file_location("sealmem_ts_dump_openapi", CLIENT / "scripts" / "dump_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openapi_snapshot_is_the_current_schema() -> None:
    """The checked-in schema the client's types come from is the app's current one (needs no node)."""
    snapshot: dict[str, Any] = json.loads((CLIENT / "openapi.json").read_text())
    assert snapshot == _dump_module().openapi_document(), (
        "clients/typescript/openapi.json is out of date: run `npm run schema` in clients/typescript "
        "(dumps the schema and regenerates src/schema.ts), then check both in"
    )


@needs_node
def test_served_schema_is_the_snapshot(server: dict[str, Any]) -> None:
    """... and what a real ``sealmem serve`` serves at /openapi.json is that same document."""
    snapshot: dict[str, Any] = json.loads((CLIENT / "openapi.json").read_text())
    served = httpx.get(f"{server['url']}/openapi.json", timeout=30).json()
    assert snapshot == served, "clients/typescript/openapi.json differs from the served schema: `npm run schema`"


@needs_node
def test_generated_types_match_the_snapshot(tmp_path: Path) -> None:
    """``src/schema.ts`` is what openapi-typescript generates from the checked-in ``openapi.json``."""
    fresh = tmp_path / "schema.ts"
    _run(
        [
            str(CLIENT / "node_modules" / ".bin" / "openapi-typescript"),
            "openapi.json",
            "--default-non-nullable",
            "false",
            "--output",
            str(fresh),
        ]
    )
    assert fresh.read_text() == (CLIENT / "src" / "schema.ts").read_text(), (
        "clients/typescript/src/schema.ts is stale: run `npm run generate` in clients/typescript"
    )


@needs_node
def test_typescript_client_suite(server: dict[str, Any], built: None) -> None:
    """``npm test`` (node --test on the compiled tests) against the live server."""
    output = _run([NPM or "npm", "test", "--ignore-scripts"], env=_node_env(server), timeout=240)
    assert "are not set" not in output, "a live-server suite skipped itself:\n" + output[-6000:]


@needs_node
def test_typescript_quickstart_example(server: dict[str, Any], built: None) -> None:
    """The example in examples/README.md runs as printed against a live server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update({"SEALMEM_URL": server["url"], "SEALMEM_API_KEY": server["admin_key"]})
    done = subprocess.run(
        [NODE or "node", str(EXAMPLE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "someone else's memories: 404 not_found" in done.stdout, done.stdout
    assert "chat: You told me: My dog is named Biscuit" in done.stdout, done.stdout  # streamed with memory
