"""Helpers of the deployment tests: the repository's deployment files, the app's settings names, .dockerignore
matching, and real `sealmem` processes (entrypoint and `sealmem serve`) on free ports."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, BaseModel
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BIN = Path(sys.executable).parent  # the venv's bin: `sealmem` lives beside this python

# Any SEALMEM_* variable name in a file (a bare prefix such as "SEALMEM_KV_" in prose is not a name).
SEALMEM_NAME = re.compile(r"\bSEALMEM_[A-Z0-9_]*[A-Z0-9]\b")


# ---- settings ----------------------------------------------------------------------------------------------


@cache
def settings_classes() -> tuple[type[BaseSettings], ...]:
    """Every pydantic-settings class defined in the app's packages, found by scanning their source (so a new
    settings class is covered without touching these tests)."""
    found: list[type[BaseSettings]] = []
    for package in ("memory_store", "service"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = [
                node.name
                for node in tree.body
                if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("Settings") for base in node.bases)
            ]
            if not names:
                continue
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for name in names:
                cls = getattr(module, name)
                if isinstance(cls, type) and issubclass(cls, BaseSettings):
                    found.append(cls)
    return tuple(found)


@dataclass(frozen=True)
class SettingVar:
    name: str  # environment variable
    cls: type[BaseSettings]
    field: str
    default: Any
    annotation: Any


def _field_env_names(cls: type[BaseSettings], field_name: str, info: Any) -> list[str]:
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [c.upper() for c in alias.choices if isinstance(c, str)]
    return [(str(cls.model_config.get("env_prefix", "")) + field_name).upper()]


@cache
def setting_vars() -> dict[str, SettingVar]:
    """Environment variable name -> the setting it sets, over all settings classes (nested models expanded)."""
    out: dict[str, SettingVar] = {}
    for cls in settings_classes():
        delimiter = cls.model_config.get("env_nested_delimiter")
        for field_name, info in cls.model_fields.items():
            for env in _field_env_names(cls, field_name, info):
                nested = info.annotation
                if delimiter and isinstance(nested, type) and issubclass(nested, BaseModel):
                    for sub, sub_info in nested.model_fields.items():
                        name = f"{env}{delimiter}{sub}".upper()
                        out[name] = SettingVar(name, cls, f"{field_name}.{sub}", sub_info.default, sub_info.annotation)
                else:
                    out[env] = SettingVar(env, cls, field_name, info.default, info.annotation)
    return out


def sealmem_names_in(path: Path) -> set[str]:
    return set(SEALMEM_NAME.findall(path.read_text(encoding="utf-8")))


ENV_LINE = re.compile(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_entries() -> dict[str, tuple[str, str]]:
    """.env.example: variable -> (value, the comment line just above it)."""
    entries: dict[str, tuple[str, str]] = {}
    previous = ""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line) or re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            assert match.group(1) not in entries, f"{match.group(1)} appears twice in .env.example"
            entries[match.group(1)] = (match.group(2), previous)
        previous = line
    return entries


# ---- Dockerfile and .dockerignore ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern syntax (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i)
            out += fnmatch.translate(pattern[i : end + 1])[4:-3] if end > 0 else re.escape(c)
            i = end if end > 0 else i
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, str, re.Pattern[str]]] = field(default_factory=list)  # (negated, text, regex)

    @classmethod
    def load(cls, path: Path = DOCKERIGNORE) -> DockerIgnore:
        ignore = cls()
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            text = os.path.normpath(line[1:].strip() if negated else line).lstrip("/")
            ignore.rules.append((negated, text, _pattern_regex(text)))
        return ignore

    def excluded(self, relpath: str) -> bool:
        """Whether a path (relative to the context, '/'-separated) is left out of the build context: the last
        matching rule wins, and a rule matching a parent folder matches everything inside it."""
        parts = relpath.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negated, _, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negated
        return result

    def may_include_below(self, reldir: str) -> bool:
        return any(negated and text.startswith(reldir.rstrip("/") + "/") for negated, text, _ in self.rules)


def context_files(ignore: DockerIgnore) -> Iterator[Path]:
    """Files of the build context as the Docker CLI would send them."""
    for folder, dirs, files in os.walk(ROOT):
        rel_folder = Path(folder).relative_to(ROOT).as_posix()
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = [d for d in dirs if not ignore.excluded(rel_folder + d) or ignore.may_include_below(rel_folder + d)]
        for name in files:
            if not ignore.excluded(rel_folder + name):
                yield Path(folder) / name


# ---- processes ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secrets(folder: Path) -> dict[str, str]:
    """Secret files as Docker secrets would provide them; returns the env pointing at them."""
    folder.mkdir(parents=True, exist_ok=True)
    key = subprocess.run(
        [str(BIN / "sealmem"), "keygen"], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    (folder / "master_key").write_text(key + "\n", encoding="utf-8")
    (folder / "token_secret").write_text(secrets.token_urlsafe(48) + "\n", encoding="utf-8")
    for path in folder.iterdir():
        path.chmod(0o600)
    return {
        "SEALMEM_MASTER_KEY_FILE": str(folder / "master_key"),
        "SEALMEM_TOKEN_SECRET_FILE": str(folder / "token_secret"),
    }


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any SEALMEM_* variable, plus ``extra``; the venv's bin first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_") and k not in ("PGPASSWORD",)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", SEALMEM_EMBEDDING_THREADS="1")
    env.update(extra)
    return env


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Server:
    """A `sealmem` server process started in its own process group, logging to a file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"server exited with {self.proc.returncode} before it was ready:\n{self.log_text()[-6000:]}"
                )
            try:
                status, _ = http("GET", f"{self.url}/readyz", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"server not ready after {timeout} s:\n{self.log_text()[-6000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (as `docker stop` sends to PID 1), then wait; SIGKILL the group only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """start_server(argv, env) -> Server; every server still running at teardown is stopped."""
    servers: list[Server] = []

    def _start(argv: list[str], env: dict[str, str], port: int) -> Server:
        log = tmp_path / f"server-{port}.log"
        handle = open(log, "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        server = Server(proc, port, log)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


IMAGE_LLM_CACHE = "/opt/sealmem/llm-cache"


@pytest.fixture(scope="session")
def preconverted_llm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's build-time GGUF conversion, run here into a temporary folder instead of the image's
    /opt/sealmem/llm-cache (slow: dequantizes SmolLM2 once, ~1.2 GB peak)."""
    runs = [args for word, args in dockerfile_instructions() if word == "RUN" and "load_model" in args]
    assert len(runs) == 1, "one RUN converts the bundled GGUF"
    code = re.search(r'python -c "((?:[^"\\]|\\.)*)"', runs[0])
    assert code is not None and IMAGE_LLM_CACHE in code.group(1)
    folder = tmp_path_factory.mktemp("llm-cache")
    subprocess.run(
        [sys.executable, "-c", code.group(1).replace(IMAGE_LLM_CACHE, str(folder))],
        env=clean_env(),
        check=True,
        timeout=900,
        capture_output=True,
    )
    return folder


def have(program: str) -> str | None:
    return shutil.which(program)
